"""Models written the way users write them: no demp_jax hooks at all.

Widths are written in the bodies (``nn.Dense(24)``), there is no ``sow``,
no ``widths`` field, no ``with_widths`` and no ``unit_topology``. Each
family comes in Linen and in NNX; :data:`FAMILIES` maps a name to
``(linen factory, nnx factory, input shape)``.
"""
from __future__ import annotations

import flax.linen as nn
from flax import nnx
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp


# --------------------------------------------------------------------- Linen


class SeqMLP(nn.Module):
  """Dense -> BN -> ReLU -> Dense -> GELU -> Dense -> SiLU -> logits."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(24)(x)))
    x = nn.gelu(nn.Dense(20)(x))
    x = nn.silu(nn.Dense(16)(x))
    return nn.Dense(5)(x)


class FlattenCNN(nn.Module):
  """Conv-BN-ReLU-pool twice, an NHWC flatten into Dense, a leaky ReLU."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    for c in (8, 12):
      x = nn.Conv(c, (3, 3), use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.leaky_relu(nn.Dense(16)(x), 0.1)
    return nn.Dense(5)(x)


class ChannelsFirstCNN(nn.Module):
  """A PyTorch-style NCHW flatten: transpose, then reshape into Dense."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(10, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(14)(x))
    return nn.Dense(5)(x)


class Block(nn.Module):
  """conv-BN-ReLU-conv-BN plus an identity or a projection shortcut."""
  features: int
  stride: int = 1
  project: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda: nn.BatchNorm(use_running_average=not train)
    y = nn.Conv(self.features, (3, 3), strides=self.stride, use_bias=False)(x)
    y = nn.relu(bn()(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
    y = bn()(y)
    if self.project:
      x = nn.Conv(self.features, (1, 1), strides=self.stride,
                  use_bias=False)(x)
      x = bn()(x)
    return nn.relu(x + y)


class ShapeDrivenBlock(nn.Module):
  """A block whose code decides its structure from a width: its input
  channels cannot shrink."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    y = nn.relu(nn.Conv(6, (3, 3))(x))
    if x.shape[-1] != 8:   # the width decides the structure
      x = nn.Conv(8, (1, 1))(x)
    return nn.Dense(5)(nn.relu(x + nn.Conv(8, (3, 3))(y)).mean(axis=(1, 2)))


class ResidualNet(nn.Module):
  """Stem, two identity blocks, a projection block, global mean, head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = Block(8)(x, train)
    x = Block(8)(x, train)
    x = Block(12, stride=2, project=True)(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(5)(x)


class ConcatNet(nn.Module):
  """Two branches of different widths joined on the channel axis."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    a = nn.relu(nn.Conv(6, (3, 3))(x))
    b = nn.relu(nn.Conv(4, (1, 1))(x))
    x = jnp.concatenate([a, b], axis=-1)
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    c = nn.relu(nn.Dense(7)(x.reshape((x.shape[0], -1))))
    d = nn.relu(nn.Dense(5)(x.mean(axis=(1, 2))))
    return nn.Dense(5)(jnp.concatenate([c, d], axis=-1))


class GatedMLP(nn.Module):
  """A gated linear unit: one Dense split into a value and a gate."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    h = nn.Dense(2 * 12)(x)
    value, gate = jnp.split(h, 2, axis=-1)
    x = value * nn.sigmoid(gate)
    return nn.Dense(5)(x)


class TokenMLPBlock(nn.Module):
  """Pre-LN transformer MLP block on patch tokens."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(16, (4, 4), strides=(4, 4))(x)   # patches
    x = x.reshape((x.shape[0], -1, x.shape[-1]))  # [B, T, D]
    for _ in range(2):
      y = nn.LayerNorm()(x)
      y = nn.gelu(nn.Dense(32)(y))
      x = x + nn.Dense(16)(y)
    x = nn.LayerNorm()(x)
    return nn.Dense(5)(x.mean(axis=1))


class RematBlock(nn.Module):
  """Dense -> BN -> GELU, its output named for a remat policy."""
  features: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train)(nn.Dense(self.features)(x))
    return checkpoint_name(nn.gelu(x), 'hidden')


class RematMLP(nn.Module):
  """Blocks under ``nn.remat`` (activation checkpointing)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    for f in (24, 16):
      x = nn.remat(RematBlock, static_argnums=(2,))(f)(x, train)
    return nn.Dense(5)(x)


class WeightNormMLP(nn.Module):
  """Dense layers under ``nn.WeightNorm``: per output unit ``g v / |v|``.
  The norm of the second one runs over its inputs, the units before it."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.WeightNorm(nn.Dense(24))(x))
    x = nn.relu(nn.Dense(16)(x))
    x = nn.relu(nn.WeightNorm(nn.Dense(12))(x))
    return nn.Dense(5)(x)


class InvertedResidual(nn.Module):
  """A MobileNetV2 block: 1x1 expansion, 3x3 depthwise conv, linear 1x1
  projection, identity shortcut."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda: nn.BatchNorm(use_running_average=not train)
    x = nn.relu(bn()(nn.Conv(8, (3, 3), use_bias=False)(x)))
    h = nn.relu6(bn()(nn.Conv(16, (1, 1), use_bias=False)(x)))
    h = nn.Conv(16, (3, 3), feature_group_count=16, use_bias=False)(h)
    h = nn.relu6(bn()(h))
    x = x + bn()(nn.Conv(8, (1, 1), use_bias=False)(h))
    return nn.Dense(5)(x.mean(axis=(1, 2)))


class GroupNormCNN(nn.Module):
  """GroupNorm with a fixed ``num_groups``: its channels are not units."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.GroupNorm(num_groups=4)(nn.Conv(16, (3, 3))(x)))
    x = nn.Conv(8, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(5)(x.mean(axis=(1, 2)))


class GeneralDense(nn.Module):
  """A dense layer on the channels of NHWC, then ``DenseGeneral`` over
  all of H, W, C (a flatten without a reshape)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(12)(x)
    x = nn.silu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.relu(nn.DenseGeneral(10, axis=(-3, -2, -1))(x))
    return nn.Dense(5)(x)


# ----------------------------------------------------------------------- NNX


class NSeqMLP(nnx.Module):

  def __init__(self, rngs: nnx.Rngs, d_in: int = 48):
    self.fc1 = nnx.Linear(d_in, 24, rngs=rngs)
    self.bn1 = nnx.BatchNorm(24, rngs=rngs)
    self.fc2 = nnx.Linear(24, 20, rngs=rngs)
    self.fc3 = nnx.Linear(20, 16, rngs=rngs)
    self.out = nnx.Linear(16, 5, rngs=rngs)

  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    x = nnx.relu(self.bn1(self.fc1(x)))
    x = nnx.gelu(self.fc2(x))
    return self.out(nnx.silu(self.fc3(x)))


class NFlattenCNN(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.convs = nnx.List([nnx.Conv(3, 8, (3, 3), use_bias=False, rngs=rngs),
                           nnx.Conv(8, 12, (3, 3), use_bias=False,
                                    rngs=rngs)])
    self.bns = nnx.List([nnx.BatchNorm(8, rngs=rngs),
                         nnx.BatchNorm(12, rngs=rngs)])
    self.fc = nnx.Linear(12 * 2 * 2, 16, rngs=rngs)
    self.out = nnx.Linear(16, 5, rngs=rngs)

  def __call__(self, x):
    for conv, bn in zip(self.convs, self.bns):
      x = nnx.max_pool(nnx.relu(bn(conv(x))), (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    return self.out(nnx.leaky_relu(self.fc(x), 0.1))


class NBlock(nnx.Module):

  def __init__(self, c_in: int, c: int, stride: int, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(c_in, c, (3, 3), strides=stride, use_bias=False,
                          rngs=rngs)
    self.bn1 = nnx.BatchNorm(c, rngs=rngs)
    self.conv2 = nnx.Conv(c, c, (3, 3), use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(c, rngs=rngs)
    self.proj = (nnx.Conv(c_in, c, (1, 1), strides=stride, use_bias=False,
                          rngs=rngs) if c_in != c or stride != 1 else None)
    self.proj_bn = nnx.BatchNorm(c, rngs=rngs) if self.proj else None

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.proj is not None:
      x = self.proj_bn(self.proj(x))
    return nnx.relu(x + y)


class NResidualNet(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.stem = nnx.Conv(3, 8, (3, 3), use_bias=False, rngs=rngs)
    self.stem_bn = nnx.BatchNorm(8, rngs=rngs)
    self.blocks = nnx.List([NBlock(8, 8, 1, rngs), NBlock(8, 8, 1, rngs),
                            NBlock(8, 12, 2, rngs)])
    self.head = nnx.Linear(12, 5, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem_bn(self.stem(x)))
    for b in self.blocks:
      x = b(x)
    return self.head(x.mean(axis=(1, 2)))


class NConcatNet(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.a = nnx.Conv(3, 6, (3, 3), rngs=rngs)
    self.b = nnx.Conv(3, 4, (1, 1), rngs=rngs)
    self.c = nnx.Conv(10, 8, (3, 3), rngs=rngs)
    self.out = nnx.Linear(8 * 4 * 4, 5, rngs=rngs)

  def __call__(self, x):
    x = jnp.concatenate([nnx.relu(self.a(x)), nnx.relu(self.b(x))], axis=-1)
    x = nnx.max_pool(nnx.relu(self.c(x)), (2, 2), strides=(2, 2))
    return self.out(x.reshape((x.shape[0], -1)))


class NTokenMLPBlock(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.patch = nnx.Conv(3, 16, (4, 4), strides=(4, 4), rngs=rngs)
    self.ln = nnx.List([nnx.LayerNorm(16, rngs=rngs) for _ in range(2)])
    self.fc1 = nnx.List([nnx.Linear(16, 32, rngs=rngs) for _ in range(2)])
    self.fc2 = nnx.List([nnx.Linear(32, 16, rngs=rngs) for _ in range(2)])
    self.ln_f = nnx.LayerNorm(16, rngs=rngs)
    self.head = nnx.Linear(16, 5, rngs=rngs)

  def __call__(self, x):
    x = self.patch(x)
    x = x.reshape((x.shape[0], -1, x.shape[-1]))
    for ln, fc1, fc2 in zip(self.ln, self.fc1, self.fc2):
      x = x + fc2(nnx.gelu(fc1(ln(x))))
    return self.head(self.ln_f(x).mean(axis=1))


class NInvertedResidual(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.stem = nnx.Conv(3, 8, (3, 3), use_bias=False, rngs=rngs)
    self.expand = nnx.Conv(8, 16, (1, 1), use_bias=False, rngs=rngs)
    self.dw = nnx.Conv(16, 16, (3, 3), feature_group_count=16,
                       use_bias=False, rngs=rngs)
    self.project = nnx.Conv(16, 8, (1, 1), use_bias=False, rngs=rngs)
    self.bns = nnx.List([nnx.BatchNorm(c, rngs=rngs) for c in (8, 16, 16, 8)])
    self.head = nnx.Linear(8, 5, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bns[0](self.stem(x)))
    h = nnx.relu6(self.bns[1](self.expand(x)))
    h = nnx.relu6(self.bns[2](self.dw(h)))
    x = x + self.bns[3](self.project(h))
    return self.head(x.mean(axis=(1, 2)))


class NGroupNormCNN(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(3, 16, (3, 3), rngs=rngs)
    self.gn = nnx.GroupNorm(16, num_groups=4, rngs=rngs)
    self.conv2 = nnx.Conv(16, 8, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.head = nnx.Linear(8, 5, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.gn(self.conv1(x)))
    x = nnx.relu(self.bn(self.conv2(x)))
    return self.head(x.mean(axis=(1, 2)))


class NGeneralDense(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.a = nnx.LinearGeneral(3, 12, rngs=rngs)
    self.bn = nnx.BatchNorm(12, rngs=rngs)
    self.b = nnx.LinearGeneral((8, 8, 12), 10, axis=(-3, -2, -1), rngs=rngs)
    self.out = nnx.Linear(10, 5, rngs=rngs)

  def __call__(self, x):
    x = nnx.silu(self.bn(self.a(x)))
    return self.out(nnx.relu(self.b(x)))


# ------------------------------------------------------------------ registry

IMAGE = (8, 8, 3)

FAMILIES = {
    'seq_mlp': (SeqMLP, lambda: NSeqMLP(nnx.Rngs(0)), (4, 4, 3)),
    'flatten_cnn': (FlattenCNN, lambda: NFlattenCNN(nnx.Rngs(0)), IMAGE),
    'channels_first_cnn': (ChannelsFirstCNN, None, IMAGE),
    'residual': (ResidualNet, lambda: NResidualNet(nnx.Rngs(0)), IMAGE),
    'concat': (ConcatNet, lambda: NConcatNet(nnx.Rngs(0)), IMAGE),
    'gated_mlp': (GatedMLP, None, (4, 4, 3)),
    'token_mlp': (TokenMLPBlock, lambda: NTokenMLPBlock(nnx.Rngs(0)), IMAGE),
    'remat_mlp': (RematMLP, lambda: NRematMLP(nnx.Rngs(0)), (4, 4, 3)),
    'weight_norm': (WeightNormMLP, None, (4, 4, 3)),
    'depthwise': (InvertedResidual, lambda: NInvertedResidual(nnx.Rngs(0)),
                  IMAGE),
    'group_norm': (GroupNormCNN, lambda: NGroupNormCNN(nnx.Rngs(0)), IMAGE),
    'dense_general': (GeneralDense, lambda: NGeneralDense(nnx.Rngs(0)),
                      IMAGE),
}

# The unit groups each family must have (by the module that produces them).
EXPECTED_GROUPS = {
    'seq_mlp': 3, 'flatten_cnn': 3, 'channels_first_cnn': 2, 'residual': 5,
    'concat': 5, 'gated_mlp': 1, 'token_mlp': 2, 'concat_nnx': 3,
    'remat_mlp': 2, 'weight_norm': 2, 'depthwise': 2, 'group_norm': 1,
    'dense_general': 2,
}


class NRematMLP(nnx.Module):
  """Layers called under ``nnx.remat``."""

  def __init__(self, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(48, 24, rngs=rngs)
    self.bn1 = nnx.BatchNorm(24, rngs=rngs)
    self.fc2 = nnx.Linear(24, 16, rngs=rngs)
    self.out = nnx.Linear(16, 5, rngs=rngs)

  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    x = nnx.remat(lambda fc, bn, x: nnx.gelu(bn(fc(x))))(self.fc1, self.bn1, x)
    x = nnx.remat(lambda fc, x: nnx.relu(fc(x)))(self.fc2, x)
    return self.out(x)


class LogitsAndFeatures(nn.Module):
  """Returns ``(logits, features)``, as models written for a probe or a
  distillation loss do; the features' units are an output, not a group."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(24)(x))
    features = nn.relu(nn.Dense(16)(x))
    return nn.Dense(10)(features), features


class TwoHeads(nn.Module):
  """Returns a dict of two heads that read two hidden layers."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    h = nn.relu(nn.Dense(10)(x))
    h2 = nn.relu(nn.Dense(7)(h))
    return {'cls': nn.Dense(3)(h2), 'aux': (nn.Dense(2)(h), nn.Dense(1)(h2))}


def list_sequential():
  """``nn.Sequential`` built from a list, as Flax's docs write it."""
  return nn.Sequential([lambda x: x.reshape((x.shape[0], -1)), nn.Dense(12),
                        nn.relu, nn.Dense(10), nn.relu, nn.Dense(5)])


class ListFieldMLP(nn.Module):
  """Its widths in a ``list`` field (a Linen module that cannot hash)."""
  features: list

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    for f in self.features[:-1]:
      x = nn.relu(nn.Dense(f)(x))
    return nn.Dense(self.features[-1])(x)


class NListWidths(nnx.Module):
  """Keeps its widths as a plain python list (static in its GraphDef)."""

  def __init__(self, widths: list, rngs: nnx.Rngs):
    self.widths = widths
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in
                            zip([48] + widths[:-1], widths)])

  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for layer in self.layers[:-1]:
      x = nnx.relu(layer(x))
    return self.layers[-1](x)


class FixedWidthMLP(nn.Module):
  """A layer whose width its code fixes (``self.param(..., (n, hidden))``)
  before a plain ``Dense``: that group is left out, the Dense prunes."""
  hidden: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    w = self.param('w', nn.initializers.lecun_normal(),
                   (x.shape[-1], self.hidden))
    b = self.param('b', nn.initializers.zeros, (self.hidden,))
    h = nn.relu(jnp.einsum('bi,ih->bh', x, w) + b)
    h = nn.relu(nn.Dense(8)(h))
    return nn.Dense(5)(h)


def make_logits_and_features():
  """A factory the trainer must refuse: its model returns a tuple."""
  return LogitsAndFeatures()


def make_five_classes():
  """A factory the trainer must refuse on Fashion-MNIST: 5 logits."""
  return SeqMLP()


class LayerNormMLPFM(nn.Module):
  """Every hidden unit under a LayerNorm: nothing can be pruned."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.LayerNorm()(nn.Dense(16)(x.reshape((x.shape[0], -1)))))
    return nn.Dense(10)(x)


def make_class():
  """A factory the trainer must refuse: it returns the class, not a module."""
  return LayerNormMLPFM


def make_unprunable():
  """A Fashion-MNIST model without a unit group."""
  return LayerNormMLPFM()


def make_net_linen():
  """A factory for ``--config.model.name=tests.user_models:make_net_linen``."""
  return FlattenCNNFM()


def make_net_nnx():
  return NFlattenCNNFM(nnx.Rngs(0))


class FlattenCNNFM(nn.Module):
  """A Fashion-MNIST CNN as a user would write it (28x28x1, 10 classes)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    for c in (16, 32):
      x = nn.Conv(c, (3, 3), use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train,
                               momentum=0.9)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.BatchNorm(use_running_average=not train,
                             momentum=0.9)(nn.Dense(64)(x)))
    return nn.Dense(10)(x)


class NFlattenCNNFM(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.c1 = nnx.Conv(1, 16, (3, 3), use_bias=False, rngs=rngs)
    self.b1 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
    self.c2 = nnx.Conv(16, 32, (3, 3), use_bias=False, rngs=rngs)
    self.b2 = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
    self.fc = nnx.Linear(32 * 7 * 7, 64, rngs=rngs)
    self.b3 = nnx.BatchNorm(64, momentum=0.9, rngs=rngs)
    self.drop = nnx.Dropout(0.1, rngs=rngs)
    self.out = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(nnx.relu(self.b1(self.c1(x))), (2, 2), strides=(2, 2))
    x = nnx.max_pool(nnx.relu(self.b2(self.c2(x))), (2, 2), strides=(2, 2))
    x = nnx.relu(self.b3(self.fc(x.reshape((x.shape[0], -1)))))
    return self.out(self.drop(x))


del jax


class BF16CNNFM(nn.Module):
  """A Fashion-MNIST CNN computing in bfloat16 (float32 parameters and
  logits), as mixed-precision code writes it."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), dtype=jnp.bfloat16)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train,
                             dtype=jnp.bfloat16)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2)).reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(32, dtype=jnp.bfloat16)(x))
    return nn.Dense(10, dtype=jnp.float32)(x)


def make_bf16_linen():
  return BF16CNNFM()
