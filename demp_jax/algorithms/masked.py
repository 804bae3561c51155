"""Strict weight masks that no optimiser state can undo, and mask helpers.

Unstructured methods (Synaptic Stripping, Activate-while-Pruning, global
magnitude pruning) keep params-shaped ``uint8`` 0/1 masks ``m`` in
``SparseState.masks`` (``None`` on leaves never pruned). A masked weight
must stay exactly 0 whatever the optimiser holds for it: Adam's first moment
of a weight pruned a step ago is not zero, and ``optax.adamw`` would move
the weight off 0 again (the "momentum leak" of the AP reference code). So
:class:`StrictMasking` enforces the masks three times per step::

    g' = g * m                     # sparse gradients into the optimiser
    u  = inner(g', state, params)  # any optax transformation
    u' = u * m                     # the final updates of masked entries are 0
    params = (params + u') * m     # post_gradient_update re-masks the params

Each of the last two alone keeps ``params * (1 - m) == 0`` exactly; the
first keeps the optimiser's moments of masked entries decaying to 0.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from demp_jax import topology as topo
from demp_jax.algorithms import base

FilterFn = Callable[[tuple, Any], bool]


def not_dim_one(path: tuple, leaf: Any) -> bool:
  """JaxPruner's default filter: every leaf with ``ndim > 1`` (kernels)."""
  del path
  return np.ndim(leaf) > 1


def _is_none(x: Any) -> bool:
  return x is None


def ones_masks(params: Any, filter_fn: Optional[FilterFn] = None) -> Any:
  """``uint8`` ones on the leaves ``filter_fn(path, leaf)`` selects (default
  :func:`not_dim_one`), ``None`` elsewhere."""
  fn = filter_fn or not_dim_one
  return jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.asarray(np.ones(np.shape(x), np.uint8))
      if fn(topo.key_path(p), x) else None, params)


def combine_masks(a: Any, b: Any) -> Any:
  """Elementwise AND of two mask trees; ``None`` means "all ones"."""
  def one(x, y):
    if x is None:
      return y
    if y is None:
      return x
    return (jnp.asarray(x) * jnp.asarray(y)).astype(topo.MASK_DTYPE)

  return jax.tree.map(one, a, b, is_leaf=_is_none)


def mask_counts(masks: Any, leaf_filter: Optional[FilterFn] = None,
                params: Any = None) -> tuple[int, int]:
  """``(ones, entries)`` over the non-``None`` mask leaves (those
  ``leaf_filter(path, param)`` selects, when given with ``params``)."""
  ones = total = 0
  flat = jax.tree_util.tree_flatten_with_path(masks, is_leaf=_is_none)[0]
  pflat = (dict((topo.key_path(p), x) for p, x in
                jax.tree_util.tree_flatten_with_path(params)[0])
           if params is not None else {})
  for path, m in flat:
    if m is None:
      continue
    key = topo.key_path(path)
    if leaf_filter is not None and params is not None and not leaf_filter(
        key, pflat[key]):
      continue
    ones += int(np.sum(np.asarray(m)))
    total += int(np.size(m))
  return ones, total


@dataclasses.dataclass
class StrictMasking(base.BaseUpdater):
  """A :class:`base.BaseUpdater` whose masks hold whatever the optimiser's
  state: gradients in and updates out are both multiplied by the masks,
  and the params are re-masked after every step (see the module doc)."""

  def wrap_optax(self, inner: optax.GradientTransformation
                 ) -> optax.GradientTransformationExtraArgs:
    tx = super().wrap_optax(inner)

    def update_fn(updates, state, params=None, **extra):
      updates = topo.apply_masks(updates, state.masks)
      new_updates, state = tx.update(updates, state, params, **extra)
      return topo.apply_masks(new_updates, state.masks), state

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


# ------------------------------------------------- a unit's incoming weights


def incoming_refs(group: topo.UnitGroup, params: Any) -> list[topo.AxisRef]:
  """The group's producer *kernels*: the params leaves with ``ndim >= 2``
  whose ``ref.axis`` indexes its units (biases and norm parameters are
  1-D and left out). Their other axes hold each unit's incoming weights."""
  out = []
  for ref in group.produces:
    if ref.collection != 'params' or ref.kind != 'axis':
      continue
    leaf = topo.get_leaf({'params': params}, ref.key)
    if leaf is not None and np.ndim(leaf) >= 2:
      if not ref.simple:
        raise ValueError(
            f'unit group {group.name!r}: kernel {ref} holds each unit in '
            f'several places of its output axis (tile {ref.tile}, inner '
            f'{ref.inner}, start {ref.start}), e.g. a gated unit; per-unit '
            'weight masks do not support that layout')
      out.append(ref)
  return out


def to_columns(x: jax.Array, axis: int) -> jax.Array:
  """``[..., n, ...]`` -> ``[fan_in, n]``: unit ``j``'s incoming weights are
  column ``j`` (a dense kernel ``[in, n]`` is returned as it is; a conv
  kernel ``[kh, kw, c_in, n]`` becomes ``[kh*kw*c_in, n]``)."""
  x = jnp.moveaxis(x, axis, -1)
  return x.reshape((-1, x.shape[-1]))


def from_columns(c: jax.Array, axis: int, shape: tuple) -> jax.Array:
  """Inverse of :func:`to_columns` for a leaf of ``shape``."""
  moved = list(shape)
  n = moved.pop(axis % len(shape))
  return jnp.moveaxis(c.reshape(tuple(moved) + (n,)), -1, axis)
