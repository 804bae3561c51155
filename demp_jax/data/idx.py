"""Reader for the IDX format of (Fashion-)MNIST, gzipped or plain."""
from __future__ import annotations

import gzip
import os

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4',
           0x0D: '>f4', 0x0E: '>f8'}


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (``.gz`` or not) into an array of its stored shape.

  Raises ``ValueError`` naming the file if its header is not IDX.
  """
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise ValueError(f'{path} is not an IDX file (bad magic number '
                     f'{data[:4]!r})')
  ndim = data[3]
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
  dtype = np.dtype(_DTYPES[data[2]])
  offset = 4 + 4 * ndim
  want = int(np.prod(dims)) * dtype.itemsize
  if len(data) - offset != want:
    raise ValueError(f'{path}: header says shape {dims} ({want} bytes) but '
                     f'the file holds {len(data) - offset} bytes of data')
  return np.frombuffer(data, dtype, offset=offset).reshape(dims)


def find_idx(data_dir: str, stem: str) -> str:
  """Path of ``stem`` or ``stem.gz`` in ``data_dir``; FileNotFoundError if
  neither exists."""
  for name in (stem + '.gz', stem):
    path = os.path.join(data_dir, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(os.path.join(data_dir, stem + '.gz'))
