"""Surgery on a Linen training loop's own state: a
``flax.training.train_state.TrainState``.

A Linen training loop holds ``TrainState.create(apply_fn=model.apply,
params=..., tx=...)``, often subclassed with a ``batch_stats`` field.
:func:`shrink` removes units from it and hands back a new one::

    net, variables = Net.create(model, input_shape=(28, 28, 1))
    state = TrainState.create(apply_fn=model.apply, params=variables['params'],
                              batch_stats=variables['batch_stats'], tx=tx)
    ...                                   # train with state.apply_fn
    net, state, *_ = linen_surgery.shrink(net, state, keep, probe=x)

It is :func:`demp_jax.surgery.shrink` on the state's variables (``params``
and every other collection of the model, read from the state's fields of
the same names) and optimiser state, with the same promise checked on the
probe. A Linen layer checks its parameters against the sizes written in
the model (``nn.Dense(64)``), so the new state's ``apply_fn`` is the old
one run under :class:`SizedApply` (every ``Dense``, ``Conv``,
``ConvTranspose`` and ``DenseGeneral`` takes its size from its kernel);
a built-in model with hand-written widths gets its rebuilt module's
``apply`` instead. ``step`` and every other field are kept.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax

from demp_jax import surgery
from demp_jax.net import ModelError, Net, sizes_from_params


@dataclasses.dataclass(frozen=True)
class SizedApply:
  """``fn`` (a Linen ``apply``, or a function calling one) run with every
  ``Dense``/``Conv``/``ConvTranspose``/``DenseGeneral`` taking its size
  from its kernel, so that the module runs at the widths of the variables
  it is given. Compares by ``fn`` (a static field of ``TrainState``)."""
  fn: Callable[..., Any]

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    with nn.intercept_methods(sizes_from_params):
      return self.fn(*args, **kwargs)


class LinenShrunk(NamedTuple):
  net: Net                  # the net at the new widths
  state: Any                # the new TrainState
  removed: dict             # group name -> number of units removed
  max_masked_diff: float    # max |out_shrunk - out_masked| on the probe
  max_output_change: float  # max |out_shrunk - out_before| on the probe
  folded: dict              # group name -> removed units folded (c != 0)


def _variables(net: Net, state: Any) -> dict:
  """The model's collections from the state's fields of the same names."""
  variables = {}
  for collection in sorted({key[0] for key, _, _ in net.shapes}):
    if not hasattr(state, collection):
      raise ValueError(
          f'state: {type(state).__name__} has no field {collection!r} for '
          f"the model's {collection!r} collection; subclass TrainState with "
          f'`{collection}: Any` and keep the collection there')
    variables[collection] = getattr(state, collection)
  return variables


def _like(new: Any, old: Any) -> Any:
  """``new`` (a collection after surgery, nested dicts) in the containers
  of ``old`` (a ``FrozenDict`` stays one, as the optimiser state sliced
  in its layout expects)."""
  return jax.tree.unflatten(jax.tree.structure(old), jax.tree.leaves(new))


def _apply_fn(net: Net, new_net: Net, fn: Callable[..., Any]
              ) -> Callable[..., Any]:
  """The new state's ``apply_fn``: ``fn`` at any widths, or the rebuilt
  module's ``apply`` for a model with hand-written widths."""
  fn = fn.fn if isinstance(fn, SizedApply) else fn
  if not net.handwritten:
    return SizedApply(fn)
  if fn != net.module.apply:
    raise ValueError(
        f'state.apply_fn: {net.model_name} sets its widths itself '
        '(with_widths), so surgery replaces apply_fn by the rebuilt '
        "module's apply; it must be the model's own apply (model.apply), "
        f'got {fn!r}')
  return new_net.module.apply


def shrink(net: Net, state: Any, keep: Mapping[str, Any], *,
           probe: Optional[jax.Array] = None, **options: Any) -> LinenShrunk:
  """Removes the units not in ``keep`` from a Linen model's ``TrainState``.

  Args:
    net: the :class:`demp_jax.net.Net` of the model at the state's widths
      (:meth:`Net.create` once, then the ``net`` each shrink returns).
    state: a ``TrainState`` (any flax struct with ``params``, ``opt_state``,
      ``tx``, ``apply_fn`` and ``replace``) with a field for each other
      collection of the model (``batch_stats``).
    keep: group name -> bool vector over the group's units (True = keep) or
      array of kept indices, as for :func:`demp_jax.surgery.shrink`.
    probe: optional batch ``[B, *input_shape]`` on which the shrunk model
      must compute what the masked one does (else ``SurgeryError``).
    **options: the other options of :func:`demp_jax.surgery.shrink`
      (``fold_constants``, ``constants``, ``min_width``, ...).

  Returns:
    :class:`LinenShrunk`: the new net and state and the surgery's numbers.
  """
  if net.is_nnx:
    raise ModelError('linen_surgery.shrink: the net is an NNX model; use '
                     'demp_jax.nnx_surgery.shrink')
  variables = _variables(net, state)
  res = surgery.shrink(net, variables, keep, opt_state=state.opt_state,
                       tx=state.tx, probe=probe, **options)
  new_vars = {k: _like(v, variables[k]) for k, v in res.variables.items()}
  new_state = state.replace(opt_state=res.opt_state,
                            apply_fn=_apply_fn(net, res.model, state.apply_fn),
                            **new_vars)
  return LinenShrunk(res.model, new_state, res.removed, res.max_masked_diff,
                     res.max_output_change, res.folded)
