"""A VGG-style CNN with BatchNorm; its unit topology is derived
(:mod:`demp_jax.derive`)."""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax

from demp_jax.models import layers


class VGG(nn.Module):
  """``[Conv3x3 -> BN -> act (-> MaxPool2x2)]_i -> (AvgPool) -> flatten ->
  [Dense -> BN -> act]_j -> Dense(classes)``, NHWC.

  Unit groups (derived): ``conv_i`` (one per conv, a channel is a unit;
  activation shape ``[batch, H, W, c_i]``) then ``dense_j``
  (``[batch, d_j]``). The input channels and the logits are never pruned.

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
      VGG-16 has 1,024 channels in its last conv).
  """
  conv_widths: Sequence[int] = (32, 64, 128)
  dense_widths: Sequence[int] = (256,)
  pool_after: Sequence[int] = (0, 1, 2)
  num_classes: int = 10
  conv_bias: bool = False
  activation: str = 'relu'
  head_pool: int = 0
  last_conv_width: Optional[int] = None

  def __post_init__(self):
    n = len(self.conv_channels)
    outside = [int(i) for i in self.pool_after if not 0 <= int(i) < n]
    if outside:
      raise ValueError(
          f'config.model.pool_after={tuple(self.pool_after)} names conv '
          f'{outside[0]}, and the model has {n} convs (0 to {n - 1})')
    super().__post_init__()

  @property
  def conv_channels(self) -> tuple[int, ...]:
    """The conv widths in use (``last_conv_width`` applied)."""
    c = tuple(int(w) for w in self.conv_widths)
    if self.last_conv_width is not None and c:
      c = c[:-1] + (int(self.last_conv_width),)
    return c

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """``x [B, H, W, C]`` -> logits ``[B, num_classes]``."""
    act = layers.activation(self.activation)
    for i, c in enumerate(self.conv_channels):
      x = nn.Conv(c, (3, 3), padding='SAME', use_bias=self.conv_bias,
                  kernel_init=layers.he_normal(), name=f'conv_{i}')(x)
      x = layers.batch_norm(train, f'conv_bn_{i}')(x)
      x = act(x)
      if i in self.pool_after:
        _require_room(x, 2, f'the 2x2 max-pool after conv {i} '
                      f'(config.model.pool_after={tuple(self.pool_after)})')
        x = layers.max_pool_tiles(x, 2)
    if self.head_pool:
      k = int(self.head_pool)
      _require_room(x, k, f'config.model.head_pool={k}')
      x = nn.avg_pool(x, (k, k), strides=(k, k))
    x = x.reshape((x.shape[0], -1))  # NHWC flatten: channel fastest
    for j, d in enumerate(self.dense_widths):
      x = nn.Dense(d, kernel_init=layers.he_normal(),
                   name=f'dense_{j}')(x)
      x = layers.batch_norm(train, f'dense_bn_{j}')(x)
      x = act(x)
    return nn.Dense(self.num_classes, kernel_init=layers.lecun_normal(),
                    name='logits')(x)


def _require_room(x: jax.Array, k: int, what: str) -> None:
  """A ``ValueError`` when a ``k x k`` VALID pool would leave no
  position of ``x [B, H, W, C]`` (the layers after it would be empty)."""
  if x.shape[1] < k or x.shape[2] < k:
    raise ValueError(f'{what} meets a {x.shape[1]}x{x.shape[2]} feature '
                     'map and would leave nothing of it: pool less for this '
                     'input size')


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
