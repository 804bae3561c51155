"""The updater contract, on JaxPruner's conventions.

An algorithm is a ``dataclasses.dataclass`` updater used at three places of
a training step::

    tx = updater.wrap_optax(optax.adamw(...))  # state: SparseState, outermost
    params_fwd = updater.pre_forward_update(params, opt_state)
    grads = jax.grad(loss)(params_fwd)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = updater.post_gradient_update(optax.apply_updates(params, updates),
                                          opt_state)

and asked one question at its pruning events::

    if updater.schedule.is_update_step(step):  # when: a schedule object
      ctx = PruneContext(...)                  # the data updater.probe names
      decision = updater.decide(ctx)           # what: a Decision

The training loop applies the :class:`Decision` (new masks; units held at
zero, constants folded, then removed physically). Iterative pruning with
rewinding asks :meth:`BaseUpdater.prune_round` instead. A subclass
overrides ``schedule``, ``probe`` and ``decide`` (and ``prune_round``
where it can run rounds); nothing else of the loop's side.

Masks are params-shaped trees of ``uint8`` 0/1 with ``None`` for leaves that
are never pruned. Every tree map over masks treats ``None`` as a leaf.
Unit masks (``{group: bool[n]}``) say which units are *live*: in use, not
held at zero.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import (Any, Callable, ClassVar, Mapping, NamedTuple, Optional,
                    Protocol)

import jax
import jax.numpy as jnp
import numpy as np
import optax

from demp_jax import stats as stats_lib
from demp_jax import topology as topo
from demp_jax.algorithms import schedules

PROBE_SPLITS = ('train', 'holdout', 'test')


class SparseState(NamedTuple):
  """JaxPruner's state layout: the outermost optimiser state."""
  masks: Any
  inner_state: Any = None
  target_sparsities: Optional[Any] = None
  count: Any = None


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
  """The held data an updater decides on: ``batches x batch_size``
  examples of ``split`` (``'train'``: training images with the eval
  preprocessing, never augmented; ``'holdout'``: examples kept out of
  training, ``config.dataset.holdout``; ``'test'``), stacked as
  ``[N, B, ...]``.

  Attributes:
    epsilon: the death threshold of the saturation statistics
      (:func:`demp_jax.stats.saturation_stats`) that :meth:`PruneContext.stats`
      computes.
    stats: whether :meth:`BaseUpdater.decide` reads those statistics; the
      loop then compiles the statistics pass for the new widths alongside
      each shrunk train step.
  """
  batches: int
  batch_size: int
  split: str = 'train'
  epsilon: float = 0.0
  stats: bool = False

  def __post_init__(self):
    if self.split not in PROBE_SPLITS:
      raise ValueError(f'probe split {self.split!r}; use one of '
                       f'{PROBE_SPLITS}')


@dataclasses.dataclass(frozen=True)
class Decision:
  """An updater's answer at a pruning event. Every field is optional.

  Attributes:
    keep: ``{group: bool[n]}``, the units to keep (live); the others are
      held at zero at once and removed physically. None: every unit stays.
    constants: ``{group: float[n]}``, the constant output of each unit on
      the held data, NaN where it is not constant
      (:func:`demp_jax.stats.constant_outputs`); a removed constant unit is
      folded into its consumers first. None: nothing to fold.
    masks: new params-shaped masks (an unstructured change), applied to the
      params and the optimiser state. None: unchanged.
    scores: ``{group: float[n]}``, larger is more important; when a width
      bucket keeps some removed units in the arrays (masked) it keeps the
      highest-scoring ones.
    metrics: numbers for the event's record in ``summary.json``.
  """
  keep: Optional[Mapping[str, np.ndarray]] = None
  constants: Optional[Mapping[str, np.ndarray]] = None
  masks: Any = None
  scores: Optional[Mapping[str, np.ndarray]] = None
  metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class RoundResult(NamedTuple):
  """One round of iterative pruning: the new masks and counts to record."""
  masks: Any
  info: dict


@dataclasses.dataclass
class PruneContext:
  """What an updater sees at a pruning event.

  ``images`` are ``[N, B, ...]`` preprocessed, never augmented inputs of
  the probe split and ``labels`` their ``[N, B]`` labels. The unit
  statistics over them are computed once, on first use of :meth:`stats`,
  by ``stats_fn`` when given (``saturation_stats`` compiled ahead of time
  for this model and these shapes: ``(variables, images, epsilon) ->
  stats``).
  """
  step: int
  model: Any
  topology: topo.UnitTopology
  variables: dict
  opt_state: Any
  images: Any = None
  labels: Any = None
  epsilon: float = 0.0
  stats_fn: Optional[Callable] = None
  _stats: Optional[dict] = dataclasses.field(default=None, init=False,
                                             repr=False)

  def stats(self) -> dict[str, stats_lib.UnitStats]:
    if self._stats is None:
      fn = self.stats_fn or functools.partial(stats_lib.saturation_stats,
                                              self.model)
      self._stats = jax.block_until_ready(
          fn(self.variables, self.images, float(self.epsilon)))
    return self._stats


def stats_metrics(stats: Mapping[str, stats_lib.UnitStats]) -> dict:
  """The death check's numbers for an event record: per group the units
  found dead (``dead_found``) and the mean APoZ (``apoz_mean``)."""
  return {'dead_found': {k: int(np.sum(np.asarray(s.dead)))
                         for k, s in stats.items()},
          'apoz_mean': {k: float(np.mean(np.asarray(s.apoz)))
                        for k, s in stats.items()}}


class Updater(Protocol):
  """What the training loop (:mod:`demp_jax.training.loop`) and the cycle
  driver (:mod:`demp_jax.training.cycles`) use of an updater, besides
  JaxPruner's ``wrap_optax``, ``pre_forward_update`` and
  ``post_gradient_update`` in the train step."""

  topology: Optional[topo.UnitTopology]
  granularity: ClassVar[Optional[str]]

  @property
  def schedule(self) -> schedules.Schedule: ...

  @property
  def probe(self) -> ProbeSpec: ...

  def decide(self, ctx: PruneContext) -> Decision: ...

  def prune_round(self, ctx: PruneContext, masks: Any, fraction: float,
                  start_params: Any = None) -> RoundResult: ...

  def mask_units(self, state: SparseState, params: Any,
                 live: Mapping[str, Any]) -> SparseState: ...

  def with_topology(self, topology: topo.UnitTopology) -> 'Updater': ...

  def scalar_metrics(self, step: int) -> dict: ...


@dataclasses.dataclass
class BaseUpdater:
  """Base updater: wraps an optimiser, keeps masks, applies them after each
  step, never prunes. Subclasses override :meth:`get_initial_masks` and
  :meth:`wrap_inner` (extra transformations around the optimiser), and
  pruners ``schedule``, ``probe`` and :meth:`decide`.

  Attributes:
    topology: the model's unit topology; the loop sets it and replaces it
      after every surgery.
    granularity: what :meth:`prune_round` prunes: ``'weight'``, ``'unit'``,
      or None (the updater cannot run rounds).
    needs_units: it prunes or strips units, so a model without a unit
      group leaves it nothing to do (the loop refuses that).
  """
  topology: Optional[topo.UnitTopology] = None

  granularity: ClassVar[Optional[str]] = None
  needs_units: ClassVar[bool] = False

  # ------------------------------------------------------- the loop's side

  @property
  def schedule(self) -> schedules.Schedule:
    """When the loop asks :meth:`decide` (see :mod:`.schedules`)."""
    return schedules.NoUpdateSchedule()

  @property
  def probe(self) -> ProbeSpec:
    """The held data of :class:`PruneContext` (the surgery's probe batch is
    its first batch)."""
    return ProbeSpec(1, 512)

  def decide(self, ctx: PruneContext) -> Decision:
    """The answer at a pruning event (default: change nothing)."""
    del ctx
    return Decision()

  def prune_round(self, ctx: PruneContext, masks: Any, fraction: float,
                  start_params: Any = None) -> RoundResult:
    """One round of iterative pruning: ``masks`` with ``fraction`` of the
    remaining items (weights or units, see ``granularity``) pruned;
    ``start_params`` are the round's start ``theta_0``."""
    del ctx, masks, fraction, start_params
    raise ValueError(
        f'{type(self).__name__} does not prune in rounds: iterative pruning '
        'needs an unstructured pruner (e.g. "global_magnitude"), a '
        'structured one (e.g. "structured_magnitude") or "ap"')

  def scalar_metrics(self, step: int) -> dict:
    """Scalars to log at ``step`` (e.g. schedule values)."""
    del step
    return {}

  def with_topology(self, topology: topo.UnitTopology) -> 'BaseUpdater':
    return dataclasses.replace(self, topology=topology)

  def mask_units(self, state: SparseState, params: Any,
                 live: Mapping[str, Any]) -> SparseState:
    """The state with every unit that is not live masked (held at zero
    until the next surgery)."""
    return state._replace(masks=topo.param_masks(self.topology, params, live))

  # ---------------------------------------------------------------- optax

  def get_initial_masks(self, params: Any) -> Any:
    return jax.tree.map(lambda _: None, params)

  def init_state(self, params: Any, inner_state: Any) -> SparseState:
    return SparseState(masks=self.get_initial_masks(params),
                       inner_state=inner_state, target_sparsities=None,
                       count=jnp.zeros([], jnp.int32))

  def wrap_inner(self, inner: optax.GradientTransformation
                 ) -> optax.GradientTransformationExtraArgs:
    return optax.with_extra_args_support(inner)

  def inner_extra_args(self, state: SparseState, grads: Any) -> dict:
    """Extra keyword arguments handed to the wrapped transformation."""
    del state, grads
    return {}

  def wrap_optax(self, inner: optax.GradientTransformation
                 ) -> optax.GradientTransformationExtraArgs:
    tx = self.wrap_inner(inner)

    def init_fn(params):
      return self.init_state(params, tx.init(params))

    def update_fn(updates, state, params=None, **extra):
      # the caller's extras (``value=`` for reduce_on_plateau, polyak_sgd)
      # and the algorithm's own (DemP's ``live_mask``)
      new_updates, inner = tx.update(
          updates, state.inner_state, params,
          **{**extra, **self.inner_extra_args(state, updates)})
      return new_updates, state._replace(
          inner_state=inner, count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

  def apply_masks(self, params: Any, masks: Any) -> Any:
    return topo.apply_masks(params, masks)

  def pre_forward_update(self, params: Any, opt_state: SparseState) -> Any:
    del opt_state
    return params

  def post_gradient_update(self, params: Any, opt_state: SparseState) -> Any:
    return self.apply_masks(params, opt_state.masks)

  def instant_sparsify(self, params: Any, grads: Any = None, **kwargs):
    """One-shot: ``(masked params, masks)``."""
    del grads, kwargs
    masks = self.get_initial_masks(params)
    return self.apply_masks(params, masks), masks


@dataclasses.dataclass
class NoPruning(BaseUpdater):
  """The dense reference: no masks, no penalty, no noise, no surgery."""

  def post_gradient_update(self, params: Any, opt_state: SparseState) -> Any:
    del opt_state
    return params
