"""Synthetic image classification data with a learnable signal, any shape.

For tests and smoke runs of the paper setups without data: CIFAR-shaped
(``32x32x3``) or ImageNet-shaped (``224x224x3``) images of any number of
classes, generated on demand from the example index, so a split of any size
costs no memory and every process of a multi-host job sees the same example
``i`` without communicating.

The generative model. Class ``k`` has a fixed template ``T_k``: a
``[g, g, C]`` grid of ``N(0, 1)`` values (``g = grid``) upsampled by nearest
neighbour to ``[H, W, C]``; the templates depend on ``seed`` only, so every
split shares them. Example ``i`` of split ``s`` draws, from a generator
seeded with ``(seed, s, i)``, its label ``y_i ~ U{0..K-1}`` and noise
``e_i ~ N(0, I_{HWC})``, and is::

    x_i = clip(round(127.5 + 48 * signal * T_{y_i} + 40 * e_i), 0, 255)  (uint8)

The Bayes classifier is (up to the clipping) linear in ``x``: nearest
template, ``argmax_k <x - 127.5, T_k> - 24 * signal * |T_k|^2``. The signal
lives at low spatial frequency, so it survives crops, flips and pooling and
a small CNN learns it in a few hundred steps; ``signal=0`` gives pure noise
(chance accuracy).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

_CENTER, _SCALE, _NOISE = 127.5, 48.0, 40.0


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
  """A split of synthetic images (see the module docstring for the model).

  Attributes:
    size: number of examples ``N``.
    image_shape: one example's ``(H, W, C)``.
    num_classes: ``K``.
    seed: seeds the class templates and, with ``split``, every example.
    split: index of the split (0 train, 1 test, ...): a different stream of
      examples over the same templates.
    signal: template contrast (1 = easy; 0 = no signal).
    grid: template resolution ``g`` (``g x g`` cells per channel).
  """
  size: int
  image_shape: tuple[int, int, int]
  num_classes: int
  seed: int = 0
  split: int = 0
  signal: float = 1.0
  grid: int = 4

  def __post_init__(self):
    shape = tuple(int(s) for s in self.image_shape)
    if len(shape) != 3 or min(shape) < 1:
      raise ValueError('config.dataset.image_shape must be (H, W, C) with '
                       f'positive entries, got {self.image_shape!r}')
    object.__setattr__(self, 'image_shape', shape)
    if int(self.num_classes) < 2:
      raise ValueError('config.dataset.num_classes must be >= 2, got '
                       f'{self.num_classes}')
    if int(self.size) < 1:
      raise ValueError(f'synthetic split size must be >= 1, got {self.size} '
                       '(config.dataset.train_size / test_size)')

  def __len__(self) -> int:
    return int(self.size)

  @property
  def example_shape(self) -> tuple[int, int, int]:
    return self.image_shape

  @functools.cached_property
  def templates(self) -> np.ndarray:
    """float32 ``[K, g, g, C]`` class templates (depend on ``seed`` only)."""
    g, c = int(self.grid), self.image_shape[2]
    rng = np.random.default_rng([int(self.seed), 7919])
    return rng.standard_normal((int(self.num_classes), g, g, c)).astype(
        np.float32)

  def upsampled(self, labels: np.ndarray) -> np.ndarray:
    """float32 ``[n, H, W, C]``: the templates of ``labels`` at full size."""
    h, w, _ = self.image_shape
    g = int(self.grid)
    rows = (np.arange(h) * g) // h
    cols = (np.arange(w) * g) // w
    return self.templates[labels][:, rows][:, :, cols]

  def _rng(self, i: int) -> np.random.Generator:
    return np.random.default_rng([int(self.seed), int(self.split), int(i)])

  def _check(self, indices) -> np.ndarray:
    idx = np.asarray(indices, np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
      raise IndexError(f'indices out of range for a split of {len(self)}')
    return idx

  def labels(self, indices: np.ndarray) -> np.ndarray:
    """int32 labels of ``indices`` (no images drawn)."""
    return np.asarray([self._rng(i).integers(int(self.num_classes))
                       for i in self._check(indices)], np.int32)

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 [n, H, W, C], int32 [n])`` for any index array (any order,
    repeats allowed); example ``i`` is always the same."""
    idx = self._check(indices)
    h, w, _ = self.image_shape
    g = int(self.grid)
    rows, cols = (np.arange(h) * g) // h, (np.arange(w) * g) // w
    scaled = (_SCALE * float(self.signal)) * self.templates
    images = np.empty((idx.size,) + self.image_shape, np.uint8)
    labels = np.empty(idx.shape, np.int32)
    for j, i in enumerate(idx):
      rng = self._rng(i)
      labels[j] = rng.integers(int(self.num_classes))
      x = rng.standard_normal(self.image_shape, np.float32)
      x *= _NOISE
      x += scaled[labels[j]][rows][:, cols]
      x += _CENTER
      np.clip(np.rint(x, out=x), 0, 255, out=x)
      images[j] = x
    return images, labels


def nearest_template(source: SyntheticSource, images: np.ndarray
                     ) -> np.ndarray:
  """The (near-)Bayes classifier of the model: ``argmax_k <x - 127.5, T_k>
  - 24 signal |T_k|^2`` over full-size templates; int32 ``[n]``."""
  k = int(source.num_classes)
  t = source.upsampled(np.arange(k)).reshape(k, -1)
  x = images.reshape(images.shape[0], -1).astype(np.float32) - _CENTER
  score = x @ t.T - 0.5 * _SCALE * float(source.signal) * np.sum(t * t, 1)
  return np.argmax(score, axis=1).astype(np.int32)
