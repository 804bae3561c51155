"""tfds data_dirs read without TensorFlow, with ``tfds.testing.mock_data``
(no data on disk) and with real, empty or tfrecord-format directories."""
import os
import time

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from demp_jax.data import (NORMALIZATION, load_dataset,  # noqa: E402
                           train_batches)
from demp_jax.data import tfds_source  # noqa: E402


@pytest.mark.parametrize('name,shape,classes', [
    ('cifar10', (32, 32, 3), 10), ('cifar100', (32, 32, 3), 100),
    ('mnist', (28, 28, 1), 10), ('fashion_mnist', (28, 28, 1), 10)])
def test_mock_data_through_load_dataset(name, shape, classes):
  with tfds.testing.mock_data(num_examples=24):
    splits = load_dataset({'name': name, 'source': 'tfds', 'holdout': 4,
                           'test_subset': 10})
  assert splits.train.images.shape == (20,) + shape
  assert splits.train.images.dtype == np.uint8
  assert splits.train.labels.dtype == np.int32
  assert (len(splits.holdout), len(splits.test)) == (4, 10)
  assert splits.num_classes == classes
  assert splits.train.labels.max() < classes
  assert splits.mean == NORMALIZATION[name][0]
  x, y = next(train_batches(splits.train, 8, seed=0))
  assert x.shape == (8,) + shape and y.shape == (8,)


def test_mock_cifar100_coarse_labels():
  with tfds.testing.mock_data(num_examples=40):
    fine = load_dataset({'name': 'cifar100', 'source': 'tfds'})
    coarse = load_dataset({'name': 'cifar100', 'source': 'tfds',
                           'label_mode': 'coarse'})
  assert coarse.num_classes == 20 and coarse.train.labels.max() < 20
  assert fine.train.labels.max() >= 20  # 40 draws of 100 classes
  np.testing.assert_array_equal(fine.train.images, coarse.train.images)


def test_read_records_batches_or_falls_back():
  class Batched:
    def __init__(self):
      self.calls = []

    def __getitem__(self, k):
      return {'k': k}

    def __getitems__(self, keys):
      self.calls.append(list(keys))
      return [{'k': k} for k in keys]

  b = Batched()
  assert tfds_source.read_records(b, np.array([3, 1])) == [{'k': 3},
                                                           {'k': 1}]
  assert b.calls == [[3, 1]]
  assert tfds_source.read_records([{'k': 0}, {'k': 1}], [1]) == [{'k': 1}]


def test_missing_dataset_is_fast_and_explains(tmp_path):
  t0 = time.perf_counter()
  with pytest.raises(FileNotFoundError) as e:
    load_dataset({'name': 'cifar10', 'source': 'tfds',
                  'data_dir': str(tmp_path)})
  assert time.perf_counter() - t0 < 30  # a download attempt takes ~200 s
  msg = str(e.value)
  for part in ("'cifar10'", str(tmp_path), 'tfds build cifar10',
               '--file_format=array_record', 'download=False'):
    assert part in msg, part
  assert '\n' not in msg  # tfds's own several-line reason, cut to one
  with pytest.raises(FileNotFoundError, match='does not exist'):
    load_dataset({'name': 'mnist', 'source': 'tfds',
                  'data_dir': str(tmp_path / 'nope')})


def test_imagenet_hint_mentions_the_manual_download(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    load_dataset({'name': 'imagenet2012', 'data_dir': str(tmp_path)})
  msg = str(e.value)
  assert 'ILSVRC2012_img_train.tar' in msg and '--manual_dir' in msg
  assert 'tfds build imagenet2012' in msg


def test_tfrecord_preparation_gets_the_convert_hint(tmp_path):
  version_dir = tmp_path / 'cifar10' / '3.0.2'
  version_dir.mkdir(parents=True)
  (version_dir / 'cifar10-train.tfrecord-00000-of-00001').write_bytes(b'')
  hint = tfds_source.prepare_hint('cifar10', str(tmp_path))
  assert 'tfds convert_format' in hint and str(version_dir) in hint
  assert '--out_file_format=array_record' in hint


def test_default_data_dir_follows_the_env(monkeypatch, tmp_path):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  assert tfds_source.default_data_dir() == str(tmp_path)
  assert str(tmp_path) in tfds_source.prepare_hint('mnist', None)
  assert tfds_source.split_name('imagenet2012', 'test') == 'validation'
  assert tfds_source.split_name('cifar10', 'test') == 'test'


def test_no_import_time_work():
  """Importing the data package must not import tfds or PIL."""
  import subprocess
  import sys
  code = ('import sys, demp_jax.data, demp_jax.data.cifar, '
          'demp_jax.data.imagenet, demp_jax.data.synthetic, '
          'demp_jax.data.tfds_source; '
          "print(any(m.split('.')[0] in ('tensorflow_datasets', 'PIL', "
          "'tensorflow') for m in sys.modules))")
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True, cwd=os.path.dirname(
                           os.path.dirname(__file__)))
  assert out.stdout.strip() == 'False'


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """A real array_record ``imagenet2012`` data_dir; record 2 of the 4
  training records has bytes that are not an image."""
  from data_formats import jpeg_records, prepare_fake_imagenet  # pylint: disable=g-import-not-at-top
  train = jpeg_records(4, seed=3)
  train[2] = {'image': b'\xff\xd8 not a jpeg', 'label': 5}
  root = tmp_path_factory.mktemp('prepared')
  prepare_fake_imagenet(str(root), train, jpeg_records(2, seed=4))
  return root


def _copy(prepared, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  data = tmp_path / 'data'
  shutil.copytree(prepared, data)
  return data, data / 'imagenet2012' / '5.1.0'


def _imagenet(data):
  return load_dataset({'name': 'imagenet2012', 'data_dir': str(data),
                       'image_size': 32, 'resize_sizes': (36, 48),
                       'eval_resize': 36, 'num_threads': 2})


TRAIN = 'imagenet2012-train.array_record-00000-of-00001'


def test_damaged_info_and_missing_or_truncated_shards_are_named(prepared,
                                                                tmp_path):
  data, version = _copy(prepared, tmp_path)
  info = version / 'dataset_info.json'
  good = info.read_bytes()
  info.write_bytes(b'\xff' + good[1:])
  with pytest.raises(ValueError, match=f'{info} is corrupt or unreadable'):
    _imagenet(data)
  info.unlink()
  with pytest.raises(ValueError, match=f'{info} is missing: the prepared '
                     'tfds dataset .* is incomplete'):
    _imagenet(data)
  info.write_bytes(good)
  shard = version / TRAIN
  blob = shard.read_bytes()
  shard.write_bytes(blob[:3000])
  with pytest.raises(ValueError, match=f'{shard} (is corrupt|holds 0 '
                     'records but dataset_info.json says 4)'):
    _imagenet(data)
  shard.unlink()
  with pytest.raises(ValueError, match=f'{shard} is missing: .*split '
                     "'train'.* with 4 records"):
    _imagenet(data)


def test_read_errors_name_the_split_the_file_and_the_record(prepared,
                                                            tmp_path):
  data, version = _copy(prepared, tmp_path)
  splits = _imagenet(data)
  with pytest.raises(ValueError) as e:
    splits.train.get(np.arange(4))
  assert (f"tfds dataset 'imagenet2012' split 'train' in {version}: record "
          in str(e.value))
  assert 'cannot decode its image (UnidentifiedImageError' in str(e.value)
  shard = version / TRAIN
  blob = bytearray(shard.read_bytes())
  blob[2000:2200] = b'\xff' * 200  # inside a chunk: found when it is read
  shard.write_bytes(bytes(blob))
  splits = _imagenet(data)
  with pytest.raises(ValueError, match=r"split 'train' in .*: cannot read "
                     rf"records \[0, 1, 2, 3\] \(in \['{TRAIN}'\]\): "
                     'RuntimeError: Corrupted'):
    splits.train.get(np.arange(4))


# ------------------------------------------- any tfds dataset (tfds:NAME)


@pytest.fixture(scope='module')
def kmnist(tmp_path_factory):
  """A real array_record ``kmnist`` data_dir (48 train, 16 test images of
  28x28x1, 10 classes): the images and the directory."""
  from data_formats import png_records, prepare_tfds  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)
  images = rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 64)
  root = tmp_path_factory.mktemp('kmnist')
  prepare_tfds(str(root), 'kmnist', '3.0.1',
               {'image': tfds.features.Image(shape=(28, 28, 1)),
                'label': tfds.features.ClassLabel(num_classes=10)},
               {'train': png_records(images[:48], labels[:48]),
                'test': png_records(images[48:], labels[48:])})
  return images, str(root)


def _rows(images):
  return sorted(im.tobytes() for im in images)


def test_any_tfds_dataset_by_name(kmnist):
  images, root = kmnist
  s = load_dataset({'name': 'tfds:kmnist', 'data_dir': root, 'holdout': 8})
  assert (len(s.train), len(s.holdout), len(s.test)) == (40, 8, 16)
  assert s.num_classes == 10  # the label feature's, not the labels seen
  assert _rows(np.concatenate([s.train.images, s.holdout.images])) == _rows(
      images[:48])
  assert _rows(s.test.images) == _rows(images[48:])
  # normalised with the training images' own statistics (not all 64)
  pixels = images[:48].astype(np.float64) / 255
  np.testing.assert_allclose(s.mean, [pixels.mean()], rtol=1e-9)
  np.testing.assert_allclose(s.std, [pixels.std()], rtol=1e-9)
  given = load_dataset({'name': 'tfds:kmnist', 'data_dir': root,
                        'mean': (0.5,), 'std': (0.25,)})
  assert (given.mean, given.std) == ((0.5,), (0.25,))
  raw = load_dataset({'name': 'tfds:kmnist', 'data_dir': root,
                      'normalize': False})
  assert (raw.mean, raw.std) == ((0.0,), (1.0,))


def test_tfds_split_strings_choose_the_splits(kmnist):
  images, root = kmnist
  s = load_dataset({'name': 'tfds:kmnist', 'data_dir': root,
                    'train_split': 'train[:75%]', 'test_split': 'train[75%:]'})
  assert (len(s.train), len(s.test)) == (36, 12)
  assert _rows(np.concatenate([s.train.images, s.test.images])) == _rows(
      images[:48])
  with pytest.raises(ValueError, match=r"has no split 'validation'; it has "
                     r"\['test', 'train'\].*test_split"):
    load_dataset({'name': 'tfds:kmnist', 'data_dir': root,
                  'test_split': 'validation'})
  with pytest.raises(ValueError, match="no 'digit' feature; they have "
                     r"\['image', 'label'\]"):
    load_dataset({'name': 'tfds:kmnist', 'data_dir': root,
                  'label_key': 'digit'})


def test_tfds_names_are_checked_before_any_file_is_read(tmp_path):
  from demp_jax.training import validate  # pylint: disable=g-import-not-at-top
  from configs import fashion_mnist_demp  # pylint: disable=g-import-not-at-top
  config = fashion_mnist_demp.get_config('tiny')
  config.dataset.name = 'tfds:kmnist'
  config.dataset.test_split = 'train[90%:]'
  validate.validate_config(config)
  for name, words in (('kmnist', 'tfds:NAME'), ('tfds:', 'tfds:NAME'),
                      ('fashion_mnist', r"test_split='train\[90%:\]' "
                       "applies to tfds:NAME datasets only")):
    config.dataset.name = name
    with pytest.raises(validate.ConfigError, match=words):
      validate.validate_config(config)
  with pytest.raises(ValueError, match=r"unknown key\(s\) \['image_size'\] "
                     "for dataset 'tfds:kmnist'"):
    load_dataset({'name': 'tfds:kmnist', 'image_size': 32})
  with pytest.raises(FileNotFoundError, match='tfds build svhn_cropped'):
    load_dataset({'name': 'tfds:svhn_cropped', 'data_dir': str(tmp_path)})


def test_tfds_classes_come_from_the_dataset_info():
  with tfds.testing.mock_data(num_examples=24):
    s = load_dataset({'name': 'tfds:emnist/letters'})
  assert s.num_classes == 37 and s.train.images.shape == (24, 28, 28, 1)
