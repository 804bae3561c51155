"""Physical removal of units: a pure function from a model, its variables and
optimiser state to a smaller model, variables and optimiser state.

For every unit group the topology (:mod:`demp_jax.topology`) names each leaf
axis that carries the group's units. Removing units takes the kept indices
along those axes in the params, the norm statistics and every params-shaped
tree of the optimiser state (found with ``optax.tree_map_params``, so any
optax optimiser works; scalar counters are kept). The model is rebuilt with
its new widths.

The promise, checked on a probe batch in eval mode: the shrunk network's
logits equal those of the *masked* network, the original with the removed
units silenced (see :func:`demp_jax.topology.silence_units`), up to float32
rounding: ``max |shrunk - masked| <= atol + rtol * max |masked|`` with
``rtol = 1e-4, atol = 1e-5`` (``rtol`` 4 bfloat16 roundings, ``2**-5``,
for a model that computes in bfloat16). The bound is on the whole batch's
scale, because the narrower layers sum in another order and the rounding of a
logit follows the size of the sums behind it, not of the logit itself; a
missing leaf in a topology moves logits by O(their scale). When the removed
units were dead on the probe data, the masked network is the original
network there.

Function-preserving removal (``shrink(..., fold_constants=True)``): a removed
unit whose output is a constant ``c != 0`` on the data (e.g. a BatchNorm
unit with ``gamma = 0`` and ``beta > 0`` outputs ``ReLU(beta)``) is not
simply dropped: ``c`` times its outgoing weights is first added to each
consumer's bias, or subtracted from the running mean of the BatchNorm that
follows a bias-free consumer (:class:`demp_jax.topology.FoldRef`,
:func:`fold_into_consumers`). The masked reference is then the *folded*
original with the units silenced, and ``max_output_change`` (shrunk vs the
untouched original on the probe) measures how well the function was kept:
0 up to rounding for dense, 1x1-conv and shortcut consumers; for a
zero-padded 3x3 conv consumer the fold is exact away from the image border
only. "Constant" is decided by :func:`demp_jax.stats.constant_outputs`
from per-unit min/max (of the probe batch, or of the held batches'
:class:`demp_jax.stats.UnitStats` passed as ``constants``).

Speed: slicing runs in numpy on the host, one fancy-index gather per leaf
(all sliced axes at once), and puts the result back with the leaf's
sharding; no XLA compilation is involved, so a full-width ResNet-50 with its
AdamW state shrinks in well under a second on a laptop CPU.
"""
from __future__ import annotations

import functools

from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from demp_jax import stats as stats_lib
from demp_jax.errors import one_line
from demp_jax import topology as topo


class SurgeryError(RuntimeError):
  """The shrunk network does not compute what the masked one computes."""


class LeafShapeError(ValueError):
  """A leaf does not have the shape its unit references describe."""


class Shrunk(NamedTuple):
  model: Any
  variables: dict
  opt_state: Any
  removed: dict            # group name -> number of units removed
  max_masked_diff: float   # max |logits_shrunk - logits_masked| on the probe
  max_output_change: float  # max |logits_shrunk - logits_before| on the probe
  folded: dict             # group name -> removed units folded (c != 0)


# ------------------------------------------------------------------ slicing


class _LeafPlan(NamedTuple):
  takes: tuple   # ((axis, int64 index), ...) in application order
  remaps: tuple  # (int64 remap of length n + 1, ...) for index values


def _leaf_plan(entries, keeps: Mapping[str, np.ndarray],
               shape: tuple[int, ...]) -> _LeafPlan:
  """What to do to one leaf: the indices to take per axis and the value
  renumberings of index maps, from its topology entries.

  On an axis, a position is dropped when the unit owning it is removed;
  positions no group owns are kept. Several groups may share an axis (the
  parts of a concatenation) if their positions do not overlap."""
  ndim = len(shape)
  kept: dict[int, np.ndarray] = {}
  owned: dict[int, np.ndarray] = {}
  remaps = []
  for group, ref, role in entries:
    keep = keeps[group.name]
    if ref.kind == 'index' and role == 'consumes':
      remap = np.full(group.size + 1, -1, np.int64)  # last entry: "no unit"
      remap[keep] = np.arange(len(keep))
      remaps.append(remap)
      continue
    if not -ndim <= ref.axis < ndim:
      raise LeafShapeError(f'{ref} (group {group.name!r}) does not fit an '
                           f'array of shape {shape}')
    axis = ref.axis % ndim
    length = shape[axis]
    pos = (np.arange(group.size)[:, None] if ref.kind == 'index' else
           ref.positions(group.size))
    full = ref.kind == 'index' or (ref.start == 0 and ref.stride is None)
    want = group.size if ref.kind == 'index' else ref.length(group.size)
    if (full and length != want) or (pos.size and pos.max() >= length):
      raise LeafShapeError(f'{ref} (group {group.name!r}, {group.size} '
                           f'units) meets an array of shape {shape}; axis '
                           f'{axis} should have length {want}')
    mine = owned.setdefault(axis, np.zeros(length, bool))
    if mine[pos].any():
      raise ValueError(f'two unit groups index the same positions of axis '
                       f'{axis} of {ref}; a leaf position belongs to one '
                       'group')
    mine[pos] = True
    removed = np.ones(group.size, bool)
    removed[keep] = False
    k = kept.setdefault(axis, np.ones(length, bool))
    k[pos[removed]] = False
  takes = tuple((axis, np.flatnonzero(k)) for axis, k in sorted(kept.items())
                if not k.all())
  return _LeafPlan(takes, tuple(remaps))


def _gather(x: np.ndarray, takes) -> np.ndarray:
  """``x`` with ``np.take(x, idx, axis)`` for every ``(axis, idx)``, in one
  fancy-index pass."""
  if not takes:
    return x
  if len(takes) == 1:
    (axis, idx), = takes
    return np.take(x, idx, axis=axis)
  axes = [a for a, _ in takes]
  k = len(takes)
  if axes == list(range(axes[0], axes[0] + k)):
    # Adjacent advanced indices keep their place in the result.
    index: list[Any] = [slice(None)] * x.ndim
    for j, (axis, idx) in enumerate(takes):
      index[axis] = idx.reshape([-1 if i == j else 1 for i in range(k)])
    return x[tuple(index)]
  full = dict(takes)
  return x[np.ix_(*[full.get(a, np.arange(n)) for a, n in
                    enumerate(x.shape)])]


def _apply_plan(plan: _LeafPlan, x: Any) -> Any:
  if x is None or not hasattr(x, 'shape'):
    return x
  if not plan.takes and not plan.remaps:
    return x
  a = np.asarray(x)
  out = _gather(a, plan.takes)
  for remap in plan.remaps:
    out = remap[np.where(out < 0, remap.shape[0] - 1, out)].astype(a.dtype)
  return topo.put_like(out, x)


def _slicer(entries, keeps: Mapping[str, np.ndarray]) -> Callable[[Any], Any]:
  """Function that shrinks one leaf (an array, or None) by its entries.

  The plan is built once per shape (a param and its optimiser moments share
  one plan).
  """
  plans: dict[tuple[int, ...], _LeafPlan] = {}

  def apply(x):
    # a scalar per parameter (NovoGrad's gradient-norm average, zero_nans'
    # flag) has no unit axis: it is kept
    if x is None or not hasattr(x, 'shape') or not entries or not x.shape:
      return x
    shape = tuple(x.shape)
    if shape not in plans:
      plans[shape] = _leaf_plan(entries, keeps, shape)
    return _apply_plan(plans[shape], x)

  return apply


def keep_indices(topology: topo.UnitTopology, keep: Mapping[str, Any],
                 min_width: int = 1) -> dict[str, np.ndarray]:
  """Sorted kept unit indices per group from bool masks (or index arrays).

  Groups missing from ``keep`` keep all their units. A group keeps at least
  ``min_width`` units; ``min_width=0`` lets a whole group go (all internal
  units of a residual block: the block collapses to its shortcut plus the
  constant offset of its last BatchNorm).
  """
  unknown = sorted(set(keep) - set(topology.names))
  if unknown:
    raise ValueError(f'keep names unknown unit groups {unknown}; the model '
                     f'has {list(topology.names)}')
  out = {}
  for g in topology.groups:
    if g.name not in keep:
      out[g.name] = np.arange(g.size)
      continue
    k = np.asarray(keep[g.name])
    if k.dtype == bool:
      if k.shape != (g.size,):
        raise ValueError(f'keep[{g.name!r}] has shape {k.shape}; the group '
                         f'has {g.size} units')
      k = np.flatnonzero(k)
    elif k.size and k.dtype.kind not in 'iu':  # 0.5 would truncate to 0
      raise ValueError(f'keep[{g.name!r}] has dtype {k.dtype}; give a bool '
                       f'mask over the {g.size} units or the kept units\' '
                       'integer indices')
    k = np.unique(k.astype(np.int64))
    if k.size and (k[0] < 0 or k[-1] >= g.size):
      raise ValueError(f'keep[{g.name!r}] has indices outside [0, {g.size})')
    if k.size < min(min_width, g.size):
      what = ('removes every unit of the group' if k.size == 0 else
              f'keeps {k.size} of {g.size} units')
      raise ValueError(f'keep[{g.name!r}] {what}; a layer keeps at least '
                       f'min_width={min_width} units')
    out[g.name] = k
  return out


def shrink_variables(topology: topo.UnitTopology, variables: Mapping[str, Any],
                     keeps: Mapping[str, np.ndarray]) -> dict:
  """Takes the kept units along every topology axis of the variables.

  Index maps consumed by a group get their values renumbered (a removed
  unit becomes -1). The stale ``'activations'`` collection is dropped.
  """
  out = {k: v for k, v in variables.items() if k != 'activations'}
  for key, entries in topology.leaf_refs().items():
    leaf = topo.get_leaf(out, key)
    out = topo.set_leaf(out, key, _slicer(entries, keeps)(leaf))
  return out


def shrink_opt_state(tx: Any, opt_state: Any, params: Any,
                     topology: topo.UnitTopology,
                     keeps: Mapping[str, np.ndarray]) -> Any:
  """Slices every params-shaped tree inside ``opt_state`` like the params.

  ``tx`` is the optimiser (anything with ``init``) that made ``opt_state``;
  optax's ``tree_map_params`` uses it to tell params-shaped trees (Adam's
  ``mu``/``nu``, momentum traces, masks) from the rest (counters, keys),
  which are kept as they are. ``None`` leaves (JaxPruner masks) and
  ``optax.MaskedNode`` leaves (``optax.masked``, ``optax.multi_transform``)
  stay as they are. State of another shape inside a params-shaped tree
  (Adafactor's factored moments) is a ``ValueError`` that says so.
  """
  refs = {k[1]: v for k, v in topology.leaf_refs().items() if k[0] == 'params'}
  slicers = jax.tree_util.tree_map_with_path(
      lambda p, _: _slicer(refs.get(topo.key_path(p), ()), keeps), params)
  if any(isinstance(n, optax.LookaheadState) for n in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.LookaheadState))):
    # its slow weights live in the params container (LookaheadParams), out
    # of the state: slicing only the fast moments would pass and break the
    # next update
    raise ValueError(
        'optimizer state (LookaheadState): surgery cannot slice optax.'
        'lookahead, whose slow weights live in the params container '
        '(LookaheadParams), not in the optimizer state')
  try:
    return optax.tree_map_params(
        tx, lambda x, s: s(x), opt_state, slicers,
        is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode))
  except LeafShapeError as e:
    stale = _not_from(tx, opt_state, params)
    if stale:
      raise ValueError(
          f'optimizer state: {stale}: it was not made for these params (the '
          'optimizer of another model, or of this one before a shrink?)'
      ) from e
    raise ValueError(
        f'optimizer state: {e}. A params-shaped tree of the state holds an '
        'array of another shape (factored second moments, as Adafactor '
        'keeps): surgery slices only state shaped like its params') from e
  except Exception as e:  # pylint: disable=broad-except
    if 'Placeholder' in str(e):  # a label function read the params' tree
      raise ValueError(
          f'optimizer state {_state_types(opt_state)}: a label or mask '
          'function of the optimizer (optax.multi_transform) failed on '
          "optax's params placeholder, which surgery's "
          'optax.tree_map_params hands it instead of the params '
          f'({one_line(e, 120)}); pass the labels as a pytree computed '
          'once from the params, not as a function') from e
    raise ValueError(
        f'optimizer state {_state_types(opt_state)}: surgery cannot slice '
        f'it ({one_line(e, 200)}). It slices states whose '
        'params-shaped trees hold one array or scalar per parameter (adam, '
        'sgd, lion, lamb, novograd, ...), not per-axis accumulators (sm3, '
        'adafactor) or a params container (lookahead)') from e


def _not_from(tx: Any, opt_state: Any, params: Any) -> Optional[str]:
  """The first leaf where ``opt_state`` differs in shape from
  ``tx.init(params)`` (abstractly), or None where it has its shapes."""
  try:
    expected = jax.eval_shape(tx.init, params)
  except Exception:  # pylint: disable=broad-except
    return None  # no verdict: the caller's own message stands
  want = jax.tree_util.tree_flatten_with_path(expected)[0]
  have = jax.tree.leaves(opt_state)
  if len(want) != len(have):
    return (f'{len(have)} arrays where tx.init(params) makes {len(want)}')
  for (path, w), h in zip(want, have):
    if tuple(np.shape(h)) != tuple(w.shape):
      return (f'{"/".join(topo.key_path(path))} has shape '
              f'{tuple(np.shape(h))} where tx.init(params) makes {w.shape}')
  return None


def _state_types(opt_state: Any) -> str:
  """The state's record types, outermost first (``ScaleByAdamState,
  ...``), for messages."""
  names = []
  for node in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(
      x, '_fields')):
    name = type(node).__name__
    if hasattr(node, '_fields') and name not in names:
      names.append(name)
  return f'({", ".join(names[:4])})' if names else f'({type(opt_state).__name__})'


# ------------------------------------------------------------------ folding


def fold_into_consumers(topology: topo.UnitTopology,
                        variables: Mapping[str, Any],
                        values: Mapping[str, Any]) -> dict:
  """Adds constant units' contributions to their consumers' fold targets.

  ``values[g]`` is ``float[n]``: the constant output ``c_i`` of each unit of
  group ``g`` to fold, 0 for the others. For every consumer reference with a
  :class:`demp_jax.topology.FoldRef` the target leaf ``t`` becomes
  ``t + sign * delta`` with

  * kernel consumer ``K`` (output axis last, unit ``i`` owning the positions
    ``P_i`` of axis ``ref.axis``, see :meth:`AxisRef.positions`):
    ``delta[o] = sum_i c_i sum_{p in P_i, taps} K[taps, p, o]``;
  * index consumer ``idx``: ``delta[j] = c_{idx[j]}`` (0 where
    ``idx[j] = -1``).

  Nothing else changes: silence or remove the folded units next. Consumers
  without a fold target lose the constant (the probe check's
  ``max_output_change`` shows it). Sums run in float64.
  """
  deltas: dict[topo.LeafKey, np.ndarray] = {}
  for g in topology.groups:
    if g.name not in values:
      continue
    c = np.asarray(values[g.name], np.float64)
    if c.shape != (g.size,):
      raise ValueError(f'fold values for {g.name!r} have shape {c.shape}; '
                       f'the group has {g.size} units')
    nz = np.flatnonzero(c)
    if nz.size == 0:
      continue
    for ref in g.consumes:
      if ref.fold is None:
        continue
      leaf = np.asarray(topo.get_leaf(variables, ref.key))
      if ref.kind == 'index':
        idx = leaf.reshape(-1).astype(np.int64)
        valid = idx >= 0
        delta = np.where(valid, c[np.where(valid, idx, 0)], 0.0)
      else:
        # K[taps..., position, ..., out] -> [position, taps, out]
        k = np.moveaxis(leaf, ref.axis % leaf.ndim, 0)
        k = k.reshape(k.shape[0], -1, k.shape[-1])
        pos = ref.positions(g.size)[nz]            # [units, owned positions]
        delta = np.einsum('i,ipjo->o', c[nz], k[pos].astype(np.float64))
      key = ref.fold.key
      deltas[key] = deltas.get(key, 0.0) + ref.fold.sign * delta
  out = dict(variables)
  for key, delta in deltas.items():
    t = topo.get_leaf(out, key)
    new = (np.asarray(t, np.float64) + delta).astype(np.asarray(t).dtype)
    out = topo.set_leaf(out, key, topo.put_like(new, t))
  return out


# ------------------------------------------------------------------ shrink


@functools.partial(jax.jit, static_argnums=0)
def _eval_logits(model: Any, variables: Mapping[str, Any], x: jax.Array):
  return model.apply(variables, x, train=False)


def _max_abs(outputs: Any) -> float:
  """``max |x|`` over every array of a model's outputs (logits, or a
  tuple such as ``(logits, features)``)."""
  return max((float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(outputs)),
             default=0.0)


def eval_logits(model: Any, variables: Mapping[str, Any],
                x: jax.Array) -> jax.Array:
  """Eval-mode logits ``[B, classes]`` of ``x`` ``[B, *input_shape]``,
  jitted (compiled once per model width and input shape)."""
  variables = {k: v for k, v in variables.items() if k != 'activations'}
  return _eval_logits(model, variables, x)


def _rebuilt(model: Any, widths: Mapping[str, int]) -> Any:
  """``model.at_widths(widths)``; a model whose code does not run at those
  widths is one :class:`SurgeryError` that names them."""
  try:
    return model.at_widths(widths)
  except Exception as e:  # pylint: disable=broad-except
    changed = {n: w for n, w in widths.items()
               if w != model.topology.group(n).size}
    zero = sorted(n for n, w in changed.items() if w == 0)
    raise SurgeryError(
        f'{model.model_name} does not run with the widths '
        f'{changed} ({one_line(e, 200)})'
        + (f'; {zero} would lose every unit (min_width=0), which its code '
           'does not allow: keep min_width >= 1' if zero else '')) from e


def probe_rtol(model: Any, rtol: float = 1e-4) -> float:
  """The relative tolerance of the probe check: ``rtol`` (float32
  rounding), or 4 roundings of the model's least precise compute dtype
  when that is coarser (a bfloat16 layer rounds the narrower and the
  masked network's sums differently, by about 2**-8 each)."""
  return max(rtol, 4 * model.compute_eps())


def _check_probe(model: Any, probe: Any) -> None:
  """A :class:`ValueError` naming the shapes unless ``probe`` is a batch
  ``[B, *model.input_shape]``."""
  shape = tuple(np.shape(probe))
  if shape[1:] != tuple(model.input_shape):
    want = ', '.join(['B', *map(str, model.input_shape)])
    raise ValueError(f'probe has shape {shape}; it must be a batch of the '
                     f'model\'s inputs, [{want}] (input_shape='
                     f'{tuple(model.input_shape)})')


def shrink(model: Any, variables: Mapping[str, Any], keep: Mapping[str, Any],
           *, opt_state: Any = None, tx: Any = None,
           probe: Optional[jax.Array] = None, rtol: Optional[float] = None,
           atol: float = 1e-5, fold_constants: bool = False,
           constants: Optional[Mapping[str, Any]] = None,
           constant_tol: float = 1e-6, min_width: int = 1) -> Shrunk:
  """Removes the units not in ``keep`` and rebuilds the model smaller.

  Args:
    model: the model, a :class:`demp_jax.net.Net`.
    variables: its variables: ``params``, ``batch_stats``, ...
    keep: group name -> bool vector over the group's units (True = keep) or
      array of kept indices. Missing groups are kept whole.
    opt_state: optional optimiser state to slice alongside; needs ``tx``.
    tx: the optimiser that made ``opt_state``.
    probe: optional batch ``[B, *input_shape]``; when given, checks that the
      shrunk logits (every array the model returns) equal the masked ones
      and raises :class:`SurgeryError` if not.
    rtol, atol: tolerance of that check; ``rtol`` defaults to
      :func:`probe_rtol` of the model (1e-4, coarser for bfloat16 compute).
    fold_constants: fold every removed unit whose output is a non-zero
      constant ``c`` into its consumers before removing it (see the module
      docstring), so the function is kept.
    constants: ``{group: float[n]}`` constant output per unit, NaN where not
      constant (:func:`demp_jax.stats.constant_outputs` of the death check's
      statistics). Default: measured on ``probe``.
    constant_tol: relative tolerance of "constant" when measured on the
      probe (:func:`demp_jax.stats.constant_outputs`).
    min_width: the fewest units a group may keep (see :func:`keep_indices`).

  Returns:
    :class:`Shrunk` with the new model, variables, optimiser state, the
    number of units removed (and folded) per group and the probe
    differences (NaN without a probe).
  """
  if opt_state is not None and tx is None:
    raise ValueError('shrink: opt_state given without the tx that made it')
  if fold_constants and constants is None and probe is None:
    raise ValueError('shrink(fold_constants=True) needs the constants or a '
                     'probe batch to measure them on')
  if probe is not None:
    _check_probe(model, probe)
  mismatch = model.shape_mismatch(variables)
  if mismatch:
    raise ValueError(
        f'shrink: the variables do not fit the net of {model.model_name} '
        f'({mismatch}); pass the net that describes them, the one the last '
        'shrink returned')
  topology = model.topology
  topology.validate(variables)
  keeps = keep_indices(topology, keep, min_width)
  alive = {}
  for g in topology.groups:
    a = np.zeros(g.size, bool)
    a[keeps[g.name]] = True
    alive[g.name] = a
  before = None
  folded = {g.name: 0 for g in topology.groups}
  source = variables
  if fold_constants:
    if constants is None:
      before, ranges = stats_lib.activation_range(model, variables, probe)
      constants = stats_lib.constant_outputs(ranges, constant_tol)
    values = {}
    for g in topology.groups:
      if g.name not in constants:
        continue
      c = np.asarray(constants[g.name], np.float64)
      if c.shape != (g.size,):
        raise ValueError(f'constants[{g.name!r}] has shape {c.shape}; the '
                         f'group has {g.size} units')
      fold = ~alive[g.name] & np.isfinite(c) & (c != 0)
      values[g.name] = np.where(fold, c, 0.0)
      folded[g.name] = int(fold.sum())
    if any(folded.values()):
      source = fold_into_consumers(topology, variables, values)
  new_vars = shrink_variables(topology, source, keeps)
  new_model = _rebuilt(model, {n: len(keeps[n]) for n in topology.names})
  new_model.topology.validate(new_vars)
  new_opt = (None if opt_state is None else
             shrink_opt_state(tx, opt_state, variables['params'], topology,
                              keeps))
  removed = {g.name: g.size - len(keeps[g.name]) for g in topology.groups}
  masked_diff = change = float('nan')
  if probe is not None:
    if before is None:
      before = eval_logits(model, variables, probe)
    masked = eval_logits(model, topo.silence_units(topology, source, alive),
                         probe)
    after = eval_logits(new_model, new_vars, probe)
    masked_diff = _max_abs(jax.tree.map(jnp.subtract, after, masked))
    change = _max_abs(jax.tree.map(jnp.subtract, after, before))
    rtol = probe_rtol(model) if rtol is None else rtol
    bound = atol + rtol * _max_abs(masked)
    if not masked_diff <= bound:  # NaN fails too
      raise SurgeryError(
          f'shrunk logits differ from the masked logits by up to '
          f'{masked_diff:.3g} on the probe batch, above {bound:.3g} '
          f'(atol={atol} + rtol={rtol} x max |masked logit|); removed units '
          f'per group: {removed}. The unit topology of '
          f'{model.model_name} is probably missing a leaf.')
  return Shrunk(new_model, new_vars, new_opt, removed, masked_diff, change,
                folded)
