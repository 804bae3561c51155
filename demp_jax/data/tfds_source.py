"""Prepared tensorflow-datasets directories, read without TensorFlow.

Uses ``tfds.data_source(..., download=False)`` (array_record files), so it
never touches the network: a dataset that is not prepared in ``data_dir``
is an error that names the dataset, the directory and how to prepare it.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from demp_jax.data.arrays import ArrayDataset


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'reading a tfds data_dir needs tensorflow-datasets: '
        'pip install -e ".[tfds]"') from e
  return tfds


def prepare_hint(name: str, data_dir: Optional[str]) -> str:
  where = data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
  return (f'tfds dataset {name!r} is not prepared in data_dir {where!r}. '
          f'Prepare it once on a machine with internet access and '
          f'tensorflow installed: `python -c "import tensorflow_datasets as '
          f"tfds; tfds.builder('{name}', data_dir='{where}', "
          f"file_format='array_record').download_and_prepare()\"`, then copy "
          f'the directory here. This library never downloads (download=False).')


def data_source(name: str, data_dir: Optional[str], split: str):
  """``tfds.data_source`` with ``download=False`` and a clear error."""
  tfds = _tfds()
  if data_dir is not None and not os.path.isdir(data_dir):
    raise FileNotFoundError(f'tfds data_dir {data_dir!r} does not exist. '
                            + prepare_hint(name, data_dir))
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False)
  except Exception as e:  # tfds raises several types for a missing dataset
    raise FileNotFoundError(prepare_hint(name, data_dir) +
                            f' (tfds said: {type(e).__name__}: {e})') from e


def load_arrays(name: str, data_dir: Optional[str], split: str
                ) -> ArrayDataset:
  """All of ``split`` as uint8 images ``[N, H, W, C]`` and int32 labels."""
  src = data_source(name, data_dir, split)
  n = len(src)
  records = src.__getitems__(list(range(n)))
  images = np.stack([np.asarray(r['image'], np.uint8) for r in records])
  if images.ndim == 3:
    images = images[..., None]
  labels = np.asarray([r['label'] for r in records], np.int32)
  return ArrayDataset(images, labels)
