"""A width-parametrised multi-layer perceptron that sows its activations."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from demp_jax import topology as topo
from demp_jax.models import layers


class MLP(nn.Module):
  """``flatten -> [Dense(w_i) -> (BatchNorm) -> act]_i -> Dense(classes)``.

  Unit group ``act_i`` holds the ``w_i`` outputs of hidden layer ``i``
  (post-activation, shape ``[batch, w_i]``). Logits are never pruned.
  """
  widths: Sequence[int] = (300, 100)
  num_classes: int = 10
  use_bn: bool = True
  activation: str = 'relu'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = layers.activation(self.activation)
    x = x.reshape((x.shape[0], -1))
    for i, w in enumerate(self.widths):
      x = nn.Dense(w, kernel_init=layers.he_normal(),
                   name=f'dense_{i}')(x)
      if self.use_bn:
        x = layers.batch_norm(train, f'bn_{i}')(x)
      x = act(x)
      self.sow('activations', f'act_{i}', x)
    return nn.Dense(self.num_classes, kernel_init=layers.lecun_normal(),
                    name='logits')(x)

  def with_widths(self, widths: Sequence[int]) -> 'MLP':
    return self.clone(widths=tuple(int(w) for w in widths), parent=None)

  def unit_topology(self, input_shape: Sequence[int]) -> topo.UnitTopology:
    del input_shape  # an MLP flattens first: no spatial tiling
    groups = []
    n = len(self.widths)
    for i, w in enumerate(self.widths):
      produces = [topo.AxisRef('params', (f'dense_{i}', 'kernel'), -1),
                  topo.AxisRef('params', (f'dense_{i}', 'bias'), -1)]
      if self.use_bn:
        produces += norm_refs(f'bn_{i}')
      nxt = f'dense_{i + 1}' if i + 1 < n else 'logits'
      consumer = topo.AxisRef('params', (nxt, 'kernel'), 0,
                              fold=topo.FoldRef('params', (nxt, 'bias')))
      groups.append(topo.UnitGroup(
          name=f'act_{i}', size=int(w), produces=tuple(produces),
          consumes=(consumer,)))
    return topo.UnitTopology(tuple(groups))


def norm_refs(name: str | Sequence[str], with_stats: bool = True
              ) -> list[topo.AxisRef]:
  """Scale, offset (and running mean/var) of a flax norm layer ``name``
  (a module name, or the tuple path of a nested one)."""
  prefix = (name,) if isinstance(name, str) else tuple(name)
  refs = [topo.AxisRef('params', prefix + ('scale',), -1),
          topo.AxisRef('params', prefix + ('bias',), -1)]
  if with_stats:
    refs += [topo.AxisRef('batch_stats', prefix + ('mean',), -1),
             topo.AxisRef('batch_stats', prefix + ('var',), -1)]
  return refs
