"""IDX reading, the Fashion-MNIST loader and its errors."""
import gzip
import os

import numpy as np
import pytest

from demp_jax.data import fashion_mnist, idx, load_dataset
from demp_jax.data.arrays import (ArrayDataset, eval_batches, held_batches,
                                  train_batches)


def _write_idx(path, arr):
  header = bytes([0, 0, 0x08, arr.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in arr.shape)
  data = header + arr.astype(np.uint8).tobytes()
  with (gzip.open if path.endswith('.gz') else open)(path, 'wb') as f:
    f.write(data)


def _fake_dir(tmp_path, n_train=30, n_test=10, gz=True, sep='-'):
  rng = np.random.default_rng(0)
  ext = '.gz' if gz else ''
  for split, n in (('train', n_train), ('t10k', n_test)):
    _write_idx(str(tmp_path / f'{split}-images{sep}idx3-ubyte{ext}'),
               rng.integers(0, 256, (n, 28, 28)))
    _write_idx(str(tmp_path / f'{split}-labels{sep}idx1-ubyte{ext}'),
               rng.integers(0, 10, (n,)))
  return str(tmp_path)


@pytest.mark.parametrize('gz, sep', [(True, '-'), (False, '-'), (False, '.'),
                                     (True, '.')])
def test_reads_idx_files(tmp_path, gz, sep):
  """Gzipped or not, and spelt train-images.idx3-ubyte as some MNIST
  copies are."""
  d = _fake_dir(tmp_path, gz=gz, sep=sep)
  train = fashion_mnist.load('train', d, 'idx')
  assert train.images.shape == (30, 28, 28, 1) and train.images.dtype == np.uint8
  assert train.labels.shape == (30,) and train.labels.max() < 10
  assert len(fashion_mnist.load('test', d, 'idx')) == 10


def test_bad_files_and_missing_dirs_are_named(tmp_path):
  bad = tmp_path / 'x.gz'
  with gzip.open(bad, 'wb') as f:
    f.write(b'\x01\x02\x03\x04rest')
  with pytest.raises(ValueError, match='x.gz is not an IDX file'):
    idx.read_idx(str(bad))
  with pytest.raises(FileNotFoundError, match='does not exist.*apt-get'):
    fashion_mnist.load('train', str(tmp_path / 'nope'), 'idx')
  with pytest.raises(FileNotFoundError, match='x.gz.* is a file, not a dir'):
    fashion_mnist.load('train', str(bad), 'idx')
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match='train-images-idx3-ubyte'):
    fashion_mnist.load('train', str(tmp_path / 'empty'), 'idx')
  with pytest.raises(ValueError, match='config.dataset.name'):
    load_dataset({'name': 'imagenet1'})


def test_auto_names_both_places_when_it_finds_neither(tmp_path):
  # a fresh machine: no IDX files, no prepared tfds directory (or no tfds)
  empty = str(tmp_path / 'empty')
  os.makedirs(empty)
  with pytest.raises(FileNotFoundError) as e:
    fashion_mnist.load('train', empty)
  msg = str(e.value)
  assert f'no IDX files in {empty!r}' in msg and 'apt-get install' in msg
  assert 'tfds' in msg and '\n' not in msg


def test_batches_are_deterministic_resumable_and_sharded():
  ds = ArrayDataset(np.arange(20 * 4, dtype=np.uint8).reshape(20, 2, 2, 1),
                    np.arange(20, dtype=np.int32))
  it = train_batches(ds, 4, seed=3)
  first = [next(it)[1] for _ in range(12)]
  resumed = train_batches(ds, 4, seed=3, start_step=7)
  for t in range(7, 12):
    np.testing.assert_array_equal(next(resumed)[1], first[t])
  # an epoch (5 batches) sees every example once
  assert sorted(np.concatenate(first[:5]).tolist()) == list(range(20))
  # two processes split each global batch
  a = next(train_batches(ds, 4, seed=3, process_index=0, process_count=2))[1]
  b = next(train_batches(ds, 4, seed=3, process_index=1, process_count=2))[1]
  np.testing.assert_array_equal(np.concatenate([a, b]), first[0])
  images, labels = held_batches(ds, 3, 4, seed=0)
  assert images.shape == (3, 4, 2, 2, 1) and len(set(labels.ravel())) == 12
  got = [(l, v) for _, l, v in eval_batches(ds, 8)]
  assert [len(l) for l, _ in got] == [8, 8, 8]
  assert sum(int(v.sum()) for _, v in got) == 20


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEBIAN_DIR),
                    reason='Debian package dataset-fashion-mnist not installed')
def test_real_fashion_mnist():
  s = load_dataset({'name': 'fashion_mnist'})
  assert s.train.images.shape == (60000, 28, 28, 1)
  assert s.test.images.shape == (10000, 28, 28, 1)
  np.testing.assert_allclose(s.train.images.mean() / 255, 0.2860, atol=1e-3)
  assert np.bincount(s.test.labels).tolist() == [1000] * 10


def _damage(path, fn):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(fn(data))


def _flip_middle(data: bytes) -> bytes:
  mid = len(data) // 2
  return data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 8]) + data[
      mid + 8:]


@pytest.mark.parametrize('damage,expected', [
    (lambda d: d[:len(d) // 2], 'is truncated: its gzip stream ends early'),
    (_flip_middle, 'is corrupt: not a valid gzip stream'),
    (lambda d: b'PK\x03\x04' + d[4:], 'is corrupt: not a valid gzip stream'),
])
def test_a_damaged_gzip_file_is_named(tmp_path, damage, expected):
  d = _fake_dir(tmp_path)
  path = str(tmp_path / 'train-images-idx3-ubyte.gz')
  _damage(path, damage)
  with pytest.raises(ValueError) as e:
    fashion_mnist.load('train', d, 'idx')
  assert str(e.value).startswith(f'{path} {expected}')
  assert '\n' not in str(e.value)


def test_idx_headers_against_sizes_are_named(tmp_path):
  d = _fake_dir(tmp_path, gz=False)
  images = str(tmp_path / 'train-images-idx3-ubyte')
  _damage(images, lambda b: b[:-28])  # one row short
  with pytest.raises(ValueError, match=f'{images}: header says shape '
                     r'\[30, 28, 28\] \(23520 bytes\) but the file holds '
                     '23492'):
    fashion_mnist.load('train', d, 'idx')
  _damage(images, lambda b: b[:10])  # cut inside the header
  with pytest.raises(ValueError, match=f'{images}: the header of a '
                     '3-dimensional IDX file needs 16 bytes, the file holds '
                     '10'):
    fashion_mnist.load('train', d, 'idx')
  os.remove(images)
  os.makedirs(images)  # not a file
  with pytest.raises(ValueError, match=f'{images} cannot be read'):
    idx.read_idx(images)


def test_images_against_labels_are_named(tmp_path):
  d = _fake_dir(tmp_path, n_train=30)
  labels = str(tmp_path / 'train-labels-idx1-ubyte.gz')
  _write_idx(labels, np.zeros(29))
  with pytest.raises(ValueError, match='train-images-idx3-ubyte.gz holds 30 '
                     f'images but {labels} holds 29 labels'):
    fashion_mnist.load('train', d, 'idx')
  _write_idx(labels, np.full(30, 10))
  with pytest.raises(ValueError, match=f'{labels}: labels span '
                     r'\[10, 10\], not \[0, 10\)'):
    fashion_mnist.load('train', d, 'idx')
  _write_idx(labels, np.zeros((30, 2)))
  with pytest.raises(ValueError, match=f'{labels}: labels must be integers '
                     r'\[N\], the file holds uint8 \[30, 2\]'):
    fashion_mnist.load('train', d, 'idx')
