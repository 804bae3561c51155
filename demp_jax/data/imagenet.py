"""ImageNet as a streaming source: JPEG records in, fixed-size uint8 out.

:class:`ImageNetSource` wraps any random-access sequence of records
``{'image': JPEG bytes or uint8 [h, w, 3], 'label': int}`` (a tfds
``imagenet2012`` data source, or a list in tests) and implements the
:class:`demp_jax.data.arrays.Source` protocol: ``get(indices)`` decodes the
requested images in a thread pool (PIL releases the GIL while it decodes
and resamples) and returns ``uint8 [n, S, S, 3]`` with ``S = image_size``.
Each process of a multi-host job calls ``get`` on its own slice of every
global batch, so it decodes only its own images.

Two preprocessings (``crop=``):

``'reference'`` (default; the DemP authors' pipeline, read from their
``resize_tf_dataset`` / ``augment_train_imagenet_dataset`` /
``process_test_imagenet_dataset``):

* train: resize the whole image to a square ``R x R`` (aspect ratio not
  kept), ``R = 256`` or ``480`` with probability 1/2 each, take a uniformly
  random ``224 x 224`` crop and flip it left-right with probability 1/2;
* eval: resize to ``256 x 256`` and take the central ``224 x 224``.

``'inception'`` (the standard random-resized-crop):

* train: a crop of area ``U(0.08, 1)`` of the image and aspect ratio
  ``exp(U(log 3/4, log 4/3))`` (10 tries, then the central square), resized
  to ``224 x 224``, flipped with probability 1/2;
* eval: resize the shorter side to 256 (aspect kept), central ``224``.

Resize-then-crop is computed as one resampling of the crop's preimage box
(``PIL.Image.resize(..., box=...)``, bilinear with PIL's antialiasing
support), which gives the same pixels as resizing the whole image first but
costs only the output size; with ``draft=True`` JPEGs are decoded at the
smallest power-of-two reduction that is still at least the resize target
(``PIL.Image.draft``), the usual fast path.

Randomness is host-side and reproducible: the crop, scale and flip of
example ``i`` at training step ``t`` come from
``np.random.default_rng([seed, t, i])``, so they do not depend on how the
batch is split over processes or threads. :func:`demp_jax.data.train_batches`
passes ``t`` through :meth:`ImageNetSource.get_at_step`; a bare ``get``
uses a per-source call counter instead.
"""
from __future__ import annotations

import concurrent.futures
import io
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from demp_jax.data.tfds_source import read_records

CROPS = ('reference', 'inception')


def _pil():
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('decoding ImageNet JPEGs needs pillow: '
                      'pip install pillow') from e
  return Image


def open_image(image: Any, draft_to: Optional[tuple[int, int]] = None):
  """A PIL RGB image from JPEG/PNG bytes or a uint8 ``[h, w(, c)]`` array.

  ``draft_to=(w, h)`` lets the JPEG decoder scale down by a power of two
  while keeping both sides at least ``w`` and ``h``.
  """
  img = _lazy_open(image)
  if draft_to is not None:
    _draft(img, draft_to)
  return _rgb(img)


def _lazy_open(image: Any):
  """Opens without decoding (``.size`` is known, pixels are not read)."""
  pil = _pil()
  if isinstance(image, np.ndarray):
    arr = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    return pil.fromarray(np.ascontiguousarray(arr.astype(np.uint8,
                                                          copy=False)))
  return pil.open(io.BytesIO(bytes(image)))


def _draft(img, size: tuple[float, float]) -> None:
  if getattr(img, 'format', None) == 'JPEG':
    img.draft('RGB', (max(1, math.ceil(size[0])), max(1, math.ceil(size[1]))))


def _rgb(img):
  return img.convert('RGB') if img.mode != 'RGB' else img


def _resample(img, box, size: int, flip: bool) -> np.ndarray:
  pil = _pil()
  out = img.resize((size, size), pil.Resampling.BILINEAR, box=box)
  if flip:
    out = out.transpose(pil.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(out, np.uint8)


def reference_train_params(rng: np.random.Generator, image_size: int = 224,
                           resize_sizes: Sequence[int] = (256, 480)
                           ) -> tuple[int, int, int, bool]:
  """``(R, top, left, flip)``: square size ``R`` drawn uniformly from
  ``resize_sizes``, the crop's corner uniform in ``[0, R - image_size]``."""
  r = int(resize_sizes[int(rng.integers(len(resize_sizes)))])
  if r < image_size:
    raise ValueError(f'resize size {r} is smaller than the crop {image_size}')
  top = int(rng.integers(r - image_size + 1))
  left = int(rng.integers(r - image_size + 1))
  return r, top, left, bool(rng.integers(2))


def reference_train(image: Any, rng: np.random.Generator,
                    image_size: int = 224,
                    resize_sizes: Sequence[int] = (256, 480),
                    draft: bool = True) -> np.ndarray:
  """The reference's train preprocessing; uint8 ``[S, S, 3]``.

  With source size ``(h, w)`` and drawn ``(R, top, left)`` the output pixel
  grid is the ``S x S`` window at ``(top, left)`` of the image resized to
  ``R x R``, i.e. the source box ``[left w/R, (left+S) w/R] x
  [top h/R, (top+S) h/R]`` resampled to ``S x S``.
  """
  r, top, left, flip = reference_train_params(rng, image_size, resize_sizes)
  img = open_image(image, (r, r) if draft else None)
  w, h = img.size
  box = (left * w / r, top * h / r, (left + image_size) * w / r,
         (top + image_size) * h / r)
  return _resample(img, box, image_size, flip)


def reference_eval(image: Any, image_size: int = 224, resize_size: int = 256,
                   draft: bool = True) -> np.ndarray:
  """Resize to ``resize_size`` squared, central ``image_size`` crop; uint8
  ``[S, S, 3]``."""
  img = open_image(image, (resize_size, resize_size) if draft else None)
  w, h = img.size
  off = (resize_size - image_size) / 2
  box = (off * w / resize_size, off * h / resize_size,
         (off + image_size) * w / resize_size,
         (off + image_size) * h / resize_size)
  return _resample(img, box, image_size, False)


def inception_crop_box(rng: np.random.Generator, w: int, h: int,
                       scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), tries: int = 10
                       ) -> tuple[float, float, float, float]:
  """A random-resized-crop box ``(x0, y0, x1, y1)`` in source pixels: area
  fraction ``U(scale)``, aspect ``exp(U(log ratio))``; after ``tries`` misses
  the central square of the shorter side."""
  area = w * h
  for _ in range(tries):
    a = area * rng.uniform(*scale)
    ar = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw, ch = math.sqrt(a * ar), math.sqrt(a / ar)
    if cw <= w and ch <= h:
      x0 = rng.uniform(0, w - cw)
      y0 = rng.uniform(0, h - ch)
      return (x0, y0, x0 + cw, y0 + ch)
  s = min(w, h)
  return ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)


def inception_train(image: Any, rng: np.random.Generator,
                    image_size: int = 224, draft: bool = True) -> np.ndarray:
  """Random-resized-crop to ``S x S`` and a random flip; uint8."""
  img = _lazy_open(image)
  w, h = img.size
  x0, y0, x1, y1 = inception_crop_box(rng, w, h)
  flip = bool(rng.integers(2))
  if draft:  # keep the crop at least S x S after the reduction
    _draft(img, (w * image_size / (x1 - x0), h * image_size / (y1 - y0)))
  fx, fy = img.size[0] / w, img.size[1] / h
  return _resample(_rgb(img), (x0 * fx, y0 * fy, x1 * fx, y1 * fy),
                   image_size, flip)


def inception_eval(image: Any, image_size: int = 224, resize_size: int = 256,
                   draft: bool = True) -> np.ndarray:
  """Shorter side to ``resize_size`` (aspect kept), central ``S x S``."""
  img = _lazy_open(image)
  w, h = img.size
  short = min(w, h)
  if draft:
    _draft(img, (resize_size * w / short, resize_size * h / short))
  img = _rgb(img)
  w, h = img.size
  side = image_size * min(w, h) / resize_size
  box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
  return _resample(img, box, image_size, False)


class ImageNetSource:
  """A :class:`~demp_jax.data.arrays.Source` over ImageNet-style records.

  Args:
    records: random-access records ``{'image': bytes | uint8 array,
      'label': int}`` with ``__len__`` and ``__getitem__`` (and optionally
      ``__getitems__`` for batched reads, as tfds data sources have).
    train: random crop and flip (True) or the deterministic eval crop.
    image_size: output side ``S`` (224).
    resize_sizes: the reference's train square sizes (256, 480).
    eval_resize: the eval resize (256).
    crop: ``'reference'`` or ``'inception'`` (module docstring).
    seed: host-side augmentation seed.
    num_threads: decoding threads (0: ``os.cpu_count()``, capped at 32).
    draft: decode JPEGs at reduced size where that loses nothing needed.
  """

  def __init__(self, records: Any, train: bool, image_size: int = 224,
               resize_sizes: Sequence[int] = (256, 480),
               eval_resize: int = 256, crop: str = 'reference',
               seed: int = 0, num_threads: int = 0, draft: bool = True):
    if crop not in CROPS:
      raise ValueError(f'config.dataset.crop={crop!r} is unknown; known: '
                       f'{list(CROPS)}')
    if int(eval_resize) < int(image_size):
      raise ValueError(f'config.dataset.eval_resize={eval_resize} is smaller '
                       f'than config.dataset.image_size={image_size}')
    self.records = records
    self.train = bool(train)
    self.image_size = int(image_size)
    self.resize_sizes = tuple(int(r) for r in resize_sizes)
    if min(self.resize_sizes) < self.image_size:
      raise ValueError(f'config.dataset.resize_sizes={self.resize_sizes} must '
                       f'all be >= config.dataset.image_size={image_size}')
    self.eval_resize = int(eval_resize)
    self.crop = crop
    self.seed = int(seed)
    self.num_threads = int(num_threads) or min(32, os.cpu_count() or 1)
    self.draft = bool(draft)
    self._calls = 0
    self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None

  def __len__(self) -> int:
    return len(self.records)

  @property
  def example_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, 3)

  def eval_view(self) -> 'ImageNetSource':
    """The same records with the eval preprocessing (for death checks on
    the training split, as the reference does)."""
    return ImageNetSource(self.records, False, self.image_size,
                          self.resize_sizes, self.eval_resize, self.crop,
                          self.seed, self.num_threads, self.draft)

  def transform(self, image: Any, index: int, step: int) -> np.ndarray:
    """One example's uint8 ``[S, S, 3]``; the randomness is a function of
    ``(seed, step, index)`` only."""
    s = self.image_size
    if not self.train:
      fn = reference_eval if self.crop == 'reference' else inception_eval
      return fn(image, s, self.eval_resize, self.draft)
    rng = np.random.default_rng([self.seed, int(step), int(index)])
    if self.crop == 'reference':
      return reference_train(image, rng, s, self.resize_sizes, self.draft)
    return inception_train(image, rng, s, self.draft)

  def get_at_step(self, indices: np.ndarray, step: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 [n, S, S, 3], int32 [n])`` for ``indices`` as drawn for
    training step ``step`` (which seeds the random crops)."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    records = read_records(self.records, idx)
    labels = np.asarray([int(r['label']) for r in records], np.int32)
    out = np.empty((idx.size,) + self.example_shape, np.uint8)

    def work(j):
      try:
        out[j] = self.transform(records[j]['image'], idx[j], step)
      except Exception as e:  # pylint: disable=broad-except
        where = getattr(self.records, 'where', 'ImageNet records')
        raise ValueError(f'{where}: record {idx[j]}: cannot decode its image '
                         f'({type(e).__name__}: {e})') from None

    if idx.size <= 1 or self.num_threads <= 1:
      for j in range(idx.size):
        work(j)
    else:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.num_threads, thread_name_prefix='imagenet-decode')
      list(self._pool.map(work, range(idx.size)))  # re-raises errors
    return out, labels

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """As :meth:`get_at_step` with a per-source call counter as the step."""
    self._calls += 1
    return self.get_at_step(indices, self._calls - 1)

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=True)
      self._pool = None
