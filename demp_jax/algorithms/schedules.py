"""When an updater prunes: schedule objects, as in JaxPruner's
``sparsity_schedules.py``.

The training loop asks ``updater.schedule.is_update_step(t)`` before
training step ``t`` and, after the last step, reads
``updater.schedule.at_end``; at those steps it asks the updater its one
question (:meth:`demp_jax.algorithms.base.BaseUpdater.decide`). A schedule
is a small frozen dataclass; an algorithm builds its own from its config
keys, so *when* stays apart from *what*.

=========================  ============================================
schedule                   update steps
=========================  ============================================
:class:`NoUpdateSchedule`  none
:class:`OneShotSchedule`   ``target_step``
:class:`PeriodicSchedule`  ``start, start + f, start + 2f, ... <= end``
:class:`AnyOf`             the union of its schedules' steps
=========================  ============================================

JaxPruner's :class:`PeriodicSchedule` counts multiples of ``update_freq``;
this one counts from ``update_start_step`` (the two agree when the start is
a multiple). :func:`jaxpruner_schedule` keeps the meaning of JaxPruner's
keys. :func:`polynomial_sparsity` is JaxPruner's ``PolynomialSchedule``
sparsity.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Protocol


class Schedule(Protocol):
  """When the loop asks an updater to decide."""

  at_end: bool  # also after the last training step

  def is_update_step(self, step: int) -> bool:
    """Whether the loop asks before training step ``step``."""


@dataclasses.dataclass(frozen=True)
class NoUpdateSchedule:
  """Never during training (after the last step when ``at_end``)."""
  at_end: bool = False

  def is_update_step(self, step: int) -> bool:
    del step
    return False


@dataclasses.dataclass(frozen=True)
class OneShotSchedule:
  """Once, before step ``target_step``."""
  target_step: int
  at_end: bool = False

  def is_update_step(self, step: int) -> bool:
    return step == self.target_step


@dataclasses.dataclass(frozen=True)
class PeriodicSchedule:
  """Every ``update_freq`` steps counted from ``update_start_step``, up to
  ``update_end_step`` (inclusive; None: no end)."""
  update_freq: int
  update_start_step: int = 0
  update_end_step: Optional[int] = None
  at_end: bool = False

  def __post_init__(self):
    if int(self.update_freq) < 1:
      raise ValueError(f'update_freq must be >= 1, got {self.update_freq}')

  def is_update_step(self, step: int) -> bool:
    start, end = int(self.update_start_step), self.update_end_step
    if step < start or (end is not None and step > int(end)):
      return False
    return (step - start) % int(self.update_freq) == 0


@dataclasses.dataclass(frozen=True)
class AnyOf:
  """Every update step of any of ``schedules``; ``at_end`` if any is."""
  schedules: tuple[Schedule, ...]

  @property
  def at_end(self) -> bool:
    return any(s.at_end for s in self.schedules)

  def is_update_step(self, step: int) -> bool:
    return any(s.is_update_step(step) for s in self.schedules)


def jaxpruner_schedule(update_freq: int, update_start_step: Optional[int],
                       update_end_step: Optional[int],
                       at_end: bool = False) -> Schedule:
  """The update steps JaxPruner's keys mean: none without a start; one shot
  at ``update_end_step`` when it equals the start (the end defaults to the
  start); else every multiple of ``update_freq`` in ``[start, end]``."""
  if update_start_step is None:
    return NoUpdateSchedule(at_end)
  start = int(update_start_step)
  end = start if update_end_step is None else int(update_end_step)
  if end < start:
    raise ValueError(f'update_end_step ({end}) < update_start_step ({start})')
  if start == end:
    return OneShotSchedule(end, at_end)
  freq = int(update_freq)
  first = -(-start // freq) * freq  # the first multiple of freq >= start
  return PeriodicSchedule(freq, first, end, at_end)


def polynomial_sparsity(step: int, target: float, start: int, end: int,
                        power: int = 3) -> float:
  """JaxPruner's polynomial schedule (Zhu & Gupta):
  ``s(t) = target * (1 - (1 - p)^power)`` with
  ``p = clip(t + 1 - start, 0, end - start) / (end - start)``; ``p = 1``
  when ``end == start``."""
  if end < start:
    raise ValueError(f'update_end_step ({end}) < update_start_step ({start})')
  p = 1.0 if end == start else min(max(step + 1 - start, 0),
                                   end - start) / (end - start)
  return float(target) * (1.0 - (1.0 - p) ** power)
