"""Width-parametrised ResNets whose every post-activation channel is a unit.

Two variants of one class:

* :class:`ResNet18`, the CIFAR ResNet-18 of the DemP experiments: 3x3
  stride-1 stem conv -> BN -> ReLU (no max-pool), 4 stages x 2 BasicBlocks
  V1 (``conv3x3-BN-ReLU, conv3x3-BN, + shortcut, ReLU``), widths
  64/128/256/512, strides 1/2/2/2, projection (1x1 conv + BN) where the shape
  changes, 4x4 average pool -> flatten -> Dense(classes).
* :class:`ResNet50`, ImageNet ResNet-50 v1.5: 7x7/2 stem conv -> BN -> ReLU
  -> 3x3/2 max-pool, bottleneck blocks ``[3, 4, 6, 3]`` of widths
  ``(64, 64, 256) * 2^i`` with the stride on the 3x3 conv, a projection in
  the first block of every stage, zero-initialised scale on each block's
  last BN, global mean pool -> Dense(1000).

Unit groups (one per sown activation, ``widths`` in this order):

* ``stem_act``: the stem's post-ReLU channels ``[B, H, W, c]``;
* per block ``blockS_B``: its internal post-ReLU channels ``blockS_B/act1``
  (and ``blockS_B/act2`` in a bottleneck), then ``blockS_B/out``, the
  channels after ``ReLU(branch + shortcut)``.

Every block keeps its *own* subset of residual-stream channels: the identity
shortcut is a gather ``s[..., j] = x[..., idx[j]]`` (``idx[j] = -1``: zero)
with ``idx`` an ``int32[c_out]`` stored in the non-trainable ``'shortcut'``
collection (``variables['shortcut'][block]['index']``), initialised to the
identity. Removing output channel ``j`` of a block slices ``idx``; removing
input channel ``i`` renumbers its values (``i`` becomes -1). Projection
shortcuts are ordinary 1x1 convs + BN whose output channels belong to the
block's ``out`` group. This is the authors' fixed 0/1 "IdentityConv2D" as an
index map (no matmul). The input channels of the stem and the logits are
never pruned. Which blocks project is fixed by the architecture at its
default widths, not by the current (pruned) widths.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax

from demp_jax import topology as topo
from demp_jax.models import layers

_PAD1 = ((1, 1), (1, 1))
# Unit groups inside one block, in order; the last is the block output.
BLOCK_GROUPS = {'basic': ('act1', 'out'), 'bottleneck': ('act1', 'act2', 'out')}
_LAST_BN = {'basic': 'bn2', 'bottleneck': 'bn3'}


class BlockSpec(NamedTuple):
  name: str           # module name, e.g. 'block1_0'
  stride: int         # stride of the block (on its 3x3 conv)
  projection: bool    # 1x1 conv + BN shortcut (else an identity gather)
  default_widths: tuple[int, ...]  # widths at the default architecture


class ResidualBlock(nn.Module):
  """One V1 BasicBlock or v1.5 bottleneck block, NHWC.

  ``widths`` are the block's group widths (``act1[, act2], out``). Input
  ``x [B, H, W, c_in]`` -> output ``[B, H/stride, W/stride, widths[-1]]``.
  """
  widths: Sequence[int]
  kind: str = 'basic'
  stride: int = 1
  projection: bool = False
  zero_init_last_bn: bool = False
  activation: str = 'relu'
  gather_shortcut: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = layers.activation(self.activation)
    conv = functools.partial(nn.Conv, use_bias=False,
                             kernel_init=layers.he_normal())
    last_scale = (nn.initializers.zeros if self.zero_init_last_bn else
                  nn.initializers.ones)
    s = (self.stride, self.stride)
    w = [int(v) for v in self.widths]
    if self.kind == 'basic':
      y = conv(w[0], (3, 3), strides=s, padding=_PAD1, name='conv1')(x)
      y = act(layers.batch_norm(train, 'bn1')(y))
      self.sow('activations', 'act1', y)
      y = conv(w[1], (3, 3), padding=_PAD1, name='conv2')(y)
      y = layers.batch_norm(train, 'bn2', last_scale)(y)
    elif self.kind == 'bottleneck':
      y = conv(w[0], (1, 1), name='conv1')(x)
      y = act(layers.batch_norm(train, 'bn1')(y))
      self.sow('activations', 'act1', y)
      y = conv(w[1], (3, 3), strides=s, padding=_PAD1, name='conv2')(y)
      y = act(layers.batch_norm(train, 'bn2')(y))
      self.sow('activations', 'act2', y)
      y = conv(w[2], (1, 1), name='conv3')(y)
      y = layers.batch_norm(train, 'bn3', last_scale)(y)
    else:
      raise ValueError(f'unknown block kind {self.kind!r}; known: '
                       f'{sorted(BLOCK_GROUPS)}')
    if self.projection:
      sc = conv(w[-1], (1, 1), strides=s, name='proj_conv')(x)
      sc = layers.batch_norm(train, 'proj_bn')(sc)
    else:
      if self.stride != 1:
        raise ValueError('an identity shortcut needs stride 1')
      if self.gather_shortcut:
        index = self.variable('shortcut', 'index', layers.identity_index,
                              w[-1], x.shape[-1])
        sc = layers.gather_channels(x, index.value)
      else:
        sc = x
    out = act(y + sc)
    self.sow('activations', 'out', out)
    return out


class ResNet(nn.Module):
  """A width-parametrised ResNet (see the module docstring), NHWC.

  Attributes:
    stage_sizes: blocks per stage.
    block: ``'basic'`` (V1 BasicBlock) or ``'bottleneck'`` (v1.5).
    base_width: stem width; stage ``i`` has width ``base_width * 2^i``
      (times 4 at a bottleneck's output).
    stem: ``'cifar'`` (3x3 stride 1, no pool) or ``'imagenet'`` (7x7
      stride 2, BN, ReLU, 3x3/2 max-pool).
    pool_size: head average pool ``pool_size x pool_size`` (stride the same,
      VALID) before the flatten; ``None``: global mean over positions.
    num_classes: logits.
    zero_init_last_bn: zero-initialise the scale of each block's last BN.
    activation: key of :data:`demp_jax.models.layers.ACTIVATIONS`.
    unit_widths: one width per unit group in topology order; ``None``: the
      default widths. Use :meth:`with_widths`.
    shortcut: ``'gather'``: identity shortcuts are per-block gathers, every
      block keeps its own subset of residual-stream channels (the
      hand-written :meth:`unit_topology`); ``'add'``: plain ``y + x``, and
      the topology is derived from the computation
      (:mod:`demp_jax.derive`): the channels joined by the adds of a stage
      are one coupled unit group.
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = 'basic'
  base_width: int = 64
  stem: str = 'cifar'
  pool_size: Optional[int] = 4
  num_classes: int = 10
  zero_init_last_bn: bool = False
  activation: str = 'relu'
  unit_widths: Optional[Sequence[int]] = None
  shortcut: str = 'gather'

  # ------------------------------------------------------------ structure

  def block_specs(self) -> list[BlockSpec]:
    """The blocks, with the projection decided at the default widths."""
    if self.block not in BLOCK_GROUPS:
      raise ValueError(f'unknown ResNet block {self.block!r}; known: '
                       f'{sorted(BLOCK_GROUPS)}')
    specs = []
    c_in = int(self.base_width)
    for s, n in enumerate(self.stage_sizes):
      w = int(self.base_width) * 2**s
      widths = (w, w) if self.block == 'basic' else (w, w, 4 * w)
      for b in range(int(n)):
        stride = 2 if (s > 0 and b == 0) else 1
        specs.append(BlockSpec(f'block{s}_{b}', stride,
                               stride != 1 or c_in != widths[-1], widths))
        c_in = widths[-1]
    return specs

  @property
  def widths(self) -> tuple[int, ...]:
    if self.unit_widths is not None:
      return tuple(int(w) for w in self.unit_widths)
    out = [int(self.base_width)]
    for spec in self.block_specs():
      out += spec.default_widths
    return tuple(out)

  def with_widths(self, widths: Sequence[int]) -> 'ResNet':
    widths = tuple(int(w) for w in widths)
    n = 1 + len(self.block_specs()) * len(BLOCK_GROUPS[self.block])
    if len(widths) != n:
      raise ValueError(f'{type(self).__name__} has {n} unit groups; got '
                       f'{len(widths)} widths')
    return self.clone(unit_widths=widths, parent=None)

  def _block_widths(self) -> list[tuple[int, ...]]:
    widths = self.widths
    k = len(BLOCK_GROUPS[self.block])
    return [tuple(widths[1 + i * k:1 + (i + 1) * k])
            for i in range(len(self.block_specs()))]

  # -------------------------------------------------------------- forward

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """``x [B, H, W, C]`` -> logits ``[B, num_classes]``."""
    act = layers.activation(self.activation)
    stem_w = self.widths[0]
    if self.stem == 'cifar':
      x = nn.Conv(stem_w, (3, 3), padding=_PAD1, use_bias=False,
                  kernel_init=layers.he_normal(),
                  name='stem_conv')(x)
    elif self.stem == 'imagenet':
      x = nn.Conv(stem_w, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                  use_bias=False, kernel_init=layers.he_normal(),
                  name='stem_conv')(x)
    else:
      raise ValueError(f'unknown stem {self.stem!r}; known: cifar, imagenet')
    x = act(layers.batch_norm(train, 'stem_bn')(x))
    self.sow('activations', 'stem_act', x)
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_PAD1)
    for spec, w in zip(self.block_specs(), self._block_widths()):
      x = ResidualBlock(w, self.block, spec.stride, spec.projection,
                        self.zero_init_last_bn, self.activation,
                        self.shortcut == 'gather', name=spec.name)(x, train)
    if self.pool_size:
      p = int(self.pool_size)
      if x.shape[1] < p or x.shape[2] < p:
        raise ValueError(f'the final feature map {x.shape[1:3]} is smaller '
                         f'than pool_size={p}; use a larger input or '
                         'pool_size=None (global mean)')
      x = nn.avg_pool(x, (p, p), strides=(p, p))
      x = x.reshape((x.shape[0], -1))  # NHWC flatten: channel fastest
    else:
      x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=layers.lecun_normal(),
                    name='head')(x)

  # ------------------------------------------------------------- topology

  def _final_hw(self, input_shape: Sequence[int]) -> tuple[int, int]:
    h, w = int(input_shape[0]), int(input_shape[1])
    conv = lambda n, k, s, p: (n + 2 * p - k) // s + 1
    if self.stem == 'imagenet':
      h, w = conv(h, 7, 2, 3), conv(w, 7, 2, 3)
      h, w = conv(h, 3, 2, 1), conv(w, 3, 2, 1)
    for spec in self.block_specs():
      h, w = conv(h, 3, spec.stride, 1), conv(w, 3, spec.stride, 1)
    return h, w

  def unit_topology(self, input_shape: Sequence[int]
                    ) -> Optional[topo.UnitTopology]:
    """``input_shape`` is one example's ``(H, W, C)``; None with
    ``shortcut='add'`` (derive it)."""
    if self.shortcut not in ('gather', 'add'):
      raise ValueError(f"ResNet shortcut={self.shortcut!r}: use 'gather' or "
                       "'add'")
    if self.shortcut == 'add':
      return None
    h, w = self._final_hw(input_shape)
    if self.pool_size:
      p = int(self.pool_size)
      if h < p or w < p:
        raise ValueError(f'input {tuple(input_shape)} gives a final feature '
                         f'map {(h, w)} smaller than pool_size={p}')
      tile = (h // p) * (w // p)
    else:
      tile = 1
    last_bn = _LAST_BN[self.block]
    names = BLOCK_GROUPS[self.block]

    def input_consumers(spec: BlockSpec) -> list[topo.AxisRef]:
      """How a block reads its input channels (the previous group)."""
      b = spec.name
      refs = [topo.AxisRef('params', (b, 'conv1', 'kernel'), -2,
                           fold=topo.FoldRef('batch_stats', (b, 'bn1', 'mean'),
                                             -1.0))]
      if spec.projection:
        refs.append(topo.AxisRef(
            'params', (b, 'proj_conv', 'kernel'), -2,
            fold=topo.FoldRef('batch_stats', (b, 'proj_bn', 'mean'), -1.0)))
      else:
        refs.append(topo.AxisRef(
            'shortcut', (b, 'index'), 0, kind='index',
            fold=topo.FoldRef('params', (b, last_bn, 'bias'))))
      return refs

    specs = self.block_specs()
    head = [topo.AxisRef('params', ('head', 'kernel'), 0, tile=tile,
                         fold=topo.FoldRef('params', ('head', 'bias')))]
    nxt = [input_consumers(s) for s in specs[1:]] + [head]
    groups = [topo.UnitGroup(
        'stem_act', self.widths[0],
        (topo.AxisRef('params', ('stem_conv', 'kernel'), -1),
         *topo.norm_refs('stem_bn')),
        tuple(input_consumers(specs[0]) if specs else head))]
    for spec, widths, after in zip(specs, self._block_widths(), nxt):
      b = spec.name
      for k, (gname, width) in enumerate(zip(names, widths)):
        conv, bn = f'conv{k + 1}', f'bn{k + 1}'
        produces = [topo.AxisRef('params', (b, conv, 'kernel'), -1),
                    *topo.norm_refs((b, bn))]
        if gname != 'out':
          nconv, nbn = f'conv{k + 2}', f'bn{k + 2}'
          consumes = (topo.AxisRef(
              'params', (b, nconv, 'kernel'), -2,
              fold=topo.FoldRef('batch_stats', (b, nbn, 'mean'), -1.0)),)
        else:
          if spec.projection:
            produces += [topo.AxisRef('params', (b, 'proj_conv', 'kernel'),
                                      -1),
                         *topo.norm_refs((b, 'proj_bn'))]
          else:
            produces.append(topo.AxisRef('shortcut', (b, 'index'), 0,
                                         kind='index'))
          consumes = tuple(after)
        groups.append(topo.UnitGroup(f'{b}/{gname}', int(width),
                                     tuple(produces), consumes))
    return topo.UnitTopology(tuple(groups))


class ResNet18(ResNet):
  """The CIFAR ResNet-18 of the DemP experiments (3,904 units)."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = 'basic'
  base_width: int = 64
  stem: str = 'cifar'
  pool_size: Optional[int] = 4
  num_classes: int = 10
  zero_init_last_bn: bool = False


class ResNet50(ResNet):
  """ImageNet ResNet-50 v1.5 (22,720 units)."""
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  block: str = 'bottleneck'
  base_width: int = 64
  stem: str = 'imagenet'
  pool_size: Optional[int] = None
  num_classes: int = 1000
  zero_init_last_bn: bool = True
