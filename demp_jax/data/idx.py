"""Reader for the IDX format of (Fashion-)MNIST, gzipped or plain.

An IDX file is a 4-byte magic ``0 0 T D`` (``T`` the element type, ``D``
the number of dimensions), ``D`` big-endian uint32 sizes, then the
``prod(sizes)`` elements, row-major.
"""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4',
           0x0D: '>f4', 0x0E: '>f8'}


def _read_bytes(path: str) -> bytes:
  """The file's bytes, gunzipped for ``.gz``; ``ValueError`` naming the
  file when it cannot be read or its gzip stream is cut or damaged."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      return f.read()
  except FileNotFoundError:
    raise
  except EOFError as e:
    raise ValueError(f'{path} is truncated: its gzip stream ends early '
                     f'({e})') from None
  except (gzip.BadGzipFile, zlib.error) as e:
    raise ValueError(f'{path} is corrupt: not a valid gzip stream '
                     f'({e})') from None
  except OSError as e:
    raise ValueError(f'{path} cannot be read: {e.strerror or e}') from None


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (``.gz`` or not) into an array of its stored shape.

  Raises ``ValueError`` naming the file if it cannot be read, its gzip
  stream is truncated or corrupt, its magic number is not IDX, or its
  header's shape does not match the bytes that follow.
  """
  data = _read_bytes(path)
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise ValueError(f'{path} is not an IDX file (bad magic number '
                     f'{data[:4]!r})')
  ndim = data[3]
  offset = 4 + 4 * ndim
  if ndim == 0 or len(data) < offset:
    raise ValueError(f'{path}: the header of a {ndim}-dimensional IDX file '
                     f'needs {offset} bytes, the file holds {len(data)}')
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
  dtype = np.dtype(_DTYPES[data[2]])
  want = int(np.prod(dims)) * dtype.itemsize
  if len(data) - offset != want:
    raise ValueError(f'{path}: header says shape {dims} ({want} bytes) but '
                     f'the file holds {len(data) - offset} bytes of data')
  return np.frombuffer(data, dtype, offset=offset).reshape(dims)


def find_idx(data_dir: str, stem: str) -> str:
  """Path of ``stem`` or ``stem.gz`` in ``data_dir``, also spelt with a dot
  before ``idx`` (``train-images.idx3-ubyte``, as some copies of MNIST
  are); FileNotFoundError if none exists."""
  dotted = stem.replace('-idx', '.idx')
  for name in (stem + '.gz', stem, dotted + '.gz', dotted):
    path = os.path.join(data_dir, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(os.path.join(data_dir, stem + '.gz'))
