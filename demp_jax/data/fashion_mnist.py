"""Fashion-MNIST (and MNIST) from IDX files or a prepared tfds data_dir.

Debian's ``dataset-fashion-mnist`` package installs the full 60k/10k set as
IDX files under ``/usr/share/datasets/fashion-mnist``. A prepared
tensorflow-datasets directory also works; it is never downloaded.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from demp_jax.data import idx
from demp_jax.data.arrays import ArrayDataset
from demp_jax.errors import why_not_a_directory

DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
_FILES = {'train': 'train-{}-idx{}-ubyte', 'test': 't10k-{}-idx{}-ubyte'}
NUM_CLASSES = 10  # Fashion-MNIST and MNIST

HOW_TO_GET = (
    'Get Fashion-MNIST with `sudo apt-get install dataset-fashion-mnist` '
    f'(IDX files in {DEBIAN_DIR}), or put the four IDX files '
    '(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
    't10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a directory '
    'and pass --config.dataset.data_dir=DIR, or prepare the tfds dataset '
    '`fashion_mnist` in a data_dir and set --config.dataset.source=tfds.')


def load_idx_dir(data_dir: str, split: str) -> ArrayDataset:
  """Reads ``split`` ('train' or 'test') from IDX files in ``data_dir``."""
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(
        f'Fashion-MNIST data directory {data_dir!r} '
        f'{why_not_a_directory(data_dir)}. ' + HOW_TO_GET)
  try:
    image_file = idx.find_idx(data_dir, _FILES[split].format('images', 3))
    label_file = idx.find_idx(data_dir, _FILES[split].format('labels', 1))
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f'Fashion-MNIST file {e.args[0]} is missing. ' + HOW_TO_GET) from None
  images, labels = idx.read_idx(image_file), idx.read_idx(label_file)
  check_pair(image_file, images, label_file, labels)
  return ArrayDataset(images[..., None], labels.astype(np.int32))


def check_pair(image_file: str, images: np.ndarray, label_file: str,
               labels: np.ndarray, num_classes: int = NUM_CLASSES) -> None:
  """Images uint8 ``[N, H, W]`` and labels integer ``[N]`` in
  ``[0, num_classes)``; ``ValueError`` naming the file that is wrong."""
  if images.ndim != 3 or images.dtype != np.uint8:
    raise ValueError(f'{image_file}: images must be uint8 [N, H, W], the '
                     f'file holds {images.dtype} {list(images.shape)}')
  if labels.ndim != 1 or labels.dtype.kind not in 'iu':
    raise ValueError(f'{label_file}: labels must be integers [N], the file '
                     f'holds {labels.dtype} {list(labels.shape)}')
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f'{image_file} holds {images.shape[0]} images but '
                     f'{label_file} holds {labels.shape[0]} labels')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'{label_file}: labels span [{labels.min()}, '
                     f'{labels.max()}], not [0, {num_classes})')


def load_tfds(name: str, data_dir: Optional[str], split: str) -> ArrayDataset:
  """Reads a prepared tfds dataset (never downloads)."""
  from demp_jax.data import tfds_source  # optional dependency
  return tfds_source.load_arrays(name, data_dir, split)


def load(split: str, data_dir: Optional[str] = None, source: str = 'auto',
         name: str = 'fashion_mnist') -> ArrayDataset:
  """Loads ``split`` of Fashion-MNIST (or MNIST with ``name='mnist'``).

  ``source='idx'`` reads IDX files from ``data_dir`` (default: the Debian
  package's directory for Fashion-MNIST); ``'tfds'`` reads a prepared
  tensorflow-datasets directory; ``'auto'`` tries IDX, then tfds.
  """
  if split not in _FILES:
    raise ValueError(f'split must be one of {sorted(_FILES)}, got {split!r}')
  if source not in ('auto', 'idx', 'tfds'):
    raise ValueError(f"config.dataset.source must be 'auto', 'idx' or 'tfds', "
                     f'got {source!r}')
  if source == 'tfds':
    return load_tfds(name, data_dir, split)
  idx_dir = data_dir or (DEBIAN_DIR if name == 'fashion_mnist' else None)
  if source == 'idx' or (idx_dir and os.path.isdir(idx_dir) and any(
      f.startswith(('train-', 't10k-')) for f in os.listdir(idx_dir))):
    if idx_dir is None:
      raise FileNotFoundError(f'no data_dir given for {name}. ' + HOW_TO_GET)
    return load_idx_dir(idx_dir, split)
  try:
    return load_tfds(name, data_dir, split)
  except (FileNotFoundError, ImportError) as e:
    # 'auto' found neither: name both places, then how to get it
    first = (str(e).splitlines() or [''])[0].split('. ')[0]
    raise FileNotFoundError(
        f'{name} not found: no IDX files in {idx_dir!r}, and {first}. '
        + HOW_TO_GET) from None
