"""The record of a run: everything a checkpoint holds besides the arrays.

A :class:`RunRecord` is the JSON ``meta`` of every checkpoint
(:meth:`RunRecord.to_json` / :meth:`RunRecord.from_json`), so a run
restores from its workdir alone into the widths it had, with its pending
shrink, its pruning events and its timings. Unit masks are
``{group: bool[width]}``: ``live`` marks the units in use over the current
arrays (the others are held at zero).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np


def _masks_to_json(masks: dict) -> dict:
  return {k: np.asarray(v, bool).tolist() for k, v in masks.items()}


def _masks_from_json(masks: dict) -> dict:
  return {k: np.asarray(v, bool) for k, v in masks.items()}


@dataclasses.dataclass
class PendingShrink:
  """A physical shrink decided at the event ``events[event]``: its units are
  held at zero, the shrunk step compiles in the background, and the arrays
  are sliced at ``swap_step`` (a fixed step, so every process and every
  resumed run swaps at the same one).

  Attributes:
    swap_step: the step of the swap.
    kept: ``{group: bool[width]}``, the units the surgery keeps in the
      arrays: the live ones and those filling a width bucket.
    live_after: ``{group: bool[new width]}``, which kept units are live.
    event: the index of the decision's record in ``RunRecord.events``.
  """
  swap_step: int
  kept: dict[str, np.ndarray]
  live_after: dict[str, np.ndarray]
  event: int

  def to_json(self) -> dict:
    return {'swap_step': self.swap_step, 'kept': _masks_to_json(self.kept),
            'live_after': _masks_to_json(self.live_after),
            'event': self.event}

  @classmethod
  def from_json(cls, d: dict) -> 'PendingShrink':
    return cls(int(d['swap_step']), _masks_from_json(d['kept']),
               _masks_from_json(d['live_after']), int(d['event']))


@dataclasses.dataclass
class RunRecord:
  """What a checkpoint holds besides the arrays (see the module doc).

  Attributes:
    params_initial, units_initial, flops_initial: the dense network's
      parameters, units and forward FLOPs per example.
    widths: the current width of every unit group, in topology order.
    live: ``{group: bool[width]}``, the units in use.
    pending: the shrink decided and not yet swapped in, if any.
    events: one record per pruning event (``summary.json``'s
      ``pruning_events``).
    kept_history: per physical shrink, the step and the kept unit indices.
    evals: test evaluations during training.
    step_seconds: the wall time of every training step so far, by step.
    train_seconds: the training clock (evaluations excluded) at the last
      save, over every resumed part of the run.
    final_train_loss: the loss of the last step trained.
  """
  params_initial: int
  units_initial: int
  flops_initial: float
  widths: list[int]
  live: dict[str, np.ndarray]
  pending: Optional[PendingShrink] = None
  events: list[dict] = dataclasses.field(default_factory=list)
  kept_history: list[dict] = dataclasses.field(default_factory=list)
  evals: list[dict] = dataclasses.field(default_factory=list)
  step_seconds: list[float] = dataclasses.field(default_factory=list)
  train_seconds: float = 0.0
  final_train_loss: float = math.nan

  @property
  def live_units(self) -> dict[str, int]:
    """Live units per group."""
    return {k: int(v.sum()) for k, v in self.live.items()}

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)  # copies the events and their dicts
    d['live'] = _masks_to_json(self.live)
    d['pending'] = None if self.pending is None else self.pending.to_json()
    # microseconds: a 500k-step run's times stay a few MB of JSON
    d['step_seconds'] = [round(t, 6) for t in self.step_seconds]
    return d

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> 'RunRecord':
    d = dict(d)
    d.pop('last_good', None)  # written by checkpoints before 2026-12
    d['live'] = _masks_from_json(d['live'])
    d['pending'] = (None if d.get('pending') is None else
                    PendingShrink.from_json(d['pending']))
    return cls(**d)
