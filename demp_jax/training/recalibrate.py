"""BatchNorm running statistics recomputed at the current weights.

In eval mode a BatchNorm normalises with its running statistics, exponential
moving averages (momentum ``m``, 0.9 here as in the reference code) of the
batch statistics that training saw::

    mu  <- m mu  + (1 - m) mean_b(x)
    var <- m var + (1 - m) var_b(x)

While the weights move fast (DemP's one-cycle penalty shrinking the norm
scales) those averages lag about ``1 / (1 - m)`` steps behind and mix
statistics of weights that no longer exist. :func:`recalibrate` replaces
them by the values they would settle at if the weights stopped moving: the
mean, over ``N`` held batches, of the statistics the train-mode forward
computes at every BatchNorm::

    mu_l  = (1/N) sum_k mean_b x_l^(k)
    var_l = (1/N) sum_k var_b x_l^(k)

where ``x_l^(k)`` is the input of BatchNorm ``l`` on batch ``k`` in train
mode (earlier norms normalising with their own batch statistics, as in
training) and ``var_b`` is Flax's biased batch variance
``mean_b(x^2) - mean_b(x)^2`` clipped at 0. This is PyTorch's
``torch.optim.swa_utils.update_bn`` (``momentum=None``). The reference code
never recalibrates: its death check and evaluation use the moving averages.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

_COLLECTION = 'recalibration'


def _capture_batch_moments(next_fun, args, kwargs, context):
  """Method interceptor: at every train-mode ``nn.BatchNorm`` call, sows
  the per-feature batch mean and biased variance of its input."""
  module = context.module
  if not isinstance(module, nn.BatchNorm) or context.method_name != '__call__':
    return next_fun(*args, **kwargs)
  x = args[0] if args else kwargs['x']
  running = args[1] if len(args) > 1 else kwargs.get('use_running_average')
  running = module.use_running_average if running is None else running
  if not running and not module.is_initializing():
    if kwargs.get('mask') is not None:
      raise ValueError(f'recalibrate: BatchNorm {"/".join(module.path)} is '
                       'called with a mask, which it does not support')
    axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
    features = {a % x.ndim for a in axes}
    reduce = tuple(i for i in range(x.ndim) if i not in features)
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(x32, axis=reduce)
    var = jnp.maximum(jnp.mean(jnp.square(x32), axis=reduce) -
                      jnp.square(mean), 0.0)
    module.sow(_COLLECTION, 'moments', (mean, var))
  return next_fun(*args, **kwargs)


def _batch_moments(model: nn.Module, variables: Mapping[str, Any],
                   x: jax.Array) -> dict[tuple, tuple[jax.Array, jax.Array]]:
  """``{BatchNorm path: (batch mean, batch variance)}`` of one train-mode
  forward on ``x`` (the mean over calls where a norm runs more than once)."""
  with nn.intercept_methods(_capture_batch_moments):
    _, state = model.apply(variables, x, train=True,
                           mutable=['batch_stats', _COLLECTION])
  flat = flax.traverse_util.flatten_dict(
      flax.core.unfreeze(state.get(_COLLECTION, {})))
  out = {}
  for path, calls in flat.items():
    means, variances = zip(*calls)
    out[path[:-1]] = (sum(means) / len(means),
                      sum(variances) / len(variances))
  return out


def _recalibrate(model: nn.Module, variables: Mapping[str, Any],
                 batches: jax.Array) -> dict:
  if batches.ndim < 3:
    raise ValueError('recalibrate: batches must be [N, B, ...] held batches, '
                     f'got shape {tuple(batches.shape)}')
  variables = {k: v for k, v in variables.items() if k != 'activations'}
  if 'batch_stats' not in variables:
    return variables
  stats = flax.traverse_util.flatten_dict(
      flax.core.unfreeze(variables['batch_stats']))
  probe = jax.eval_shape(lambda v, x: _batch_moments(model, v, x), variables,
                         batches[0])
  missing = sorted({'/'.join(p[:-1]) for p in stats} -
                   {'/'.join(p) for p in probe})
  if missing:
    raise ValueError(f'recalibrate: batch_stats {missing} belong to no '
                     'BatchNorm that runs on batch statistics in train mode')

  def body(total, x):
    moments = _batch_moments(model, variables, x)
    return jax.tree.map(jnp.add, total, moments), None

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), probe)
  total, _ = jax.lax.scan(body, zeros, batches)
  n = batches.shape[0]
  new = {}
  for path, value in stats.items():
    mean, var = total[path[:-1]]
    moment = {'mean': mean, 'var': var}.get(path[-1])
    if moment is None:
      raise ValueError(f'recalibrate: unknown batch_stats entry '
                       f'{"/".join(path)} (BatchNorm keeps mean and var)')
    new[path] = (moment / n).astype(value.dtype)
  return {**variables,
          'batch_stats': flax.traverse_util.unflatten_dict(new)}


recalibrate = jax.jit(_recalibrate, static_argnames=('model',))
recalibrate.__doc__ = """Variables with every BatchNorm's running statistics
recomputed from held batches at the current weights (see the module doc).

Args:
  model: a Flax model whose ``apply(variables, x, train=True)`` normalises
    with batch statistics (``nn.BatchNorm``).
  variables: its variables; ``batch_stats`` is replaced, the rest returned
    unchanged (without sown ``activations``). Without ``batch_stats`` they
    are returned as they are.
  batches: ``[N, B, ...]`` inputs, preprocessed and not augmented.

Returns:
  The variables with ``batch_stats`` of the same structure, shapes and
  dtypes.
"""
