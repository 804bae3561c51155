"""A small pre-LN Vision Transformer whose MLP hidden units are prunable.

``patches (conv p x p, stride p) -> [CLS; tokens] + pos-emb ->
[x + MHA(LN(x)); x + MLP(LN(x))]_depth -> LN -> Dense(classes) on CLS``.

Unit groups, one or two per block ``block_i`` (``widths`` in this order):

* ``block_i/mlp/act``: the MLP's hidden units after the activation,
  ``act(fc1(LN(x)))`` of shape ``[B, T, m_i]``. Produced by ``fc1``'s output
  columns and bias; consumed by ``fc2``'s input rows (a removed constant unit
  is folded into ``fc2``'s bias).
* with ``mlp_out_activation=True`` (the Synaptic Stripping authors' ViT,
  with the activation after ``fc2`` too), ``block_i/mlp/out_act``: the
  ``k_i`` outputs ``act(fc2(.))`` of shape ``[B, T, k_i]``. They are
  residual-stream features, but only as *writers*: the MLP adds output ``j``
  to stream feature ``out_index[j]`` (an ``int32[k_i]`` scatter map in the
  non-trainable ``'shortcut'`` collection, initialised to the identity), so
  removing a dead MLP output just stops that block writing into that stream
  feature. The residual stream itself (width ``hidden_size``) is never
  pruned, so the group couples to nothing else. A removed *constant* output
  cannot be folded (the next reader is a LayerNorm); its loss shows in
  ``Shrunk.max_output_change``.

* with ``prune_heads=True``, first in each block, ``block_i/attn/heads``:
  the ``h_i`` attention heads. A head's output ``o[b, t, :, h] =
  softmax(q_h k_h^T / sqrt(d_h)) v_h`` is sown as ``[B, T, d_h, h_i]`` (heads
  last, so a head is dead when all its ``d_h`` outputs are 0 on every
  token). Produced by the head's slices of the query, key and value kernels
  ``[D, h_i, d_h]`` and biases ``[h_i, d_h]``; consumed by the output
  projection ``[h_i, d_h, D]``. A removed head whose output is a non-zero
  constant is not folded (a head's output is a vector, not a scalar).

Attention is written out (``query``/``key``/``value``/``out`` with Flax's
``MultiHeadDotProductAttention`` parameter layout) so that the head axis is
visible; the head width ``d_h = hidden_size // num_heads`` never changes.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from demp_jax import topology as topo
from demp_jax.models import layers


class MlpBlock(nn.Module):
  """``fc2(act(fc1(x)))`` on ``x [..., dim]``; with ``out_activation`` the
  output is ``scatter(act(fc2(.)), out_index)`` into ``[..., dim]``."""
  hidden: int
  out_width: int
  dim: int
  activation: str = 'gelu'
  out_activation: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = layers.activation(self.activation)
    y = act(nn.Dense(self.hidden, kernel_init=layers.lecun_normal(),
                     name='fc1')(x))
    self.sow('activations', 'act', y)
    if not self.out_activation:
      return nn.Dense(self.dim, kernel_init=layers.lecun_normal(),
                      name='fc2')(y)
    y = act(nn.Dense(self.out_width, kernel_init=layers.lecun_normal(),
                     name='fc2')(y))
    self.sow('activations', 'out_act', y)
    index = self.variable('shortcut', 'out_index', layers.identity_index,
                          self.out_width, self.dim)
    return layers.scatter_channels(y, index.value, self.dim)


class Attention(nn.Module):
  """Multi-head self-attention, ``x [B, T, D] -> [B, T, D]``.

  ``q, k, v = x W_{q,k,v} + b`` with kernels ``[D, H, d_h]``; per head
  ``o_h = softmax(q_h k_h^T / sqrt(d_h)) v_h``; output
  ``sum_{h, e} o[..., h, e] W_out[h, e, :] + b_out``. With ``sow_heads``
  the head outputs are sown as ``'heads'``, shape ``[B, T, d_h, H]``.
  """
  num_heads: int
  head_dim: int
  sow_heads: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(nn.DenseGeneral,
                              features=(self.num_heads, self.head_dim),
                              kernel_init=layers.lecun_normal())
    q = dense(name='query')(x)
    k = dense(name='key')(x)
    v = dense(name='value')(x)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(
        jnp.asarray(self.head_dim, x.dtype))
    o = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, axis=-1), v)
    if self.sow_heads:
      self.sow('activations', 'heads', jnp.swapaxes(o, -1, -2))
    return nn.DenseGeneral(x.shape[-1], axis=(-2, -1),
                           kernel_init=layers.lecun_normal(), name='out')(o)


class EncoderBlock(nn.Module):
  """Pre-LN block: ``x + MHA(LN(x))`` then ``x + MLP(LN(x))``."""
  num_heads: int
  head_dim: int
  hidden: int
  out_width: int
  activation: str = 'gelu'
  out_activation: bool = False
  sow_heads: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    y = nn.LayerNorm(name='ln1')(x)
    x = x + Attention(self.num_heads, self.head_dim, self.sow_heads,
                      name='attn')(y)
    y = nn.LayerNorm(name='ln2')(x)
    return x + MlpBlock(self.hidden, self.out_width, dim, self.activation,
                        self.out_activation, name='mlp')(y)


class ViT(nn.Module):
  """A small pre-LN ViT, NHWC input (see the module docstring).

  Attributes:
    patch_size: square patches of ``patch_size`` pixels.
    hidden_size: residual-stream width (never pruned).
    depth: encoder blocks.
    num_heads: attention heads (``hidden_size`` must divide by it).
    mlp_dim: default MLP hidden width of every block.
    num_classes: logits.
    activation: ``'relu'`` or ``'gelu'`` (any key of
      :data:`demp_jax.models.layers.ACTIVATIONS`).
    mlp_out_activation: also apply the activation after ``fc2`` and make
      those outputs a unit group per block.
    prune_heads: make the attention heads a unit group per block.
    unit_widths: one width per unit group in topology order; ``None``:
      ``num_heads`` (with ``prune_heads``), ``mlp_dim`` (and ``hidden_size``
      for the MLP outputs).
  """
  patch_size: int = 4
  hidden_size: int = 192
  depth: int = 6
  num_heads: int = 3
  mlp_dim: int = 768
  num_classes: int = 10
  activation: str = 'gelu'
  mlp_out_activation: bool = False
  prune_heads: bool = False
  unit_widths: Optional[Sequence[int]] = None

  @property
  def block_groups(self) -> tuple[str, ...]:
    """The unit groups of one block, in order."""
    return ((('attn/heads',) if self.prune_heads else ()) + ('mlp/act',) +
            (('mlp/out_act',) if self.mlp_out_activation else ()))

  @property
  def head_dim(self) -> int:
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size={self.hidden_size} is not a multiple of '
                       f'num_heads={self.num_heads}')
    return int(self.hidden_size) // int(self.num_heads)

  @property
  def widths(self) -> tuple[int, ...]:
    if self.unit_widths is not None:
      return tuple(int(w) for w in self.unit_widths)
    default = {'attn/heads': self.num_heads, 'mlp/act': self.mlp_dim,
               'mlp/out_act': self.hidden_size}
    return tuple(int(default[g]) for g in self.block_groups) * int(self.depth)

  def _block_widths(self, i: int) -> dict[str, int]:
    k = len(self.block_groups)
    return dict(zip(self.block_groups, self.widths[i * k:(i + 1) * k]))

  def with_widths(self, widths: Sequence[int]) -> 'ViT':
    widths = tuple(int(w) for w in widths)
    n = len(self.block_groups) * int(self.depth)
    if len(widths) != n:
      raise ValueError(f'ViT has {n} unit groups; got {len(widths)} widths')
    return self.clone(unit_widths=widths, parent=None)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """``x [B, H, W, C]`` -> logits ``[B, num_classes]``; ``train`` is
    unused (no dropout, no batch statistics)."""
    del train
    p = int(self.patch_size)
    d = int(self.hidden_size)
    if x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f'config.model.patch_size={p} does not divide the '
                       f'{x.shape[1]}x{x.shape[2]} input: the patches would '
                       'leave its last rows or columns out')
    x = nn.Conv(d, (p, p), strides=(p, p), padding='VALID',
                name='patch_embed')(x)
    b = x.shape[0]
    x = x.reshape((b, -1, d))
    cls = self.param('cls', nn.initializers.zeros, (1, 1, d))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x],
                        axis=1)
    pos = self.param('pos_embedding', nn.initializers.normal(0.02),
                     (1, x.shape[1], d))
    x = x + pos
    for i in range(int(self.depth)):
      w = self._block_widths(i)
      x = EncoderBlock(w.get('attn/heads', self.num_heads), self.head_dim,
                       w['mlp/act'], w.get('mlp/out_act', d),
                       self.activation, self.mlp_out_activation,
                       self.prune_heads, name=f'block_{i}')(x)
    x = nn.LayerNorm(name='ln_final')(x)
    return nn.Dense(self.num_classes, kernel_init=layers.lecun_normal(),
                    name='head')(x[:, 0])

  def unit_topology(self, input_shape: Sequence[int]
                    ) -> Optional[topo.UnitTopology]:
    """The hand-written topology of the variants whose groups go through
    index maps or head axes (``prune_heads``, ``mlp_out_activation``); None
    for the plain ViT, whose MLP groups are derived (:mod:`demp_jax.derive`).
    ``input_shape`` is one example's ``(H, W, C)``."""
    del input_shape
    if not (self.prune_heads or self.mlp_out_activation):
      return None
    groups = []
    for i in range(int(self.depth)):
      w = self._block_widths(i)
      attn = (f'block_{i}', 'attn')
      mlp = (f'block_{i}', 'mlp')
      fc1, fc2 = mlp + ('fc1',), mlp + ('fc2',)
      if self.prune_heads:
        qkv = [topo.AxisRef('params', attn + (m, leaf), axis)
               for m in ('query', 'key', 'value')
               for leaf, axis in (('kernel', -2), ('bias', 0))]
        groups.append(topo.UnitGroup(
            f'block_{i}/attn/heads', int(w['attn/heads']), tuple(qkv),
            (topo.AxisRef('params', attn + ('out', 'kernel'), 0),)))
      groups.append(topo.UnitGroup(
          f'block_{i}/mlp/act', int(w['mlp/act']),
          (topo.AxisRef('params', fc1 + ('kernel',), -1),
           topo.AxisRef('params', fc1 + ('bias',), -1)),
          (topo.AxisRef('params', fc2 + ('kernel',), 0,
                        fold=topo.FoldRef('params', fc2 + ('bias',))),)))
      if self.mlp_out_activation:
        groups.append(topo.UnitGroup(
            f'block_{i}/mlp/out_act', int(w['mlp/out_act']),
            (topo.AxisRef('params', fc2 + ('kernel',), -1),
             topo.AxisRef('params', fc2 + ('bias',), -1),
             topo.AxisRef('shortcut', mlp + ('out_index',), 0,
                          kind='index'))))
    return topo.UnitTopology(tuple(groups))
