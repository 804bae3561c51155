"""Global unstructured magnitude pruning with strict masks.

:class:`GlobalMagnitudePruning` (``'global_magnitude'``) removes a *fraction
of what remains* at each call of :meth:`GlobalMagnitudePruning.prune_round`:
the AP cycle driver (:mod:`demp_jax.training.cycles`) calls it once per
round, and the training loop's :meth:`GlobalMagnitudePruning.decide` on
JaxPruner's schedule (``sparsity``, ``update_start_step``,
``update_end_step``, ``update_freq``, the same polynomial as the structured
baselines, :func:`demp_jax.algorithms.schedules.polynomial_sparsity`; no
``update_start_step``: never prunes in the loop).

Masks are strict (:class:`masked.StrictMasking`): pruned weights stay 0.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np

from demp_jax import topology as topo
from demp_jax.algorithms import base
from demp_jax.algorithms import masked
from demp_jax.algorithms import schedules


def _leaves(tree: Any) -> list[tuple[tuple, Any]]:
  return [(topo.key_path(p), x) for p, x in
          jax.tree_util.tree_flatten_with_path(
              tree, is_leaf=lambda x: x is None)[0]]


def _unflatten_like(tree: Any, leaves: list) -> Any:
  return jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(tree, is_leaf=lambda x: x is None), leaves)


@dataclasses.dataclass
class GlobalMagnitudePruning(masked.StrictMasking):
  """Global unstructured magnitude pruning: one ranking of ``|w|`` over
  every leaf ``filter_fn`` selects (default: ``ndim > 1``, the kernels).

  Each :meth:`prune_round` prunes exactly ``n = round(fraction * N_alive)``
  alive weights with the smallest scores (ties broken by position):
  ``score = |w|``, or ``|w| / (||w ⊙ m||_2 + 1e-8)`` per leaf with
  ``use_normalization`` (JaxPruner's ``global_magnitude`` default; here the
  default is raw magnitudes, as in classic IMP and the AP reference).

  Attributes:
    sparsity: the loop's target fraction of the prunable weights pruned.
    update_start_step: first pruning step in the loop (None: never).
    update_end_step: step where ``sparsity`` is reached (default: start,
      one shot).
    update_freq: steps between pruning events in the loop.
    power: exponent of the polynomial schedule.
    filter_fn: ``(path tuple, leaf) -> bool``, the prunable leaves.
    use_normalization: L2-normalise each leaf before the global ranking.
  """
  sparsity: float = 0.5
  update_start_step: Optional[int] = None
  update_end_step: Optional[int] = None
  update_freq: int = 100
  power: int = 3
  filter_fn: Optional[masked.FilterFn] = None
  use_normalization: bool = False

  granularity: ClassVar[Optional[str]] = 'weight'

  def __post_init__(self):
    if not 0.0 <= float(self.sparsity) < 1.0:
      raise ValueError(f'sparsity_config.sparsity must be in [0, 1), got '
                       f'{self.sparsity}')
    if int(self.update_freq) < 1:
      raise ValueError(f'sparsity_config.update_freq must be >= 1, got '
                       f'{self.update_freq}')

  # ---------------------------------------------------------------- masks

  def get_initial_masks(self, params: Any) -> Any:
    return masked.ones_masks(params, self.filter_fn)

  def prune_round(self, ctx: base.PruneContext, masks: Any, fraction: float,
                  start_params: Any = None) -> base.RoundResult:
    """New masks with ``round(fraction * N_alive)`` more weights pruned by
    the magnitude of ``ctx.variables['params']``."""
    del start_params
    return base.RoundResult(global_magnitude_masks(
        ctx.variables['params'], masks, fraction, self.use_normalization), {})

  def instant_sparsify(self, params: Any, grads: Any = None, **kwargs):
    """One shot to ``sparsity`` from all-ones masks."""
    del grads, kwargs
    masks = global_magnitude_masks(params, self.get_initial_masks(params),
                                   float(self.sparsity),
                                   self.use_normalization)
    return self.apply_masks(params, masks), masks

  # ------------------------------------------------------- loop schedule

  def target_sparsity(self, step: int) -> float:
    if self.update_start_step is None:
      return 0.0
    start = int(self.update_start_step)
    end = start if self.update_end_step is None else int(self.update_end_step)
    return schedules.polynomial_sparsity(step, float(self.sparsity), start,
                                         end, int(self.power))

  @property
  def schedule(self) -> schedules.Schedule:
    return schedules.jaxpruner_schedule(int(self.update_freq),
                                        self.update_start_step,
                                        self.update_end_step)

  @property
  def probe(self) -> base.ProbeSpec:
    return base.ProbeSpec(1, 128)  # magnitudes need no data; keep it small

  def decide(self, ctx: base.PruneContext) -> base.Decision:
    """New masks at this step's polynomial target (None: on target)."""
    masks = ctx.opt_state.masks
    ones, total = masked.mask_counts(masks)
    current = 1.0 - ones / max(total, 1)
    target = self.target_sparsity(ctx.step)
    if target <= current or ones == 0:
      return base.Decision()
    return base.Decision(masks=self.prune_round(
        ctx, masks, (target - current) / (1.0 - current)).masks)


def global_magnitude_masks(params: Any, masks: Any, fraction: float,
                           use_normalization: bool = False) -> Any:
  """Prunes ``round(fraction * N_alive)`` alive entries of the non-``None``
  mask leaves with the smallest ``|w|`` (globally; see
  :class:`GlobalMagnitudePruning`)."""
  plist = dict(_leaves(params))
  mlist = _leaves(masks)
  scores, sizes = [], []
  for path, m in mlist:
    if m is None:
      continue
    w = np.abs(np.asarray(plist[path], np.float32)) * np.asarray(m)
    if use_normalization:
      w = w / (np.sqrt(np.sum(w * w)) + 1e-8)
    scores.append(np.where(np.asarray(m) != 0, w, np.inf).reshape(-1))
    sizes.append(w.size)
  if not scores:
    return masks
  flat = np.concatenate(scores)
  alive = int(np.sum(np.isfinite(flat)))
  n = min(int(round(fraction * alive)), alive)
  keep = np.ones(flat.size, np.uint8)
  keep[np.argsort(flat, kind='stable')[:n]] = 0
  pieces = np.split(keep, np.cumsum(sizes)[:-1])
  out, k = [], 0
  for _, m in mlist:
    if m is None:
      out.append(None)
      continue
    out.append(jnp.asarray(pieces[k].reshape(np.shape(m)) * np.asarray(m),
                           topo.MASK_DTYPE))
    k += 1
  return _unflatten_like(masks, out)



ALGORITHMS: dict[str, type] = {'global_magnitude': GlobalMagnitudePruning}
