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
training) and ``var_b`` is Flax's biased batch variance: what one train
step with momentum 0 would write (:meth:`demp_jax.net.Net.batch_statistics`,
for Linen and NNX models alike). This is PyTorch's
``torch.optim.swa_utils.update_bn`` (``momentum=None``). The reference code
never recalibrates: its death check and evaluation use the moving averages.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp


def _recalibrate(model: Any, variables: Mapping[str, Any],
                 batches: jax.Array) -> dict:
  if batches.ndim < 3:
    raise ValueError('recalibrate: batches must be [N, B, ...] held batches, '
                     f'got shape {tuple(batches.shape)}')
  variables = {k: v for k, v in variables.items() if k != 'activations'}
  if 'batch_stats' not in variables:
    return variables

  def body(total, x):
    stats = model.batch_statistics(variables, x)
    return jax.tree.map(lambda t, s: t + s.astype(t.dtype), total,
                        stats), None

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32),
                       variables['batch_stats'])
  total, _ = jax.lax.scan(body, zeros, batches)
  n = batches.shape[0]
  return {**variables, 'batch_stats': jax.tree.map(
      lambda t, old: (t / n).astype(old.dtype), total,
      variables['batch_stats'])}


recalibrate = jax.jit(_recalibrate, static_argnames=('model',))
recalibrate.__doc__ = """Variables with every BatchNorm's running statistics
recomputed from held batches at the current weights (see the module doc).

Args:
  model: a :class:`demp_jax.net.Net`.
  variables: its variables; ``batch_stats`` is replaced, the rest returned
    unchanged. Without ``batch_stats`` they are returned as they are.
  batches: ``[N, B, ...]`` inputs, preprocessed and not augmented.

Returns:
  The variables with ``batch_stats`` of the same structure, shapes and
  dtypes.
"""


class EvalView:
  """The variables the death check and the evaluations see at a step: the
  training state's own (``batches == 0``), or with recalibrated BatchNorm
  statistics from ``batches`` held batches that ``draw(step)`` returns
  (``[N, B, ...]``, normalised). The training state is never changed."""

  def __init__(self, batches: int, draw: Callable[[int], jax.Array]):
    self.batches = int(batches)
    self._draw = draw

  def __bool__(self) -> bool:
    return self.batches > 0

  def __call__(self, model: Any, variables: Mapping[str, Any],
               step: int) -> Mapping[str, Any]:
    if not self.batches:
      return variables
    return jax.block_until_ready(recalibrate(model, variables,
                                             self._draw(step)))
