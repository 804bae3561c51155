"""Synaptic Stripping: prune the most negative incoming weights of dead units.

Reference: Whitaker & Whitley, "Synaptic Stripping: How Pruning Can Bring
Dead Neurons Back To Life", IJCNN 2023 (arXiv:2302.05818); the rule below
is the authors' code (github.com/tjwhitaker/synaptic-stripping).

Every ``strip_every`` steps (one epoch in the reference) the loop runs an
eval-mode pass over the probe data and, for every unit ``j`` of the stripped
groups that is *dead* (``sum |a_j| <= epsilon`` over every example and
every token or position; exactly zero by default), takes the unit's
incoming weights ``v = W[:, j] ⊙ m[:, j]`` (the producer kernel's column,
already masked), the ``k`` non-zero entries among them sorted
``v_(0) <= ... <= v_(k-1)``, and the linear-interpolated quantile

    pos = q (k - 1),  tau_j = v_(floor pos) + frac(pos) (v_(floor pos + 1) - v_(floor pos))

(``torch.quantile``'s default; ``q = stripping_factor = 0.05``), then masks
every entry with ``v_i < tau_j`` (strict): about the lowest 5 % of the
unit's remaining weights *by signed value*, so the most negative ones.
``k = 1`` strips nothing, so a column never empties by itself. Masks
accumulate (AND) and are strict (:class:`masked.StrictMasking`), so a
stripped weight never comes back. Biases, norms and units that are not dead
are untouched; no unit is removed.

``stripping_factor = 0`` makes the rule a no-op (``tau`` is the minimum and
``<`` is strict): the same run then only monitors dead units, the
"stripping off" reference.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, ClassVar, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from demp_jax import stats as stats_lib
from demp_jax import topology as topo
from demp_jax.algorithms import base
from demp_jax.algorithms import masked
from demp_jax.algorithms import schedules

@jax.jit
def strip_columns(w: jax.Array, mask: jax.Array, dead: jax.Array,
                  q: float | jax.Array) -> jax.Array:
  """The stripping rule on one ``[fan_in, n]`` matrix of columns.

  Args:
    w: ``[fan_in, n]`` weights; column ``j`` is unit ``j``'s incoming weights.
    mask: ``[fan_in, n]`` 0/1 mask (the weights in use are ``w * mask``).
    dead: ``bool[n]``, the units to strip.
    q: the quantile (``stripping_factor``) in [0, 1].

  Returns:
    ``uint8 [fan_in, n]``: ``mask`` with ``v_ij < tau_j`` removed in the dead
    columns, where ``v = w * mask`` and ``tau_j`` is the linear-interpolated
    ``q``-quantile of the non-zero entries of ``v[:, j]`` (ragged columns:
    entries not counted sort to ``+inf``; a column without non-zero entries
    keeps its mask).
  """
  mask = mask.astype(topo.MASK_DTYPE)
  v = w.astype(jnp.float32) * mask.astype(jnp.float32)
  counted = (mask != 0) & (v != 0)
  k = jnp.sum(counted, axis=0)                                   # [n]
  s = jnp.sort(jnp.where(counted, v, jnp.inf), axis=0)          # [fan_in, n]
  last = jnp.maximum(k - 1, 0)
  pos = jnp.asarray(q, jnp.float32) * last.astype(jnp.float32)
  lo = jnp.minimum(jnp.floor(pos).astype(jnp.int32), last)
  hi = jnp.minimum(lo + 1, last)
  frac = pos - lo.astype(jnp.float32)
  a = jnp.take_along_axis(s, lo[None, :], axis=0)[0]
  b = jnp.take_along_axis(s, hi[None, :], axis=0)[0]
  tau = jnp.where(k > 0, a + frac * (b - a), -jnp.inf)
  cut = dead[None, :] & (v < tau[None, :])
  return jnp.where(cut, jnp.zeros_like(mask), mask)


def strip_masks(topology: topo.UnitTopology, params: Any, masks: Any,
                dead: Mapping[str, Any], q: float) -> Any:
  """Applies :func:`strip_columns` to every group in ``dead``.

  A unit's incoming weights are the columns of *all* its producer kernels
  (:func:`masked.incoming_refs`; usually one), concatenated, so the
  quantile is taken over the unit's whole fan-in. Leaves whose mask is
  ``None`` are not stripped. Returns the new mask tree.
  """
  out = masks
  for g in topology.groups:
    if g.name not in dead:
      continue
    refs = [r for r in masked.incoming_refs(g, params)
            if topo.get_leaf({'params': masks}, r.key) is not None]
    if not refs:
      continue
    ws = [masked.to_columns(topo.get_leaf({'params': params}, r.key), r.axis)
          for r in refs]
    ms = [masked.to_columns(topo.get_leaf({'params': out}, r.key), r.axis)
          for r in refs]
    new = strip_columns(jnp.concatenate(ws, 0), jnp.concatenate(ms, 0),
                        jnp.asarray(dead[g.name], bool), q)
    start = 0
    for r, m in zip(refs, ms):
      piece = new[start:start + m.shape[0]]
      start += m.shape[0]
      shape = np.shape(topo.get_leaf({'params': out}, r.key))
      out = topo.set_leaf({'params': out}, r.key,
                          masked.from_columns(piece, r.axis, shape))['params']
  return out


@dataclasses.dataclass
class SynapticStripping(masked.StrictMasking):
  """Synaptic Stripping as a JaxPruner-style updater (see the module doc).

  The loop calls :meth:`decide` before step ``strip_start + i *
  strip_every`` and after the last step, on a :class:`base.PruneContext`
  over ``probe_batches x probe_batch_size`` examples of ``probe_split``;
  the decision's new masks strip the dead units, and its metrics are the
  per-group dead counts (``dead_found``) and the reference's counts
  (:meth:`event_metrics`); the loop adds the weights in use
  (``active_params``).

  Attributes:
    stripping_factor: ``q``, the quantile of each dead unit's remaining
      non-zero incoming weights below which they are stripped (0.05).
    strip_every: steps between stripping events (one epoch in the paper).
    strip_start: first event (default: ``strip_every``).
    strip_at_end: also strip (and measure) after the last step.
    strip_groups: ``fnmatch`` patterns of the unit groups to strip (their
      producer kernels get masks); None: every group. The reference strips
      only the ViT's MLP layers.
    probe_split: where the dead test looks: ``'holdout'`` (the default, a
      part of the training data kept out of training:
      ``config.dataset.holdout``), ``'test'`` (the reference's choice), or
      ``'train'``.
    probe_batches: number N of probe batches (N * B >= the split's size
      probes all of it, as the reference does).
    probe_batch_size: examples B per probe batch.
    epsilon: a unit is dead if ``sum |a| <= epsilon`` on every probe batch.
  """
  needs_units: ClassVar[bool] = True
  stripping_factor: float = 0.05
  strip_every: int = 1_000
  strip_start: Optional[int] = None
  strip_at_end: bool = True
  strip_groups: Optional[Sequence[str]] = None
  probe_split: str = 'holdout'
  probe_batches: int = 10
  probe_batch_size: int = 500
  epsilon: float = 0.0

  def __post_init__(self):
    if not 0.0 <= float(self.stripping_factor) <= 1.0:
      raise ValueError('sparsity_config.stripping_factor must be in [0, 1], '
                       f'got {self.stripping_factor}')
    for name in ('strip_every', 'probe_batches', 'probe_batch_size'):
      if int(getattr(self, name)) < 1:
        raise ValueError(f'sparsity_config.{name} must be >= 1, got '
                         f'{getattr(self, name)}')
    if self.probe_split not in base.PROBE_SPLITS:
      raise ValueError(f'sparsity_config.probe_split={self.probe_split!r}; '
                       f'use one of {base.PROBE_SPLITS}')
    if isinstance(self.strip_groups, str):
      self.strip_groups = (self.strip_groups,)

  # ---------------------------------------------------------------- groups

  def stripped_groups(self) -> list[topo.UnitGroup]:
    if self.topology is None:
      raise ValueError('SynapticStripping needs the model\'s unit topology: '
                       'dataclasses.replace(updater, topology='
                       'net.topology)')
    groups = list(self.topology.groups)
    if self.strip_groups is not None:
      groups = [g for g in groups if any(
          fnmatch.fnmatchcase(g.name, p) for p in self.strip_groups)]
      if not groups:
        raise ValueError(
            f'sparsity_config.strip_groups={list(self.strip_groups)} matches '
            f'no unit group; the model has {list(self.topology.names)}')
    return groups

  def get_initial_masks(self, params: Any) -> Any:
    """Ones on the producer kernels of the stripped groups, None elsewhere."""
    keys = {r.key[1] for g in self.stripped_groups()
            for r in masked.incoming_refs(g, params)}
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.asarray(np.ones(np.shape(x), np.uint8))
        if topo.key_path(p) in keys else None, params)

  # --------------------------------------------------------- loop hooks

  @property
  def schedule(self) -> schedules.Schedule:
    start = self.strip_every if self.strip_start is None else self.strip_start
    return schedules.PeriodicSchedule(int(self.strip_every), int(start),
                                      at_end=bool(self.strip_at_end))

  @property
  def probe(self) -> base.ProbeSpec:
    return base.ProbeSpec(int(self.probe_batches), int(self.probe_batch_size),
                          self.probe_split, float(self.epsilon), stats=True)

  def decide(self, ctx: base.PruneContext) -> base.Decision:
    stats = ctx.stats()
    masks = self.strip(ctx.variables['params'], ctx.opt_state.masks, stats)
    return base.Decision(masks=masks, metrics={
        **self.event_metrics(ctx, masks), **base.stats_metrics(stats)})

  def strip(self, params: Any, masks: Any,
            stats: Mapping[str, stats_lib.UnitStats]) -> Any:
    """New masks: :func:`strip_masks` on the dead units of ``stats``."""
    dead = {g.name: stats[g.name].dead for g in self.stripped_groups()
            if g.name in stats}
    return strip_masks(self.topology, params, masks, dead,
                       float(self.stripping_factor))

  def event_metrics(self, ctx: base.PruneContext, masks: Any) -> dict:
    """The reference's numbers at an event, after stripping with ``masks``:

    * ``dead_units``: dead units over all groups (before this strip);
    * ``stripped_now`` / ``stripped_total``: weights masked at this event /
      so far (over the stripped kernels);
    * ``active_weights``: the reference's "active parameters": entries of
      the stripped kernels that are not masked and belong to units that are
      not dead (biases excluded), and ``weights_total`` the entries of
      those kernels; ``parametric_utilisation`` is their ratio.
    """
    stats = ctx.stats()
    params = ctx.variables['params']
    before = ctx.opt_state.masks
    masks = before if masks is None else masks
    dead_units = int(sum(int(np.sum(np.asarray(s.dead)))
                         for s in stats.values()))
    active = total = 0
    for g in self.stripped_groups():
      alive = ~np.asarray(stats[g.name].dead)
      for r in masked.incoming_refs(g, params):
        m = topo.get_leaf({'params': masks}, r.key)
        if m is None:
          continue
        cols = np.asarray(masked.to_columns(m, r.axis))
        active += int(cols[:, alive].sum())
        total += int(cols.size)
    ones_before, _ = masked.mask_counts(before)
    ones_after, n = masked.mask_counts(masks)
    return {'dead_units': dead_units,
            'stripped_now': ones_before - ones_after,
            'stripped_total': n - ones_after,
            'active_weights': active, 'weights_total': total,
            'parametric_utilisation': active / max(total, 1)}


ALGORITHMS: dict[str, type] = {'synaptic_stripping': SynapticStripping}
