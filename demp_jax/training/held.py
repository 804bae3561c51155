"""Held data: the never-augmented batches a pruning decision reads.

An updater declares what it needs in a
:class:`~demp_jax.algorithms.base.ProbeSpec` (``N`` batches of ``B``
examples of a split); :func:`draw_held` draws them, the same examples
whatever the number of devices and processes, each process reading its
slice, and assembles the global ``[N, B, ...]`` arrays sharded over the
data axis.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from demp_jax.data import held_batches, normalize
from demp_jax.training import parallel


class Held(NamedTuple):
  """Held batches of one decision."""
  images: jax.Array         # [N, B, ...] normalised, sharded on axis 1
  labels: jax.Array         # [N, B]
  local_images: np.ndarray  # this process's [N, b, ...] raw slice
  mean: Any                 # the normalisation of ``images``
  std: Any

  def probe(self, size: int = 256) -> jax.Array:
    """The surgery's probe batch: the first ``size`` examples of this
    process's first held batch, normalised (``[size, ...]``)."""
    return normalize(self.local_images[0][:size], self.mean, self.std)


def split_source(splits: Any, name: str, key: str) -> Any:
  """The examples of split ``name`` (``'train'``: the training images with
  the eval preprocessing; ``'holdout'``; ``'test'``); ``key`` names the
  config setting in errors."""
  table = {'train': splits.train_eval or splits.train,
           'holdout': splits.holdout, 'test': splits.test}
  if name not in table:
    raise ValueError(f'{key}={name!r}; use one of {sorted(table)}')
  if table[name] is None:
    raise ValueError(f'{key}={name!r} needs config.dataset.holdout (examples '
                     'kept out of training)')
  return table[name]


def draw_held(source: Any, batches: int, batch_size: int, seed: int,
              dp: parallel.DataParallel, mean: Any, std: Any) -> Held:
  """``batches`` x ``batch_size`` examples of ``source`` drawn with
  ``seed`` (the batch size rounded down to a multiple of the devices)."""
  b = batch_size - batch_size % dp.num_devices
  local = held_batches(source, batches, b, seed=seed,
                       process_index=dp.process_index,
                       process_count=dp.process_count)
  images, labels = dp.shard_held(local)
  return Held(normalize(images, mean, std), labels, np.asarray(local[0]),
              mean, std)


@dataclasses.dataclass(frozen=True)
class EventProbes:
  """The held batches of a training run's pruning events: ``draw(spec,
  step)``, seeded by the run's seed and the step (the same batches in a
  resumed run)."""
  splits: Any
  seed: int
  dp: parallel.DataParallel

  def __call__(self, spec: Any, step: int) -> Held:
    source = split_source(self.splits, spec.split,
                          'sparsity_config.probe_split')
    return draw_held(source, spec.batches, spec.batch_size,
                     self.seed * 1_000_003 + step, self.dp, self.splits.mean,
                     self.splits.std)
