"""Demon Pruning (DemP) as a JaxPruner-style updater.

Reference: Dufort-Labbe et al., "Maxwell's Demon at Work: Efficient Pruning
by Leveraging Saturation of Neurons", arXiv:2403.07688.

The updater wraps any optax optimiser as
``chain(scale_penalty, optimiser, live_unit_noise)`` with both schedules
one-cycle over ``reg_span`` steps, keeps per-unit masks in
``SparseState.masks`` and holds masked units at exactly zero. Its schedule
is a death check every ``prune_every`` steps (and at the end); its
:meth:`DemonPruning.decide` keeps the units that are neither dead nor
constant on the held data, and the training loop removes the others
physically (:mod:`demp_jax.surgery`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from demp_jax import stats as stats_lib
from demp_jax import topology as topo
from demp_jax import transforms
from demp_jax.algorithms import base
from demp_jax.algorithms import schedules


@dataclasses.dataclass
class DemonPruning(base.BaseUpdater):
  """DemP: scheduled scale penalty + live-unit noise + dead-unit removal.

  Attributes:
    reg_peak: peak of the one-cycle penalty strength lambda(t).
    reg_span: steps of the one-cycle (T_reg); lambda and sigma are ~0 after.
    regularizer: ``'l1'`` (default), ``'l2'``, ``'l1_pos'`` or ``'l2_pos'``.
    noise_peak: peak of the one-cycle noise std sigma(t) (5e-5 in the paper).
    noise_seed: seed of the noise.
    prune_every: steps between death checks (and surgery).
    prune_start: first step with a death check (default: ``prune_every``;
      at step 0 the running statistics are still at their initial values).
    death_batches: held batches N of the death check.
    death_batch_size: examples per held batch.
    epsilon: a unit is dead if ``sum |a| <= epsilon`` on every held batch.
    min_width: a layer never goes below this many units.
    fold_constants: also remove units whose output is (nearly) constant on
      the held data, folding the constant into the consumers so the
      function is kept. Under the L1 penalty many norm scales reach ~0 with
      a positive offset: such a unit outputs ReLU(offset), it is not dead
      but carries no information.
    constant_layer_tol: a unit is constant if ``max a - min a`` over the
      held data is at most ``constant_layer_tol`` times its layer's mean
      ``|a|`` (:func:`demp_jax.stats.constant_outputs`' ``layer_tol``).
  """
  needs_units: ClassVar[bool] = True
  reg_peak: float = 1e-3
  reg_span: int = 10_000
  regularizer: str = 'l1'
  noise_peak: float = 5e-5
  noise_seed: int = 0
  prune_every: int = 1_000
  prune_start: Optional[int] = None
  death_batches: int = 3
  death_batch_size: int = 512
  epsilon: float = 0.0
  min_width: int = 1
  fold_constants: bool = True
  constant_layer_tol: float = 0.1

  def __post_init__(self):
    if self.regularizer not in transforms.REGULARIZERS:
      raise ValueError(
          f'sparsity_config.regularizer={self.regularizer!r} is unknown; '
          f'known: {sorted(transforms.REGULARIZERS)}')
    for name in ('reg_span', 'prune_every', 'death_batches',
                 'death_batch_size', 'min_width'):
      if int(getattr(self, name)) < 1:
        raise ValueError(f'sparsity_config.{name} must be >= 1, got '
                         f'{getattr(self, name)}')

  # ---------------------------------------------------------------- optax

  def get_initial_masks(self, params: Any) -> Any:
    if self.topology is None:
      raise ValueError('DemonPruning needs the model\'s unit topology: '
                       'dataclasses.replace(updater, topology='
                       'net.topology)')
    return topo.param_masks(self.topology, params)

  def wrap_inner(self, inner):
    """``chain(scale_penalty, inner, live_unit_noise)``."""
    return optax.chain(
        transforms.scale_penalty(
            transforms.onecycle(self.reg_peak, self.reg_span),
            self.regularizer),
        inner,
        transforms.live_unit_noise(
            transforms.onecycle(self.noise_peak, self.reg_span),
            seed=self.noise_seed))

  def inner_extra_args(self, state, grads):
    """Noise mask: the unit masks times the support of the raw gradient.

    A parameter is live if its unit is not masked and the loss moves it on
    this batch (``g != 0``), the reference's rule for "live units only".
    """
    live = jax.tree.map(
        lambda m, g: ((g != 0) if m is None else m * (g != 0)).astype(
            jnp.uint8),
        state.masks, grads, is_leaf=lambda x: x is None)
    return {'live_mask': live}

  # ------------------------------------------------------------- pruning

  @property
  def schedule(self) -> schedules.Schedule:
    start = self.prune_every if self.prune_start is None else self.prune_start
    return schedules.PeriodicSchedule(int(self.prune_every), int(start),
                                      at_end=True)

  @property
  def probe(self) -> base.ProbeSpec:
    return base.ProbeSpec(int(self.death_batches), int(self.death_batch_size),
                          'train', float(self.epsilon), stats=True)

  def decide(self, ctx: base.PruneContext) -> base.Decision:
    """The death check: keep every unit neither dead nor constant
    (:meth:`keep_from_stats`); constants to fold; mean ``|a|`` as the
    bucket padding's scores."""
    s = ctx.stats()
    return base.Decision(
        keep=self.keep_from_stats(s), constants=self.constants(s),
        scores={k: np.asarray(v.mean_abs) for k, v in s.items()},
        metrics=base.stats_metrics(s))

  def constants(self, stats: Mapping[str, stats_lib.UnitStats]
                ) -> Optional[dict[str, np.ndarray]]:
    """Each unit's constant output on the held data (NaN: not constant,
    :func:`demp_jax.stats.constant_outputs` relative to its layer's mean
    ``|a|``); None unless ``fold_constants``."""
    if not self.fold_constants:
      return None
    return stats_lib.constant_outputs(stats, 0.0,
                                      layer_tol=self.constant_layer_tol)

  def scalar_metrics(self, step: int) -> dict:
    return {'lambda': float(transforms.onecycle(self.reg_peak,
                                                self.reg_span)(step)),
            'sigma': float(transforms.onecycle(self.noise_peak,
                                               self.reg_span)(step))}

  def keep_from_stats(self, stats: Mapping[str, stats_lib.UnitStats]
                      ) -> dict[str, np.ndarray]:
    """Keep every unit neither dead nor (with ``fold_constants``) constant;
    top up to ``min_width`` with the most active removed units (largest
    mean |a|)."""
    constant = self.constants(stats)
    keep = {}
    for name, s in stats.items():
      k = ~np.asarray(s.dead, bool)
      if constant is not None:
        k &= ~np.isfinite(constant[name])
      need = min(self.min_width, k.size) - int(k.sum())
      if need > 0:
        order = np.argsort(-np.asarray(s.mean_abs), kind='stable')
        extra = [i for i in order if not k[i]][:need]
        k[extra] = True
      keep[name] = k
    return keep

  def instant_sparsify(self, params: Any, grads: Any = None,
                       live: Optional[Mapping[str, Any]] = None, **kwargs):
    """``(masked params, masks)`` with every unit not ``live`` masked."""
    del grads, kwargs
    masks = topo.param_masks(self.topology, params, live)
    return self.apply_masks(params, masks), masks
