"""Per-unit scores and unit selection for the structured baselines.

Everything here reads the unit topology (:mod:`demp_jax.topology`), so the
scores exist for every model that describes its units, and the units they
select are removed by the same physical surgery as DemP's dead units.

**Gates.** Unit ``i`` of a group gets a gate ``c_i`` (1 for a live unit, 0
for a removed one). The gate is applied by rescaling parameters, found
generically from the group's ``produces`` entries in the ``'params'``
collection:

* if the group has a norm layer (a produced leaf named ``scale``, or a
  produced leaf outside ``'params'`` such as running statistics), the gate
  multiplies that norm's ``params`` entries of unit ``i`` (scale and offset):
  the norm output ``gamma_i * xhat_i + beta_i`` becomes
  ``c_i * (gamma_i * xhat_i + beta_i)``, exactly, in train and eval mode;
* otherwise it multiplies the producing kernel column ``W[..., i]`` and bias
  ``b_i``: the pre-activation ``z_i`` becomes ``c_i * z_i``.

Either way the unit computes ``act(c_i * z_i)``, the reference's gate
(``ActivationModule``: ``act(c * x)`` with ``c`` a state of ones). For a
positively homogeneous activation (ReLU, leaky ReLU) and ``c_i >= 0`` this is
``c_i * act(z_i)``: the gate multiplies the unit's post-activation output.
``c_i = 0`` gives ``act(0)`` (0 for ReLU: then the unit is cut out as in
the masked network of :func:`demp_jax.topology.silence_units`). With a
residual identity path (an ``'index'`` entry, e.g. a ResNet block without
projection) the gate scales
the parametrised branches only (:func:`partially_gated`; a warning says
so): ``act(c_i * branch_i + identity_i)``.

**Scores** over ``N`` held batches ``(x_b, y_b)``, ``L_b(c)`` the mean
cross-entropy of batch ``b`` with gates ``c`` (at ``c = 1`` on live units):

* SNAP (gate saliency): ``s_i = |sum_b dL_b/dc_i|``;
* CroP-it-S (gradient flow): ``s_i = |sum_b (H_b g_b)_i|`` with
  ``g_b = dL_b/dc`` and ``H_b = d^2 L_b / dc^2``, one forward-over-reverse
  Hessian-vector product per batch (``jax.jvp`` of ``jax.grad``), as in the
  reference's ``early_crop_score``;
* structured magnitude: ``s_i = sum |W[..., i]|`` over the producing
  kernel(s), the L1 norm of the unit's incoming weights;
* network slimming: ``s_i = |gamma_i|``, the unit's norm scale.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from demp_jax import topology as topo

# ------------------------------------------------------------------- gates


def _norm_modules(group: topo.UnitGroup) -> set[tuple[str, ...]]:
  """Module paths of the group's norm layers (see the module docstring)."""
  mods = set()
  for ref in group.produces:
    if ref.kind != 'axis':
      continue
    if ref.collection != 'params' or ref.path[-1] == 'scale':
      mods.add(ref.path[:-1])
  return mods


def gate_refs(topology: topo.UnitTopology
              ) -> dict[str, tuple[topo.AxisRef, ...]]:
  """``{group: params entries that the gate multiplies}``.

  The norm layer's ``params`` entries (scale and offset) for a group with a
  norm, else every produced ``params`` entry (kernel column, bias).

  Raises:
    ValueError: a group with a norm that has no ``params`` entry to scale
      (e.g. ``use_scale=False, use_bias=False``), or with nothing to scale.
  """
  out = {}
  for g in topology.groups:
    params_refs = [r for r in g.produces
                   if r.collection == 'params' and r.kind == 'axis']
    norms = _norm_modules(g)
    if norms:
      refs = [r for r in params_refs if r.path[:-1] in norms]
      if not refs:
        raise ValueError(
            f'unit group {g.name!r} has a norm layer {sorted(norms)} without '
            'a scale or offset in params: a gate cannot be applied by '
            'rescaling parameters (scaling the kernel is not exact in eval '
            'mode, where the running statistics are fixed)')
    else:
      refs = params_refs
    if not refs:
      raise ValueError(f'unit group {g.name!r} produces no params entry; '
                       'it cannot be gated')
    out[g.name] = tuple(refs)
  return out


def apply_gates(params: Any, refs: Mapping[str, Sequence[topo.AxisRef]],
                gates: Mapping[str, jax.Array]) -> Any:
  """Multiplies each gated ``params`` entry of unit ``i`` by ``gates[g][i]``.

  Args:
    params: the model's ``params`` tree.
    refs: :func:`gate_refs` of the topology.
    gates: ``{group: float[n]}``; groups missing are not gated.

  Returns:
    A params tree of the same structure and shapes.
  """
  variables = {'params': params}
  for name, c in gates.items():
    for ref in refs[name]:
      leaf = topo.get_leaf(variables, ref.key)
      m = topo.unit_axis_mask(ref, jnp.asarray(c, leaf.dtype), leaf.shape)
      variables = topo.set_leaf(variables, ref.key, leaf * m)
  return variables['params']


def _batch_loss(model, refs, train_mode, variables, gates, x, y):
  """Mean cross-entropy of one batch with gated params (a scalar)."""
  others = {k: v for k, v in variables.items()
            if k not in ('params', 'activations')}
  params = apply_gates(variables['params'], refs, gates)
  if train_mode:
    mutable = [k for k in ('batch_stats',) if k in others]
    out = model.apply({'params': params, **others}, x, train=True,
                      mutable=mutable)
    logits = out[0] if mutable else out
  else:
    logits = model.apply({'params': params, **others}, x, train=False)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), y))


@functools.partial(jax.jit, static_argnames=('model', 'topology', 'order',
                                             'train_mode'))
def _gate_pass(model, topology, order, train_mode, variables, gates, images,
               labels):
  refs = gate_refs(topology)

  def body(acc, batch):
    x, y = batch
    loss = lambda c: _batch_loss(model, refs, train_mode, variables, c, x, y)
    g = jax.grad(loss)(gates)
    if order == 2:  # forward-over-reverse: H g
      g = jax.jvp(jax.grad(loss), (gates,), (g,))[1]
    return jax.tree.map(jnp.add, acc, g), None

  zero = jax.tree.map(jnp.zeros_like, gates)
  total, _ = jax.lax.scan(body, zero, (images, labels))
  return total


def partially_gated(topology: topo.UnitTopology) -> list[str]:
  """Groups whose units also receive an un-parametrised input (a residual
  identity path, an ``'index'`` entry): their gate scales only the
  parametrised branches, so it is not the gate of the unit's output."""
  return [g.name for g in topology.groups
          if any(r.kind == 'index' for r in g.produces)]


def _warn_partial(topology: topo.UnitTopology) -> None:
  partial = partially_gated(topology)
  if partial:
    warnings.warn(
        f'gate scores: unit groups {partial} add an identity (index) path '
        'that no parameter scales; their gates scale the parametrised '
        'branches only', RuntimeWarning, stacklevel=3)


def _default_gates(topology: topo.UnitTopology,
                   gates: Optional[Mapping[str, Any]]) -> dict:
  out = {}
  for g in topology.groups:
    c = np.ones(g.size, np.float32) if gates is None or g.name not in gates \
        else np.asarray(gates[g.name], np.float32)
    out[g.name] = jnp.asarray(c)
  return out


def gate_gradient(model: Any, variables: Mapping[str, Any], images: jax.Array,
                  labels: jax.Array, gates: Optional[Mapping[str, Any]] = None,
                  *, train_mode: bool = False) -> dict[str, np.ndarray]:
  """``sum_b dL_b/dc`` per unit, signed.

  Args:
    model: a :class:`demp_jax.net.Net` (``topology``, ``apply``).
    variables: its variables.
    images: ``[N, B, ...]`` preprocessed inputs.
    labels: ``[N, B]`` integer labels.
    gates: ``{group: float[n]}`` gate values (default: all ones); a unit
      with gate 0 is silenced.
    train_mode: norm layers in train mode (batch statistics) instead of
      eval mode (running statistics, the reference's choice).

  Returns:
    ``{group: float32[n]}``.
  """
  topology = model.topology
  _warn_partial(topology)
  out = _gate_pass(model, topology, 1, bool(train_mode), dict(variables),
                   _default_gates(topology, gates), images, labels)
  return {k: np.asarray(v) for k, v in out.items()}


def gate_hvp(model: Any, variables: Mapping[str, Any], images: jax.Array,
             labels: jax.Array, gates: Optional[Mapping[str, Any]] = None,
             *, train_mode: bool = False) -> dict[str, np.ndarray]:
  """``sum_b H_b g_b`` per unit, signed, with ``g_b = dL_b/dc`` and
  ``H_b = d^2 L_b/dc^2`` (the Hessian over all gates of all groups).

  Same arguments and result as :func:`gate_gradient`.
  """
  topology = model.topology
  _warn_partial(topology)
  out = _gate_pass(model, topology, 2, bool(train_mode), dict(variables),
                   _default_gates(topology, gates), images, labels)
  return {k: np.asarray(v) for k, v in out.items()}


def snap_scores(model, variables, images, labels, gates=None, *,
                train_mode: bool = False) -> dict[str, np.ndarray]:
  """SNAP: ``|sum_b dL_b/dc_i|`` (see :func:`gate_gradient`)."""
  return {k: np.abs(v) for k, v in gate_gradient(
      model, variables, images, labels, gates, train_mode=train_mode).items()}


def crop_scores(model, variables, images, labels, gates=None, *,
                train_mode: bool = False) -> dict[str, np.ndarray]:
  """CroP-it-S: ``|sum_b (H_b g_b)_i|`` (see :func:`gate_hvp`)."""
  return {k: np.abs(v) for k, v in gate_hvp(
      model, variables, images, labels, gates, train_mode=train_mode).items()}


# ---------------------------------------------------- parameter-only scores


def incoming_l1(topology: topo.UnitTopology, params: Any,
                normalize: bool = False) -> dict[str, np.ndarray]:
  """``s_i = sum |W[..., i]|`` over every produced kernel (``ndim >= 2``).

  With ``normalize`` the sum is divided by the fan-in (entries per unit),
  i.e. the mean ``|W|``, so that layers of different fan-in compare in a
  global ranking. Returns ``{group: float32[n]}``.
  """
  variables = {'params': params}
  out = {}
  for g in topology.groups:
    total = np.zeros(g.size, np.float64)
    fan_in = 0
    for ref in g.produces:
      if ref.collection != 'params' or ref.kind != 'axis':
        continue
      w = np.asarray(topo.get_leaf(variables, ref.key), np.float64)
      if w.ndim < 2:
        continue
      a = topo.units_last(np.abs(w), ref, g.size)
      total += a.sum(0)
      fan_in += a.shape[0]
    if fan_in == 0:
      raise ValueError(f'unit group {g.name!r} has no produced kernel '
                       '(a params leaf with ndim >= 2)')
    out[g.name] = (total / fan_in if normalize else total).astype(np.float32)
  return out


def norm_scale_magnitude(topology: topo.UnitTopology, params: Any
                         ) -> dict[str, np.ndarray]:
  """``s_i = |gamma_i|`` for every group with a produced norm ``scale``
  leaf (summed over several, e.g. a residual's two branches). Groups
  without one are left out of the result."""
  variables = {'params': params}
  out = {}
  for g in topology.groups:
    refs = [r for r in g.produces if r.collection == 'params'
            and r.kind == 'axis' and r.path[-1] == 'scale']
    if refs:
      out[g.name] = sum(np.abs(np.asarray(topo.get_leaf(variables, r.key),
                                          np.float32)) for r in refs)
  return out


# --------------------------------------------------------------- selection


def _top(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
  """The ``k`` candidate indices with the largest scores (ties: lower
  index first); NaN scores rank last."""
  s = np.nan_to_num(np.asarray(scores, np.float64)[candidates], nan=-np.inf)
  order = np.argsort(-s, kind='stable')
  return candidates[order[:max(k, 0)]]


def keep_count(n: int, sparsity: float) -> int:
  """Units kept out of ``n`` at ``sparsity``: ``round((1 - s) * n)``
  (halves round up)."""
  return int(math.floor((1.0 - float(sparsity)) * n + 0.5))


def select_units(scores: Mapping[str, np.ndarray],
                 live: Mapping[str, np.ndarray],
                 sparsity: float,
                 initial_sizes: Mapping[str, int],
                 *, dist_type: str = 'global',
                 min_width: int = 1) -> dict[str, np.ndarray]:
  """Keeps the highest-scoring live units at ``sparsity`` of the initial
  unit count.

  * ``'global'``: one ranking across all scored groups (the reference's
    global percentile); keeps ``round((1 - s) * U0)`` units, ``U0`` the
    initial units of the scored groups.
  * ``'uniform'``: each group keeps ``round((1 - s) * n0_g)`` of its own.

  Units already removed (``live`` False) are never brought back, so a
  group keeps at most its live units. Each group then keeps at least
  ``min(min_width, live units)``, topped up with its best remaining units
  (so the total may exceed the target by those). Groups missing from
  ``scores`` keep all their live units.

  Returns:
    ``{group: bool[n]}`` over the group's current units, for every group in
    ``live``.
  """
  if dist_type not in ('global', 'uniform'):
    raise ValueError(f"dist_type must be 'global' or 'uniform', got "
                     f'{dist_type!r}')
  if not 0.0 <= float(sparsity) < 1.0:
    raise ValueError(f'sparsity must be in [0, 1), got {sparsity}')
  keep = {k: np.asarray(v, bool).copy() for k, v in live.items()}
  names = [k for k in live if k in scores]
  for k in names:
    if np.shape(scores[k]) != np.shape(keep[k]):
      raise ValueError(f'scores[{k!r}] has shape {np.shape(scores[k])}, '
                       f'the group has {np.shape(keep[k])} units')
  if dist_type == 'uniform':
    for k in names:
      live = np.flatnonzero(keep[k])
      n = keep_count(int(initial_sizes.get(k, keep[k].size)), sparsity)
      n = max(n, min(min_width, live.size))
      chosen = _top(scores[k], live, n)
      keep[k] = np.zeros_like(keep[k])
      keep[k][chosen] = True
    return keep
  # global: rank all live units of all scored groups together.
  owners = np.concatenate([np.full(keep[k].size, i) for i, k in
                           enumerate(names)]) if names else np.zeros(0, int)
  index = np.concatenate([np.arange(keep[k].size) for k in names]
                         ) if names else np.zeros(0, int)
  flat = np.concatenate([np.asarray(scores[k], np.float64) for k in names]
                        ) if names else np.zeros(0)
  live = np.flatnonzero(np.concatenate([keep[k] for k in names])
                        ) if names else np.zeros(0, int)
  total0 = sum(int(initial_sizes.get(k, keep[k].size)) for k in names)
  chosen = _top(flat, live, keep_count(total0, sparsity))
  for i, k in enumerate(names):
    mine = index[chosen[owners[chosen] == i]]
    new = np.zeros_like(keep[k])
    new[mine] = True
    need = min(min_width, int(keep[k].sum())) - int(new.sum())
    if need > 0:
      rest = np.flatnonzero(keep[k] & ~new)
      new[_top(scores[k], rest, need)] = True
    keep[k] = new
  return keep


def live_units(topology: topo.UnitTopology, opt_state: Any
               ) -> dict[str, np.ndarray]:
  """Live units per group, read from the updater's masks.

  A unit is live when its produced ``params`` entries are not masked in
  ``opt_state.masks`` (the structured masks that the loop sets with
  ``mask_units``: units kept only to fill a width bucket are masked). A
  1-D produced leaf (bias, norm scale) is read when there is one; missing
  masks mean every unit is live.
  """
  masks = getattr(opt_state, 'masks', None)
  out = {}
  for g in topology.groups:
    live = np.ones(g.size, bool)
    if masks is not None:
      refs = [r for r in g.produces
              if r.collection == 'params' and r.kind == 'axis']
      leaves = [(r, topo.get_leaf({'params': masks}, r.key)) for r in refs]
      leaves = [(r, m) for r, m in leaves if m is not None]
      leaves.sort(key=lambda rm: np.ndim(rm[1]))
      if leaves:
        ref, m = leaves[0]
        m = topo.units_last(np.asarray(m) != 0, ref, g.size)
        live = m.any(axis=0)
    out[g.name] = live
  return out


# ------------------------------------------------- the reference schedules


def iterative_targets(sparsity: float, steps: int,
                      start: float = 0.5) -> list[float]:
  """Cumulative sparsities of the reference's iterative single-shot pruning.

  ``[s]`` when ``steps == 1`` or ``s <= start``; otherwise
  ``[s - (s - start) / 2^i for i = 0..steps] + [s]``: half-way steps from
  ``start`` towards ``s``, then ``s``. All at one training step, each after
  rescoring the network pruned so far.
  """
  s = float(sparsity)
  if steps <= 1 or s <= start:
    return [s]
  return [s - (s - start) * 0.5 ** i for i in range(steps + 1)] + [s]


def earlycrop_fires(curr_dist: float, prev_dist: float, init_norm: float,
                    threshold: float) -> bool:
  """EarlyCroP's pruning-time test:
  ``0 < |d_t - d_{t-1}| / (||theta_0|| + 1e-6) < th`` with
  ``d_t = ||theta_t - theta_0||`` (the reference's
  ``test_earlycrop_pruning_step``)."""
  rel = abs(float(curr_dist) - float(prev_dist)) / (float(init_norm) + 1e-6)
  return 0.0 < rel < float(threshold)


def earlycrop_threshold(sparsity: float) -> float:
  """``th = 1 - rho`` where ``rho`` is the reference's ``pruning_density``,
  the fraction of units it removes (it is passed to ``score_to_neuron_mask``
  as the desired sparsity): ``th = 1 - sparsity``."""
  return 1.0 - float(sparsity)


def modulated_threshold(sparsity: float, first_dist: float,
                        init_norm: float) -> float:
  """EarlyCroP's official-code threshold after the second check:
  ``1 - (||theta_1 - theta_0|| / ||theta_0||) * min(1 - s - 0.1, 0.99)``."""
  ratio = float(first_dist) / (float(init_norm) + 1e-6)
  return 1.0 - ratio * min(1.0 - float(sparsity) - 0.1, 0.99)


def first_earlycrop_check(dists: Sequence[float], init_norm: float,
                          threshold: float) -> Optional[int]:
  """Index ``t`` of the first check that fires for the distances
  ``d_0, d_1, ...`` (``d_0 = 0`` at ``theta_0``), or None."""
  prev = 0.0
  for t, d in enumerate(dists):
    if earlycrop_fires(d, prev, init_norm, threshold):
      return t
    prev = d
  return None


def tree_distance(a: Any, b: Any) -> float:
  """``||a - b||_2`` over all leaves of two trees of the same shapes."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  if len(la) != len(lb) or any(np.shape(x) != np.shape(y)
                               for x, y in zip(la, lb)):
    raise ValueError('the parameter trees differ in structure or shapes; '
                     'EarlyCroP compares theta_t with theta_0 of the same '
                     'network (was it shrunk in between?)')
  return float(math.sqrt(sum(
      float(np.sum(np.square(np.asarray(x, np.float64) -
                             np.asarray(y, np.float64))))
      for x, y in zip(la, lb))))


def tree_norm(a: Any) -> float:
  """``||a||_2`` over all leaves."""
  return float(math.sqrt(sum(float(np.sum(np.square(np.asarray(
      x, np.float64)))) for x in jax.tree.leaves(a))))
