"""Random-access image classification sources and their batch iterators.

A *source* is anything with ``__len__``, ``example_shape`` (one example's
``(H, W, C)``) and ``get(indices) -> (uint8 [n, H, W, C], int32 [n])``.
:class:`ArrayDataset` holds a split in memory; streaming sources (tfds,
ImageNet, synthetic) only need the same three members. Batches are drawn by
global indices from a seeded permutation, so every process of a multi-host
job agrees on the global batch and reads only its own slice of it.

A source whose training examples are random (host-side augmentation) may
also have ``get_at_step(indices, step)``; :func:`train_batches` then passes
the global step, so the augmentation of batch ``t`` is the same whether the
run started at step 0 or resumed at ``t``.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Iterator, Protocol, TypeVar

import numpy as np

T = TypeVar('T')


class Source(Protocol):
  def __len__(self) -> int: ...

  @property
  def example_shape(self) -> tuple[int, int, int]: ...

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


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

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.images[indices], self.labels[indices]

  def take(self, n: int) -> 'ArrayDataset':
    return ArrayDataset(self.images[:n], self.labels[:n])

  def split(self, n: int) -> tuple['ArrayDataset', 'ArrayDataset']:
    """The first ``len - n`` examples and the last ``n`` (a held-out set)."""
    k = len(self) - n
    return (ArrayDataset(self.images[:k], self.labels[:k]),
            ArrayDataset(self.images[k:], self.labels[k:]))


@dataclasses.dataclass(frozen=True)
class Subset:
  """Examples ``indices`` of ``source``, renumbered ``0..len-1`` (a streaming
  source's ``take`` / ``split``; ``get_at_step`` is passed through)."""
  source: Source
  indices: np.ndarray

  def __len__(self) -> int:
    return int(len(self.indices))

  @property
  def example_shape(self) -> tuple[int, int, int]:
    return tuple(self.source.example_shape)

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.source.get(self.indices[np.asarray(indices)])

  def get_at_step(self, indices: np.ndarray, step: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    idx = self.indices[np.asarray(indices)]
    at_step = getattr(self.source, 'get_at_step', None)
    return at_step(idx, step) if at_step else self.source.get(idx)


def take(ds: Source, n: int) -> Source:
  """The first ``n`` examples of any source (all if ``n >= len``)."""
  if n >= len(ds):
    return ds
  if isinstance(ds, ArrayDataset):
    return ds.take(n)
  return Subset(ds, np.arange(n))


def split(ds: Source, n: int) -> tuple[Source, Source]:
  """The first ``len - n`` examples and the last ``n`` of any source."""
  if not 0 < n < len(ds):
    raise ValueError(f'cannot hold out {n} of {len(ds)} examples')
  if isinstance(ds, ArrayDataset):
    return ds.split(n)
  k = len(ds) - n
  return Subset(ds, np.arange(k)), Subset(ds, np.arange(k, len(ds)))


def _local(idx: np.ndarray, process_index: int, process_count: int):
  if len(idx) % process_count:
    raise ValueError(f'global batch {len(idx)} is not divisible by the '
                     f'{process_count} processes')
  n = len(idx) // process_count
  return idx[process_index * n:(process_index + 1) * n]


def train_batches(ds: Source, batch_size: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Endless shuffled global batches of ``batch_size`` (each process gets
  its slice); the last partial batch of each epoch is dropped. Batch ``t``
  is the same whatever ``start_step`` the iterator began at."""
  per_epoch = len(ds) // batch_size
  if per_epoch == 0:
    raise ValueError(f'batch_size {batch_size} is larger than the dataset '
                     f'({len(ds)} examples)')
  epoch, skip = divmod(start_step, per_epoch)
  at_step = getattr(ds, 'get_at_step', None)
  while True:
    order = np.random.default_rng([seed, epoch]).permutation(len(ds))
    for i in range(skip, per_epoch):
      idx = np.sort(order[i * batch_size:(i + 1) * batch_size])
      local = _local(idx, process_index, process_count)
      yield (at_step(local, epoch * per_epoch + i) if at_step is not None
             else ds.get(local))
    epoch, skip = epoch + 1, 0


def eval_batches(ds: Source, batch_size: int, process_index: int = 0,
                 process_count: int = 1
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Every example once, in order: ``(images, labels, valid)`` with the last
  batch padded (``valid`` False on padding) so all batches share a shape."""
  n = len(ds)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = idx < n
    idx = np.where(valid, idx, n - 1)
    local = _local(idx, process_index, process_count)
    images, labels = ds.get(local)
    yield images, labels, _local(valid, process_index, process_count)


def held_batches(ds: Source, num_batches: int, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1
                 ) -> tuple[np.ndarray, np.ndarray]:
  """``([N, B, H, W, C] images, [N, B] labels)`` drawn without replacement
  (capped at the dataset size), for the death check and pruning scores.
  With several processes each returns its slice ``B / process_count`` of
  every batch."""
  n = min(num_batches * batch_size, len(ds))
  num_batches = max(n // batch_size, 1)
  batch_size = n // num_batches
  batch_size -= batch_size % process_count
  idx = np.sort(np.random.default_rng(seed).choice(
      len(ds), num_batches * batch_size, replace=False)).reshape(
          num_batches, batch_size)
  local = np.stack([_local(r, process_index, process_count) for r in idx])
  images, labels = ds.get(local.reshape(-1))
  return (images.reshape(local.shape + tuple(ds.example_shape)),
          labels.reshape(local.shape))


_DONE = object()


def prefetch(iterator: Iterator[T], size: int = 2) -> Iterator[T]:
  """Runs ``iterator`` in a background thread, ``size`` items ahead, so the
  host decodes batch ``t+1`` while the device trains on batch ``t``.

  Exceptions in the producer are re-raised in the consumer. Stopping early
  (``close()`` or garbage collection of the generator) stops the thread
  after its current item.
  """
  if size < 1:
    yield from iterator
    return
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(x) -> bool:
    while not stop.is_set():
      try:
        q.put(x, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterator:
        if not put((item, None)):
          return
      put((_DONE, None))
    except BaseException as e:  # pylint: disable=broad-except
      put((_DONE, e))

  thread = threading.Thread(target=produce, name='prefetch', daemon=True)
  thread.start()
  try:
    while True:
      item, err = q.get()
      if item is _DONE:
        if err is not None:
          raise err
        return
      yield item
  finally:
    stop.set()
