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
units silenced (see :func:`demp_jax.topology.silence_units`), within
``rtol = atol = 1e-5`` in float32. When the removed units were dead on the
probe data, the masked network is the original network there.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from demp_jax import topology as topo


class SurgeryError(RuntimeError):
  """The shrunk network does not compute what the masked one computes."""


class Shrunk(NamedTuple):
  model: Any
  variables: dict
  opt_state: Any
  removed: dict            # group name -> number of units removed
  max_masked_diff: float   # max |logits_shrunk - logits_masked| on the probe
  max_output_change: float  # max |logits_shrunk - logits_before| on the probe


def _slicer(entries, keeps: Mapping[str, np.ndarray]) -> Callable[[Any], Any]:
  """Function that shrinks one leaf (an array, or None) by its entries."""

  def apply(x):
    if x is None or not hasattr(x, 'shape'):
      return x
    for group, ref, role in entries:
      keep = keeps[group.name]
      if ref.kind == 'index':
        if role == 'produces':
          x = jnp.take(x, jnp.asarray(keep), axis=ref.axis)
        else:  # values are unit indices of `group`: renumber them
          remap = np.full(group.size + 1, -1, np.int64)
          remap[keep] = np.arange(len(keep))
          x = jnp.asarray(remap)[jnp.where(x < 0, group.size, x)].astype(
              x.dtype)
      else:
        idx = topo.keep_index(ref, keep, group.size)
        x = jnp.take(x, jnp.asarray(idx), axis=ref.axis)
    return x

  return apply


def keep_indices(topology: topo.UnitTopology,
                 keep: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Sorted kept unit indices per group from bool masks (or index arrays).

  Groups missing from ``keep`` keep all their units.
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
    k = np.unique(k.astype(np.int64))
    if k.size and (k[0] < 0 or k[-1] >= g.size):
      raise ValueError(f'keep[{g.name!r}] has indices outside [0, {g.size})')
    if k.size == 0:
      raise ValueError(f'keep[{g.name!r}] removes every unit of the group; '
                       'a layer keeps at least one unit (min_width)')
    out[g.name] = k
  return out


def shrink_variables(topology: topo.UnitTopology, variables: Mapping[str, Any],
                     keeps: Mapping[str, np.ndarray]) -> dict:
  """Takes the kept units along every topology axis of the variables."""
  out = dict(variables)
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
  which are kept as they are.
  """
  refs = {k[1]: v for k, v in topology.leaf_refs().items() if k[0] == 'params'}
  slicers = jax.tree_util.tree_map_with_path(
      lambda p, _: _slicer(refs.get(topo.key_path(p), ()), keeps), params)
  return optax.tree_map_params(tx, lambda x, s: s(x), opt_state, slicers,
                               is_leaf=lambda x: x is None)


def eval_logits(model: Any, variables: Mapping[str, Any], x: jax.Array):
  variables = {k: v for k, v in variables.items() if k != 'activations'}
  return model.apply(variables, x, train=False)


def shrink(model: Any, variables: Mapping[str, Any], keep: Mapping[str, Any],
           *, input_shape, opt_state: Any = None, tx: Any = None,
           probe: Optional[jax.Array] = None, rtol: float = 1e-5,
           atol: float = 1e-5) -> Shrunk:
  """Removes the units not in ``keep`` and rebuilds the model smaller.

  Args:
    model: a width-parametrised model (see :mod:`demp_jax.models`).
    variables: its variables: ``params``, ``batch_stats``, ...
    keep: group name -> bool vector over the group's units (True = keep) or
      array of kept indices. Missing groups are kept whole.
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.
    opt_state: optional optimiser state to slice alongside; needs ``tx``.
    tx: the optimiser that made ``opt_state``.
    probe: optional batch ``[B, *input_shape]``; when given, checks that the
      shrunk logits equal the masked logits and raises :class:`SurgeryError`
      if not.

  Returns:
    :class:`Shrunk` with the new model, variables, optimiser state, the
    number of units removed per group and the probe differences.
  """
  if opt_state is not None and tx is None:
    raise ValueError('shrink: opt_state given without the tx that made it')
  topology = model.unit_topology(input_shape)
  topology.validate(variables)
  keeps = keep_indices(topology, keep)
  new_vars = shrink_variables(topology, variables, keeps)
  new_model = model.with_widths([len(keeps[n]) for n in topology.names])
  new_model.unit_topology(input_shape).validate(new_vars)
  new_opt = (None if opt_state is None else
             shrink_opt_state(tx, opt_state, variables['params'], topology,
                              keeps))
  removed = {g.name: g.size - len(keeps[g.name]) for g in topology.groups}
  masked_diff = change = float('nan')
  if probe is not None:
    alive = {}
    for g in topology.groups:
      a = np.zeros(g.size, bool)
      a[keeps[g.name]] = True
      alive[g.name] = a
    before = eval_logits(model, variables, probe)
    masked = eval_logits(model, topo.silence_units(topology, variables, alive),
                         probe)
    after = eval_logits(new_model, new_vars, probe)
    masked_diff = float(jnp.max(jnp.abs(after - masked)))
    change = float(jnp.max(jnp.abs(after - before)))
    if not np.allclose(np.asarray(after), np.asarray(masked), rtol=rtol,
                       atol=atol):
      raise SurgeryError(
          f'shrunk logits differ from the masked logits by up to '
          f'{masked_diff:.3g} on the probe batch (tolerance rtol={rtol}, '
          f'atol={atol}); removed units per group: {removed}. The unit '
          f'topology of {type(model).__name__} is probably missing a leaf.')
  return Shrunk(new_model, new_vars, new_opt, removed, masked_diff, change)
