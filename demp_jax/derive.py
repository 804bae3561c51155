"""The unit topology of any Flax model, derived from its own computation.

:func:`derive` traces the eval-mode forward pass ``fn(variables, x)`` to a
flat program of primitives (:mod:`demp_jax.program`, abstract shapes, no
real compute) and follows every array axis through it:

* Each axis of each value belongs to an *index space* (a class of a
  union-find). An operation that lines up two axes index by index joins
  their spaces: the operands of an elementwise op, the contracted axes of a
  ``dot_general``, the input features of a conv and its kernel's input axis,
  a bias added to an output, the channels on both sides of a residual add.
  A reshape that merges axes makes a *product* space (the NHWC flatten into
  a dense layer: ``[H][W][C]`` with the channel fastest), a concatenation a
  *concatenated* space (each part at its offset), a slice or split cuts a
  space into parts.
* A *unit site* is a value that leaves an elementwise chain holding a
  non-linearity (ReLU, GELU, SiLU, leaky ReLU, tanh, ...): its last axis is
  a space of units. A space is a *unit group* when it has a site, a kernel
  producing it (the output axis of a dense or conv kernel), and nothing
  that forbids removing an index from it: it is not the network's input or
  output, no operation reduces over it (LayerNorm, GroupNorm, softmax over
  channels), and no constant array of the model code spans it.
* Every variable leaf axis in a group's space becomes an
  :class:`~demp_jax.topology.AxisRef`: ``consumes`` when a dense or conv
  contracts it against the data, ``produces`` otherwise (kernel output
  columns, biases, norm scales and offsets, running statistics). A consumer
  whose output goes straight into a bias add (or the ``x - mean`` of an
  eval-mode BatchNorm) gets that leaf as its fold target, when the consumer
  reads the site's values unchanged (through pooling, flattening,
  concatenation, slicing).

Channels joined by a residual add form one group with several sites (the
whole residual stream of a ResNet stage); a unit is dead when it is zero at
every site.

A depthwise conv (one filter per channel) carries its input's units through;
a grouped conv ties its channels in groups, so they are skipped.

Groups it cannot follow are left out, with the reason in
:attr:`Derivation.skipped` (naming the operation, its source line and the
parameter), while the rest of the model prunes: gathers, scatters and
dynamic slices over a unit axis, control flow (``scan``, ``while``,
``cond``) and unknown primitives on a unit axis, a parameter that meets the
data in two operations (weight tying, a layer applied twice) or holds one
group on two of its axes. So are spaces that are not prunable (a norm
over the units, the network's input or output, a constant of the model
code). :class:`TopologyError` is left for a unit layout it cannot describe.
The surgery's probe check stays as the backstop.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from demp_jax import program as prog
from demp_jax import topology as topo
from demp_jax.spaces import Spaces


class TopologyError(ValueError):
  """The model does something to a unit axis that demp_jax cannot follow."""


# Elementwise primitives: output index (i, j, ...) reads input (i, j, ...).
ELEMENTWISE = frozenset("""
abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp conj
convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp
exp2 expm1 floor ge gt igamma imag integer_pow is_finite le lgamma log log1p
logistic lt max min mul ne neg nextafter not or pow real reduce_precision rem
round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan tanh xor
shift_left shift_right_logical shift_right_arithmetic population_count clz
sharding_constraint optimization_barrier pvary mesh_cast name
""".split())

# Elementwise primitives that are affine in a data operand (per index).
_AFFINE = frozenset("""
add sub neg convert_element_type copy copy_p reduce_precision real conj
stop_gradient sharding_constraint optimization_barrier pvary mesh_cast name
""".split())

# Value-preserving views of an axis: a constant unit stays that constant.
_VIEWS = frozenset('reshape transpose broadcast_in_dim squeeze slice pad '
                   'rev'.split())

_REDUCTIONS = frozenset('reduce_sum reduce_max reduce_min reduce_prod '
                        'reduce_and reduce_or reduce_xor argmax argmin'.split())

_RANDOM = frozenset('random_bits random_seed random_wrap random_unwrap '
                    'random_fold_in random_split threefry2x32 rng_bit_generator '
                    'rng_uniform iota'.split())


# ------------------------------------------------------------------ analysis


@dataclasses.dataclass(frozen=True)
class Site:
  """Where a group's units are read: ``value[..., positions[u, k]]`` is
  unit ``u`` (``positions`` is ``[n, k]``; ``None``: the whole last axis,
  unit ``u`` at ``u``)."""
  var: prog.Var
  positions: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class Derivation:
  """What :func:`derive` found.

  Attributes:
    topology: the unit groups, in the order their first site is computed.
    sites: group name -> where its units are read in ``program``.
    program: the traced forward pass.
    skipped: index spaces with non-linearity sites that are not unit
      groups, ``description -> reasons``.
    out_tree: the ``PyTreeDef`` of ``fn``'s output, whose leaves are
      ``program.outputs`` (logits, or a tuple or dict of arrays).
  """
  topology: topo.UnitTopology
  sites: dict
  program: prog.Program
  skipped: dict
  out_tree: Any = None


@dataclasses.dataclass
class _Info:
  dims: tuple        # space per axis
  data: bool         # depends on the input
  act: bool          # in an elementwise chain after a non-linearity
  prov: Optional[tuple]  # params-only values: {(leaf, axis)} per axis
  keep: dict         # site var id -> scale: a constant c at the site reads
                     # as scale * c here (value-preserving path)


def _leafname(key: topo.LeafKey) -> str:
  return '/'.join((key[0],) + tuple(key[1]))


class _Analysis:
  """One pass over a program: spaces, roles, sites and consumers."""

  def __init__(self, program: prog.Program, unit_axes: frozenset = frozenset()):
    self.p = program
    self.unit_axes = unit_axes
    self.s = Spaces()
    self.info: dict[int, _Info] = {}
    self.role: dict[tuple[int, int], str] = {}     # (leaf, axis) -> role
    self.kernel_out: set[tuple[int, int]] = set()
    self.leaf_of: dict[int, int] = {v.id: i for i, v in
                                    enumerate(program.leaf_vars)}
    self.reads: dict[int, list[str]] = {}          # leaf -> op descriptions
    self.unfollowed: dict[int, list[str]] = {}     # leaf -> unknown ops
    # leaf -> the ops where a value computed from it alone meets the data:
    # one for a layer (a kernel, or WeightNorm's kernel / norm * scale),
    # two or more for a tied or shared parameter
    self.uses: dict[int, list[str]] = {}
    self.first_read: dict[int, int] = {}           # leaf -> order of use
    # consumers: (eqn, preserved-site tags of the data read, the kernel's
    # contracted (leaf, axis) pairs)
    self.consumers: list[tuple[prog.Eqn, dict, list]] = []
    self.users = prog.users(program)

  # ---- atoms

  def get(self, a) -> _Info:
    if isinstance(a, prog.Const):
      shape = np.shape(a.value)
      dims = tuple(self.s.new(n, 'a constant array of the model code spans '
                              'it' if n > 1 else None) for n in shape)
      return _Info(dims, False, False, tuple(frozenset() for _ in shape), {})
    return self.info[a.id]

  def put(self, v, info: _Info) -> None:
    self.info[v.id] = info

  def fresh(self, v, data: bool, reason: Optional[str] = None) -> _Info:
    info = _Info(tuple(self.s.new(n, reason) for n in v.shape), data, False,
                 None if data else tuple(frozenset() for _ in v.shape), {})
    self.put(v, info)
    return info

  def run(self) -> None:
    for i, v in enumerate(self.p.leaf_vars):
      self.put(v, _Info(tuple(self.s.new(n) for n in v.shape), False, False,
                        tuple(frozenset({(i, a)})
                              for a in range(len(v.shape))), {}))
      collection, path = self.p.leaves[i]
      for a, d in enumerate(self.info[v.id].dims):
        if ({(collection, tuple(path), a), (collection, tuple(path),
                                             a - len(v.shape))} &
            self.unit_axes):
          self.s.keep_size_one(d)
    x = self.p.input_var
    self.put(x, _Info(tuple(self.s.new(n, 'the network input')
                            for n in x.shape), True, False, None, {}))
    for e in self.p.eqns:
      self.step(e)
    for o in self.p.outputs:
      if isinstance(o, prog.Var):
        for d in self.info[o.id].dims:
          self.s.freeze(d, 'the network output')

  def note_uses(self, e: prog.Eqn) -> None:
    # constants carry no parameter and are not data (and self.get would
    # make new spaces for them)
    ins = [self.info[a.id] for a in e.invars if isinstance(a, prog.Var)]
    if not any(i.data for i in ins):
      return
    for i in ins:
      if not i.data and i.prov:
        for leaf in sorted({leaf for axis in i.prov for leaf, _ in axis}):
          self.uses.setdefault(leaf, []).append(f'{e.name} at {e.where}')

  def note_reads(self, e: prog.Eqn) -> None:
    for a in e.invars:
      if isinstance(a, prog.Var) and a.id in self.leaf_of:
        leaf = self.leaf_of[a.id]
        self.first_read.setdefault(leaf, len(self.first_read))
        self.reads.setdefault(leaf, []).append(f'{e.name} at {e.where}')

  def step(self, e: prog.Eqn) -> None:
    self.note_reads(e)
    self.note_uses(e)
    name = e.name
    if name in ELEMENTWISE:
      return self.elementwise(e)
    handler = getattr(self, 'op_' + name, None)
    if handler is not None:
      return handler(e)
    if name in _REDUCTIONS:
      return self.reduction(e)
    if name.startswith('reduce_window'):
      return self.reduce_window(e)
    if name in _RANDOM:
      for v in e.outvars:
        self.fresh(v, False, f'{name} output')
      return
    return self.unknown(e, f'{name} (not followed by demp_jax)')

  # ---- generic

  def unknown(self, e: prog.Eqn, what: str) -> None:
    data = False
    for a in e.invars:
      info = self.get(a)
      data |= info.data
      for leaf, _ in set().union(*(info.prov or ())):
        self.unfollowed.setdefault(leaf, []).append(f'{what} at {e.where}')
      for d in info.dims:
        self.s.hazard(d, f'{what} at {e.where}')
    for v in e.outvars:
      info = self.fresh(v, data)
      for d in info.dims:
        self.s.hazard(d, f'{what} at {e.where}')

  def elementwise(self, e: prog.Eqn) -> None:
    ins = [self.get(a) for a in e.invars]
    out_shape = tuple(e.outvars[0].shape)
    # operands of the output's rank line up axis by axis (size-1 axes
    # broadcast); scalars broadcast everywhere
    full = [(a, i) for a, i in zip(e.invars, ins)
            if len(a.shape) == len(out_shape) and len(out_shape)]
    data_in = [i.data for i in ins]
    data = any(data_in)
    dims = []
    for k, n in enumerate(out_shape):
      axis = [i.dims[k] for a, i in full if a.shape[k] == n]
      if n == 1:  # a broadcast, unless a kept unit axis of width 1
        axis = [d for d in axis if self.s.is_kept(d)]
      if not axis:
        dims.append(self.s.new(n))
        continue
      for d in axis[1:]:
        self.s.union(axis[0], d)
      dims.append(axis[0])
    dims = tuple(dims)
    name = e.name
    if name == 'mul':
      affine = sum(data_in) <= 1
    elif name == 'div':
      affine = not data_in[1]
    elif name == 'select_n':
      affine = not data_in[0]
    else:
      affine = name in _AFFINE
    act = data and (not affine or any(i.act for i in ins if i.data))
    prov = None
    if not data:
      prov = tuple(frozenset() for _ in out_shape)
      for a, i in full:
        if i.prov is not None:
          prov = tuple(p | (q if a.shape[k] == out_shape[k] else frozenset())
                       for k, (p, q) in enumerate(zip(prov, i.prov)))
    keep = {}
    if name in ('convert_element_type', 'copy', 'copy_p', 'reduce_precision',
                'sharding_constraint') and ins[0].keep:
      keep = dict(ins[0].keep)
    elif name in ('mul', 'div') and sum(data_in) == 1:
      k = data_in.index(True)
      other = e.invars[1 - k]
      if isinstance(other, prog.Const) and np.size(other.value) == 1:
        c = float(np.asarray(other.value).reshape(()))
        f = c if name == 'mul' else (1.0 / c if k == 0 and c else None)
        if f is not None:
          keep = {s: v * f for s, v in ins[k].keep.items()}
    for v in e.outvars:
      # a non-linearity's output is a candidate site: a constant there is
      # the constant a consumer reads through value-preserving ops
      self.put(v, _Info(tuple(dims), data, act, prov,
                        {**keep, v.id: 1.0} if act else keep))

  def view(self, e: prog.Eqn, dims: list, axis_map: list) -> None:
    """A structural op whose output axis ``j`` has space ``dims[j]`` and
    reads operand axis ``axis_map[j]``: an int, a tuple of operand axes (a
    merge) or None (a new axis). Constants at sites pass through views
    (reshapes, transposes, slices, paddings)."""
    src = self.get(e.invars[0])
    prov = None
    if src.prov is not None:
      prov = tuple(
          frozenset() if m is None else
          frozenset().union(*(src.prov[a] for a in m)) if isinstance(m, tuple)
          else src.prov[m] for m in axis_map)
    keep = dict(src.keep) if e.name in _VIEWS else {}
    self.put(e.outvars[0], _Info(tuple(dims), src.data, False, prov, keep))

  # ---- shapes

  def op_broadcast_in_dim(self, e):
    src = self.get(e.invars[0])
    shape = e.params['shape']
    bdims = e.params['broadcast_dimensions']
    in_shape = e.invars[0].shape
    dims, amap = [], []
    for j, n in enumerate(shape):
      if j in bdims and in_shape[bdims.index(j)] == n:
        i = bdims.index(j)
        dims.append(src.dims[i])
        amap.append(i)
      else:
        dims.append(self.s.new(n))
        amap.append(None)
    self.view(e, tuple(dims), amap)

  def op_tile(self, e):
    # jnp.tile: an axis repeated from size 1 is a broadcast; a longer one
    # repeats its units (not followed: that space is not prunable)
    src = self.get(e.invars[0])
    dims, amap = [], []
    for k, (r, n) in enumerate(zip(e.params['reps'], e.invars[0].shape)):
      if r == 1:
        dims.append(src.dims[k])
        amap.append(k)
        continue
      if n != 1:
        self.s.freeze(src.dims[k], f'tile at {e.where} repeats it')
      dims.append(self.s.new(n * r, f'tile at {e.where}' if n != 1 else None))
      amap.append(None)
    self.view(e, dims, amap)

  def op_transpose(self, e):
    src = self.get(e.invars[0])
    perm = e.params['permutation']
    self.view(e, tuple(src.dims[p] for p in perm), list(perm))

  def op_squeeze(self, e):
    src = self.get(e.invars[0])
    drop = {d % len(src.dims) for d in e.params['dimensions']}
    keep_axes = [i for i in range(len(src.dims)) if i not in drop]
    self.view(e, tuple(src.dims[i] for i in keep_axes), keep_axes)

  def op_reshape(self, e):
    if e.params.get('dimensions') is not None:
      return self.unknown(e, 'reshape with dimensions')
    src = self.get(e.invars[0])
    in_shape = e.invars[0].shape
    queue: list[tuple[int, int]] = []      # (space, size), slowest first
    owner: list[int] = []                  # operand axis of each factor
    for i, (d, n) in enumerate(zip(src.dims, in_shape)):
      if n == 1 and not self.s.is_kept(d):
        continue
      for f in self.s.factors(d):
        queue.append((f, self.s.size[f]))
        owner.append(i)
    dims, amap = [], []
    sizes = list(e.params['new_sizes'])
    for j, n in enumerate(sizes):
      if n == 1:  # a kept width-1 factor, or a new axis
        # a run of size-1 output axes takes the kept width-1 factors at the
        # head of the queue into its last axes: (1,) -> (1, 1) is (new, kept)
        run = next((r for r in range(j, len(sizes)) if sizes[r] != 1),
                   len(sizes)) - j
        ones = next((q for q, (_, size) in enumerate(queue) if size != 1),
                    len(queue))
        if ones >= run:
          dims.append(queue.pop(0)[0])
          amap.append(owner.pop(0))
        else:
          dims.append(self.s.new(1))
          amap.append(None)
        continue
      # a kept width-1 factor starts the output axis after it (taken below
      # while prod < n); the last output axis also takes those that trail
      absorb = j + 1 == len(sizes)
      taken, prod, axes = [], 1, set()
      while queue and (prod < n or (absorb and queue[0][1] == 1)):
        f, s = queue.pop(0)
        o = owner.pop(0)
        if prod * s > n:   # cut this factor into (n / prod) x rest
          need = n // prod
          if n % prod or s % need:
            return self._broken_reshape(e, src)
          parts = self.s.split_factor(f, [need, s // need])
          if parts is None:
            return self._broken_reshape(e, src)
          f, s = parts[0], need
          queue.insert(0, (parts[1], self.s.size[parts[1]]))
          owner.insert(0, o)
        taken.append(f)
        axes.add(o)
        prod *= s
      if prod != n:
        return self._broken_reshape(e, src)
      dims.append(self.s.product(taken))
      amap.append(axes.pop() if len(axes) == 1 else tuple(sorted(axes)))
    self.view(e, dims, amap)

  def _broken_reshape(self, e, src):
    for d in src.dims:
      self.s.freeze(d, f'reshape at {e.where} cuts the axis')
    self.fresh(e.outvars[0], src.data)

  def op_concatenate(self, e):
    ins = [self.get(a) for a in e.invars]
    k = e.params['dimension']
    dims = list(ins[0].dims)
    for i in ins[1:]:
      for j, (d1, d2) in enumerate(zip(dims, i.dims)):
        if j != k:
          self.s.union(d1, d2)
    dims[k] = self.s.concat([i.dims[k] for i in ins])
    keep = {}
    for i in ins:
      keep.update(i.keep)
    data = any(i.data for i in ins)
    prov = None
    if not data:
      prov = tuple(frozenset().union(*(i.prov[j] for i in ins if i.prov))
                   for j in range(len(dims)))
    self.put(e.outvars[0], _Info(tuple(dims), data, False, prov, keep))

  def _cut(self, e, src: _Info, axis: int, start: int, stop: int
           ) -> Optional[int]:
    """The space of ``[start, stop)`` of operand axis ``axis``."""
    d = src.dims[axis]
    n = self.s.size[self.s.find(d)]
    if start == 0 and stop == n:
      return d
    kept = self.s.is_kept(d)
    parts = self.s.pieces(d, [start, stop])
    if parts is None:
      self.s.freeze(d, f'{e.name} at {e.where} cuts a merged axis')
      return None
    if kept:  # the pieces of a unit axis (a gated unit's value and gate
      for p in parts:  # columns, one each at width 1) are unit axes too
        self.s.keep_size_one(p)
    out, off = [], 0
    for p in parts:
      s = self.s.size[self.s.find(p)]
      if start <= off and off + s <= stop:
        out.append(p)
      off += s
    return out[0] if len(out) == 1 else self.s.concat(out)

  def op_slice(self, e):
    src = self.get(e.invars[0])
    shape = e.invars[0].shape
    strides = e.params.get('strides') or (1,) * len(shape)
    dims = []
    for a, (lo, hi, st) in enumerate(zip(e.params['start_indices'],
                                         e.params['limit_indices'], strides)):
      if st != 1:
        if (lo, hi) != (0, shape[a]) or st != 1:
          self.s.freeze(src.dims[a], f'strided slice at {e.where}')
        dims.append(self.s.new(len(range(lo, hi, st))))
        continue
      d = self._cut(e, src, a, lo, hi)
      dims.append(self.s.new(hi - lo) if d is None else d)
    self.view(e, dims, list(range(len(dims))))

  def op_split(self, e):
    src = self.get(e.invars[0])
    axis = e.params['axis']
    off = 0
    for v, n in zip(e.outvars, e.params['sizes']):
      d = self._cut(e, src, axis, off, off + n)
      dims = list(src.dims)
      dims[axis] = self.s.new(n) if d is None else d
      prov = src.prov
      self.put(v, _Info(tuple(dims), src.data, False, prov, dict(src.keep)))
      off += n

  def op_pad(self, e):
    src = self.get(e.invars[0])
    dims = []
    for a, (lo, hi, interior) in enumerate(e.params['padding_config']):
      d = src.dims[a]
      if (lo, hi, interior) == (0, 0, 0):
        dims.append(d)
      elif interior == 0 and lo >= 0 and hi >= 0:
        parts = ([self.s.new(lo, f'padding at {e.where}')] if lo else []) + [
            d] + ([self.s.new(hi, f'padding at {e.where}')] if hi else [])
        dims.append(self.s.concat(parts))
      else:
        self.s.freeze(d, f'pad at {e.where}')
        dims.append(self.s.new(e.outvars[0].shape[a]))
    # zero padding keeps constants away from the border only (like a
    # zero-padded conv): accepted, as for the convs themselves
    self.view(e, dims, list(range(len(dims))))

  def op_rev(self, e):
    src = self.get(e.invars[0])
    for a in e.params['dimensions']:
      self.s.hazard(src.dims[a], f'rev at {e.where}')
    self.view(e, src.dims, list(range(len(src.dims))))

  def op_iota(self, e):
    self.fresh(e.outvars[0], False, f'iota at {e.where}')

  # ---- reductions and pooling

  def reduction(self, e):
    src = self.get(e.invars[0])
    axes = {a % max(len(src.dims), 1) for a in e.params.get('axes', ())}
    for a in axes:  # a norm over the channels, a softmax, a global sum
      self.s.freeze(src.dims[a], f'{e.name} over the units at {e.where} '
                    '(a norm or a softmax over them)')
    kept = [i for i in range(len(src.dims)) if i not in axes]
    info = _Info(tuple(src.dims[i] for i in kept), src.data, False,
                 None if src.prov is None else tuple(src.prov[i]
                                                     for i in kept), {})
    if e.name == 'reduce_sum':
      count = math.prod(e.invars[0].shape[a] for a in axes)
      info.keep = {s: v * count for s, v in src.keep.items()}
    elif e.name in ('reduce_max', 'reduce_min'):
      info.keep = dict(src.keep)
    self.put(e.outvars[0], info)

  def reduce_window(self, e):
    src = self.get(e.invars[0])
    p = e.params
    n = len(src.dims)
    wd = p.get('window_dimensions', (1,) * n)
    ws = p.get('window_strides', (1,) * n)
    pad = p.get('padding', ((0, 0),) * n)
    bd = p.get('base_dilation', (1,) * n)
    wdl = p.get('window_dilation', (1,) * n)
    dims = []
    for a in range(n):
      if (wd[a], ws[a], tuple(pad[a]), bd[a], wdl[a]) == (1, 1, (0, 0), 1, 1):
        dims.append(src.dims[a])
      else:
        self.s.freeze(src.dims[a], f'{e.name} over the units at {e.where}')
        dims.append(self.s.new(e.outvars[0].shape[a]))
    if e.name not in ('reduce_window_sum', 'reduce_window_max',
                      'reduce_window_min'):
      return self.unknown(e, e.name)
    keep = {}
    if e.name == 'reduce_window_sum':
      count = math.prod(wd)
      keep = {s: v * count for s, v in src.keep.items()}
    else:
      keep = dict(src.keep)
    self.put(e.outvars[0], _Info(tuple(dims), src.data, False, None if
                                 src.prov is None else src.prov, keep))

  def op_cumsum(self, e):
    src = self.get(e.invars[0])
    self.s.freeze(src.dims[e.params['axis']], f'{e.name} at {e.where}')
    self.view(e, src.dims, list(range(len(src.dims))))

  op_cumprod = op_cummax = op_cummin = op_cumlogsumexp = op_cumsum

  def op_sort(self, e):
    # every operand (keys, then values sorted with them) is permuted along
    # the dimension; the other axes stay where they were
    axis = e.params['dimension']
    for a, v in zip(e.invars, e.outvars):
      src = self.get(a)
      self.s.freeze(src.dims[axis], f'sort at {e.where}')
      self.put(v, _Info(src.dims, src.data, False, src.prov, {}))

  # ---- linear maps

  def _contract(self, e, lhs: _Info, rhs: _Info, lc, rc, lfree,
                rfree) -> None:
    """Roles of the kernel operand of a dense/conv against the data: its
    contracted axes consume, its free axes produce (kernel outputs)."""
    for kernel, data, contracted, free in ((rhs, lhs, rc, rfree),
                                           (lhs, rhs, lc, lfree)):
      if not (data.data and not kernel.data):
        continue
      for a in contracted:
        for leaf_axis in kernel.prov[a]:
          self.role[leaf_axis] = 'consumes'
      for a in free:
        for leaf_axis in kernel.prov[a]:
          self.kernel_out.add(leaf_axis)
      self.consumers.append((e, dict(data.keep), [
          la for a in contracted for la in kernel.prov[a]]))

  def op_dot_general(self, e):
    (lc, rc), (lb, rb) = e.params['dimension_numbers']
    lhs, rhs = self.get(e.invars[0]), self.get(e.invars[1])
    for a, b in zip(lc, rc):
      self.s.union(lhs.dims[a], rhs.dims[b])
    for a, b in zip(lb, rb):
      self.s.union(lhs.dims[a], rhs.dims[b])
    lfree = [i for i in range(len(lhs.dims)) if i not in lc and i not in lb]
    rfree = [i for i in range(len(rhs.dims)) if i not in rc and i not in rb]
    dims = ([lhs.dims[a] for a in lb] + [lhs.dims[a] for a in lfree] +
            [rhs.dims[a] for a in rfree])
    data = lhs.data or rhs.data
    prov = None
    if not data:
      prov = tuple([lhs.prov[a] | rhs.prov[b] for a, b in zip(lb, rb)] +
                   [lhs.prov[a] for a in lfree] + [rhs.prov[a] for a in rfree])
    self._contract(e, lhs, rhs, lc, rc, lfree, rfree)
    self.put(e.outvars[0], _Info(tuple(dims), data, False, prov, {}))

  def op_conv_general_dilated(self, e):
    p = e.params
    lhs_spec, rhs_spec, out_spec = p['dimension_numbers']
    lhs, rhs = self.get(e.invars[0]), self.get(e.invars[1])
    out_shape = e.outvars[0].shape
    dims = [None] * len(out_shape)
    groups = int(p.get('feature_group_count', 1))
    bgroups = int(p.get('batch_group_count', 1))
    channels = e.invars[0].shape[lhs_spec[1]]
    out_channels = rhs.dims[rhs_spec[0]]
    # a depthwise conv: one filter per input channel. Narrowed to one unit
    # it is a 1-to-1 conv, told apart by the group's unit axes: its input
    # and the kernel's output axis carry units, the kernel's input axis not
    one_in = e.invars[1].shape[rhs_spec[1]] == 1
    depthwise = (bgroups == 1 and groups == channels and one_in and
                 e.invars[1].shape[rhs_spec[0]] == channels and (
                     channels > 1 or (
                         self.s.is_kept(lhs.dims[lhs_spec[1]]) and
                         self.s.is_kept(out_channels) and
                         not self.s.is_kept(rhs.dims[rhs_spec[1]]))))
    if depthwise:
      # channel c of the output reads channel c of the input only (a
      # depthwise conv with one filter per channel): one space through it,
      # the kernel's output axis indexed like a per-channel scale
      self.s.union(lhs.dims[lhs_spec[1]], out_channels)
    elif groups == 1 and bgroups == 1:
      self.s.union(lhs.dims[lhs_spec[1]], rhs.dims[rhs_spec[1]])
    else:
      msg = (f'a grouped conv (feature_group_count={groups}'
             f'{f", batch_group_count={bgroups}" if bgroups != 1 else ""})'
             f' at {e.where}, kernel {self._leaf_names(rhs)}, ties its '
             'channels in groups')
      for d in (lhs.dims[lhs_spec[1]], rhs.dims[rhs_spec[1]], out_channels):
        self.s.freeze(d, msg)
    dims[out_spec[0]] = lhs.dims[lhs_spec[0]]
    dims[out_spec[1]] = out_channels
    for a in range(len(out_shape)):
      if dims[a] is None:
        dims[a] = self.s.new(out_shape[a])
    data = lhs.data or rhs.data
    self._contract(e, lhs, rhs, [lhs_spec[1]], [rhs_spec[1]], [],
                   [rhs_spec[0]])
    prov = None if data else tuple(frozenset() for _ in out_shape)
    self.put(e.outvars[0], _Info(tuple(dims), data, False, prov, {}))

  def _leaf_names(self, info: _Info) -> str:
    if info.prov is None:
      return '(computed from the data)'
    leaves = sorted({i for s in info.prov for i, _ in s})
    return ', '.join(_leafname(self.p.leaves[i]) for i in leaves) or '?'

  # ---- gathers

  def op_gather(self, e):
    src = self.get(e.invars[0])
    dn = e.params['dimension_numbers']
    sizes = e.params['slice_sizes']
    indexed = set(dn.start_index_map) | set(dn.collapsed_slice_dims) | set(
        getattr(dn, 'operand_batching_dims', ()))
    for a in indexed:
      self.s.hazard(src.dims[a], f'gather at {e.where} on '
                    f'{self._leaf_names(src) if not src.data else "data"}')
    out_shape = e.outvars[0].shape
    dims = [None] * len(out_shape)
    offset_axes = [a for a in range(len(src.dims)) if a not in
                   set(dn.collapsed_slice_dims) |
                   set(getattr(dn, 'operand_batching_dims', ()))]
    for j, a in zip(dn.offset_dims, offset_axes):
      if sizes[a] == e.invars[0].shape[a] and a not in indexed:
        dims[j] = src.dims[a]
      else:
        self.s.hazard(src.dims[a], f'gather at {e.where}')
    for j in range(len(out_shape)):
      if dims[j] is None:
        dims[j] = self.s.new(out_shape[j])
    data = any(self.get(a).data for a in e.invars)
    prov = None if data else tuple(frozenset() for _ in out_shape)
    self.put(e.outvars[0], _Info(tuple(dims), data, False, prov, {}))

  def op_dynamic_slice(self, e):
    src = self.get(e.invars[0])
    sizes = e.params['slice_sizes']
    dims = []
    for a, n in enumerate(sizes):
      if n == e.invars[0].shape[a]:
        dims.append(src.dims[a])
      else:
        self.s.hazard(src.dims[a], f'dynamic_slice at {e.where}')
        dims.append(self.s.new(n))
    data = any(self.get(a).data for a in e.invars)
    self.put(e.outvars[0], _Info(tuple(dims), data, False, None if data else
                                 src.prov, {}))


# ---------------------------------------------------------------- assembly


def _geometry(idx: np.ndarray, n: int) -> Optional[dict]:
  """``AxisRef`` geometry (start, tile, stride, inner) of the positions
  ``idx`` (unit at each position, -1 elsewhere), or None if it has none."""
  pos0 = np.flatnonzero(idx == 0)
  if n == 0 or pos0.size == 0:
    return None
  runs = np.flatnonzero(np.diff(pos0) != 1)
  inner = int(runs[0] + 1) if runs.size else int(pos0.size)
  tile = pos0.size // inner
  start = int(pos0[0])
  stride = int(pos0[inner] - pos0[0]) if tile > 1 else idx.size
  # the default stride marks a reference that covers the whole axis
  whole = start == 0 and tile * n * inner == idx.size
  geo = dict(start=start, tile=tile, stride=None if whole else stride,
             inner=inner)
  ref = topo.AxisRef('params', ('_',), 0, **geo)
  want = np.full(idx.shape, -1)
  pos = ref.positions(n)
  if pos.max() >= idx.size:
    return None
  want[pos.reshape(-1)] = np.repeat(np.arange(n), pos.shape[1])
  return geo if np.array_equal(want, idx) else None


def derive(fn: Callable[[Any, Any], Any], variables: Mapping[str, Any],
           x: Any, units: Optional[topo.UnitTopology] = None) -> Derivation:
  """Traces ``fn(variables, x)`` (eval mode, logits out) and derives the
  unit topology of the model. ``variables`` and ``x`` may be abstract
  (``jax.ShapeDtypeStruct``). A group it cannot follow is left out and
  named in ``skipped`` with the reason; :class:`TopologyError` is raised
  only for a unit layout it cannot describe.

  A size-1 axis reads as a broadcast. ``units``, the topology of the same
  model before a shrink, names the parameter axes that carry units, so a
  group narrowed to one unit stays a group."""
  out_tree = []

  def flat_fn(v, x):  # the output's leaves, its structure kept aside
    leaves, tree = jax.tree.flatten(fn(v, x))
    out_tree.append(tree)
    return leaves

  program = prog.trace(flat_fn, variables, x)
  an = _Analysis(program, _unit_axes(units))
  an.run()
  s = an.s
  # sites: values leaving an elementwise chain that holds a non-linearity
  site_vars = []
  outputs = {o.id for o in program.outputs if isinstance(o, prog.Var)}
  for e in program.eqns:
    for v in e.outvars:
      info = an.info.get(v.id)
      if (info is None or not info.act or not v.shape or
          not jnp.issubdtype(v.dtype, jnp.floating)):  # bfloat16 too
        continue
      readers = an.users.get(v.id, [])
      if v.id in outputs or any(u.name not in ELEMENTWISE for u in readers):
        site_vars.append(v)
  # group the sites by the atom spaces of their last axis
  atoms: dict[int, list[Site]] = {}
  for v in site_vars:
    for atom, idx in s.layout(an.info[v.id].dims[-1]):
      n = s.size[atom]
      if n == 0:
        continue
      simple = idx.size == n and np.array_equal(idx, np.arange(n))
      pos = None
      if not simple:
        order = np.argsort(idx, kind='stable')
        order = order[idx[order] >= 0]
        pos = order.reshape(n, -1)
      atoms.setdefault(atom, []).append(Site(v, pos))
  # every leaf axis, by the atom spaces it holds
  leaf_layouts = []
  for i, v in enumerate(program.leaf_vars):
    dims = an.info[v.id].dims  # the leaf's own spaces, joined since
    leaf_layouts.append([s.layout(d) for d in dims])
  groups, sites, skipped, names = [], {}, {}, set()
  fold_of = _fold_targets(an)
  for atom, atom_sites in atoms.items():
    atom = s.find(atom)
    n = s.size[atom]
    refs: list[tuple[str, topo.AxisRef, tuple[int, int]]] = []
    for i, layouts in enumerate(leaf_layouts):
      key = program.leaves[i]
      ndim = len(program.leaf_vars[i].shape)
      for a, layout in enumerate(layouts):
        for at, idx in layout:
          if s.find(at) != atom:
            continue
          geo = _geometry(idx, n)
          role = an.role.get((i, a), 'produces')
          if geo is None:
            raise TopologyError(
                f'the units of {_leafname(key)} axis {a} are laid out in a '
                'pattern demp_jax cannot describe (a nested reshape of a '
                'concatenation?)')
          fold = fold_of.get((i, a, atom)) if role == 'consumes' else None
          refs.append((role, topo.AxisRef(key[0], key[1], a - ndim,
                                          fold=fold, **geo), (i, a)))
    # named after the first kernel (in program order) that produces it
    kernels = [r for _, r, la in sorted(
        refs, key=lambda t: an.first_read.get(t[2][0], 1 << 30))
               if la in an.kernel_out]
    what = ('the units produced by ' + _leafname(
        (kernels[0].collection, kernels[0].path))) if kernels else ''
    if not kernels:
      continue   # not the output of a layer (tokens, the input, ...)
    reasons = s.reasons(atom)
    if reasons:
      skipped[what] = reasons
      continue
    why = _refusal(an, program, atom, refs)
    if why:
      skipped[what] = (why,)
      continue
    base = '/'.join(kernels[0].path[:-1]) or _leafname(
        (kernels[0].collection, kernels[0].path))
    name, k = base, 1
    while name in names:
      k += 1
      name = f'{base}#{k}'
    names.add(name)
    groups.append(topo.UnitGroup(
        name, n, tuple(r for role, r, _ in refs if role == 'produces'),
        tuple(r for role, r, _ in refs if role == 'consumes')))
    sites[name] = tuple(atom_sites)
  # A parameter only an unfollowed operation reads would otherwise vanish
  # without a word (its units are never a group): name it and the op.
  in_groups = {(r.collection, r.path) for g in groups
               for r in g.produces + g.consumes}
  for i, ops in sorted(an.unfollowed.items()):
    key = program.leaves[i]
    if key[0] == 'params' and (key[0], tuple(key[1])) not in in_groups:
      skipped[f'the parameter {_leafname(key)}'] = tuple(dict.fromkeys(ops))
  return Derivation(topo.UnitTopology(tuple(groups)), sites, program, skipped,
                    out_tree[0])




def _refusal(an: _Analysis, program: prog.Program, atom: int,
             refs: list) -> Optional[str]:
  """Why the group of ``atom`` cannot be followed, or None: an operation
  demp_jax does not follow reaches it, or one of its parameters meets the
  data in two operations or holds it on two of its axes. Such a group is
  left out (its arrays are never sliced); the rest of the model prunes."""
  hazards = an.s.hazards(atom)
  if hazards:
    return f'they reach {hazards[0]}, which demp_jax cannot prune through'
  axes_of: dict[int, set] = {}
  for _, _, (i, a) in refs:
    axes_of.setdefault(i, set()).add(a)
  for i, axes in axes_of.items():
    uses = an.uses.get(i, [])
    if len(uses) > 1:
      return (f'parameter {_leafname(program.leaves[i])} carries them and '
              f'meets the data in {len(uses)} operations '
              f'({"; ".join(uses[:3])}): weight tying or a shared layer, '
              'which demp_jax cannot prune')
    if len(axes) > 1:
      return (f'parameter {_leafname(program.leaves[i])} carries them on '
              f'{len(axes)} of its axes ({sorted(axes)}; '
              f'{"; ".join(an.reads[i][:3])}), which demp_jax cannot prune')
  return None


def _unit_axes(units: Optional[topo.UnitTopology]) -> frozenset:
  """``{(collection, path, axis)}`` of every parameter axis in ``units``
  (``axis`` negative)."""
  if units is None:
    return frozenset()
  return frozenset((r.collection, tuple(r.path), r.axis)
                   for g in units.groups for r in g.produces + g.consumes)


def _fold_targets(an: _Analysis) -> dict:
  """``(leaf, axis, atom) -> FoldRef`` for consumer kernels whose output
  goes straight into a bias add (``+ b``) or an eval-mode BatchNorm
  (``- mean``), and whose input reads a unit site unchanged."""
  out = {}
  s = an.s
  site_atoms: dict[int, set[int]] = {}
  for e, keep, leaf_axes in an.consumers:
    y = e.outvars[0]
    readers = an.users.get(y.id, [])
    if len(readers) != 1:
      continue
    (u,) = readers
    k = 1 if u.invars[0] is y else 0
    if u.name not in ('add', 'sub') or (u.name == 'sub' and k != 1):
      continue
    other = u.invars[k]
    if not isinstance(other, prog.Var):
      continue
    info = an.info[other.id]
    if info.data or info.prov is None or not info.prov:
      continue
    src = info.prov[-1]
    if len(src) != 1 or any(info.prov[:-1]):
      continue
    (leaf, _), = src
    if len(an.p.leaf_vars[leaf].shape) != 1:
      continue
    # the kernel's output axis must be its last one
    ydims = an.info[y.id].dims
    key = an.p.leaves[leaf]
    fold = topo.FoldRef(key[0], key[1], 1.0 if u.name == 'add' else -1.0)
    preserved = {sid for sid, scale in keep.items()
                 if abs(scale - 1.0) < 1e-6}
    for i, a in leaf_axes:
      kernel = an.p.leaf_vars[i]
      if s.find(an.info[kernel.id].dims[-1]) != s.find(ydims[-1]):
        continue
      for atom, _ in s.layout(an.info[kernel.id].dims[a]):
        atom = s.find(atom)
        if atom not in site_atoms:
          site_atoms[atom] = _atom_site_ids(an, atom)
        if site_atoms[atom] & preserved:
          out[(i, a, atom)] = fold
  return out


def _atom_site_ids(an: _Analysis, atom: int) -> set[int]:
  """Ids of the values whose last axis holds ``atom`` (candidate sites)."""
  out = set()
  for vid, info in an.info.items():
    if info.act and info.dims:
      if any(an.s.find(a) == atom for a, _ in an.s.layout(info.dims[-1])):
        out.add(vid)
  return out
