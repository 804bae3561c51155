"""A width-parametrised VGG-style CNN with BatchNorm that sows activations."""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax

from demp_jax import topology as topo
from demp_jax.models import layers
from demp_jax.models.mlp import norm_refs


class VGG(nn.Module):
  """``[Conv3x3 -> BN -> act (-> MaxPool2x2)]_i -> (AvgPool) -> flatten ->
  [Dense -> BN -> act]_j -> Dense(classes)``, NHWC.

  Unit groups: ``conv_act_i`` (one per conv, a channel is a unit; activation
  shape ``[batch, H, W, c_i]``) then ``dense_act_j`` (``[batch, d_j]``).
  The input channels and the logits are never pruned. ``widths`` is
  ``conv_widths + dense_widths``.

  Attributes:
    conv_widths: output channels of the 3x3 convs.
    dense_widths: hidden dense layers after the flatten.
    pool_after: conv indices followed by a 2x2 max-pool (stride 2, VALID).
    num_classes: logits.
    conv_bias: convs with a bias (the reference VGG-16 has one).
    activation: key of :data:`demp_jax.models.layers.ACTIVATIONS`.
    head_pool: ``k > 0``: a ``k x k`` average pool (stride ``k``, VALID)
      after the last conv, before the flatten; 0: none.
    last_conv_width: if set, replaces ``conv_widths[-1]`` (the reference
      VGG-16 has 1,024 channels in its last conv); :meth:`with_widths`
      clears it.
  """
  conv_widths: Sequence[int] = (32, 64, 128)
  dense_widths: Sequence[int] = (256,)
  pool_after: Sequence[int] = (0, 1, 2)
  num_classes: int = 10
  conv_bias: bool = False
  activation: str = 'relu'
  head_pool: int = 0
  last_conv_width: Optional[int] = None

  @property
  def conv_channels(self) -> tuple[int, ...]:
    """The conv widths in use (``last_conv_width`` applied)."""
    c = tuple(int(w) for w in self.conv_widths)
    if self.last_conv_width is not None and c:
      c = c[:-1] + (int(self.last_conv_width),)
    return c

  @property
  def widths(self) -> tuple[int, ...]:
    return self.conv_channels + tuple(int(d) for d in self.dense_widths)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """``x [B, H, W, C]`` -> logits ``[B, num_classes]``."""
    act = layers.activation(self.activation)
    for i, c in enumerate(self.conv_channels):
      x = nn.Conv(c, (3, 3), padding='SAME', use_bias=self.conv_bias,
                  kernel_init=layers.he_normal(), name=f'conv_{i}')(x)
      x = layers.batch_norm(train, f'conv_bn_{i}')(x)
      x = act(x)
      self.sow('activations', f'conv_act_{i}', x)
      if i in self.pool_after:
        x = layers.max_pool_tiles(x, 2)
    if self.head_pool:
      k = int(self.head_pool)
      x = nn.avg_pool(x, (k, k), strides=(k, k))
    x = x.reshape((x.shape[0], -1))  # NHWC flatten: channel fastest
    for j, d in enumerate(self.dense_widths):
      x = nn.Dense(d, kernel_init=layers.he_normal(),
                   name=f'dense_{j}')(x)
      x = layers.batch_norm(train, f'dense_bn_{j}')(x)
      x = act(x)
      self.sow('activations', f'dense_act_{j}', x)
    return nn.Dense(self.num_classes, kernel_init=layers.lecun_normal(),
                    name='logits')(x)

  def with_widths(self, widths: Sequence[int]) -> 'VGG':
    widths = tuple(int(w) for w in widths)
    k = len(self.conv_widths)
    if len(widths) != k + len(self.dense_widths):
      raise ValueError(f'{type(self).__name__} has '
                       f'{k + len(self.dense_widths)} unit groups; got '
                       f'{len(widths)} widths')
    return self.clone(conv_widths=widths[:k], dense_widths=widths[k:],
                      last_conv_width=None, parent=None)

  def unit_topology(self, input_shape: Sequence[int]) -> topo.UnitTopology:
    """``input_shape`` is one example's ``(H, W, C)``."""
    h, w = int(input_shape[0]), int(input_shape[1])
    channels = self.conv_channels
    for i in range(len(channels)):
      if i in self.pool_after:
        h, w = h // 2, w // 2
    if self.head_pool:
      h, w = h // int(self.head_pool), w // int(self.head_pool)
    if h < 1 or w < 1:
      raise ValueError(f'input {tuple(input_shape)} is too small for '
                       f'{len(self.pool_after)} pools and head_pool='
                       f'{self.head_pool}')
    flat_tile = h * w
    groups = []
    n_conv, n_dense = len(channels), len(self.dense_widths)
    for i, c in enumerate(channels):
      produces = [topo.AxisRef('params', (f'conv_{i}', 'kernel'), -1)]
      if self.conv_bias:
        produces.append(topo.AxisRef('params', (f'conv_{i}', 'bias'), -1))
      produces += norm_refs(f'conv_bn_{i}')
      if i + 1 < n_conv:
        nxt = f'conv_{i + 1}'
        fold = (topo.FoldRef('params', (nxt, 'bias')) if self.conv_bias else
                topo.FoldRef('batch_stats', (f'conv_bn_{i + 1}', 'mean'),
                             -1.0))
        consumer = topo.AxisRef('params', (nxt, 'kernel'), -2, fold=fold)
      else:
        nxt = 'dense_0' if n_dense else 'logits'
        consumer = topo.AxisRef('params', (nxt, 'kernel'), 0, tile=flat_tile,
                                fold=topo.FoldRef('params', (nxt, 'bias')))
      groups.append(topo.UnitGroup(f'conv_act_{i}', int(c), tuple(produces),
                                   (consumer,)))
    for j, d in enumerate(self.dense_widths):
      produces = [topo.AxisRef('params', (f'dense_{j}', 'kernel'), -1),
                  topo.AxisRef('params', (f'dense_{j}', 'bias'), -1)]
      produces += norm_refs(f'dense_bn_{j}')
      nxt = f'dense_{j + 1}' if j + 1 < n_dense else 'logits'
      groups.append(topo.UnitGroup(
          f'dense_act_{j}', int(d), tuple(produces),
          (topo.AxisRef('params', (nxt, 'kernel'), 0,
                        fold=topo.FoldRef('params', (nxt, 'bias'))),)))
    return topo.UnitTopology(tuple(groups))


class VGG16(VGG):
  """The CIFAR VGG-16 of the DemP experiments.

  13 ``conv3x3 (bias) -> BN -> ReLU`` of widths 64, 64 | 128, 128 | 256,
  256, 256 | 512, 512, 512 | 512, 512, 512 with a 2x2 max-pool after the
  2nd, 4th, 7th and 10th conv; a 2x2 average pool; flatten; two hidden
  ``Dense(4096) -> BN -> ReLU``; ``Dense(classes)``. Set
  ``last_conv_width=1024`` for the reference code's last conv.
  """
  conv_widths: Sequence[int] = (64, 64, 128, 128, 256, 256, 256, 512, 512,
                                512, 512, 512, 512)
  dense_widths: Sequence[int] = (4096, 4096)
  pool_after: Sequence[int] = (1, 3, 6, 9)
  conv_bias: bool = True
  head_pool: int = 2
