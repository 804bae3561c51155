"""A width-parametrised VGG-style CNN with BatchNorm that sows activations."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from demp_jax import topology as topo
from demp_jax.models import layers
from demp_jax.models.mlp import norm_refs


class VGG(nn.Module):
  """``[Conv3x3 -> BN -> ReLU (-> MaxPool2x2)]_i -> flatten ->
  [Dense -> BN -> ReLU]_j -> Dense(classes)``, NHWC.

  Unit groups: ``conv_act_i`` (one per conv, a channel is a unit; activation
  shape ``[batch, H, W, c_i]``) then ``dense_act_j`` (``[batch, d_j]``).
  ``pool_after`` lists the conv indices followed by a 2x2 max-pool. The
  input channels and the logits are never pruned. ``widths`` is
  ``conv_widths + dense_widths``.
  """
  conv_widths: Sequence[int] = (32, 64, 128)
  dense_widths: Sequence[int] = (256,)
  pool_after: Sequence[int] = (0, 1, 2)
  num_classes: int = 10
  conv_bias: bool = False
  activation: str = 'relu'

  @property
  def widths(self) -> tuple[int, ...]:
    return tuple(self.conv_widths) + tuple(self.dense_widths)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = layers.activation(self.activation)
    for i, c in enumerate(self.conv_widths):
      x = nn.Conv(c, (3, 3), padding='SAME', use_bias=self.conv_bias,
                  kernel_init=nn.initializers.he_normal(), name=f'conv_{i}')(x)
      x = layers.batch_norm(train, f'conv_bn_{i}')(x)
      x = act(x)
      self.sow('activations', f'conv_act_{i}', x)
      if i in self.pool_after:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))  # NHWC flatten: channel fastest
    for j, d in enumerate(self.dense_widths):
      x = nn.Dense(d, kernel_init=nn.initializers.he_normal(),
                   name=f'dense_{j}')(x)
      x = layers.batch_norm(train, f'dense_bn_{j}')(x)
      x = act(x)
      self.sow('activations', f'dense_act_{j}', x)
    return nn.Dense(self.num_classes, name='logits')(x)

  def with_widths(self, widths: Sequence[int]) -> 'VGG':
    widths = tuple(int(w) for w in widths)
    k = len(self.conv_widths)
    return self.clone(conv_widths=widths[:k], dense_widths=widths[k:],
                      parent=None)

  def unit_topology(self, input_shape: Sequence[int]) -> topo.UnitTopology:
    """``input_shape`` is one example's ``(H, W, C)``."""
    h, w = int(input_shape[0]), int(input_shape[1])
    for i in range(len(self.conv_widths)):
      if i in self.pool_after:
        h, w = h // 2, w // 2
    flat_tile = h * w
    groups = []
    n_conv, n_dense = len(self.conv_widths), len(self.dense_widths)
    for i, c in enumerate(self.conv_widths):
      produces = [topo.AxisRef('params', (f'conv_{i}', 'kernel'), -1)]
      if self.conv_bias:
        produces.append(topo.AxisRef('params', (f'conv_{i}', 'bias'), -1))
      produces += norm_refs(f'conv_bn_{i}')
      if i + 1 < n_conv:
        consumer = topo.AxisRef('params', (f'conv_{i + 1}', 'kernel'), -2)
      else:
        nxt = 'dense_0' if n_dense else 'logits'
        consumer = topo.AxisRef('params', (nxt, 'kernel'), 0, tile=flat_tile)
      groups.append(topo.UnitGroup(f'conv_act_{i}', int(c), tuple(produces),
                                   (consumer,)))
    for j, d in enumerate(self.dense_widths):
      produces = [topo.AxisRef('params', (f'dense_{j}', 'kernel'), -1),
                  topo.AxisRef('params', (f'dense_{j}', 'bias'), -1)]
      produces += norm_refs(f'dense_bn_{j}')
      nxt = f'dense_{j + 1}' if j + 1 < n_dense else 'logits'
      groups.append(topo.UnitGroup(
          f'dense_act_{j}', int(d), tuple(produces),
          (topo.AxisRef('params', (nxt, 'kernel'), 0),)))
    return topo.UnitTopology(tuple(groups))
