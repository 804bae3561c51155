"""JaxPruner's baselines, optional, through its own public API.

JaxPruner (google-research/jaxpruner, Apache-2.0) is not a dependency and
nothing of it is copied here: this module imports it lazily, when an
updater below is built, and otherwise raises :class:`JaxPrunerUnavailable`
with the install line. Checked against commit
``f133ee50f31a03d0152b8b272edb534065152f5d`` (2024-04-04)::

    pip install "git+https://github.com/google-research/jaxpruner@f133ee50f31a03d0152b8b272edb534065152f5d"

Registered names (always listed by ``all_algorithm_names()``):

=============================  =============================================
``jaxpruner_magnitude``        ``magnitude`` (gradual magnitude pruning)
``jaxpruner_global_magnitude`` ``global_magnitude``
``jaxpruner_saliency``         ``saliency`` (``|w * g|``)
``jaxpruner_random``           ``random``
``jaxpruner_set``              ``set`` (every leaf gets a mask, see below)
``jaxpruner_rigl``             ``rigl`` (every leaf gets a mask, see below)
``jaxpruner_channel``          ``magnitude`` with ``sparsity_type=
                               'channel_-1'``: JaxPruner's structured
                               reference, masks only (see below)
``demp_rigl``                  DemP with RigL on the weights
=============================  =============================================

What it takes on today's JAX:

* **``jax.tree_map``** was removed in JAX 0.6 and JaxPruner calls it
  throughout. Without it the updaters refuse to build
  (:class:`JaxPrunerIncompatible`) unless the config opts in with
  ``jaxpruner_tree_map_alias=True``, which sets the process-wide alias
  ``jax.tree_map = jax.tree_util.tree_map`` with a warning. The
  alternative is JaxPruner's own environment (jax 0.4.30, flax 0.8.5,
  optax 0.2.3, chex 0.1.86, numpy < 2).
* **SET and RigL** map their drop/grow over the masks tree first, and JAX
  no longer treats ``None`` (JaxPruner's "never pruned" mask) as a prefix
  of an array. Here their target-sparsity tree gets ``0.0`` instead of
  ``None`` for the leaves outside ``filter_fn`` (biases, norm parameters),
  so every leaf has an all-ones mask that drop/grow leaves all ones.
* The ``channel`` sparsity type masks whole kernel output columns, but not
  the bias, the norm parameters nor the next layer's inputs: a "pruned"
  channel still outputs ``act(bias)``, and nothing is removed or faster.
  Its results are mask-level structured pruning, not comparable to
  physical unit removal in speed. Given the model's unit topology it
  masks only the kernels that produce units (not the classifier's
  columns, which are classes).

Checked on JAX 0.10.2 with JaxPruner built unchanged from that commit: its
own ``magnitude``, ``global_magnitude``, ``saliency``, ``random``, ``set``,
``rigl`` and ``channel_-1`` run here with the alias above and, for SET and
RigL, the all-ones masks.

None of these updaters removes units: their schedule never asks them to
decide and the network keeps its widths. Their sparsity is the fraction of zero
weights (``experiments.tradeoff`` reads it from the final checkpoint).

``demp_rigl`` (the DemP authors ran "RigL + DemP" on ImageNet: 80% ERK,
``drop_fraction=0.1``) wraps the optimiser as
``chain(scale_penalty, RigL(optimiser), live_unit_noise)``: RigL's
``SparseState`` sits inside DemP's, its masks are applied after every step
together with DemP's unit masks, and DemP's surgery slices them like any
params-shaped optimiser state.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import warnings
from typing import Any, Callable, ClassVar, Optional

import jax
import jax.numpy as jnp
import optax

from demp_jax import topology as topo
from demp_jax.algorithms import base
from demp_jax.algorithms import demp

JAXPRUNER_COMMIT = 'f133ee50f31a03d0152b8b272edb534065152f5d'
INSTALL_LINE = ('pip install "git+https://github.com/google-research/'
                f'jaxpruner@{JAXPRUNER_COMMIT}"')


class JaxPrunerUnavailable(ImportError):
  """jaxpruner is not installed."""


class JaxPrunerIncompatible(RuntimeError):
  """The installed JAX lacks what jaxpruner needs and no shim was allowed."""


def available() -> bool:
  """Whether ``import jaxpruner`` would find the package (without importing
  it)."""
  return importlib.util.find_spec('jaxpruner') is not None


def ensure_tree_map(allow_alias: bool) -> None:
  """Makes ``jax.tree_map`` exist, or refuses.

  Raises:
    JaxPrunerIncompatible: JAX has no ``tree_map`` and ``allow_alias`` is
      False.
  """
  if hasattr(jax, 'tree_map'):
    return
  if not allow_alias:
    raise JaxPrunerIncompatible(
        f'jaxpruner (checked at commit {JAXPRUNER_COMMIT[:8]}) calls '
        f'jax.tree_map, which JAX {jax.__version__} no longer has (removed '
        'in JAX 0.6). Opt in to the process-wide alias jax.tree_map = '
        'jax.tree_util.tree_map with sparsity_config.jaxpruner_tree_map_alias'
        '=True, or run the JaxPruner baselines in its environment (jax '
        '0.4.30, flax 0.8.5, optax 0.2.3, chex 0.1.86, numpy<2).')
  warnings.warn(
      'demp_jax.jaxpruner_adapter: setting jax.tree_map = '
      'jax.tree_util.tree_map for jaxpruner (removed in JAX 0.6); this '
      'changes the jax module for the whole process', RuntimeWarning,
      stacklevel=3)
  jax.tree_map = jax.tree_util.tree_map


def import_jaxpruner(allow_alias: bool = False):
  """Imports jaxpruner and makes it runnable on the installed JAX.

  Raises:
    JaxPrunerUnavailable: jaxpruner is not installed (the message gives the
      install line).
    JaxPrunerIncompatible: see :func:`ensure_tree_map`.
  """
  try:
    jp = importlib.import_module('jaxpruner')
  except ImportError as e:
    raise JaxPrunerUnavailable(
        'the jaxpruner_* baselines and demp_rigl need the optional package '
        f'jaxpruner (not on PyPI): {INSTALL_LINE}') from e
  ensure_tree_map(allow_alias)
  return jp


def _every_leaf_masked(dist_fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
  """Target sparsities with ``0.0`` where ``dist_fn`` gives None."""

  def fn(params):
    return jax.tree.map(lambda s: 0.0 if s is None else s, dist_fn(params),
                        is_leaf=lambda x: x is None)

  return fn


def _build(jp, algorithm: str, cfg: dict, every_leaf: bool):
  """``jaxpruner.create_updater_from_config`` on a ConfigDict of ``cfg``."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict()
  config.algorithm = algorithm
  for k, v in cfg.items():
    if v is not None:
      setattr(config, k, v)
  updater = jp.create_updater_from_config(config)
  if every_leaf and updater.sparsity_distribution_fn is not None:
    updater = dataclasses.replace(
        updater, sparsity_distribution_fn=_every_leaf_masked(
            updater.sparsity_distribution_fn))
  return updater


def _placeholder_safe(jp, tx, inner):
  """``tx`` (a wrapped jaxpruner transformation) whose ``init`` also accepts
  optax's params placeholder (a tree without leaves, used by
  ``optax.tree_map_params`` in the surgery): it then returns a
  ``SparseState`` marking the masks and the inner state's trees as
  params-shaped, and the target sparsities (floats) as not: a leaf there
  stands for the whole float tree, which the surgery leaves as it is."""

  def init_fn(params):
    if not jax.tree.leaves(params):
      return jp.SparseState(masks=params, inner_state=inner.init(params),
                            target_sparsities=0.0,
                            count=jnp.zeros([], jnp.int32))
    return tx.init(params)

  def update_fn(updates, state, params=None, **extra):
    del extra  # built-in jaxpruner algorithms take no extra arguments
    return tx.update(updates, state, params)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@dataclasses.dataclass
class JaxPrunerBaseline(base.BaseUpdater):
  """One JaxPruner algorithm behind this library's updater hooks.

  The fields are JaxPruner's config keys with its meanings: ``sparsity``
  (weight sparsity of the filtered leaves), ``dist_type`` (``'uniform'`` or
  ``'erk'``), ``update_freq``, ``update_start_step`` (None: masks never
  update), ``update_end_step`` (== start: one-shot), ``sparsity_type``
  (e.g. ``'channel_-1'``), ``filter_fn``, ``custom_sparsity_map``,
  ``drop_fraction`` (SET/RigL). ``jaxpruner_options`` passes any other
  JaxPruner dataclass field (``skip_gradients``, ``rng_seed``, ...).
  """
  jaxpruner_algorithm: ClassVar[str] = 'magnitude'
  default_sparsity_type: ClassVar[Optional[str]] = None
  every_leaf_masked: ClassVar[bool] = False

  sparsity: float = 0.8
  dist_type: str = 'uniform'
  update_freq: int = 10
  update_start_step: Optional[int] = None
  update_end_step: Optional[int] = None
  sparsity_type: Optional[str] = None
  filter_fn: Optional[Callable] = None
  custom_sparsity_map: Optional[dict] = None
  drop_fraction: float = 0.1
  jaxpruner_tree_map_alias: bool = False
  jaxpruner_options: Optional[dict] = None
  pruner: Any = dataclasses.field(default=None, init=False, repr=False,
                                  compare=False)

  def __post_init__(self):
    jp = import_jaxpruner(bool(self.jaxpruner_tree_map_alias))
    cfg = {'sparsity': float(self.sparsity), 'dist_type': self.dist_type,
           'update_freq': int(self.update_freq),
           'update_start_step': self.update_start_step,
           'update_end_step': self.update_end_step,
           'sparsity_type': self.sparsity_type or self.default_sparsity_type,
           'filter_fn': self.filter_fn or self.default_filter_fn(),
           'custom_sparsity_map': self.custom_sparsity_map,
           **dict(self.jaxpruner_options or {})}
    if self.jaxpruner_algorithm in ('set', 'rigl'):
      if self.update_end_step is None:
        raise ValueError(f'jaxpruner_{self.jaxpruner_algorithm} needs '
                         'sparsity_config.update_end_step (the drop fraction '
                         'decays to 0 there)')
      cfg['drop_fraction'] = float(self.drop_fraction)
    self.pruner = _build(jp, self.jaxpruner_algorithm, cfg,
                         self.every_leaf_masked)

  def default_filter_fn(self) -> Optional[Callable]:
    """The leaves masked when ``filter_fn`` is None; None: JaxPruner's
    default (every leaf with ``ndim > 1``)."""
    return None

  def wrap_optax(self, inner):
    return self.pruner.wrap_optax(inner)

  def pre_forward_update(self, params, opt_state):
    return self.pruner.pre_forward_update(params, opt_state)

  def post_gradient_update(self, params, opt_state):
    return self.pruner.post_gradient_update(params, opt_state)

  def instant_sparsify(self, params, grads=None, **kwargs):
    return self.pruner.instant_sparsify(params, grads, **kwargs)


def _baseline(name: str, algorithm: str, doc: str,
              sparsity_type: Optional[str] = None,
              every_leaf_masked: bool = False) -> type:
  """A :class:`JaxPrunerBaseline` dataclass for one JaxPruner algorithm."""
  return dataclasses.dataclass(type(name, (JaxPrunerBaseline,), {
      '__doc__': doc, '__module__': __name__,
      'jaxpruner_algorithm': algorithm,
      'default_sparsity_type': sparsity_type,
      'every_leaf_masked': every_leaf_masked}))


JaxPrunerMagnitude = _baseline(
    'JaxPrunerMagnitude', 'magnitude', 'JaxPruner\'s gradual magnitude '
    'pruning.')
JaxPrunerGlobalMagnitude = _baseline(
    'JaxPrunerGlobalMagnitude', 'global_magnitude',
    'JaxPruner\'s global magnitude pruning.')
JaxPrunerSaliency = _baseline('JaxPrunerSaliency', 'saliency',
                              'JaxPruner\'s saliency pruning, ``|w * g|``.')
JaxPrunerRandom = _baseline('JaxPrunerRandom', 'random',
                            'JaxPruner\'s random pruning.')
JaxPrunerSET = _baseline('JaxPrunerSET', 'set', 'JaxPruner\'s SET (every '
                         'leaf masked, see the module doc).',
                         every_leaf_masked=True)
JaxPrunerRigL = _baseline('JaxPrunerRigL', 'rigl', 'JaxPruner\'s RigL (every '
                          'leaf masked, see the module doc).',
                          every_leaf_masked=True)


@dataclasses.dataclass
class JaxPrunerChannel(JaxPrunerBaseline):
  """JaxPruner's ``channel`` sparsity type on magnitude scores: masks whole
  kernel output columns (``'channel_-1'``); biases, norms and the next
  layer's inputs stay, and nothing is removed.

  With a topology and no ``filter_fn``, only the kernels that produce units
  are masked, so ``sparsity`` is a neuron sparsity as for the structured
  baselines; JaxPruner's default filter would also mask the classifier's
  output columns, i.e. whole classes.
  """
  needs_units: ClassVar[bool] = True
  jaxpruner_algorithm: ClassVar[str] = 'magnitude'
  default_sparsity_type: ClassVar[Optional[str]] = 'channel_-1'

  def default_filter_fn(self) -> Optional[Callable]:
    if self.topology is None:
      return None
    kernels = {ref.path for g in self.topology.groups for ref in g.produces
               if ref.collection == 'params' and ref.kind == 'axis'}
    return lambda key, p: p.ndim > 1 and tuple(key) in kernels


@dataclasses.dataclass
class DempRigL(demp.DemonPruning):
  """DemP with RigL: DemP's penalty, noise and dead-unit removal, and RigL's
  dynamic unstructured masks on the weights.

  The optimiser becomes ``chain(scale_penalty, RigL(optimiser),
  live_unit_noise)``; after each step the weights are multiplied by RigL's
  masks and by DemP's unit masks. Units are removed physically as in DemP;
  RigL's masks and moments are sliced with them.

  Attributes (besides DemP's), JaxPruner's keys for RigL: ``sparsity``
  (RigL's weight sparsity, 0.8 in the reference), ``dist_type``
  (``'erk'``), ``drop_fraction`` (0.1), ``update_freq``,
  ``update_start_step``, ``update_end_step`` (default ``0.75 * reg_span``),
  ``filter_fn``, and ``jaxpruner_tree_map_alias`` as in
  :class:`JaxPrunerBaseline`.
  """
  sparsity: float = 0.8
  dist_type: str = 'erk'
  drop_fraction: float = 0.1
  update_freq: int = 100
  update_start_step: Optional[int] = 0
  update_end_step: Optional[int] = None
  filter_fn: Optional[Callable] = None
  jaxpruner_tree_map_alias: bool = False
  pruner: Any = dataclasses.field(default=None, init=False, repr=False,
                                  compare=False)

  def __post_init__(self):
    super().__post_init__()
    jp = import_jaxpruner(bool(self.jaxpruner_tree_map_alias))
    end = self.update_end_step
    if end is None:
      end = int(0.75 * int(self.reg_span))
    self.pruner = _build(jp, 'rigl', {
        'sparsity': float(self.sparsity), 'dist_type': self.dist_type,
        'update_freq': int(self.update_freq),
        'update_start_step': self.update_start_step,
        'update_end_step': int(end),
        'drop_fraction': float(self.drop_fraction),
        'filter_fn': self.filter_fn}, every_leaf=True)

  def wrap_inner(self, inner):
    """DemP's chain around RigL's wrapped optimiser."""
    jp = import_jaxpruner(bool(self.jaxpruner_tree_map_alias))
    return super().wrap_inner(
        _placeholder_safe(jp, self.pruner.wrap_optax(inner), inner))

  def rigl_state(self, opt_state: base.SparseState):
    """RigL's ``SparseState`` inside DemP's (the chain's second state)."""
    return opt_state.inner_state[1]

  def post_gradient_update(self, params, opt_state):
    params = topo.apply_masks(params, self.rigl_state(opt_state).masks)
    return self.apply_masks(params, opt_state.masks)


ALGORITHMS: dict[str, type] = {
    'jaxpruner_magnitude': JaxPrunerMagnitude,
    'jaxpruner_global_magnitude': JaxPrunerGlobalMagnitude,
    'jaxpruner_saliency': JaxPrunerSaliency,
    'jaxpruner_random': JaxPrunerRandom,
    'jaxpruner_set': JaxPrunerSET,
    'jaxpruner_rigl': JaxPrunerRigL,
    'jaxpruner_channel': JaxPrunerChannel,
    'demp_rigl': DempRigL,
}
