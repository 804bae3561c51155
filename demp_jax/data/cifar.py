"""CIFAR-10 and CIFAR-100 from the official archives, read in memory.

The four official layouts (https://www.cs.toronto.edu/~kriz/cifar.html),
each as the ``.tar.gz`` or extracted into a directory:

===========  ===========================  ===========================
dataset      python (pickles)             binary
===========  ===========================  ===========================
cifar10      cifar-10-python.tar.gz       cifar-10-binary.tar.gz
             cifar-10-batches-py/         cifar-10-batches-bin/
             data_batch_{1..5}, test_batch  data_batch_{1..5}.bin,
                                          test_batch.bin
cifar100     cifar-100-python.tar.gz      cifar-100-binary.tar.gz
             cifar-100-python/            cifar-100-binary/
             train, test                  train.bin, test.bin
===========  ===========================  ===========================

Binary records are ``label bytes + 3072 image bytes``: CIFAR-10 has one label
byte, CIFAR-100 two (coarse, then fine). The image bytes are channel-major
(``[3, 32, 32]``: 1024 red, 1024 green, 1024 blue, each row-major); the
pickles hold the same ``[N, 3072]`` rows under ``b'data'`` with labels under
``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` / ``b'coarse_labels'``.
Images come out as uint8 ``[N, 32, 32, 3]`` (NHWC).

The binary layout is preferred when several are present (no unpickling);
pickles are read with an unpickler that only admits the numpy globals an
array needs, so a tampered file cannot run code.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from typing import Optional

import numpy as np

from demp_jax.data.arrays import ArrayDataset

IMAGE_BYTES = 3072
NUM_CLASSES = {('cifar10', 'fine'): 10, ('cifar100', 'fine'): 100,
               ('cifar100', 'coarse'): 20}

# name -> [(format, archive file, extracted directory)], in order of
# preference.
LAYOUTS = {
    'cifar10': [('binary', 'cifar-10-binary.tar.gz', 'cifar-10-batches-bin'),
                ('python', 'cifar-10-python.tar.gz', 'cifar-10-batches-py')],
    'cifar100': [('binary', 'cifar-100-binary.tar.gz', 'cifar-100-binary'),
                 ('python', 'cifar-100-python.tar.gz', 'cifar-100-python')],
}
FILES = {
    ('cifar10', 'binary'): {
        'train': [f'data_batch_{i}.bin' for i in range(1, 6)],
        'test': ['test_batch.bin']},
    ('cifar10', 'python'): {
        'train': [f'data_batch_{i}' for i in range(1, 6)],
        'test': ['test_batch']},
    ('cifar100', 'binary'): {'train': ['train.bin'], 'test': ['test.bin']},
    ('cifar100', 'python'): {'train': ['train'], 'test': ['test']},
}
URLS = {'cifar10': 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz',
        'cifar100': 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz'}


def how_to_get(name: str, data_dir: Optional[str]) -> str:
  names = ', '.join(f'{a} or {d}/' for _, a, d in LAYOUTS[name])
  return (f'Download {URLS[name]} (or the python version) and put it, '
          f'extracted or not, in config.dataset.data_dir (now {data_dir!r}); '
          f'accepted: {names}. Or prepare the tfds dataset {name!r} and set '
          'config.dataset.source=tfds.')


def find(name: str, data_dir: str) -> Optional[tuple[str, str, bool]]:
  """``(format, path, is_tar)`` of the first official layout of ``name``
  found in ``data_dir`` (which may also be the archive or the extracted
  directory itself); None if there is none."""
  if name not in LAYOUTS:
    raise ValueError(f'no CIFAR archive layout for {name!r}; known: '
                     f'{sorted(LAYOUTS)}')
  base = os.path.basename(os.path.normpath(data_dir))
  for fmt, archive, dirname in LAYOUTS[name]:
    if base == archive and os.path.isfile(data_dir):
      return fmt, data_dir, True
    if base == dirname and os.path.isdir(data_dir):
      return fmt, data_dir, False
  if not os.path.isdir(data_dir):
    return None
  for fmt, archive, dirname in LAYOUTS[name]:
    if os.path.isdir(os.path.join(data_dir, dirname)):
      return fmt, os.path.join(data_dir, dirname), False
    if os.path.isfile(os.path.join(data_dir, archive)):
      return fmt, os.path.join(data_dir, archive), True
  return None


class _ArrayUnpickler(pickle.Unpickler):
  """Admits only what a pickled numpy array needs."""
  ALLOWED = {('numpy.core.multiarray', '_reconstruct'),
             ('numpy._core.multiarray', '_reconstruct'),
             ('numpy.core.multiarray', 'scalar'),
             ('numpy._core.multiarray', 'scalar'),
             ('numpy', 'ndarray'), ('numpy', 'dtype'),
             ('_codecs', 'encode')}

  def find_class(self, module, name):
    if (module, name) in self.ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(
        f'global {module}.{name} is not allowed in a CIFAR pickle')


def parse_binary(data: bytes, label_bytes: int, label_index: int, where: str
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Records ``[label_bytes | 3072 CHW bytes]`` -> (uint8 ``[N, 32, 32, 3]``,
  int32 ``[N]`` from label byte ``label_index``)."""
  rec = label_bytes + IMAGE_BYTES
  if len(data) == 0 or len(data) % rec:
    raise ValueError(f'{where}: {len(data)} bytes is not a whole number of '
                     f'{rec}-byte CIFAR records ({label_bytes} label byte(s) '
                     f'+ {IMAGE_BYTES} image bytes)')
  rows = np.frombuffer(data, np.uint8).reshape(-1, rec)
  images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), rows[:, label_index].astype(np.int32)


def parse_pickle(data: bytes, label_key: str, where: str
                 ) -> tuple[np.ndarray, np.ndarray]:
  """A python-version batch -> (uint8 ``[N, 32, 32, 3]``, int32 ``[N]``)."""
  try:
    d = _ArrayUnpickler(io.BytesIO(data), encoding='bytes').load()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{where} is not a CIFAR python batch: {e}') from e
  if not isinstance(d, dict):
    raise ValueError(f'{where} is not a CIFAR python batch (no dict)')
  d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
  if 'data' not in d or label_key not in d:
    raise ValueError(f'{where}: CIFAR batch lacks data/{label_key}; has '
                     f'{sorted(d)}')
  rows = np.asarray(d['data'], np.uint8)
  labels = np.asarray(d[label_key], np.int32)
  if rows.ndim != 2 or rows.shape[1] != IMAGE_BYTES or len(labels) != len(
      rows):
    raise ValueError(f'{where}: data {rows.shape} / labels {labels.shape} '
                     f'are not [N, {IMAGE_BYTES}] / [N]')
  images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def _members(path: str, is_tar: bool, wanted: list[str]) -> list[bytes]:
  """Bytes of each file in ``wanted`` (basenames) from a dir or a tar."""
  if not is_tar:
    out = []
    for f in wanted:
      p = os.path.join(path, f)
      if not os.path.isfile(p):
        raise FileNotFoundError(f'CIFAR file {p} is missing')
      try:
        with open(p, 'rb') as fh:
          out.append(fh.read())
      except OSError as e:
        raise ValueError(f'CIFAR file {p} cannot be read: '
                         f'{e.strerror or e}') from None
    return out
  found: dict[str, bytes] = {}
  try:
    with tarfile.open(path, 'r:*') as tar:
      for m in tar:
        base = os.path.basename(m.name)
        if m.isfile() and base in wanted and base not in found:
          found[base] = tar.extractfile(m).read()
      if len(found) < len(wanted):
        # tarfile ends quietly at a damaged header: read the compressed
        # stream to its end, where its checksum is checked
        while tar.fileobj.read(1 << 20):
          pass
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise ValueError(f'CIFAR archive {path} is truncated or corrupt '
                     f'({type(e).__name__}: {e}); download it again') from None
  missing = [f for f in wanted if f not in found]
  if missing:
    raise FileNotFoundError(f'{path} lacks CIFAR file(s) {missing}')
  return [found[f] for f in wanted]


def load(name: str, data_dir: str, split: str, label_mode: str = 'fine'
         ) -> ArrayDataset:
  """``split`` ('train' / 'test') of ``name`` ('cifar10' / 'cifar100') from
  the official archive found in ``data_dir``.

  ``label_mode``: ``'fine'`` (10 / 100 classes) or, for CIFAR-100,
  ``'coarse'`` (the 20 superclasses).
  """
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  if (name, label_mode) not in NUM_CLASSES:
    raise ValueError(f'config.dataset.label_mode={label_mode!r} is not valid '
                     f"for {name} (cifar10: 'fine'; cifar100: 'fine' or "
                     "'coarse')")
  if not data_dir:
    raise FileNotFoundError(f'config.dataset.data_dir is not set for {name}. '
                            + how_to_get(name, data_dir))
  hit = find(name, data_dir)
  if hit is None:
    raise FileNotFoundError(f'no official {name} archive in {data_dir!r}. '
                            + how_to_get(name, data_dir))
  fmt, path, is_tar = hit
  wanted = FILES[(name, fmt)][split]
  blobs = _members(path, is_tar, wanted)
  parts = []
  k = NUM_CLASSES[(name, label_mode)]
  for f, blob in zip(wanted, blobs):
    where = f'{path}:{f}' if is_tar else os.path.join(path, f)
    if fmt == 'binary':
      lb = 1 if name == 'cifar10' else 2
      part = parse_binary(blob, lb, 1 if (
          name == 'cifar100' and label_mode == 'fine') else 0, where)
    else:
      key = 'labels' if name == 'cifar10' else f'{label_mode}_labels'
      part = parse_pickle(blob, key, where)
    labels = part[1]
    if labels.min() < 0 or labels.max() >= k:
      raise ValueError(f'{where}: labels span [{labels.min()}, '
                       f'{labels.max()}], not [0, {k}) for {name} '
                       f'({label_mode} labels)')
    parts.append(part)
  return ArrayDataset(np.concatenate([p[0] for p in parts]),
                      np.concatenate([p[1] for p in parts]))
