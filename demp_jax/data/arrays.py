"""In-memory image classification datasets and their batch iterators."""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """``images``: uint8 ``[N, H, W, C]``; ``labels``: int32 ``[N]``."""
  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.images.ndim != 4:
      raise ValueError(f'images must be [N, H, W, C], got {self.images.shape}')
    if self.labels.shape != (self.images.shape[0],):
      raise ValueError(f'labels shape {self.labels.shape} does not match '
                       f'{self.images.shape[0]} images')

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  @property
  def example_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def take(self, n: int) -> 'ArrayDataset':
    return ArrayDataset(self.images[:n], self.labels[:n])


def epoch_batches(ds: ArrayDataset, batch_size: int, seed: int,
                  epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """One shuffled pass, dropping the last partial batch."""
  if batch_size > len(ds):
    raise ValueError(f'batch_size {batch_size} is larger than the dataset '
                     f'({len(ds)} examples)')
  order = np.random.default_rng([seed, epoch]).permutation(len(ds))
  for i in range(len(ds) // batch_size):
    idx = np.sort(order[i * batch_size:(i + 1) * batch_size])
    yield ds.images[idx], ds.labels[idx]


def train_batches(ds: ArrayDataset, batch_size: int, seed: int,
                  start_step: int = 0
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Endless shuffled batches; batch ``t`` is the same whatever
  ``start_step`` the iterator began at (for exact resumption)."""
  per_epoch = len(ds) // batch_size
  if per_epoch == 0:
    raise ValueError(f'batch_size {batch_size} is larger than the dataset '
                     f'({len(ds)} examples)')
  epoch, skip = divmod(start_step, per_epoch)
  while True:
    for i, b in enumerate(epoch_batches(ds, batch_size, seed, epoch)):
      if i >= skip:
        yield b
    epoch, skip = epoch + 1, 0


def held_batches(ds: ArrayDataset, num_batches: int, batch_size: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``([N, B, H, W, C] images, [N, B] labels)`` drawn without replacement
  (capped at the dataset size), for the death check and pruning scores."""
  n = min(num_batches * batch_size, len(ds))
  num_batches = max(n // batch_size, 1)
  batch_size = n // num_batches
  idx = np.sort(np.random.default_rng(seed).choice(
      len(ds), num_batches * batch_size, replace=False))
  return (ds.images[idx].reshape((num_batches, batch_size) + ds.example_shape),
          ds.labels[idx].reshape((num_batches, batch_size)))
