"""Prepared tensorflow-datasets directories, read without TensorFlow.

Uses ``tfds.data_source(..., download=False)`` (array_record files), so it
never touches the network: a dataset that is not prepared in ``data_dir``
is an error that names the dataset, the directory and how to prepare it.
Small datasets (MNIST, Fashion-MNIST, CIFAR) are read whole into an
:class:`~demp_jax.data.arrays.ArrayDataset`; ImageNet stays on disk and is
decoded per batch (:mod:`demp_jax.data.imagenet`).
"""
from __future__ import annotations

import glob
import json
import os
from typing import NamedTuple, Optional

import numpy as np

from demp_jax.data.arrays import ArrayDataset
from demp_jax.errors import one_line, why_not_a_directory

# The library's split names ('train', 'test') -> the tfds split names.
SPLIT_NAMES = {'imagenet2012': {'train': 'train', 'test': 'validation'}}

# What each dataset needs beyond `tfds build` on a machine with internet.
_MANUAL = {
    'imagenet2012': (
        'imagenet2012 cannot be downloaded automatically: register at '
        'https://image-net.org/download-images, download '
        'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (~150 GB) into '
        'a directory MANUAL and add `--manual_dir=MANUAL` to the command. '),
}


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'reading a tfds data_dir needs tensorflow-datasets (TensorFlow is not '
        'needed): pip install -e ".[tfds]"') from e
  return tfds


def default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR',
                        os.path.expanduser('~/tensorflow_datasets'))


def _tfrecord_files(name: str, data_dir: str) -> list[str]:
  return glob.glob(os.path.join(data_dir, name, '**', '*.tfrecord*'),
                   recursive=True)


def prepare_hint(name: str, data_dir: Optional[str]) -> str:
  """How to make ``name`` readable from ``data_dir``, as one message.

  Covers the three usual causes: the dataset was never prepared there, it
  was prepared in the tfrecord format (which has no random access), or it
  lives elsewhere (``TFDS_DATA_DIR`` / ``config.dataset.data_dir``).
  """
  where = data_dir or default_data_dir()
  found = _tfrecord_files(name, where) if os.path.isdir(where) else []
  if found:
    version_dir = os.path.dirname(found[0])
    return (
        f'tfds dataset {name!r} in data_dir {where!r} is prepared as '
        'tfrecord files, which have no random access. Convert it once (no '
        'internet needed, TensorFlow needed): `tfds convert_format '
        f'--dataset_version_dir={version_dir} --out_file_format=array_record`'
        ' and point config.dataset.data_dir at the converted copy, or '
        're-prepare with --file_format=array_record.')
  return (
      f'tfds dataset {name!r} is not prepared (as array_record) in data_dir '
      f'{where!r} (set by config.dataset.data_dir, else $TFDS_DATA_DIR, else '
      '~/tensorflow_datasets). Prepare it once on a machine with internet '
      'access: `pip install tensorflow tensorflow-datasets` then '
      f'`tfds build {name} --data_dir={where} --file_format=array_record`. '
      + _MANUAL.get(name, '') +
      'Copy the resulting directory here; reading it needs only '
      'tensorflow-datasets, array-record and pillow (no TensorFlow). This '
      'library never downloads (download=False).')


def split_name(name: str, split: str) -> str:
  return SPLIT_NAMES.get(name, {}).get(split, split)


def data_source(name: str, data_dir: Optional[str], split: str,
                raw_images: bool = False):
  """``tfds.data_source`` with ``download=False`` and a clear error.

  ``split`` is the library's name ('train' / 'test'; mapped through
  :data:`SPLIT_NAMES`) or any tfds split string. ``raw_images=True`` skips
  the image decoding (``tfds.decode.SkipDecoding``), so records carry the
  encoded bytes; callers must handle decoded arrays too (the fallback when
  skipping is not possible, e.g. under ``tfds.testing.mock_data``).
  """
  tfds = _tfds()
  if data_dir is not None and not os.path.isdir(data_dir):
    raise FileNotFoundError(f'config.dataset.data_dir={data_dir!r} '
                            f'{why_not_a_directory(data_dir)}. ' +
                            prepare_hint(name, data_dir))
  check_info_files(name, data_dir or default_data_dir())
  kwargs = dict(split=split_name(name, split), data_dir=data_dir,
                download=False)
  try:
    src = tfds.data_source(name, **kwargs)
  except Exception as e:  # tfds raises several types for a missing dataset
    known = _split_names(tfds, name, data_dir)
    missing = [b for b in _base_splits(kwargs['split']) if b not in known]
    if known and missing:
      raise ValueError(
          f'tfds dataset {name!r} in {data_dir or default_data_dir()!r} has '
          f'no split {missing[0]!r}; it has {sorted(known)} (for tfds:NAME '
          'datasets config.dataset.train_split / test_split choose them, '
          "e.g. 'train[:90%]' and 'train[90%:]')") from None
    raise FileNotFoundError(prepare_hint(name, data_dir) +
                            f' (tfds said: {one_line(e)})') from e
  shards = check_shards(src, name, kwargs['split'])
  if raw_images:
    try:
      raw = tfds.data_source(
          name, decoders={'image': tfds.decode.SkipDecoding()}, **kwargs)
      if len(raw):
        raw[0]  # pylint: disable=pointless-statement
      return CheckedSource(raw, shards)
    except Exception:  # pylint: disable=broad-except
      pass  # decoded records; ImageNetSource accepts arrays as well
  return CheckedSource(src, shards)


def _base_splits(split: str) -> list[str]:
  """The named splits a tfds split string reads (``'train[:90%]+test'`` ->
  ``['train', 'test']``)."""
  return [part.split('[')[0].strip() for part in split.split('+')]


def _split_names(tfds, name: str, data_dir: Optional[str]) -> set[str]:
  """The splits of ``name`` prepared in ``data_dir`` (empty when it is not
  prepared there)."""
  try:
    return set(tfds.builder(name, data_dir=data_dir).info.splits)
  except Exception:  # pylint: disable=broad-except
    return set()


def check_info_files(name: str, data_dir: str) -> None:
  """Each prepared version of ``name`` in ``data_dir`` has a
  ``dataset_info.json`` that parses (tfds would call a damaged one "not
  prepared"); ``ValueError`` naming the file otherwise."""
  for version_dir in sorted(glob.glob(os.path.join(data_dir, name, '*'))):
    info = os.path.join(version_dir, 'dataset_info.json')
    if not glob.glob(os.path.join(version_dir, f'{name}-*.array_record*')):
      continue
    if not os.path.isfile(info):
      raise ValueError(f'{info} is missing: the prepared tfds dataset '
                       f'{name!r} in {version_dir} is incomplete')
    try:
      with open(info, 'rb') as f:
        json.loads(f.read().decode('utf-8'))
    except (OSError, ValueError) as e:
      raise ValueError(f'{info} is corrupt or unreadable ({e}); prepare '
                       f'{name!r} again') from None


class Shards(NamedTuple):
  """Where a split's records are: ``where`` (for messages) and its
  array_record files with their record counts (empty when unknown)."""
  where: str
  paths: tuple[str, ...] = ()
  lengths: tuple[int, ...] = ()

  def files_of(self, keys) -> list[str]:
    """The files that hold records ``keys`` (records are numbered through
    the shards in order)."""
    ends = np.cumsum(self.lengths)
    hit = {int(np.searchsorted(ends, int(k), side='right')) for k in keys}
    return [os.path.basename(self.paths[i]) for i in sorted(hit)
            if i < len(self.paths)]


def check_shards(src, name: str, split: str) -> Shards:
  """Checks that every array_record shard of ``split`` exists and holds
  the number of records ``dataset_info.json`` gives it (a cheap read of
  each file's footer: a truncated or replaced file shows up here, not
  mid-run); ``ValueError`` naming the file. A sliced or combined split
  (``'train[:90%]'``, ``'train+test'``) checks the files of the splits it
  reads; its records are then not mapped to files."""
  bases = _base_splits(split)
  try:
    infos = [src.dataset_info.splits[b] for b in bases]
    paths = tuple(os.fspath(p) for i in infos for p in i.filepaths)
    lengths = tuple(int(n) for i in infos for n in i.shard_lengths)
  except Exception:  # pylint: disable=broad-except
    return Shards(f'tfds dataset {name!r} split {split!r}')  # mock_data
  where = (f'tfds dataset {name!r} split {split!r} in '
           f'{os.path.dirname(paths[0]) if paths else "?"}')
  shards = Shards(where, paths, lengths) if bases == [split] else Shards(
      where)
  if not paths or not os.path.isdir(os.path.dirname(paths[0])):
    return shards
  try:
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  except ImportError:
    return shards
  for path, want in zip(paths, lengths):
    if not os.path.isfile(path):
      raise ValueError(f'{path} is missing: {where} lists it in '
                       f'dataset_info.json with {want} records')
    try:
      reader = array_record_module.ArrayRecordReader(path)
      have = reader.num_records()
      reader.close()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{path} is corrupt: {e}') from None
    if have != want:
      raise ValueError(f'{path} holds {have} records but dataset_info.json '
                       f'says {want}: the file is truncated or corrupt')
  return shards


class CheckedSource:
  """A tfds data source whose read errors name the split, its directory
  and the files of the records (array_record's own name none)."""

  def __init__(self, source, shards: Shards):
    self.source = source
    self.shards = shards

  @property
  def where(self) -> str:
    return self.shards.where

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, key):
    try:
      return self.source[key]
    except Exception as e:  # pylint: disable=broad-except
      raise self._error([key], e) from None

  def __getitems__(self, keys):
    getitems = getattr(self.source, '__getitems__', None)
    if getitems is None:
      return [self[k] for k in keys]
    try:
      return getitems(keys)
    except TypeError:
      raise  # an unbound __getitems__ (mock_data): read_records falls back
    except Exception as e:  # pylint: disable=broad-except
      raise self._error(keys, e) from None

  def _error(self, keys, e: Exception) -> ValueError:
    keys = [int(k) for k in keys]
    shown = keys[:4] + (['...'] if len(keys) > 4 else [])
    files = self.shards.files_of(keys)
    return ValueError(f'{self.where}: cannot read records {shown}'
                      f'{f" (in {files})" if files else ""}: '
                      f'{type(e).__name__}: {e}')


def read_records(src, keys) -> list:
  """``src[k]`` for each of ``keys``, batched through ``__getitems__`` where
  the source has a working one (array_record reads a batch in parallel;
  the data source of ``tfds.testing.mock_data`` has an unbound one)."""
  keys = [int(k) for k in keys]
  getitems = getattr(src, '__getitems__', None)
  if getitems is not None and keys:
    try:
      return list(getitems(keys))
    except TypeError:
      pass
  return [src[k] for k in keys]


def load_arrays(name: str, data_dir: Optional[str], split: str,
                label_key: str = 'label') -> ArrayDataset:
  """All of ``split`` as uint8 images ``[N, H, W, C]`` and int32 labels
  (``label_key``: e.g. ``'coarse_label'`` for CIFAR-100's 20 classes)."""
  src = data_source(name, data_dir, split)
  n = len(src)
  if n == 0:
    raise ValueError(f'tfds dataset {name!r} split {split!r} in '
                     f'{data_dir or default_data_dir()!r} is empty')
  records = read_records(src, range(n))
  if label_key not in records[0] or 'image' not in records[0]:
    raise ValueError(f'{src.where}: records have no image or no '
                     f'{label_key!r} feature; they have {sorted(records[0])}')
  images = [np.asarray(r['image'], np.uint8) for r in records]
  if len({im.shape for im in images}) > 1:
    raise ValueError(f'{src.where}: images of different shapes '
                     f'{sorted({im.shape for im in images})[:3]}')
  images = np.stack(images)
  if images.ndim == 3:
    images = images[..., None]
  labels = np.asarray([r[label_key] for r in records], np.int32)
  return ArrayDataset(images, labels)


def load_classification(name: str, data_dir: Optional[str], train_split: str,
                        test_split: str, label_key: str = 'label'
                        ) -> tuple[ArrayDataset, ArrayDataset, int]:
  """``(train, test, number of classes)`` of any prepared image
  classification dataset: both splits read whole (:func:`load_arrays`);
  the classes from the label feature of the dataset's info, else from the
  labels seen."""
  train = load_arrays(name, data_dir, train_split, label_key)
  test = load_arrays(name, data_dir, test_split, label_key)
  if train.example_shape != test.example_shape:
    raise ValueError(f'tfds dataset {name!r}: split {train_split!r} has '
                     f'images {train.example_shape}, split {test_split!r} '
                     f'{test.example_shape}')
  try:
    info = data_source(name, data_dir, train_split).source.dataset_info
    classes = int(info.features[label_key].num_classes)
  except Exception:  # pylint: disable=broad-except
    classes = 0  # not a ClassLabel: count the labels seen
  low = int(min(train.labels.min(), test.labels.min()))
  seen = int(max(train.labels.max(), test.labels.max())) + 1
  if low < 0 or (classes and seen > classes):
    raise ValueError(f'tfds dataset {name!r}: {label_key!r} holds labels in '
                     f'[{low}, {seen - 1}], not class indices in [0, '
                     f'{classes or seen})')
  return train, test, classes or seen
