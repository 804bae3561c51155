"""The unit topology: which array axes belong to each group of prunable units.

A *unit* is one output neuron of a dense layer or one output channel of a
convolution, seen after its activation. A *unit group* is the set of units
that one activation site produces (one layer's outputs). For each group the
topology lists every variable leaf that carries the group's unit axis:

* ``produces``: leaves whose ``axis`` indexes the group's units on the output
  side (producer kernel ``[..., n]``, bias ``[n]``, norm scale/offset
  ``[n]``, norm running mean/var ``[n]``). Zeroing a unit's entries in the
  *params* among them makes the unit output exactly ``act(0)``.
* ``consumes``: leaves that read the group's units on ``axis`` (the next
  kernel's input axis ``[..., n, m]``). When a conv output is flattened in
  NHWC order before a dense layer, the consumer's input axis has length
  ``tile * n`` and unit ``c`` owns the positions ``p * n + c`` for
  ``p < tile`` (channel fastest), so ``tile`` = H*W at the flatten. In
  general unit ``c`` owns ``start + p * stride + c * inner + i`` for
  ``p < tile``, ``i < inner`` (:meth:`AxisRef.positions`): a channel-first
  flatten (``inner`` = H*W), a concatenation (``start`` = the part's
  offset), a split (``stride``). Several references may share one leaf
  axis (the parts of a concatenation) as long as their positions do not
  overlap.
* ``kind='index'`` references describe integer gather maps kept in a
  non-trainable collection, e.g. a residual block's identity shortcut
  ``s[..., j] = x[..., idx[j]]`` (``idx[j] = -1``: zero). The map is
  *produced* by the block's output group (its entries are sliced with the
  output units) and *consumed* by the block's input group (its values are
  unit indices of that group and are renumbered when units go, a removed
  unit becoming -1). So every block keeps its own subset of residual-stream
  channels.
* ``fold`` on a consumer reference says where the contribution of a
  *constant* input unit goes when the unit is removed (see
  :class:`FoldRef` and :func:`demp_jax.surgery.fold_into_consumers`).

Statistics, masks, noise, surgery and FLOP counts all read this one
description, so a new architecture is supported by describing it once.

Paths are tuples of dict keys inside one variable collection, e.g.
``AxisRef('params', ('conv_0', 'kernel'), axis=-1)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

Path = tuple[str, ...]
LeafKey = tuple[str, Path]  # (collection, path)

MASK_DTYPE = jnp.uint8


@dataclasses.dataclass(frozen=True)
class FoldRef:
  """Where a consumer absorbs the contribution of removed constant inputs.

  If input unit ``i`` of a consumer outputs the constant ``c_i`` on the data,
  removing it takes ``delta[o] = sum_i c_i * sum_pos K[pos, i, o]`` out of the
  consumer's pre-activation output ``o`` (``K`` the consumer kernel with its
  output axis last, ``pos`` its spatial taps and, after a flatten, the
  ``tile`` positions). The fold adds ``sign * delta`` to the leaf named here:

  * the consumer's bias, ``sign = +1`` (exact for dense layers, 1x1 and VALID
    convs; for a zero-padded spatial conv exact away from the border, where
    fewer taps see the image);
  * the running mean of the BatchNorm right after a bias-free consumer,
    ``sign = -1`` (exact in eval mode; in train mode a per-channel shift is
    removed by the batch mean anyway).

  For an ``'index'`` consumer (a shortcut gather ``s[j] = x[idx[j]]``),
  ``delta[j] = c_{idx[j]}`` and the target is a vector over the gather's
  entries that is added right where the gathered value is (e.g. the offset of
  the block's last BatchNorm, before the residual add).
  """
  collection: str
  path: Path
  sign: float = 1.0

  @property
  def key(self) -> LeafKey:
    return (self.collection, self.path)


@dataclasses.dataclass(frozen=True)
class AxisRef:
  """One axis of one variable leaf that is indexed by a group's units.

  Attributes:
    collection: flax variable collection, e.g. ``'params'``, ``'batch_stats'``.
    path: keys of the leaf inside the collection.
    axis: the axis indexed by the units (negative values count from the end).
    tile: for a consumer after an NHWC flatten, the number of spatial
      positions; the axis then has length ``tile * n`` with the unit fastest.
    start, stride, inner: the general layout (see :meth:`positions`); the
      defaults describe ``tile`` blocks of ``n`` units one after the other.
    kind: ``'axis'`` for an ordinary array axis; ``'index'`` for an integer
      array whose *values* are unit indices of the group (a gather map such
      as a residual shortcut selection), where ``-1`` means "no unit". As a
      ``produces`` reference its ``axis`` is sliced like any unit axis; as a
      ``consumes`` reference its values are renumbered.
    fold: for a ``consumes`` reference, where removed constant inputs are
      folded (``None``: the consumer cannot absorb them).
  """
  collection: str
  path: Path
  axis: int = -1
  tile: int = 1
  kind: str = 'axis'
  fold: Optional[FoldRef] = None
  start: int = 0
  stride: Optional[int] = None
  inner: int = 1

  @property
  def key(self) -> LeafKey:
    return (self.collection, self.path)

  def __str__(self) -> str:
    return f"{self.collection}/{'/'.join(self.path)}[axis {self.axis}]"

  @property
  def simple(self) -> bool:
    """Unit ``c`` is position ``c`` of an axis of length ``n``."""
    return (self.tile, self.start, self.stride, self.inner) == (1, 0, None, 1)

  def length(self, n: int) -> int:
    """The axis length this reference expects for ``n`` units, when it
    covers the whole axis (``start == 0`` and the default stride)."""
    return self.tile * n * self.inner

  def positions(self, n: int) -> np.ndarray:
    """``int64[n, tile * inner]``: the positions on the leaf axis that
    unit ``c`` of ``n`` owns, ``start + p * stride + c * inner + i``."""
    stride = n * self.inner if self.stride is None else self.stride
    p = np.arange(self.tile, dtype=np.int64)[:, None] * stride
    i = np.arange(self.inner, dtype=np.int64)[None, :]
    c = np.arange(n, dtype=np.int64)[:, None, None] * self.inner
    return (self.start + c + (p + i)[None]).reshape(n, -1)

  def owner(self, n: int, length: int) -> np.ndarray:
    """``int64[length]``: the unit owning each position (-1: none)."""
    out = np.full(length, -1, np.int64)
    pos = self.positions(n)
    if pos.size:
      out[pos] = np.arange(n)[:, None]
    return out


@dataclasses.dataclass(frozen=True)
class UnitGroup:
  """A group of prunable units: one activation site.

  Attributes:
    name: the name under which the model sows the post-activation output
      into the ``'activations'`` collection ('/'-joined module path).
    size: number of units.
    produces: leaves whose axis is this group's units, output side.
    consumes: leaves that read this group's units, input side.
  """
  name: str
  size: int
  produces: tuple[AxisRef, ...]
  consumes: tuple[AxisRef, ...] = ()


@dataclasses.dataclass(frozen=True)
class UnitTopology:
  """All unit groups of a model, in the order of the model's ``widths``."""
  groups: tuple[UnitGroup, ...]

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(g.name for g in self.groups)

  @property
  def sizes(self) -> dict[str, int]:
    return {g.name: g.size for g in self.groups}

  def group(self, name: str) -> UnitGroup:
    for g in self.groups:
      if g.name == name:
        return g
    raise KeyError(f'unknown unit group {name!r}; groups: {self.names}')

  def leaf_refs(self) -> dict[LeafKey, list[tuple[UnitGroup, AxisRef, str]]]:
    """Maps every touched leaf to its (group, ref, role) entries.

    ``role`` is ``'produces'`` or ``'consumes'``.
    """
    out: dict[LeafKey, list[tuple[UnitGroup, AxisRef, str]]] = {}
    for g in self.groups:
      for ref in g.produces:
        out.setdefault(ref.key, []).append((g, ref, 'produces'))
      for ref in g.consumes:
        out.setdefault(ref.key, []).append((g, ref, 'consumes'))
    return out

  def validate(self, variables: Mapping[str, Any]) -> None:
    """Raises ``ValueError`` naming the leaf if any reference is wrong."""
    for g in self.groups:
      for role, refs in (('produces', g.produces), ('consumes', g.consumes)):
        for ref in refs:
          leaf = get_leaf(variables, ref.key)
          if leaf is None:
            raise ValueError(
                f'unit group {g.name!r} {role} {ref}, but the model variables '
                f'have no leaf {ref.collection}/{"/".join(ref.path)}')
          shape = np.shape(leaf)
          if ref.fold is not None:
            _validate_fold(variables, g, ref, shape)
          if ref.kind == 'index':
            if role == 'produces' and shape[ref.axis] != g.size:
              raise ValueError(
                  f'unit group {g.name!r}: index leaf {ref} has shape {shape}, '
                  f'expected {g.size} entries')
            if role == 'consumes' and _concrete(leaf):
              values = np.asarray(leaf)
              if values.size and (values.min() < -1 or
                                  values.max() >= g.size):
                raise ValueError(
                    f'unit group {g.name!r} ({g.size} units) consumes index '
                    f'leaf {ref}, whose values span [{values.min()}, '
                    f'{values.max()}]: they must lie in [-1, {g.size})')
            continue
          if not -len(shape) <= ref.axis < len(shape):
            raise ValueError(f'unit group {g.name!r} {role} {ref}, but that '
                             f'leaf has shape {shape}')
          length = shape[ref.axis]
          full = ref.start == 0 and ref.stride is None
          last = (int(ref.positions(g.size).max()) if g.size else -1)
          if (full and length != ref.length(g.size)) or last >= length:
            raise ValueError(
                f'unit group {g.name!r} ({g.size} units, tile {ref.tile}) '
                f'{role} {ref}, but that leaf has shape {shape}: axis '
                f'{ref.axis} should have length {ref.length(g.size)}')


def _concrete(x: Any) -> bool:
  """An array with values (not a tracer or a ``ShapeDtypeStruct``)."""
  return (isinstance(x, (np.ndarray, jax.Array)) and
          not isinstance(x, jax.core.Tracer))


def _validate_fold(variables: Mapping[str, Any], g: UnitGroup, ref: AxisRef,
                   shape: tuple[int, ...]) -> None:
  target = get_leaf(variables, ref.fold.key)
  where = f'unit group {g.name!r} consumer {ref} folds into ' + '/'.join(
      (ref.fold.collection,) + ref.fold.path)
  if target is None:
    raise ValueError(f'{where}, but the model variables have no such leaf')
  if ref.kind == 'index':
    want = int(np.prod(shape))
  else:
    if ref.axis % len(shape) == len(shape) - 1:
      raise ValueError(f'{where}, but the unit axis is the kernel\'s last '
                       '(output) axis')
    want = shape[-1]
  if np.shape(target) != (want,):
    raise ValueError(f'{where} of shape {np.shape(target)}; expected '
                     f'({want},)')


# ---------------------------------------------------------------- tree access


def key_path(path: Iterable[Any]) -> Path:
  """Converts a ``jax.tree_util`` key path of dict keys into a tuple of str.

  A final ``.value`` attribute is dropped: it is how an ``nnx.Variable``
  flattens (``nnx.state(model, nnx.Param)`` inside ``nnx.Optimizer``), and
  the parameter's name is the path to the variable.
  """
  path = tuple(path)
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and (
      path[-1].name == 'value'):
    path = path[:-1]
  return tuple(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def get_leaf(variables: Mapping[str, Any], key: LeafKey) -> Any:
  collection, path = key
  node: Any = variables.get(collection)
  for p in path:
    if node is None or not isinstance(node, Mapping) or p not in node:
      return None
    node = node[p]
  return node


def _xp(*xs):
  """``jnp`` when any of ``xs`` is traced, else ``np``: host arrays stay on
  the host, so holding units at new widths compiles nothing."""
  return jnp if any(isinstance(x, jax.core.Tracer) for x in xs) else np


def unit_axis_mask(ref: AxisRef, unit_values: np.ndarray | jax.Array,
                   shape: tuple[int, ...]) -> jax.Array:
  """Broadcastable array, over a leaf of ``shape``, that holds
  ``unit_values[c]`` at every position unit ``c`` owns on ``ref.axis`` and
  1 elsewhere (numpy unless ``unit_values`` is traced). With 0/1 values it
  zeroes the masked units."""
  xp = _xp(unit_values)
  values = xp.asarray(unit_values)
  ndim = len(shape)
  axis = ref.axis % ndim
  n = values.shape[0]
  if ref.simple and shape[axis] == n:
    m = values
  else:
    owner = ref.owner(n, shape[axis])
    m = xp.where(owner >= 0, values[np.maximum(owner, 0)],
                 xp.ones((), values.dtype))
  out = [1] * ndim
  out[axis] = m.shape[0]
  return m.reshape(out)


def units_last(x: Any, ref: AxisRef, n: int) -> Any:
  """``x``'s entries on ``ref.axis`` regrouped by unit: ``[m, n]`` with
  column ``c`` holding every entry unit ``c`` owns (its positions on the
  axis times every other axis). Works on numpy and jax arrays; for an
  ``'index'`` reference, the axis itself."""
  xp = _xp(x) if not isinstance(x, np.ndarray) else np
  x = xp.moveaxis(xp.asarray(x), ref.axis % np.ndim(x), -1)
  if ref.kind == 'index' or (ref.simple and x.shape[-1] == n):
    return x.reshape(-1, n)
  pos = ref.positions(n)                                  # [n, k]
  cols = xp.take(x, xp.asarray(pos.reshape(-1)), axis=-1)  # [..., n * k]
  cols = cols.reshape(cols.shape[:-1] + pos.shape)        # [..., n, k]
  return xp.moveaxis(cols, -2, -1).reshape(-1, n)


def param_masks(topology: UnitTopology, params: Any,
                alive: Mapping[str, Any] | None = None) -> Any:
  """Params-shaped mask tree: uint8 0/1 on touched leaves, ``None`` elsewhere.

  ``alive[name]`` is a 0/1 (or bool) vector over the group's units; a unit
  that is not alive gets 0 on every params entry that produces it or reads
  it. Leaves the topology never touches get ``None`` (JaxPruner's convention
  for leaves never pruned). Works on any params tree, including optax's
  parameter placeholders. The masks are numpy arrays unless ``alive`` is
  traced.
  """
  refs = {k[1]: v for k, v in topology.leaf_refs().items() if k[0] == 'params'}

  xp = _xp(*(alive or {}).values())

  def one(path, p):
    entries = refs.get(key_path(path))
    if not entries:
      return None
    m = xp.ones(np.shape(p), MASK_DTYPE)
    if alive is None:
      return m
    for group, ref, _ in entries:
      if ref.kind != 'axis' or group.name not in alive:
        continue
      m = m * unit_axis_mask(ref, xp.asarray(alive[group.name], MASK_DTYPE),
                             m.shape)
    return m.astype(MASK_DTYPE)

  return jax.tree_util.tree_map_with_path(one, params)


def apply_masks(params: Any, masks: Any) -> Any:
  """``params * masks`` leafwise; a ``None`` mask leaves the param as it is."""
  return jax.tree.map(
      lambda m, p: p if m is None else p * m.astype(p.dtype),
      masks, params, is_leaf=lambda x: x is None)


def silence_units(topology: UnitTopology, variables: Mapping[str, Any],
                  alive: Mapping[str, Any]) -> dict[str, Any]:
  """The *masked network*: every unit not alive is cut out of the network,
  which is what removing it computes.

  Zeroes the dead units' produced params entries (kernel column, bias,
  norm scale and offset: the unit outputs ``act(0)``) and their running
  means (a norm without a scale, ``(x - mean) / std + offset``, then
  outputs 0 as well), zeroes what their consumers read of them (kernel
  rows: an ``act(0) != 0``, a sigmoid's 0.5, reaches nothing), and points
  index maps (``kind='index'``) that produce a dead unit at "no unit" (-1).
  """
  out = dict(variables)
  for g in topology.groups:
    if g.name not in alive:
      continue
    a = alive[g.name]
    produced = [r for r in g.produces if r.collection == 'params' or
                r.kind == 'index' or _is_running_mean(r)]
    # (a consumed index map is renumbered by the shrink instead)
    read = [r for r in g.consumes if r.collection == 'params' and
            r.kind == 'axis']
    for ref in produced + read:
      leaf = get_leaf(out, ref.key)
      traced = _xp(leaf, a) is jnp
      # on the host unless traced: no compilation for new shapes
      value = leaf if traced else np.asarray(leaf)
      xp = jnp if traced else np
      m = unit_axis_mask(ref, xp.asarray(a).astype(np.uint8),
                         np.shape(leaf)).astype(bool)
      new = (xp.where(m, value, -1).astype(value.dtype)
             if ref.kind == 'index' else value * m.astype(value.dtype))
      out = set_leaf(out, ref.key, new if traced else put_like(new, leaf))
  return out


def _is_running_mean(ref: AxisRef) -> bool:
  """A norm's running mean (its running variance stays: it only scales)."""
  return ref.collection == 'batch_stats' and ref.path[-1] == 'mean'


def put_like(value: np.ndarray, like: Any) -> Any:
  """A host array as the kind of array ``like`` is: a jax array on
  ``like``'s sharding where it fits, or numpy. A mesh axis of a
  ``NamedSharding`` that no longer divides its array axis (a width cut to
  21 over 4 devices) is dropped, that array axis replicated over it, so
  the array stays on the mesh; any other sharding that does not fit falls
  back to the default device."""
  if not isinstance(like, jax.Array):
    return value
  sharding = like.sharding
  if isinstance(sharding, jax.sharding.NamedSharding):
    spec = [names if names is None or value.shape[axis] % _mesh_size(
        sharding.mesh, names) == 0 else None
            for axis, names in enumerate(sharding.spec)]
    sharding = sharding.update(spec=jax.sharding.PartitionSpec(*spec))
  try:
    return jax.device_put(value, sharding)
  except (ValueError, TypeError):
    return jnp.asarray(value)


def _mesh_size(mesh: Any, names: Any) -> int:
  """The number of devices along the mesh axis ``names`` (a name or a
  tuple of names) of a ``PartitionSpec`` entry."""
  names = names if isinstance(names, tuple) else (names,)
  return int(np.prod([mesh.shape[n] for n in names]))


def set_leaf(variables: Mapping[str, Any], key: LeafKey, value: Any) -> dict:
  """Returns a copy of the nested dict with one leaf replaced."""
  collection, path = key

  def rec(node, rest):
    node = dict(node)
    if len(rest) == 1:
      node[rest[0]] = value
    else:
      node[rest[0]] = rec(node[rest[0]], rest[1:])
    return node

  out = dict(variables)
  out[collection] = rec(out[collection], path)
  return out


def norm_refs(name: str | tuple[str, ...], with_stats: bool = True
              ) -> list[AxisRef]:
  """Scale, offset (and running mean/var) of a flax norm layer ``name``
  (a module name, or the tuple path of a nested one)."""
  prefix = (name,) if isinstance(name, str) else tuple(name)
  refs = [AxisRef('params', prefix + ('scale',), -1),
          AxisRef('params', prefix + ('bias',), -1)]
  if with_stats:
    refs += [AxisRef('batch_stats', prefix + ('mean',), -1),
             AxisRef('batch_stats', prefix + ('var',), -1)]
  return refs
