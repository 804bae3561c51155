"""Writers of small synthetic files in the official dataset formats (tests).

* CIFAR-10 / CIFAR-100, binary and python (pickle) versions, as extracted
  directories or ``.tar.gz`` archives, laid out as the originals;
* JPEG bytes of random-size images;
* a prepared tfds ``imagenet2012`` data_dir (array_record) written without
  TensorFlow: a builder with the real features (JPEG image, 1000-class label,
  file name) under the real name and version, fed already-encoded JPEGs.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np

CIFAR_DIRS = {
    ('cifar10', 'binary'): 'cifar-10-batches-bin',
    ('cifar10', 'python'): 'cifar-10-batches-py',
    ('cifar100', 'binary'): 'cifar-100-binary',
    ('cifar100', 'python'): 'cifar-100-python',
}
CIFAR_TARS = {
    ('cifar10', 'binary'): 'cifar-10-binary.tar.gz',
    ('cifar10', 'python'): 'cifar-10-python.tar.gz',
    ('cifar100', 'binary'): 'cifar-100-binary.tar.gz',
    ('cifar100', 'python'): 'cifar-100-python.tar.gz',
}


def random_cifar(n: int, seed: int, num_fine: int = 10):
  """``(images uint8 [n, 32, 32, 3], fine int [n], coarse int [n])``.

  Channel c of every image is offset so that the channel order is
  checkable: mean(R) < mean(G) < mean(B).
  """
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 80, (n, 32, 32, 3)).astype(np.uint8)
  images += np.array([0, 85, 170], np.uint8)
  fine = rng.integers(0, num_fine, n)
  return images, fine, fine % 20


def _chw_rows(images: np.ndarray) -> np.ndarray:
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _binary_bytes(name, images, fine, coarse) -> bytes:
  rows = _chw_rows(images)
  if name == 'cifar10':
    recs = np.concatenate([fine[:, None].astype(np.uint8), rows], 1)
  else:
    recs = np.concatenate([coarse[:, None].astype(np.uint8),
                           fine[:, None].astype(np.uint8), rows], 1)
  return recs.astype(np.uint8).tobytes()


def _pickle_bytes(name, images, fine, coarse) -> bytes:
  d = {b'batch_label': b'synthetic batch', b'data': _chw_rows(images),
       b'filenames': [b'img_%d.png' % i for i in range(len(images))]}
  if name == 'cifar10':
    d[b'labels'] = [int(v) for v in fine]
  else:
    d[b'fine_labels'] = [int(v) for v in fine]
    d[b'coarse_labels'] = [int(v) for v in coarse]
  return pickle.dumps(d, protocol=2)


def write_cifar(root: str, name: str, fmt: str, n_per_file: int = 6,
                as_tar: bool = False, seed: int = 0) -> dict:
  """Writes ``name`` ('cifar10'/'cifar100') in format ``fmt``
  ('binary'/'python') under ``root``; returns the expected arrays
  ``{'train': (images, fine, coarse), 'test': (...)}`` and the ``path``
  written (directory or archive)."""
  num_fine = 10 if name == 'cifar10' else 100
  if name == 'cifar10':
    ext = '.bin' if fmt == 'binary' else ''
    files = {'train': [f'data_batch_{i}{ext}' for i in range(1, 6)],
             'test': [f'test_batch{ext}']}
  else:
    ext = '.bin' if fmt == 'binary' else ''
    files = {'train': [f'train{ext}'], 'test': [f'test{ext}']}
  encode = _binary_bytes if fmt == 'binary' else _pickle_bytes
  blobs, expected = {}, {}
  k = 0
  for split, names in files.items():
    parts = []
    for f in names:
      arrays = random_cifar(n_per_file, seed * 1000 + k, num_fine)
      k += 1
      blobs[f] = encode(name, *arrays)
      parts.append(arrays)
    expected[split] = tuple(np.concatenate([p[i] for p in parts])
                            for i in range(3))
  dirname = CIFAR_DIRS[(name, fmt)]
  extra = {'batches.meta.txt' if name == 'cifar10' else 'coarse_label_names'
           '.txt': b'synthetic\n'}
  os.makedirs(root, exist_ok=True)
  if as_tar:
    path = os.path.join(root, CIFAR_TARS[(name, fmt)])
    with tarfile.open(path, 'w:gz') as tar:
      for f, blob in {**blobs, **extra}.items():
        info = tarfile.TarInfo(f'{dirname}/{f}')
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
  else:
    path = os.path.join(root, dirname)
    os.makedirs(path, exist_ok=True)
    for f, blob in {**blobs, **extra}.items():
      with open(os.path.join(path, f), 'wb') as fh:
        fh.write(blob)
  expected['path'] = path
  return expected


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
  """A smooth RGB uint8 image (JPEG-friendly, so resamplings are
  comparable)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  f = rng.uniform(5, 30, (3, 2))
  img = np.stack([128 + 100 * np.sin(xx / f[c, 0] + c) *
                  np.cos(yy / f[c, 1] - c) for c in range(3)], -1)
  return np.clip(img, 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int = 95, mode: str = 'RGB'
               ) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.fromarray(image)
  if mode != 'RGB':
    img = img.convert(mode)
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def png_records(images: np.ndarray, labels: np.ndarray) -> list:
  """``[{'image': PNG bytes, 'label': int}]`` of uint8 ``images [N, H, W,
  C]`` (lossless: they decode to ``images``)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = []
  for image, label in zip(images, labels):
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
        buf, format='PNG')
    out.append({'image': buf.getvalue(), 'label': int(label)})
  return out


def jpeg_records(n: int, seed: int = 0, min_side: int = 40,
                 max_side: int = 120, num_classes: int = 1000) -> list:
  """``[{'image': JPEG bytes, 'label': int}]`` of random sizes."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    h, w = rng.integers(min_side, max_side + 1, 2)
    out.append({'image': jpeg_bytes(smooth_image(int(h), int(w), seed + i)),
                'label': int(rng.integers(num_classes))})
  return out


def prepare_tfds(data_dir: str, name: str, version: str, features: dict,
                 splits: dict[str, list]) -> str:
  """Writes a prepared tfds directory ``data_dir/name/version`` (the
  array_record format) with ``features`` (a ``tfds.features`` dict) and
  the records of each split, without TensorFlow or the network; returns
  the version directory. ``tfds.data_source(name, data_dir=data_dir,
  download=False)`` then reads it as the real dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class Fake(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(version)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {k: self._generate_examples(v) for k, v in splits.items()}

    def _generate_examples(self, records):
      yield from enumerate(records)

  Fake.name = name
  builder = Fake(data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False))
  return os.path.join(data_dir, name, version)


def prepare_fake_imagenet(data_dir: str, train: list, validation: list
                          ) -> str:
  """A prepared ``imagenet2012`` (version 5.1.0) from
  ``jpeg_records``-style lists (:func:`prepare_tfds`)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  named = lambda records: [dict(r, file_name=f'n{i:08d}.JPEG')
                           for i, r in enumerate(records)]
  return prepare_tfds(
      data_dir, 'imagenet2012', '5.1.0',
      {'image': tfds.features.Image(encoding_format='jpeg'),
       'label': tfds.features.ClassLabel(num_classes=1000),
       'file_name': tfds.features.Text()},
      {'train': named(train), 'validation': named(validation)})
