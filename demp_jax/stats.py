"""Saturation statistics: one jitted pass that finds dead units.

The model runs in eval mode (norm layers use their running statistics) over
``N`` held batches stacked as ``[N, B, ...]``; a ``lax.scan`` accumulates,
for every unit ``i`` of every group (activation ``a`` of shape
``[B, ..., n]``, the leading axes being batch and spatial positions):

* ``dead``: ``sum_{b,pos} |a_i| <= eps`` on *every* batch (logical AND). For
  ReLU outputs ``|a| = a``, so with ``eps = 0`` this is the DemP criterion
  "zero on every input and position"; ``|a|`` keeps the test meaningful for
  activations with negative outputs (GELU, leaky ReLU).
* ``apoz``: average percentage of zeros, the fraction of entries ``a_i = 0``
  (NaN if an activation is NaN).
* ``mean_abs``: mean ``|a_i|`` over examples and positions.
* ``dormancy``: the tau-dormant score ``mean_abs_i / mean_j mean_abs_j``
  within the group (ReDo); a unit is tau-dormant if it is ``<= tau``.
* ``min``, ``max``: the smallest and largest ``a_i`` over all batches,
  examples and positions. :func:`constant_outputs` reads them: a unit whose
  output does not move (``max - min`` within a tolerance) is *constant* on
  the data, and :func:`demp_jax.surgery.shrink` can remove it without
  changing the function by folding the constant into its consumers.

With batches sharded over devices (``NamedSharding``) the sums inside the
jitted pass are global: XLA reduces them across devices and hosts before
any decision is taken, so every process sees the same statistics.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class UnitStats(NamedTuple):
  dead: jax.Array      # bool[n]
  apoz: jax.Array      # float32[n] in [0, 1]
  mean_abs: jax.Array  # float32[n]
  dormancy: jax.Array  # float32[n]
  min: jax.Array       # float32[n]: min over batches, examples, positions
  max: jax.Array       # float32[n]: max over batches, examples, positions


def _positions(acts: list) -> float:
  """Entries per unit in one batch, over every site: ``sum prod(shape[:-1])``."""
  return float(sum(math.prod(a.shape[:-1]) for a in acts))


def _stats(model: Any, variables: Mapping[str, Any], batches: jax.Array,
           epsilon: float) -> dict[str, UnitStats]:
  _, probe = jax.eval_shape(model.activations, variables, batches[0])

  def init(acts):
    n = acts[0].shape[-1]
    return (jnp.ones((n,), bool), jnp.zeros((n,), jnp.float32),
            jnp.zeros((n,), jnp.float32), jnp.full((n,), jnp.inf, jnp.float32),
            jnp.full((n,), -jnp.inf, jnp.float32))

  def body(carry, x):
    _, acts = model.activations(variables, x)
    new = {}
    for name, (dead, zeros, abs_sum, lo, hi) in carry.items():
      # a group read at several sites (a residual stream) sums them all
      s = nonzero = 0.0
      for a in acts[name]:
        a = a.astype(jnp.float32)
        axes = tuple(range(a.ndim - 1))
        s = s + jnp.sum(jnp.abs(a), axis=axes)
        # zeros as count - sum(sign|a|): the same number as sum(a == 0),
        # but a float reduction that XLA:CPU vectorises; with the bool one
        # the pass took 1.85x a plain forward instead of 1.16x (bench_step's
        # death_check_ratio on the demo CNN)
        nonzero = nonzero + jnp.sum(jnp.sign(jnp.abs(a)), axis=axes)
        lo = jnp.minimum(lo, jnp.min(a, axis=axes))
        hi = jnp.maximum(hi, jnp.max(a, axis=axes))
      new[name] = (dead & (s <= epsilon),
                   zeros + (_positions(acts[name]) - nonzero),
                   abs_sum + s, lo, hi)
    return new, None

  carry = {k: init(v) for k, v in probe.items()}
  carry, _ = jax.lax.scan(body, carry, batches)
  out = {}
  for name, (dead, zeros, abs_sum, lo, hi) in carry.items():
    count = batches.shape[0] * _positions(probe[name])
    mean_abs = abs_sum / count
    out[name] = UnitStats(dead=dead, apoz=zeros / count, mean_abs=mean_abs,
                          dormancy=mean_abs / (jnp.mean(mean_abs) + 1e-9),
                          min=lo, max=hi)
  return out


saturation_stats = jax.jit(_stats, static_argnames=('model',))
saturation_stats.__doc__ = """Per-unit statistics over stacked batches.

Args:
  model: a :class:`demp_jax.net.Net` (its ``activations`` give every unit
    site).
  variables: its variables (``params``, ``batch_stats``, ...).
  batches: ``[N, B, ...]`` inputs, already preprocessed, not augmented.
  epsilon: the death threshold on ``sum |a|`` per batch (0 by default).

Returns:
  ``{group name: UnitStats}``.
"""


def constant_outputs(stats: Mapping[str, Any], tol: float = 1e-6, *,
                     layer_tol: float = 0.0) -> dict[str, np.ndarray]:
  """The constant output of every unit that has one, NaN for the others:
  the one definition of a *constant unit*.

  Unit ``i`` is constant on the data when its output range is within

      max_i - min_i <= tol * max(1, |min_i|, |max_i|) + layer_tol * m

  with ``m = max(mean_j mean_abs_j, 1e-12)`` the mean ``|a|`` of its group:
  ``tol`` is relative to the unit's own magnitude (default 1e-6, float32
  rounding; :func:`demp_jax.surgery.shrink`'s ``constant_tol``), and
  ``layer_tol`` to its layer's (DemP's ``constant_layer_tol``, 0.1 in the
  demo: a unit that barely moves next to its layer counts as constant).
  Its value is then ``c_i = (min_i + max_i) / 2`` (exactly 0 for a dead
  ReLU unit; ``ReLU(beta_i)`` for a BatchNorm unit with ``gamma_i = 0``).
  ``stats[name]`` is anything with ``min`` and ``max`` vectors (and
  ``mean_abs`` when ``layer_tol`` is not 0: :class:`UnitStats`). Returns
  ``{name: float32[n]}``.
  """
  out = {}
  for name, s in stats.items():
    lo = np.asarray(s.min, np.float64)
    hi = np.asarray(s.max, np.float64)
    finite = np.isfinite(lo) & np.isfinite(hi)
    lo, hi = np.where(finite, lo, 0.0), np.where(finite, hi, 0.0)
    bound = tol * np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))
    if layer_tol:
      bound = bound + layer_tol * max(float(np.mean(np.asarray(s.mean_abs))),
                                      1e-12)
    const = finite & (hi - lo <= bound)
    out[name] = np.where(const, 0.5 * (lo + hi), np.nan).astype(np.float32)
  return out


class Range(NamedTuple):
  """Per-unit output range: ``min``, ``max`` of shape ``[n]``."""
  min: jax.Array
  max: jax.Array


def activation_range(model: Any, variables: Mapping[str, Any],
                     x: jax.Array) -> tuple[jax.Array, dict[str, Range]]:
  """Eval-mode logits and per-unit ``min``/``max`` of every unit group (over
  all its sites) on one batch ``x`` (one forward pass, not jitted).

  Returns ``(logits, {name: Range(min, max)})``; the ranges are the input of
  :func:`constant_outputs`.
  """
  logits, acts = model.activations(variables, x)
  ranges = {}
  for name, sites in acts.items():
    lo = hi = None
    for a in sites:
      axes = tuple(range(a.ndim - 1))
      m, M = jnp.min(a, axis=axes), jnp.max(a, axis=axes)
      lo = m if lo is None else jnp.minimum(lo, m)
      hi = M if hi is None else jnp.maximum(hi, M)
    ranges[name] = Range(lo, hi)
  return logits, ranges


class DeadRates(NamedTuple):
  """Dead-neuron rates of a network on probe data (see :func:`dead_rates`)."""
  dynamic_dead_rate: float
  dynamic_dead_rate_live: float
  dead_units: int
  units: int


def dead_rates(model: Any, variables: Mapping[str, Any],
               batches: jax.Array,
               live: Mapping[str, Any] | None = None) -> DeadRates:
  """Dead-neuron rates on ``[N, B, ...]`` probe batches, from the same pass
  as the statistics.

  With ``z_{x,u}`` the output of unit-position ``u`` (a unit of a dense
  layer, or a (channel, h, w) element of a conv map) on example ``x``:

  * ``dynamic_dead_rate``: ``mean_x [ #{u : z_{x,u} = 0} / #u ]`` over all
    units;
  * ``dynamic_dead_rate_live``: the same over the units ``live`` marks
    (``{group: bool[n]}``; default all), so that units pruned away, which
    output 0 by construction, do not count;
  * ``dead_units``: units zero on every example and position (static
    death, the Synaptic Stripping criterion), out of ``units``.
  """
  stats = saturation_stats(model, variables, batches, 0.0)
  _, probe = jax.eval_shape(model.activations, variables, batches[0])
  zeros = total = zeros_live = total_live = 0.0
  dead = units = 0
  for name, st in stats.items():
    pos = _positions(probe[name]) / batches.shape[1]  # per example
    apoz = np.asarray(st.apoz, np.float64)
    mine = (np.ones(apoz.shape, bool) if live is None or name not in live
            else np.asarray(live[name], bool))
    zeros += apoz.sum() * pos
    total += apoz.size * pos
    zeros_live += apoz[mine].sum() * pos
    total_live += mine.sum() * pos
    dead += int(np.sum(np.asarray(st.dead)))
    units += int(apoz.size)
  return DeadRates(zeros / max(total, 1.0), zeros_live / max(total_live, 1.0),
                   dead, units)
