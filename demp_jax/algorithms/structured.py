"""Structured baselines that remove units physically, as DemP does.

Each is an updater dataclass on the same contract as DemP: at the steps of
its ``schedule`` the loop hands :meth:`StructuredPruner.decide` a
:class:`~demp_jax.algorithms.base.PruneContext` and removes the units the
:class:`~demp_jax.algorithms.base.Decision` does not keep with
:mod:`demp_jax.surgery` (params, norm statistics, optimiser state), then
recompiles. Within this family ``decide`` asks :meth:`choose_keep`, which
the one-shot methods override. Scores and selection are in
:mod:`demp_jax.algorithms.scores`. As the base of iterative pruning (AP's
cycles) a structured pruner prunes whole units in
:meth:`StructuredPruner.prune_round`.

==========================  ===============================  ===============
algorithm                   score                            when
==========================  ===============================  ===============
``snap``                    ``|sum_b dL_b/dc|`` (SNAP)       step 0
``crop_it``                 ``|sum_b H_b g_b|`` (CroP-it-S)  step 0
``early_snap``              SNAP                             EarlyCroP test
``early_crop``              CroP-it-S (EarlyCroP-S)          EarlyCroP test
``structured_magnitude``    L1 of incoming weights           polynomial
``network_slimming``        ``|gamma|`` after L1 on gammas   one step
==========================  ===============================  ===============

References: SNAP: Verdenius et al., arXiv:2006.00896; CroP-it / EarlyCroP:
Rachwan et al., arXiv:2206.10451; L1 filter pruning: Li et al.,
arXiv:1608.08710; gradual schedule: Zhu & Gupta, arXiv:1710.01878; network
slimming: Liu et al., arXiv:1708.06519. Settings follow the DemP authors'
``structured_baseline.py`` / ``scores.py`` (global ranking, scores from 10
held batches with norm layers in eval mode, pruning at step 0 or at the
EarlyCroP time).

``sparsity`` (JaxPruner's key) is the target *unit* sparsity: the fraction
of the initial units of the scored groups that are removed. ``min_width``
keeps at least that many units in every layer.

**Python-side state.** The loop replaces the updater after every surgery
with ``dataclasses.replace(updater, topology=...)``. What must survive
(the initial widths, EarlyCroP's ``theta_0`` and previous distance, whether
pruning happened) lives in a small mutable :class:`PruneTracker` held by
the ``tracker`` field: ``replace`` passes the same object on to the new
updater. ``tracker`` is not a config key. A fresh updater (as
``create_updater_from_config`` builds for every ``train`` call) starts with
a fresh tracker; call ``tracker.reset()`` to reuse one for a second run.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import numpy as np
import optax

from demp_jax import topology as topo
from demp_jax import transforms
from demp_jax.algorithms import base
from demp_jax.algorithms import masked
from demp_jax.algorithms import schedules
from demp_jax.algorithms import scores


@dataclasses.dataclass
class PruneTracker:
  """Mutable memory shared by an updater and its ``replace``d copies.

  Attributes:
    initial_sizes: unit count per group of the first topology seen.
    events: ``(step, sparsity target, units kept)`` per pruning decision.
    theta0: host copy of the params at EarlyCroP's first check.
    init_norm: ``||theta_0||``.
    prev_dist: ``||theta_{t-1} - theta_0||`` at the previous check.
    first_dist: ``||theta_1 - theta_0||`` (for the modulated threshold).
    threshold: the EarlyCroP threshold in use.
    checks: ``(step, d_t, relative change)`` per EarlyCroP check.
    pruned_at: step of the (one-shot) pruning, None before.
  """
  initial_sizes: Optional[dict] = None
  events: list = dataclasses.field(default_factory=list)
  theta0: Any = None
  init_norm: float = float('nan')
  prev_dist: float = 0.0
  first_dist: Optional[float] = None
  threshold: Optional[float] = None
  checks: list = dataclasses.field(default_factory=list)
  pruned_at: Optional[int] = None

  def reset(self) -> None:
    """Forgets everything, for a new run with the same updater."""
    fresh = PruneTracker()
    for f in dataclasses.fields(self):
      setattr(self, f.name, getattr(fresh, f.name))


def _tracker_field():
  return dataclasses.field(default_factory=PruneTracker, repr=False,
                           compare=False, metadata={'config': False})


@dataclasses.dataclass
class StructuredPruner(base.BaseUpdater):
  """Base of the score-based structured pruners.

  Subclasses define :meth:`unit_scores` and when they prune; this class
  turns scores into a keep decision (:func:`scores.select_units`) at the
  target sparsity of the step, against the initial widths.

  Attributes:
    sparsity: target unit sparsity in [0, 1) (JaxPruner's key).
    dist_type: ``'global'`` (one ranking across layers) or ``'uniform'``
      (the same sparsity in every layer).
    min_width: every layer keeps at least this many units.
    tracker: Python-side state, see the module docstring.
  """
  needs_units: ClassVar[bool] = True
  sparsity: float = 0.5
  dist_type: str = 'global'
  min_width: int = 1
  tracker: PruneTracker = _tracker_field()

  def __post_init__(self):
    if not 0.0 <= float(self.sparsity) < 1.0:
      raise ValueError(f'sparsity_config.sparsity must be in [0, 1) (the '
                       f'fraction of units removed), got {self.sparsity}')
    if self.dist_type not in ('global', 'uniform'):
      raise ValueError(f"sparsity_config.dist_type={self.dist_type!r}: the "
                       "structured pruners take 'global' or 'uniform'")
    if int(self.min_width) < 1:
      raise ValueError(f'sparsity_config.min_width must be >= 1, got '
                       f'{self.min_width}')
    if self.topology is not None and self.tracker.initial_sizes is None:
      self.tracker.initial_sizes = dict(self.topology.sizes)

  # ---------------------------------------------------------------- optax

  def get_initial_masks(self, params: Any) -> Any:
    if self.topology is None:
      raise ValueError(f'{type(self).__name__} needs the model\'s unit '
                       'topology: dataclasses.replace(updater, topology='
                       'net.topology)')
    return topo.param_masks(self.topology, params)

  # ------------------------------------------------------------- pruning

  granularity: ClassVar[Optional[str]] = 'unit'

  @property
  def schedule(self) -> schedules.Schedule:
    """:meth:`pruning_schedule`; no more steps once a one-shot method has
    pruned (``tracker.pruned_at``)."""
    if self.tracker.pruned_at is not None:
      return schedules.NoUpdateSchedule()
    return self.pruning_schedule()

  def pruning_schedule(self) -> schedules.Schedule:
    """When the method prunes (default: never)."""
    return schedules.NoUpdateSchedule()

  @property
  def probe(self) -> base.ProbeSpec:
    return base.ProbeSpec(1, 256)  # only the surgery's probe batch

  def unit_scores(self, ctx: base.PruneContext,
                  live: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{group: float[n]}``, larger is more important."""
    raise NotImplementedError

  def target_sparsity(self, step: int) -> float:
    del step
    return float(self.sparsity)

  def _initial_sizes(self, topology: topo.UnitTopology) -> dict:
    if self.tracker.initial_sizes is None:
      self.tracker.initial_sizes = dict(topology.sizes)
    return self.tracker.initial_sizes

  def select(self, ctx: base.PruneContext, live: dict[str, np.ndarray],
             sparsity: float) -> dict[str, np.ndarray]:
    """The units to keep at unit ``sparsity`` of the initial widths."""
    return scores.select_units(self.unit_scores(ctx, live), live, sparsity,
                               self._initial_sizes(ctx.topology),
                               dist_type=self.dist_type,
                               min_width=int(self.min_width))

  def decide(self, ctx: base.PruneContext) -> base.Decision:
    return base.Decision(keep=self.choose_keep(ctx))

  def choose_keep(self, ctx: base.PruneContext) -> Optional[dict]:
    """The units to keep at this step's target sparsity, or None when no
    unit goes."""
    live = scores.live_units(ctx.topology, ctx.opt_state)
    s = self.target_sparsity(ctx.step)
    return self._finish(ctx.step, s, live, self.select(ctx, live, s))

  def _finish(self, step, s, live, keep) -> Optional[dict]:
    kept = int(sum(int(v.sum()) for v in keep.values()))
    self.tracker.events.append((int(step), float(s), kept))
    if all(np.array_equal(keep[k], live[k]) for k in keep):
      return None  # nothing to remove
    return keep

  def prune_round(self, ctx: base.PruneContext, masks: Any, fraction: float,
                  start_params: Any = None) -> base.RoundResult:
    """Masks with ``fraction`` of the live units (read from ``masks`` by
    :func:`scores.live_units`) pruned, ranked by this pruner's own scores:
    it is asked for the unit sparsity ``s = 1 - (live / initial)
    (1 - fraction)``. The pruned units are masked as units (kernel
    columns, biases, norms and consumer rows,
    :func:`topology.param_masks`), ANDed into ``masks``."""
    del start_params
    topology = ctx.topology
    live = scores.live_units(topology, base.SparseState(masks=masks))
    n_live = sum(int(v.sum()) for v in live.values())
    total = sum(g.size for g in topology.groups)
    target = min(1.0 - n_live / total * (1.0 - fraction), 1.0 - 1e-9)
    keep = self.select(ctx, live, max(target, 0.0))
    return base.RoundResult(masked.combine_masks(
        masks, topo.param_masks(topology, ctx.variables['params'], keep)), {})


# ------------------------------------------------------------ gate scores


@dataclasses.dataclass
class SNAP(StructuredPruner):
  """SNAP: gate saliency ``|sum_b dL_b/dc_i|``, pruned before training.

  Reference: Verdenius et al., "Pruning via Iterative Ranking of
  Sensitivity Statistics", arXiv:2006.00896, as run by the DemP authors
  (global ranking over all layers, 10 held batches, eval-mode norms).

  Attributes:
    score_batches: held training batches ``N`` the scores are summed over.
    score_batch_size: examples per held batch.
    pruning_steps: the reference's iterative single-shot pruning: with more
      than one step and ``sparsity > 0.5`` the units are removed in
      sub-steps (:func:`scores.iterative_targets`), rescoring the network
      pruned so far (pruned units gated to 0) before each.
    score_train_mode: norm layers in train mode (batch statistics) for the
      scores; default eval mode as in the reference.
  """
  score_batches: int = 10
  score_batch_size: int = 512
  pruning_steps: int = 1
  score_train_mode: bool = False

  score_kind = 'snap'  # class attribute, not a field

  def __post_init__(self):
    super().__post_init__()
    for name in ('score_batches', 'score_batch_size', 'pruning_steps'):
      if int(getattr(self, name)) < 1:
        raise ValueError(f'sparsity_config.{name} must be >= 1, got '
                         f'{getattr(self, name)}')

  def pruning_schedule(self) -> schedules.Schedule:
    return schedules.OneShotSchedule(0)

  @property
  def probe(self) -> base.ProbeSpec:
    return base.ProbeSpec(int(self.score_batches), int(self.score_batch_size))

  def unit_scores(self, ctx, live):
    fn = (scores.crop_scores if self.score_kind == 'crop' else
          scores.snap_scores)
    gates = {k: v.astype(np.float32) for k, v in live.items()}
    return fn(ctx.model, ctx.variables, ctx.images, ctx.labels, gates,
              train_mode=bool(self.score_train_mode))

  def choose_keep(self, ctx: base.PruneContext) -> Optional[dict]:
    live = scores.live_units(ctx.topology, ctx.opt_state)
    current = dict(live)
    s = self.target_sparsity(ctx.step)
    for target in scores.iterative_targets(s, int(self.pruning_steps)):
      current = self.select(ctx, current, target)
    self.tracker.pruned_at = int(ctx.step)
    return self._finish(ctx.step, s, live, current)


@dataclasses.dataclass
class CropIt(SNAP):
  """CroP-it-S: the gradient-flow score ``|sum_b (H_b g_b)_i|`` on the
  gates (forward-over-reverse HVP), pruned before training.

  Reference: Rachwan et al., "Winning the Lottery Ahead of Time: Efficient
  Early Network Pruning", arXiv:2206.10451, structured variant as in the
  DemP authors' ``early_crop_score``.
  """
  score_kind = 'crop'


@dataclasses.dataclass
class EarlySNAP(SNAP):
  """SNAP scores at the time chosen by EarlyCroP's criterion.

  Every ``check_every`` steps (set it to the steps per epoch: the
  reference checks at epoch boundaries), with ``d_t = ||theta_t -
  theta_0||`` over all params and ``theta_0`` the params at step 0, prune
  at the first check where ``0 < |d_t - d_{t-1}| / ||theta_0|| < th``,
  ``th = 1 - sparsity`` (:func:`scores.earlycrop_fires`). ``d_0 = 0``, so
  step 0 never fires.

  Attributes:
    check_every: steps between checks.
    modulate_threshold: after the second check use EarlyCroP's official
      threshold ``1 - (d_1 / ||theta_0||) * min(1 - s - 0.1, 0.99)`` (the
      reference's default on CIFAR; its ImageNet runs turn it off). The
      DemP authors' code also resets ``theta_0`` to ``theta_1`` when it
      modulates; this implementation keeps ``theta_0``.
    max_prune_step: prune at this step if the criterion has not fired by
      then (None: never, as in the reference, which may then not prune).
  """
  check_every: int = 500
  modulate_threshold: bool = False
  max_prune_step: Optional[int] = None

  def __post_init__(self):
    super().__post_init__()
    if int(self.check_every) < 1:
      raise ValueError(f'sparsity_config.check_every must be >= 1, got '
                       f'{self.check_every}')

  def pruning_schedule(self) -> schedules.Schedule:
    checks = schedules.PeriodicSchedule(int(self.check_every))
    if self.max_prune_step is None:
      return checks
    return schedules.AnyOf(
        (checks, schedules.OneShotSchedule(int(self.max_prune_step))))

  def should_prune(self, step: int, params: Any) -> bool:
    """Records one check of the criterion; True when it fires (or when
    ``max_prune_step`` is reached)."""
    t = self.tracker
    if t.theta0 is None:
      t.theta0 = jax.tree.map(np.array, jax.device_get(params))
      t.init_norm = scores.tree_norm(t.theta0)
      t.prev_dist = 0.0
      t.threshold = scores.earlycrop_threshold(self.sparsity)
      dist = 0.0
    else:
      dist = scores.tree_distance(params, t.theta0)
      if t.first_dist is None:
        t.first_dist = dist
      elif self.modulate_threshold and len(t.checks) == 2:
        t.threshold = scores.modulated_threshold(self.sparsity, t.first_dist,
                                                 t.init_norm)
    fires = scores.earlycrop_fires(dist, t.prev_dist, t.init_norm,
                                   t.threshold)
    rel = abs(dist - t.prev_dist) / (t.init_norm + 1e-6)
    t.checks.append((int(step), dist, rel))
    t.prev_dist = dist
    forced = self.max_prune_step is not None and step >= self.max_prune_step
    return fires or forced

  def choose_keep(self, ctx: base.PruneContext) -> Optional[dict]:
    if not self.should_prune(ctx.step, ctx.variables['params']):
      return None
    self.tracker.theta0 = None  # free the copy
    return super().choose_keep(ctx)


@dataclasses.dataclass
class EarlyCrop(EarlySNAP):
  """EarlyCroP-S: CroP-it-S scores at EarlyCroP's pruning time."""
  score_kind = 'crop'


# --------------------------------------------------------------- magnitude


@dataclasses.dataclass
class StructuredMagnitude(StructuredPruner):
  """Gradual structured magnitude pruning: per-unit L1 norm of the incoming
  weights, physically removed at every update of JaxPruner's polynomial
  schedule (``update_start_step``, ``update_end_step``, ``update_freq``;
  sparsity ``s * (1 - (1 - p)^power)``; one-shot at ``update_end_step``
  when start == end).

  With ``dist_type='uniform'`` (default) every layer reaches the same unit
  sparsity, ranked by the L1 norm; with ``'global'`` the ranking is across
  layers by the *mean* ``|w|`` (L1 / fan-in), so that fan-ins compare.
  """
  dist_type: str = 'uniform'
  update_freq: int = 100
  update_start_step: Optional[int] = None
  update_end_step: Optional[int] = None
  power: int = 3

  def __post_init__(self):
    super().__post_init__()
    if self.update_start_step is None or self.update_end_step is None:
      raise ValueError('structured_magnitude needs sparsity_config.'
                       'update_start_step and update_end_step (JaxPruner\'s '
                       'polynomial schedule): write them in the config '
                       "file's sparsity_config (a --config.sparsity_config. "
                       'flag cannot add a key the config lacks), or run it '
                       'through experiments.tradeoff')
    if int(self.update_end_step) < int(self.update_start_step):
      raise ValueError('sparsity_config.update_end_step must be >= '
                       'update_start_step')
    if int(self.update_freq) < 1:
      raise ValueError(f'sparsity_config.update_freq must be >= 1, got '
                       f'{self.update_freq}')

  def pruning_schedule(self) -> schedules.Schedule:
    return schedules.jaxpruner_schedule(int(self.update_freq),
                                        int(self.update_start_step),
                                        int(self.update_end_step))

  def target_sparsity(self, step: int) -> float:
    return schedules.polynomial_sparsity(
        step, float(self.sparsity), int(self.update_start_step),
        int(self.update_end_step), int(self.power))

  def unit_scores(self, ctx, live):
    del live
    return scores.incoming_l1(ctx.topology, ctx.variables['params'],
                              normalize=self.dist_type == 'global')


# --------------------------------------------------------- network slimming


@dataclasses.dataclass
class NetworkSlimming(StructuredPruner):
  """Network slimming: an L1 penalty ``lambda * sum |gamma|`` on the norm
  scales during training (:func:`demp_jax.transforms.scale_penalty`, before
  the optimiser, constant ``lambda``), then one global pruning of the units
  with the smallest ``|gamma|`` to the target sparsity.

  Reference: Liu et al., "Learning Efficient Convolutional Networks through
  Network Slimming", arXiv:1708.06519 (lambda = 1e-4 there).

  Attributes:
    reg_strength: the constant ``lambda``.
    regularizer: the penalty, a key of
      :data:`demp_jax.transforms.REGULARIZERS` (``'l1'``).
    prune_step: the step of the pruning; the penalty stops there and the
      rest of training fine-tunes. None: prune after the last step, with
      the penalty on throughout.
  Groups without a norm scale are not pruned.
  """
  reg_strength: float = 1e-4
  regularizer: str = 'l1'
  prune_step: Optional[int] = None

  def __post_init__(self):
    super().__post_init__()
    if self.regularizer not in transforms.REGULARIZERS:
      raise ValueError(
          f'sparsity_config.regularizer={self.regularizer!r} is unknown; '
          f'known: {sorted(transforms.REGULARIZERS)}')
    if float(self.reg_strength) < 0:
      raise ValueError('sparsity_config.reg_strength must be >= 0')
    if self.topology is not None and not any(
        r.collection == 'params' and r.path[-1] == 'scale'
        for g in self.topology.groups for r in g.produces):
      raise ValueError('network_slimming ranks units by their norm scale '
                       '(gamma), but no unit group of this model has one')

  def penalty_schedule(self) -> optax.Schedule:
    """``lambda`` before ``prune_step``, 0 from it (constant without)."""
    lam = float(self.reg_strength)
    if self.prune_step is None:
      return optax.constant_schedule(lam)
    return optax.piecewise_constant_schedule(
        lam, {int(self.prune_step): 0.0} if lam else {})

  def wrap_inner(self, inner):
    return optax.with_extra_args_support(optax.chain(
        transforms.scale_penalty(self.penalty_schedule(), self.regularizer),
        inner))

  def pruning_schedule(self) -> schedules.Schedule:
    if self.prune_step is None:
      return schedules.NoUpdateSchedule(at_end=True)
    return schedules.OneShotSchedule(int(self.prune_step))

  def unit_scores(self, ctx, live):
    del live
    out = scores.norm_scale_magnitude(ctx.topology, ctx.variables['params'])
    if not out:
      raise ValueError('network_slimming ranks units by their norm scale '
                       '(gamma), but no unit group of this model has one')
    return out

  def choose_keep(self, ctx):
    self.tracker.pruned_at = int(ctx.step)
    return super().choose_keep(ctx)


ALGORITHMS: dict[str, type] = {
    'snap': SNAP,
    'crop_it': CropIt,
    'early_snap': EarlySNAP,
    'early_crop': EarlyCrop,
    'structured_magnitude': StructuredMagnitude,
    'network_slimming': NetworkSlimming,
}
