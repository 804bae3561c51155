"""CIFAR-10/100 from the official archive formats (synthetic files)."""
import os
import pickle

import numpy as np
import pytest

from data_formats import random_cifar, write_cifar
from demp_jax.data import NORMALIZATION, load_dataset
from demp_jax.data import cifar


@pytest.mark.parametrize('fmt', ['binary', 'python'])
@pytest.mark.parametrize('as_tar', [False, True])
def test_cifar10_round_trip(tmp_path, fmt, as_tar):
  exp = write_cifar(str(tmp_path), 'cifar10', fmt, n_per_file=4,
                    as_tar=as_tar, seed=1)
  for split in ('train', 'test'):
    ds = cifar.load('cifar10', str(tmp_path), split)
    images, fine, _ = exp[split]
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
    assert ds.images.shape == (len(fine), 32, 32, 3)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, fine)
  assert len(cifar.load('cifar10', str(tmp_path), 'train')) == 5 * 4


def test_chw_bytes_become_nhwc(tmp_path):
  """One record by hand: byte 1 + c*1024 + y*32 + x is pixel (y, x, c)."""
  d = tmp_path / 'cifar-10-batches-bin'
  d.mkdir()
  chw = np.arange(3 * 32 * 32, dtype=np.int64).reshape(3, 32, 32) % 251
  rec = bytes([7]) + chw.astype(np.uint8).tobytes()
  for i in range(1, 6):
    (d / f'data_batch_{i}.bin').write_bytes(rec)
  (d / 'test_batch.bin').write_bytes(rec)
  ds = cifar.load('cifar10', str(tmp_path), 'test')
  assert ds.labels.tolist() == [7]
  assert ds.images[0, 3, 5, 2] == chw[2, 3, 5]
  assert ds.images[0, 31, 0, 1] == chw[1, 31, 0]
  np.testing.assert_array_equal(ds.images[0], chw.transpose(1, 2, 0))


@pytest.mark.parametrize('fmt', ['binary', 'python'])
@pytest.mark.parametrize('label_mode', ['fine', 'coarse'])
def test_cifar100_labels(tmp_path, fmt, label_mode):
  exp = write_cifar(str(tmp_path), 'cifar100', fmt, n_per_file=9,
                    as_tar=(fmt == 'python'), seed=2)
  ds = cifar.load('cifar100', str(tmp_path), 'train', label_mode)
  images, fine, coarse = exp['train']
  np.testing.assert_array_equal(ds.images, images)
  np.testing.assert_array_equal(ds.labels,
                                fine if label_mode == 'fine' else coarse)


def test_load_dataset_archive_splits(tmp_path):
  exp = write_cifar(str(tmp_path), 'cifar100', 'binary', n_per_file=12)
  splits = load_dataset({'name': 'cifar100', 'source': 'archive',
                         'data_dir': str(tmp_path), 'label_mode': 'coarse',
                         'holdout': 2, 'augment': 'crop_flip'})
  assert splits.num_classes == 20
  assert (len(splits.train), len(splits.holdout), len(splits.test)) == (
      10, 2, 12)
  np.testing.assert_array_equal(splits.holdout.images, exp['train'][0][10:])
  assert splits.mean == NORMALIZATION['cifar100'][0]
  assert splits.augment == 'crop_flip' and splits.train_eval is None
  # 'auto' finds the archive as well, and [0, 1] inputs on request.
  s2 = load_dataset({'name': 'cifar100', 'data_dir': str(tmp_path),
                     'normalize': False})
  assert s2.num_classes == 100
  assert s2.mean == (0.0,) * 3 and s2.std == (1.0,) * 3


def test_data_dir_may_be_the_archive_or_the_extracted_dir(tmp_path):
  exp = write_cifar(str(tmp_path), 'cifar10', 'binary', n_per_file=3,
                    as_tar=True)
  ds = cifar.load('cifar10', exp['path'], 'test')
  np.testing.assert_array_equal(ds.images, exp['test'][0])
  exp = write_cifar(str(tmp_path / 'x'), 'cifar10', 'python', n_per_file=3)
  ds = cifar.load('cifar10', exp['path'], 'test')
  np.testing.assert_array_equal(ds.labels, exp['test'][1])


def test_binary_is_preferred_to_pickles(tmp_path):
  binary = write_cifar(str(tmp_path), 'cifar10', 'binary', n_per_file=2,
                       seed=3)
  write_cifar(str(tmp_path), 'cifar10', 'python', n_per_file=5, seed=4)
  assert cifar.find('cifar10', str(tmp_path))[0] == 'binary'
  ds = cifar.load('cifar10', str(tmp_path), 'test')
  np.testing.assert_array_equal(ds.images, binary['test'][0])


def test_truncated_binary_names_the_file(tmp_path):
  exp = write_cifar(str(tmp_path), 'cifar10', 'binary', n_per_file=2)
  path = os.path.join(exp['path'], 'test_batch.bin')
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:-5])
  with pytest.raises(ValueError, match='test_batch.bin.*3073-byte'):
    cifar.load('cifar10', str(tmp_path), 'test')


def test_missing_file_in_archive(tmp_path):
  exp = write_cifar(str(tmp_path), 'cifar10', 'binary', n_per_file=2)
  os.remove(os.path.join(exp['path'], 'data_batch_3.bin'))
  with pytest.raises(FileNotFoundError, match='data_batch_3.bin'):
    cifar.load('cifar10', str(tmp_path), 'train')


class _Evil:
  def __reduce__(self):
    return (os.system, ('touch PWNED',))


def test_pickles_cannot_run_code(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  d = tmp_path / 'cifar-10-batches-py'
  d.mkdir()
  images, fine, _ = random_cifar(2, 0)
  good = {b'data': images.transpose(0, 3, 1, 2).reshape(2, -1),
          b'labels': fine.tolist()}
  for i in range(1, 6):
    (d / f'data_batch_{i}').write_bytes(pickle.dumps(good, protocol=2))
  (d / 'test_batch').write_bytes(pickle.dumps({b'data': _Evil()}))
  assert len(cifar.load('cifar10', str(tmp_path), 'train')) == 10
  with pytest.raises(ValueError, match='not allowed'):
    cifar.load('cifar10', str(tmp_path), 'test')
  assert not (tmp_path / 'PWNED').exists()


def test_bad_labels_and_modes(tmp_path):
  with pytest.raises(ValueError, match='label_mode'):
    cifar.load('cifar10', str(tmp_path), 'train', 'coarse')
  d = tmp_path / 'cifar-10-batches-bin'
  d.mkdir()
  rec = bytes([12]) + bytes(3072)  # label 12 of 10 classes
  for f in [f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin']:
    (d / f).write_bytes(rec)
  with pytest.raises(ValueError, match=r'not \[0, 10\)'):
    cifar.load('cifar10', str(tmp_path), 'test')


def test_nothing_there_says_how_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    load_dataset({'name': 'cifar10', 'source': 'archive',
                  'data_dir': str(tmp_path)})
  msg = str(e.value)
  assert 'cifar-10-binary.tar.gz' in msg and str(tmp_path) in msg
  assert 'config.dataset.data_dir' in msg
  with pytest.raises(FileNotFoundError, match='data_dir is not set'):
    load_dataset({'name': 'cifar10', 'source': 'archive'})
  with pytest.raises(ValueError, match="source='idx'"):
    load_dataset({'name': 'cifar10', 'source': 'idx'})


@pytest.mark.parametrize('damage', ['truncate', 'overwrite'])
def test_a_damaged_archive_is_named(tmp_path, damage):
  exp = write_cifar(str(tmp_path), 'cifar10', 'binary', n_per_file=40,
                    as_tar=True)
  path = exp['path']
  with open(path, 'rb') as f:
    data = f.read()
  mid = len(data) // 2
  data = (data[:mid] if damage == 'truncate' else
          data[:mid] + b'\xff' * 64 + data[mid + 64:])
  with open(path, 'wb') as f:
    f.write(data)
  with pytest.raises(ValueError) as e:
    cifar.load('cifar10', str(tmp_path), 'train')
  assert str(e.value).startswith(f'CIFAR archive {path} is truncated or '
                                 'corrupt (')


def test_a_python_batch_with_fewer_labels_than_images(tmp_path):
  d = tmp_path / 'cifar-10-batches-py'
  d.mkdir()
  images, fine, _ = random_cifar(3, 0)
  batch = {b'data': images.transpose(0, 3, 1, 2).reshape(3, -1),
           b'labels': fine.tolist()[:2]}
  (d / 'test_batch').write_bytes(pickle.dumps(batch, protocol=2))
  with pytest.raises(ValueError, match=f'{d / "test_batch"}: data '
                     r'\(3, 3072\) / labels \(2,\)'):
    cifar.load('cifar10', str(tmp_path), 'test')
  (d / 'test_batch').write_bytes(b'\x80\x02garbage')
  with pytest.raises(ValueError, match=f'{d / "test_batch"} is not a CIFAR '
                     'python batch'):
    cifar.load('cifar10', str(tmp_path), 'test')


def test_out_of_range_labels_name_their_file(tmp_path):
  exp = write_cifar(str(tmp_path), 'cifar10', 'binary', n_per_file=2)
  path = os.path.join(exp['path'], 'data_batch_4.bin')
  with open(path, 'r+b') as f:
    f.write(bytes([10]))  # the first record's label
  with pytest.raises(ValueError, match=f'{path}: labels span '
                     r'\[\d+, 10\], not \[0, 10\)'):
    cifar.load('cifar10', str(tmp_path), 'train')
