"""The updater contract, on JaxPruner's conventions.

An algorithm is a ``dataclasses.dataclass`` updater used at three places of
a training step::

    tx = updater.wrap_optax(optax.adamw(...))     # state: SparseState, outermost
    params_fwd = updater.pre_forward_update(params, opt_state)
    grads = jax.grad(loss)(params_fwd)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = updater.post_gradient_update(optax.apply_updates(params, updates),
                                          opt_state)

Masks are params-shaped trees of ``uint8`` 0/1 with ``None`` for leaves that
are never pruned. Every tree map over masks treats ``None`` as a leaf.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from demp_jax import stats as stats_lib
from demp_jax import topology as topo


class SparseState(NamedTuple):
  """JaxPruner's state layout: the outermost optimiser state."""
  masks: Any
  inner_state: Any = None
  target_sparsities: Optional[Any] = None
  count: Any = None


@dataclasses.dataclass
class PruneContext:
  """What a structured pruner sees when the loop asks it which units to keep.

  ``images`` are ``[N, B, ...]`` normalised, non-augmented training inputs
  held for this decision and ``labels`` their ``[N, B]`` labels. The unit
  statistics over them are computed once, on first use, by ``stats_fn``
  when given (``saturation_stats`` compiled ahead of time for this model
  and these shapes: ``(variables, images, epsilon) -> stats``).
  """
  step: int
  model: Any
  variables: dict
  opt_state: Any
  input_shape: tuple
  images: Any
  labels: Any
  epsilon: float = 0.0
  _stats: Optional[dict] = None
  stats_fn: Optional[Callable] = None

  @property
  def topology(self) -> topo.UnitTopology:
    return self.model.unit_topology(self.input_shape)

  def stats(self) -> dict:
    if self._stats is None:
      fn = self.stats_fn or functools.partial(stats_lib.saturation_stats,
                                              self.model)
      self._stats = jax.block_until_ready(
          fn(self.variables, self.images, float(self.epsilon)))
    return self._stats


@dataclasses.dataclass
class BaseUpdater:
  """Base updater: wraps an optimiser, keeps masks, applies them after each
  step. Subclasses override :meth:`get_initial_masks` and
  :meth:`wrap_inner` (extra transformations around the optimiser), and
  structured pruners :meth:`prunes_at` and :meth:`choose_keep`, which the
  training loop follows with physical surgery.

  Attributes:
    topology: the model's unit topology; the loop sets it and replaces it
      after every surgery.
  """
  topology: Optional[topo.UnitTopology] = None

  # ------------------------------------------------ structured pruning hooks

  def prunes_at(self, step: int) -> bool:
    """Whether the loop asks :meth:`choose_keep` before step ``step``."""
    del step
    return False

  def prunes_at_end(self) -> bool:
    return False

  def held_batches_shape(self) -> tuple[int, int]:
    """``(N, B)`` of the held training batches in the :class:`PruneContext`."""
    return (1, 512)

  def choose_keep(self, ctx: PruneContext) -> Optional[dict]:
    """Group name -> bool vector of units to keep, or None to keep all."""
    del ctx
    return None

  def constants(self, ctx: PruneContext) -> Optional[dict]:
    """``{group: float[n]}`` constant outputs of removed units to fold into
    their consumers (NaN: not constant), or None to remove without folding.
    """
    del ctx
    return None

  def scalar_metrics(self, step: int) -> dict:
    """Scalars to log at ``step`` (e.g. schedule values)."""
    del step
    return {}

  def update_masks(self, ctx: PruneContext) -> Any:
    """New params-shaped masks for unstructured changes at a pruning step
    (applied to the params by the loop), or None to leave them."""
    del ctx
    return None

  def event_metrics(self, ctx: PruneContext, masks: Any) -> dict:
    """Extra numbers for the loop's record of a pruning event, after
    :meth:`update_masks` returned ``masks`` (None: unchanged)."""
    del ctx, masks
    return {}

  def with_topology(self, topology: topo.UnitTopology) -> 'BaseUpdater':
    return dataclasses.replace(self, topology=topology)

  def set_alive(self, state: SparseState, params: Any,
                alive: Mapping[str, Any]) -> SparseState:
    """Masks every unit not alive: held at zero until the next surgery."""
    return state._replace(masks=topo.param_masks(self.topology, params, alive))

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
      del extra  # algorithm-specific extras are passed by inner_extra_args
      new_updates, inner = tx.update(updates, state.inner_state, params,
                                     **self.inner_extra_args(state, updates))
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
