"""Parameter, unit and FLOP counts of a model."""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def count_params(params: Any) -> int:
  """Every trainable entry (kernels, biases, norm scales and offsets)."""
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def forward_flops(model: Any, variables: Mapping[str, Any],
                  input_shape) -> float:
  """Forward FLOPs for one example in eval mode, from XLA's cost analysis."""
  variables = {k: v for k, v in variables.items() if k != 'activations'}
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  cost = fn.lower(variables, x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', float('nan')))


def count_active(masks: Any, params: Any) -> int:
  """Entries not masked out: mask sum where a mask exists, else the size."""
  counts = jax.tree.map(
      lambda m, p: int(np.prod(np.shape(p))) if m is None else int(
          np.sum(np.asarray(m))), masks, params, is_leaf=lambda x: x is None)
  return int(sum(jax.tree.leaves(counts)))
