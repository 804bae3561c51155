"""Activate-while-Pruning (AP): extra pruning of negative, little-moved
weights on top of any base pruner, to lower the dynamic dead-neuron rate.

Reference: Liu, Ghosh, Tan & Motani, "AP: Selective Activation for
De-sparsifying Pruned Networks", TMLR 2023 (arXiv:2212.06145); the rule
below is the authors' code (github.com/Martin1937/AP-Activate-While-Pruning-).

One round of iterative pruning with rewinding (driven by
:func:`demp_jax.training.cycles.run_cycles`), with ``p`` the round's pruning
rate and ``p_ap`` = ``ap_rate``:

1. train from the round's start ``theta_0`` to ``theta_T``;
2. the base method prunes its share, ``p - p_ap`` of what remains: for an
   unstructured base exactly ``round(p N) - n_ap`` weights, so that AP and
   the base alone reach the same sparsity; a structured base removes
   ``p - p_ap`` of its live units (its own ``prune_round``), so the
   sparsities of AP and of the base alone at rate ``p`` differ a little;
3. AP prunes ``n_ap = floor(p_ap N)`` more weights (``N``: weights alive
   before step 2) among the *surviving negative* weights
   ``C = {i : m_i = 1, theta_T,i < 0}``, those that moved least during the
   round, ``s_i = |theta_T,i - theta_0,i|``, with one global ranking over
   every prunable leaf (exactly ``n_ap``; the reference's ``<=`` threshold
   takes ``n_ap + 1``);
4. the weights rewind to ``theta_0 ⊙ m`` and the optimiser state is reset
   (a fresh ``tx.init``: the reference reuses its SGD momentum buffers, so
   weights pruned in the round can regrow; that leak is not copied).

Removing a negative weight ``w < 0`` on an input ``x >= 0`` (after a ReLU)
can only raise the unit's pre-activation, so units are zero on fewer
inputs: the "selective activation". :func:`demp_jax.stats.dead_rates`
measures it: the dynamic dead-neuron rate, per example the fraction of unit
outputs that are zero, averaged over the probe data.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from demp_jax import topology as topo
from demp_jax.algorithms import base as base_lib
from demp_jax.algorithms import masked
from demp_jax.algorithms import registry
from demp_jax.algorithms import schedules


def ap_select(params_t: Any, params_0: Any, masks: Any, n: int,
              filter_fn: Optional[masked.FilterFn] = None) -> tuple[Any, int]:
  """AP's selection: prune the ``n`` surviving negative weights that moved
  least.

  Args:
    params_t: the trained params ``theta_T``.
    params_0: the round's start params ``theta_0`` (same tree).
    masks: current masks (after the base method); ``None`` leaves and
      leaves ``filter_fn(path, leaf)`` rejects (default: ``ndim > 1``) are
      never touched.
    n: how many weights to prune.

  Returns:
    ``(new masks, pruned)``: candidates ``m = 1`` and ``theta_T < 0`` ranked
    by ``|theta_T - theta_0|`` ascending over all leaves at once (ties by
    position); the first ``min(n, |C|)`` get mask 0.
  """
  fn = filter_fn or masked.not_dim_one
  pt = {topo.key_path(p): x for p, x in
        jax.tree_util.tree_flatten_with_path(params_t)[0]}
  p0 = {topo.key_path(p): x for p, x in
        jax.tree_util.tree_flatten_with_path(params_0)[0]}
  flat, treedef = jax.tree_util.tree_flatten_with_path(
      masks, is_leaf=lambda x: x is None)
  scores, sizes, used = [], [], []
  for path, m in flat:
    key = topo.key_path(path)
    if m is None or not fn(key, pt[key]):
      used.append(False)
      continue
    wt = np.asarray(pt[key], np.float32)
    w0 = np.asarray(p0[key], np.float32)
    cand = (np.asarray(m) != 0) & (wt < 0)
    scores.append(np.where(cand, np.abs(wt - w0), np.inf).reshape(-1))
    sizes.append(wt.size)
    used.append(True)
  if not scores or n <= 0:
    return masks, 0
  s = np.concatenate(scores)
  k = min(int(n), int(np.sum(np.isfinite(s))))
  keep = np.ones(s.size, np.uint8)
  keep[np.argsort(s, kind='stable')[:k]] = 0
  pieces = iter(np.split(keep, np.cumsum(sizes)[:-1]))
  out = []
  for (_, m), u in zip(flat, used):
    if not u:
      out.append(m)
      continue
    out.append(jnp.asarray(next(pieces).reshape(np.shape(m)) * np.asarray(m),
                           topo.MASK_DTYPE))
  return jax.tree_util.tree_unflatten(treedef, out), k


@dataclasses.dataclass
class ActivateWhilePruning(masked.StrictMasking):
  """AP around a registered base pruner (see the module doc).

  The base is any registered updater that prunes in rounds
  (``granularity`` ``'weight'``: ``'global_magnitude'``; or ``'unit'``: a
  structured pruner, ``'structured_magnitude'``, ``'snap'``, ...), whose
  settings go in ``base_config`` (``structured_magnitude`` requires its
  schedule keys, unused here: ``{'update_start_step': 0,
  'update_end_step': 0}``). A round is :meth:`prune_round`; rewinding and
  the fresh optimiser state are the cycle driver's. ``ap_rate = 0`` is the
  base method alone under the same driver.

  Attributes:
    base: registered name of the base pruner.
    base_config: settings of the base (its dataclass fields).
    ap_rate: ``p_ap``, the fraction of the alive weights AP prunes per
      round (0.02 in the reference, out of a 0.2 round).
    filter_fn: ``(path, leaf) -> bool``, the leaves AP may prune (default
      ``ndim > 1``: every kernel; the reference also prunes BatchNorm
      scales).
    base_updater: the base instance (built from ``base`` and
      ``base_config`` on first use when None).
  """
  base: str = 'global_magnitude'
  base_config: Optional[Mapping[str, Any]] = None
  ap_rate: float = 0.02
  filter_fn: Optional[masked.FilterFn] = None
  base_updater: Optional[base_lib.BaseUpdater] = dataclasses.field(
      default=None, metadata={'config': False})

  def __post_init__(self):
    if not 0.0 <= float(self.ap_rate) < 1.0:
      raise ValueError(f'sparsity_config.ap_rate must be in [0, 1), got '
                       f'{self.ap_rate}')
    if self.base in ('ap', None):
      raise ValueError(f'sparsity_config.base={self.base!r}: AP needs a base '
                       'pruner such as "global_magnitude" or '
                       '"structured_magnitude"')

  granularity: ClassVar[Optional[str]] = 'weight'

  def base_pruner(self) -> base_lib.BaseUpdater:
    """The base updater, with this updater's topology."""
    if self.base_updater is None:
      cfg = dict(self.base_config or {})
      cfg['algorithm'] = self.base
      b = registry.create_updater_from_config(cfg, topology=self.topology)
      if b.granularity not in ('weight', 'unit'):
        raise ValueError(
            f'{type(b).__name__} cannot be AP\'s base: it does not prune in '
            'rounds (use an unstructured pruner such as "global_magnitude" '
            'or a structured one such as "structured_magnitude")')
      self.base_updater = b
    return self.base_updater

  def with_topology(self, topology: topo.UnitTopology
                    ) -> 'ActivateWhilePruning':
    b = self.base_updater
    return dataclasses.replace(
        self, topology=topology,
        base_updater=None if b is None else b.with_topology(topology))

  # ---------------------------------------------------------------- masks

  def get_initial_masks(self, params: Any) -> Any:
    """The base's masks, with ones on every leaf AP may prune."""
    return masked.combine_masks(self.base_pruner().get_initial_masks(params),
                                masked.ones_masks(params, self.filter_fn))

  def prune_round(self, ctx: base_lib.PruneContext, masks: Any,
                  fraction: float, start_params: Any = None
                  ) -> base_lib.RoundResult:
    """Base method, then AP (see the module doc); ``start_params`` is
    ``theta_0``. Returns the new masks and the round's counts:
    ``alive_before`` (weights AP may prune that were alive),
    ``pruned_base``, ``pruned_ap`` and ``n_ap``."""
    if not 0.0 <= fraction <= 1.0:
      raise ValueError(f'pruning fraction must be in [0, 1], got {fraction}')
    if self.ap_rate > fraction:
      raise ValueError(f'ap_rate {self.ap_rate} exceeds the round\'s pruning '
                       f'rate {fraction}')
    b = self.base_pruner()
    params = ctx.variables['params']
    fn = self.filter_fn or masked.not_dim_one
    n_w, _ = masked.mask_counts(masks, fn, params)
    n_ap = int(math.floor(float(self.ap_rate) * n_w))
    if n_ap and start_params is None:
      raise ValueError('AP needs the round\'s start params (start_params) to '
                       'measure how far each weight moved')
    if b.granularity == 'weight':
      alive_b, _ = masked.mask_counts(masks)
      n_base = int(round(fraction * alive_b)) - n_ap
      base_fraction = max(n_base, 0) / max(alive_b, 1)
    else:
      base_fraction = fraction - float(self.ap_rate)
    new = b.prune_round(ctx, masks, base_fraction).masks
    after_base, _ = masked.mask_counts(new, fn, params)
    new, pruned_ap = ap_select(params, start_params, new, n_ap,
                               self.filter_fn)
    return base_lib.RoundResult(new, {
        'alive_before': n_w, 'pruned_base': n_w - after_base,
        'pruned_ap': pruned_ap, 'n_ap': n_ap})

  # ------------------------------------------------------------ the loop

  @property
  def schedule(self) -> schedules.Schedule:
    raise ValueError(
        'ActivateWhilePruning prunes between rounds of training with '
        'rewinding; run it with experiments/ap.py '
        '(demp_jax.training.cycles.run_cycles), not the single-run loop')


ALGORITHMS: dict[str, type] = {'ap': ActivateWhilePruning}
