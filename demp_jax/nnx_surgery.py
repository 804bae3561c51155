"""Surgery on NNX's own objects: a live ``nnx.Module`` and its
``nnx.Optimizer``.

An NNX training loop holds a module and ``nnx.Optimizer(model, tx,
wrt=nnx.Param)``, updated in place by ``optimizer.update(model, grads)``.
:func:`shrink` removes units from both and hands back new ones, narrower::

    net, _ = Net.create(model, input_shape=(28, 28, 1))
    ...                                   # train: optimizer.update(model, g)
    unit_stats = stats.saturation_stats(net, net.variables_of(model), held)
    keep = {g: ~np.asarray(s.dead) for g, s in unit_stats.items()}
    net, model, optimizer, *_ = nnx_surgery.shrink(
        net, model, keep, optimizer=optimizer, probe=held[0])

It is :func:`demp_jax.surgery.shrink` on the module's variables
(:meth:`demp_jax.net.Net.variables_of`) with the same promise, checked on
the probe: the new module computes what the old one with the removed units
silenced computes. The optimiser's state is sliced like the params (every
params-shaped tree of its optax state: Adam's moments, momentum traces, the
DemP updater's masks; counters and ``step`` are kept), in the ``nnx.State``
layout ``optimizer.update`` reads. The new module is in the old one's mode
(``model.train()`` / ``model.eval()``). The old module and optimizer are
left as they were; rebind the names to the new ones (an ``nnx.jit`` train
step traces again at the new shapes).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import jax

from demp_jax import surgery
from demp_jax.net import ModelError, Net
from demp_jax.topology import key_path


class NnxShrunk(NamedTuple):
  net: Net                  # the net at the new widths
  model: Any                # a new nnx.Module holding the kept units
  optimizer: Any            # a new nnx.Optimizer for it, or None
  removed: dict             # group name -> number of units removed
  max_masked_diff: float    # max |out_shrunk - out_masked| on the probe
  max_output_change: float  # max |out_shrunk - out_before| on the probe
  folded: dict              # group name -> removed units folded (c != 0)


def _params_state(model: Any, optimizer: Any) -> Any:
  """The pure ``nnx.State`` of the variables ``optimizer`` updates, which
  must all be ``nnx.Param``s (the net's ``params``)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  if not isinstance(optimizer, nnx.Optimizer):
    raise TypeError(f'optimizer: got {type(optimizer).__name__}, not an '
                    'nnx.Optimizer')
  others = jax.tree_util.tree_flatten_with_path(
      nnx.state(model, nnx.All(optimizer.wrt, nnx.Not(nnx.Param))))[0]
  if others:
    raise ValueError(
        f'optimizer: its wrt filter selects {"/".join(key_path(others[0][0]))}'
        ', which is not an nnx.Param; surgery slices optimizer state over '
        'params only (nnx.Optimizer(model, tx, wrt=nnx.Param))')
  return nnx.as_pure(nnx.state(model, optimizer.wrt))


def _optimizer_with(optimizer: Any, opt_state: Any, model: Any) -> Any:
  """A new ``nnx.Optimizer`` like ``optimizer`` (its ``tx``, ``wrt`` and
  ``step``) holding the pure optax state ``opt_state``; a (deprecated)
  ``nnx.ModelAndOptimizer`` holds ``model``."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  graphdef, state = nnx.split(optimizer)
  new = nnx.merge(graphdef, state, copy=True)
  nnx.update(new.opt_state, nnx.state(opt_state))
  if isinstance(new, nnx.ModelAndOptimizer):
    new.model = model
  return new


def _with_flags_of(old: Any, new: Any) -> Any:
  """``new`` with the flags of ``old``'s modules at the same paths: the
  mode ``model.train()`` / ``model.eval()`` (or the user's own flags) set
  after the net was made, which the net's graph does not know. A flag is
  an attribute that is a bool or None on both sides (``None``:
  ``nnx.MultiHeadAttention``'s ``deterministic`` until the first
  ``train()``/``eval()``)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  modules = dict(nnx.iter_modules(new))
  for path, module in nnx.iter_modules(old):
    target = modules.get(path)
    if target is None:
      continue
    for name, value in vars(module).items():
      now = getattr(target, name, value)
      if _is_flag(value) and _is_flag(now) and now is not value:
        setattr(target, name, value)
  return new


def _is_flag(value: Any) -> bool:
  """A mode flag's value: a bool, or None (not set yet)."""
  return value is None or isinstance(value, bool)


def shrink(net: Net, model: Any, keep: Mapping[str, Any], *,
           optimizer: Any = None, probe: Optional[jax.Array] = None,
           min_width: int = 1, **options: Any) -> NnxShrunk:
  """Removes the units not in ``keep`` from an NNX module and its optimizer.

  Args:
    net: the :class:`demp_jax.net.Net` of ``model`` at its current widths
      (:meth:`Net.create` once, then the ``net`` each shrink returns).
    model: the live ``nnx.Module``.
    keep: group name -> bool vector over the group's units (True = keep) or
      array of kept indices, as for :func:`demp_jax.surgery.shrink`.
    optimizer: optional ``nnx.Optimizer`` of ``model`` whose ``wrt`` selects
      ``nnx.Param``s.
    probe: optional batch ``[B, *input_shape]`` on which the shrunk module
      must compute what the masked one does (else ``SurgeryError``).
    min_width: the fewest units a group may keep.
    **options: the other options of :func:`demp_jax.surgery.shrink`
      (``fold_constants``, ``constants``, ``rtol``, ``atol``, ...).

  Returns:
    :class:`NnxShrunk`: the new net, module and optimizer and the surgery's
    numbers. ``model`` and ``optimizer`` are not modified.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  if not net.is_nnx:
    raise ModelError('nnx_surgery.shrink: the net is a Linen model; use '
                     'demp_jax.surgery.shrink')
  variables = net.variables_of(model)
  params = None if optimizer is None else _params_state(model, optimizer)
  res = surgery.shrink(net, variables, keep, probe=probe, min_width=min_width,
                       **options)
  new_model = _with_flags_of(model, res.model.module_at(res.variables))
  new_optimizer = None
  if optimizer is not None:
    keeps = surgery.keep_indices(net.topology, keep, min_width)
    opt_state = surgery.shrink_opt_state(
        optimizer.tx, nnx.as_pure(optimizer.opt_state), params, net.topology,
        keeps)
    new_optimizer = _optimizer_with(optimizer, opt_state, new_model)
  return NnxShrunk(res.model, new_model, new_optimizer, res.removed,
                   res.max_masked_diff, res.max_output_change, res.folded)
