"""Width buckets: fewer recompiles by rounding widths up.

Every new set of widths costs one XLA compilation of the train step. With a
bucket of ``b`` units a layer with ``L`` live units out of ``n`` keeps
``min(n, ceil(L / b) * b)`` units physically; the extra ones stay masked
(held at exactly zero) until the live count crosses into a smaller bucket.
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Optional

import numpy as np


class WidthPlan(NamedTuple):
  kept: dict        # group -> bool[n]: units kept in the arrays
  live_after: dict  # group -> bool[new n]: which kept units stay unmasked

  @property
  def shrinks(self) -> bool:
    return any(not np.all(k) for k in self.kept.values())


def bucket_width(live: int, size: int, round_to: int) -> int:
  """``min(size, ceil(live / round_to) * round_to)``, at least 1."""
  if round_to < 1:
    raise ValueError(f'round_widths_to must be >= 1, got {round_to}')
  return max(1, min(size, int(math.ceil(live / round_to)) * round_to))


def plan(live: Mapping[str, np.ndarray], round_to: int = 1,
         scores: Optional[Mapping[str, np.ndarray]] = None) -> WidthPlan:
  """Which units to keep physically and which of those stay live.

  ``live[g]`` marks the live units. Padding units (kept to fill a bucket)
  are the other units with the largest ``scores[g]`` (e.g. mean |a|), or
  the first ones when no scores are given.
  """
  kept, live_after = {}, {}
  for name, k in live.items():
    k = np.asarray(k, bool)
    width = bucket_width(int(k.sum()), k.size, round_to)
    phys = k.copy()
    pad = width - int(k.sum())
    if pad > 0:
      dead = np.flatnonzero(~k)
      if scores is not None and name in scores:
        dead = dead[np.argsort(-np.asarray(scores[name])[dead], kind='stable')]
      phys[dead[:pad]] = True
    kept[name] = phys
    live_after[name] = k[phys]
  return WidthPlan(kept, live_after)
