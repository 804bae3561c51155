"""DemP's two Optax transformations: the scheduled scale penalty and the
live-unit noise.

Both are plain ``optax`` transformations, usable in ``optax.chain`` with any
optimiser::

    tx = optax.chain(
        scale_penalty(onecycle(peak=1e-3, span=9_000)),  # before the optimiser
        optax.adamw(5e-3, weight_decay=5e-4),
        live_unit_noise(onecycle(peak=5e-5, span=9_000), seed=0),  # after it
    )
    updates, state = tx.update(grads, state, params, live_mask=masks)
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from demp_jax import topology as topo

MaskOrFn = Union[Any, Callable[[Any], Any], None]


def onecycle(peak: float, span: int) -> optax.Schedule:
  """The paper's one-cycle schedule: ``optax.cosine_onecycle_schedule``.

  With optax's defaults (``pct_start=0.3, div_factor=25,
  final_div_factor=1e4``) the value starts at ``peak/25``, rises on a
  half-cosine to ``peak`` at ``0.3*span``, falls to ``peak/2.5e5`` at
  ``span`` and stays there.
  """
  if span <= 0:
    raise ValueError(f'one-cycle span must be a positive step count, got {span}')
  return optax.cosine_onecycle_schedule(int(span), float(peak))


def is_norm_scale(path: tuple[str, ...], leaf: Any) -> bool:
  """Default penalty target: every leaf named ``scale`` (BatchNorm and
  LayerNorm gamma in Flax)."""
  del leaf
  return bool(path) and path[-1] == 'scale'


def _resolve_mask(mask: MaskOrFn, params: Any) -> Any:
  if mask is None:
    return jax.tree_util.tree_map_with_path(
        lambda p, x: is_norm_scale(topo.key_path(p), x), params)
  if callable(mask):
    return mask(params)
  return mask


# Each regulariser R(theta) and its (sub)gradient dR/dtheta.
REGULARIZERS: dict[str, tuple[Callable[[jax.Array], jax.Array],
                              Callable[[jax.Array], jax.Array]]] = {
    # R = sum |p|
    'l1': (lambda p: jnp.abs(p), jnp.sign),
    # R = 1/2 sum p^2
    'l2': (lambda p: 0.5 * jnp.square(p), lambda p: p),
    # R = sum max(p, 0): pushes only positive scales down
    'l1_pos': (lambda p: jnp.maximum(p, 0), lambda p: (p > 0).astype(p.dtype)),
    # R = 1/2 sum max(p, 0)^2
    'l2_pos': (lambda p: 0.5 * jnp.square(jnp.maximum(p, 0)),
               lambda p: jnp.maximum(p, 0)),
}


def _regularizer(name: str):
  if name not in REGULARIZERS:
    raise ValueError(
        f'unknown regularizer {name!r}; known: {sorted(REGULARIZERS)}')
  return REGULARIZERS[name]


def penalty_value(params: Any, regularizer: str = 'l1',
                  mask: MaskOrFn = None) -> jax.Array:
  """``R(theta)`` summed over the masked leaves (for logging)."""
  value, _ = _regularizer(regularizer)
  m = _resolve_mask(mask, params)
  terms = jax.tree.map(lambda p, use: jnp.sum(value(p)) if use else 0.0,
                       params, m)
  return sum(jax.tree.leaves(terms), jnp.zeros(()))


class ScalePenaltyState(NamedTuple):
  count: jax.Array  # int32 step counter for the schedule


def scale_penalty(schedule: optax.ScalarOrSchedule,
                  regularizer: str = 'l1',
                  mask: MaskOrFn = None) -> optax.GradientTransformation:
  """Adds ``lambda(t) * dR/dtheta`` to the gradients of the masked leaves.

  Placed before the optimiser this is exactly the gradient of the loss
  ``L(theta) + lambda(t) * R(theta)``, so the penalty goes through Adam's
  normalisation or the momentum like any loss term (it is *not* decoupled
  weight decay). ``R`` is one of :data:`REGULARIZERS` (``'l1'``: ``sum|p|``,
  the reference's final choice, with subgradient ``sign(p)``).

  Args:
    schedule: ``lambda(t)``, a float or an optax schedule of the step count.
    regularizer: key of :data:`REGULARIZERS`.
    mask: params-shaped bool tree, or a function of params returning one;
      by default every leaf named ``scale`` (norm gammas).
  """
  _, grad_fn = _regularizer(regularizer)

  def init_fn(params):
    del params
    return ScalePenaltyState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('scale_penalty needs params: call update(g, s, params)')
    lam = schedule(state.count) if callable(schedule) else schedule
    m = _resolve_mask(mask, params)
    updates = jax.tree.map(
        lambda g, p, use: g + (lam * grad_fn(p)).astype(g.dtype) if use else g,
        updates, params, m)
    return updates, ScalePenaltyState(optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


class LiveNoiseState(NamedTuple):
  count: jax.Array  # int32 step counter for the schedule and the key
  key: jax.Array    # uint32[2] base key; step t uses fold_in(key, t)


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def live_unit_noise(schedule: optax.ScalarOrSchedule,
                    seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """Adds ``sigma(t) * xi * M`` to the final update, ``xi ~ N(0, I)``.

  Place it *after* the optimiser (last in the chain): the noise is in
  parameter space, not multiplied by the learning rate nor passed through
  the optimiser's moments. ``M`` is the ``live_mask`` extra argument, a
  params-shaped tree of 0/1 arrays (``None`` leaves and a missing mask mean
  "all live"); the DemP updater passes its unit masks times the support of
  the raw gradient, so dead units never receive noise. Deterministic for a
  given ``seed``: step ``t`` draws one vector
  ``xi ~ N(0, I)`` from ``fold_in(PRNGKey(seed), t)`` and splits it over the
  leaves in ``jax.tree`` order.
  """

  def init_fn(params):
    del params
    return LiveNoiseState(count=jnp.zeros([], jnp.int32),
                          key=jax.random.PRNGKey(seed))

  def update_fn(updates, state, params=None, *, live_mask=None, **extra):
    del params, extra
    sigma = schedule(state.count) if callable(schedule) else schedule
    # under optax.masked / multi_transform the entries of other
    # transformations are MaskedNode leaves: they pass through
    leaves, treedef = jax.tree.flatten(updates, is_leaf=_is_masked)
    if live_mask is None:
      masks = [None] * len(leaves)
    else:
      masks = treedef.flatten_up_to(live_mask)
    # One flat draw for all leaves (in tree order): one RNG call compiles
    # and runs faster than one per leaf.
    sizes = [0 if _is_masked(u) else int(jnp.size(u)) for u in leaves]
    xi = jax.random.normal(jax.random.fold_in(state.key, state.count),
                           (sum(sizes),), jnp.float32)
    out, start = [], 0
    for u, m, n in zip(leaves, masks, sizes):
      if _is_masked(u):
        out.append(u)
        continue
      eps = sigma * xi[start:start + n].reshape(jnp.shape(u))
      start += n
      if m is not None:
        eps = eps * m.astype(eps.dtype)
      out.append(u + eps.astype(u.dtype))
    return (jax.tree.unflatten(treedef, out),
            LiveNoiseState(optax.safe_increment(state.count), state.key))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
