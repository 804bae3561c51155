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

DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
_FILES = {'train': 'train-{}-idx{}-ubyte', 'test': 't10k-{}-idx{}-ubyte'}

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
        f'Fashion-MNIST data directory {data_dir!r} does not exist. '
        + HOW_TO_GET)
  try:
    images = idx.read_idx(idx.find_idx(data_dir, _FILES[split].format(
        'images', 3)))
    labels = idx.read_idx(idx.find_idx(data_dir, _FILES[split].format(
        'labels', 1)))
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f'Fashion-MNIST file {e.args[0]} is missing. ' + HOW_TO_GET) from None
  if images.ndim != 3 or images.shape[0] != labels.shape[0]:
    raise ValueError(f'{data_dir}: {split} images {images.shape} and labels '
                     f'{labels.shape} do not match')
  return ArrayDataset(images[..., None].astype(np.uint8),
                      labels.astype(np.int32))


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
  return load_tfds(name, data_dir, split)
