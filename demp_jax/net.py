"""A Flax model as demp_jax sees it: Linen or NNX, built in or the user's.

:class:`Net` wraps a model so that every part of the library (the train
step, the death check, the surgery, checkpoints, FLOP counts) talks to one
interface with Linen's calling convention::

    net, variables = Net.create(model, input_shape)   # Linen module or
                                                      # nnx.Module
    logits = net.apply(variables, x)                  # eval mode
    logits, updates = net.apply(variables, x, train=True,
                                mutable=net.mutable)  # train mode
    logits, acts = net.activations(variables, x)      # acts[group]: list
                                                      # of [B, ..., n]
    smaller = net.at_widths({'conv_0': 24, ...})      # same model, new sizes

``variables`` is a dict of collections of nested dicts with ``str`` keys:
``'params'``, ``'batch_stats'`` (norm running statistics) and, for NNX,
``'nnx'`` (every other ``nnx.Variable``: RNG streams, counters).

**The unit topology** comes from :func:`demp_jax.derive.derive`, traced
from the model's own computation, unless a Linen module describes it
itself with a ``unit_topology(input_shape)`` method (the built-in ResNets,
whose per-block shortcut gathers are hand-written).

**Sizes come from the arrays.** A Linen layer checks its parameters against
the sizes written in the model (``nn.Dense(128)``), so after surgery
``Net.apply`` runs the module under :func:`flax.linen.intercept_methods`
with an interceptor that sets the ``features`` of every ``Dense``, ``Conv``,
``ConvTranspose`` and ``DenseGeneral`` from the kernel it is given (norm
layers take their size from their input already). A module whose code
fixes a size some other way (``self.param('w', init, (n, 128))``, an
array built with a width) cannot run smaller: :meth:`Net.create` finds out
by tracing the model once at reduced widths and leaves those groups out of
the topology, saying why in :attr:`Net.skipped`. A built-in model with
``with_widths`` and its own ``unit_topology`` is rebuilt at its new widths
instead. NNX modules read their sizes from their arrays; after surgery
:meth:`Net.module_at` returns a module whose size attributes
(``in_features``, ``out_features``, ``num_features``) match its arrays.

**Modes.** Linen: the ``train``, ``training``, ``is_training``,
``deterministic`` or ``use_running_average`` argument of ``__call__``,
whichever it has. NNX: ``module.train()`` and ``module.eval()``, and that
argument too when its ``__call__`` has one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
from typing import (Any, Callable, Iterable, Iterator, Mapping, Optional,
                    Sequence)

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from demp_jax import derive as derive_lib
from demp_jax import topology as topo
from demp_jax.errors import one_line

# Linen call arguments that select the mode, and their value in train mode.
_MODE_ARGS = {'train': True, 'training': True, 'is_training': True,
              'deterministic': False, 'use_running_average': False}

_SIZED_LAYERS = (nn.Dense, nn.Conv, nn.ConvTranspose, nn.DenseGeneral)


class ModelError(ValueError):
  """The model cannot be used as given (names the model and the problem)."""


def sizes_from_params(next_fun, args, kwargs, context):
  """Linen interceptor: a ``Dense``/``Conv``/``ConvTranspose``/
  ``DenseGeneral`` called with a kernel takes its ``features`` from the
  kernel's output axes, so the module runs at the widths of its arrays."""
  m = context.module
  if (context.method_name == '__call__' and isinstance(m, _SIZED_LAYERS)
      and m.scope is not None and m.has_variable('params', 'kernel')):
    shape = np.shape(m.get_variable('params', 'kernel'))
    if isinstance(m.features, int):
      if _depthwise(m.features, m.feature_group_count if isinstance(
          m, nn.Conv) else 1, shape):
        object.__setattr__(m, 'feature_group_count', int(shape[-1]))
      object.__setattr__(m, 'features', int(shape[-1]))
    else:
      k = len(tuple(m.features))
      object.__setattr__(m, 'features', tuple(int(s) for s in shape[-k:]))
  return next_fun(*args, **kwargs)


def _lost(before: topo.UnitTopology, shapes: tuple,
          groups: Sequence[topo.UnitGroup], skipped: tuple) -> tuple:
  """``skipped`` entries for the groups of ``before`` (the topology before
  a resize to ``shapes``) that the new derivation (``groups``,
  ``skipped``) neither has nor names, nor removed whole (width 0): a group
  never vanishes without a word."""
  names = {g.name for g in groups}
  said = ' '.join(what for what, _ in skipped)
  shape_of = {key: shape for key, shape, _ in shapes}
  out = []
  for g in before.groups:
    leaves = ['/'.join((r.collection,) + tuple(r.path)) for r in g.produces]
    gone = any(0 in shape_of.get(r.key, ()) for r in g.produces)
    if not (g.name in names or gone or any(l in said for l in leaves)):
      out.append((f'the units produced by {g.name}',
                  (f'resized from {g.size} units, they no longer read as a '
                   f'unit group ({", ".join(leaves[:3])})',)))
  return tuple(out)


def _layout(group: topo.UnitGroup) -> frozenset:
  """What of a group's references does not depend on its width."""
  return frozenset((role, r.key, r.axis, r.tile, r.inner, r.kind)
                   for role, refs in (('p', group.produces),
                                      ('c', group.consumes)) for r in refs)


def _describe(new: Optional[topo.UnitGroup], width: int,
              old: topo.UnitGroup) -> str:
  if new is None:
    return 'no longer a unit group'
  r, q = old.produces[0], new.produces[0]
  return (f'{r} reads as {new.size} units of {q.inner} entries, not {width} '
          f'of {r.inner}')


def _depthwise(features: int, groups: int, kernel_shape: Sequence[int]
               ) -> bool:
  """A conv with one filter per input channel (``features`` equal to
  ``feature_group_count``, one input channel per group): its channels are
  its input's units, so its group count follows their number."""
  return groups > 1 and features == groups and kernel_shape[-2] == 1


def _momentum_zero(next_fun, args, kwargs, context):
  """Linen interceptor: every ``BatchNorm`` replaces its running statistics
  by the batch's (momentum 0)."""
  if context.method_name == '__call__' and isinstance(context.module,
                                                       nn.BatchNorm):
    object.__setattr__(context.module, 'momentum', 0.0)
  return next_fun(*args, **kwargs)


def _mode_arg(fn: Callable) -> Optional[str]:
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return None
  for name in _MODE_ARGS:
    if name in params:
      return name
  return None


def _is_nnx(model: Any) -> bool:
  try:
    from flax import nnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return isinstance(model, (nnx.Module, nnx.GraphDef))


# ------------------------------------------------------------ key trees


def _str_keys(tree: Any) -> tuple[Any, Any]:
  """``(tree with str keys, key map)``; the map restores the original keys
  (NNX lists are keyed by int)."""
  if not isinstance(tree, Mapping):
    return tree, None
  out, keys = {}, []
  for k, v in tree.items():
    sv, sub = _str_keys(v)
    out[str(k)] = sv
    keys.append((str(k), k, sub))
  return out, tuple(keys)


def _restore_keys(tree: Any, keys: Any) -> Any:
  if keys is None or not isinstance(tree, Mapping):
    return tree
  table = {s: (k, sub) for s, k, sub in keys}
  return {table[s][0]: _restore_keys(v, table[s][1]) for s, v in tree.items()}


# ------------------------------------------------------------ the adapter


class _Identity:
  """Hashes and compares a value by identity (a module that holds a list,
  which cannot be hashed by value)."""
  __slots__ = ('value',)

  def __init__(self, value: Any):
    self.value = value

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, _Identity) and other.value is self.value

  def __hash__(self) -> int:
    return id(self.value)


def _static(value: Any) -> Any:
  """``value`` itself when it hashes, else its :class:`_Identity`."""
  try:
    hash(value)
  except TypeError:
    return _Identity(value)
  return value


@dataclasses.dataclass(frozen=True)
class Net:
  """A model at fixed widths. Hashable: a static argument of ``jax.jit``.

  Two nets are equal when their compared fields are, the module by value
  when it hashes and by identity when it does not (``nn.Sequential([...])``
  or an NNX module holding a list): equal nets compute the same thing, and
  :meth:`at_widths` keeps the module object (Linen) or, at unchanged
  shapes, the ``GraphDef`` (NNX), so a jitted function keyed on a net
  compiles once per widths, whatever the module holds.

  Attributes:
    module: the Linen module, or the NNX ``GraphDef``.
    input_shape: one example's shape.
    shapes: ``((collection, path), shape, dtype)`` of every variable leaf.
    topology: the unit groups at these widths.
    handwritten: the topology comes from ``module.unit_topology`` (and the
      module has ``with_widths``).
    mode_arg: the Linen ``__call__`` argument that selects train mode.
    nnx_keys: NNX only: the original keys of each collection.
    rng_keys: NNX only: ``((collection, path), impl)`` of every RNG key,
      which ``variables`` hold as their raw ``uint32`` key data (so that
      host copies, checkpoints and surgery see plain arrays).
    skipped: index spaces with non-linearities that are not unit groups,
      ``((description, reasons), ...)``.
    fixed: the groups :meth:`create` left out because the model code fixes
      their width, ``((name, (description, reasons)), ...)``: every later
      derivation (:meth:`at_widths`) leaves them out again, with the same
      entry in ``skipped``, without tracing the model narrower again.
    axis_names: the ``axis_name`` of the model's layers (a BatchNorm written
      for ``pmap``, ``BatchNorm(axis_name='batch')``). One jitted program
      over the global batch already reduces over every device, so train
      mode binds each name to an axis of size 1, where its ``pmean`` is
      the identity.
  """
  module: Any
  input_shape: tuple
  shapes: tuple
  topology: topo.UnitTopology
  handwritten: bool = False
  mode_arg: Optional[str] = None
  nnx_keys: Any = None
  rng_keys: tuple = ()
  skipped: tuple = dataclasses.field(default=(), compare=False)
  axis_names: tuple = ()
  fixed: tuple = dataclasses.field(default=(), compare=False)

  def _key(self) -> tuple:
    """The compared fields, the module as :func:`_static` makes it."""
    return tuple(_static(getattr(self, f.name)) if f.name == 'module' else
                 getattr(self, f.name)
                 for f in dataclasses.fields(self) if f.compare)

  def __eq__(self, other: Any) -> bool:
    return type(other) is type(self) and self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  # ---- construction

  @classmethod
  def create(cls, model: Any, input_shape: Sequence[int], seed: int = 0,
             check_widths: bool = True, init: bool = True
             ) -> tuple['Net', dict]:
    """``(net, initial variables)`` for a Linen module (initialised with
    ``seed``; with ``init=False`` only their ``jax.ShapeDtypeStruct``s) or
    an NNX module (its own state; ``seed`` unused)."""
    input_shape = _input_shape(input_shape)
    if isinstance(model, type):
      raise ModelError(f'got the class {model.__name__}; pass a module '
                       f'(an instance, {model.__name__}(...))')
    if _is_nnx(model):
      from flax import nnx  # pylint: disable=g-import-not-at-top
      if isinstance(model, nnx.GraphDef):
        raise ModelError('pass the nnx.Module itself, not its GraphDef')
      graphdef, variables, keys, rng_keys = _nnx_split(model)
      names = _axis_names(m for _, m in nnx.iter_graph(model))
      net = cls(graphdef, input_shape, _shapes(variables),
                topo.UnitTopology(()), mode_arg=_mode_arg(model.__call__),
                nnx_keys=tuple(keys), rng_keys=rng_keys, axis_names=names)
    elif isinstance(model, nn.Module):
      mode = _mode_arg(model.__call__)
      make = functools.partial(_init_linen, model, input_shape, mode)
      key = jax.random.PRNGKey(seed)
      called = []  # every module the initialisation calls
      with _runs_on(model, input_shape), nn.intercept_methods(
          functools.partial(_record_module, called)):
        variables = (run_once(make, key) if init else
                     jax.eval_shape(make, key))
      names = _axis_names(called)
      handwritten = (callable(getattr(model, 'unit_topology', None)) and
                     model.unit_topology(input_shape) is not None)
      net = cls(model, input_shape, _shapes(variables),
                topo.UnitTopology(()), handwritten, mode, axis_names=names)
    else:
      raise ModelError(f'{type(model).__name__} is neither a flax.linen '
                       'Module nor a flax.nnx Module')
    # the eval-mode pass, with no RNG streams, fails here in one line
    # rather than inside the derivation (a Linen module's init checks less)
    with _runs_on(model, input_shape):
      jax.eval_shape(net._eval_fn, net.abstract_variables(),
                     net._abstract_input())
    net = net._with_topology()
    if check_widths and not net.handwritten:
      net = net._drop_fixed_widths()
    return net, variables

  def _with_topology(self) -> 'Net':
    if self.handwritten:
      topology = self.module.unit_topology(self.input_shape)
      return dataclasses.replace(self, topology=topology)
    d = derive_lib.derive(self._eval_fn, self.abstract_variables(),
                          self._abstract_input(), units=self.topology)
    fixed = dict(self.fixed)
    groups = tuple(g for g in d.topology.groups if g.name not in fixed)
    skipped = tuple((k, tuple(v)) for k, v in d.skipped.items())
    skipped += _lost(self.topology, self.shapes, groups, skipped) + tuple(
        fixed.values())
    return dataclasses.replace(self, topology=topo.UnitTopology(groups),
                               skipped=skipped)

  def _drop_fixed_widths(self) -> 'Net':
    """Leaves out the groups whose width the model code fixes: traced with
    that group one unit narrower, the model fails, or lays the group out
    differently (a count fixed in the code, such as GroupNorm's
    ``num_groups``, regroups the remaining channels). All groups are
    narrowed at once first; only those that fail are tried one by one."""
    def fails(groups) -> Optional[str]:
      widths = {g.name: g.size - 1 for g in groups if g.size > 1}
      if not widths:
        return None
      try:
        smaller = self.at_widths(widths, rederive=False)
        jax.eval_shape(smaller._eval_fn, smaller.abstract_variables(),
                       smaller._abstract_input())
      except Exception as e:  # pylint: disable=broad-except
        return f'the model does not run with them narrower ({one_line(e)})'
      return None

    def relaid(groups) -> dict[str, str]:
      widths = {g.name: g.size - 1 for g in groups if g.size > 1}
      if not widths:
        return {}
      try:
        now = {g.name: g for g in self.at_widths(widths).topology.groups}
      except Exception as e:  # pylint: disable=broad-except
        return {n: f'the model does not derive narrower ({type(e).__name__})'
                for n in widths}
      out = {}
      for name, width in widths.items():
        old, new = self.topology.group(name), now.get(name)
        if new is None or new.size != width or _layout(new) != _layout(old):
          out[name] = (f'narrowed from {old.size} to {width} units, the '
                       'model lays them out differently '
                       f'({_describe(new, width, old)}, as a GroupNorm\'s '
                       'num_groups does)')
      return out

    groups = self.topology.groups
    why = {}
    if fails(groups) is not None:
      for g in groups:
        err = fails([g])
        if err:
          why[g.name] = err
    suspects = relaid([g for g in groups if g.name not in why])
    for name in suspects:  # alone, to tell them from their neighbours
      alone = relaid([self.topology.group(name)]).get(name)
      if alone:
        why[name] = alone
    if not why:
      return self
    fixed = tuple((name, (f'the units produced by {name}',
                          (f'{r}; its code fixes that width',)))
                  for name, r in why.items())
    keep = tuple(g for g in groups if g.name not in why)
    return dataclasses.replace(
        self, topology=topo.UnitTopology(keep), fixed=self.fixed + fixed,
        skipped=self.skipped + tuple(entry for _, entry in fixed))

  def init(self, seed: int) -> dict:
    """Fresh variables (at the module's own widths) from ``seed``; a Linen
    module only: an NNX module is initialised by its factory's
    ``nnx.Rngs``."""
    if self.is_nnx:
      raise ModelError('an NNX model is initialised by its own nnx.Rngs '
                       'when its factory builds it; it cannot be '
                       're-initialised from a seed (rewind=\'reinit\')')
    return run_once(functools.partial(_init_linen, self.module,
                                      self.input_shape, self.mode_arg),
                    jax.random.PRNGKey(seed))

  # ---- running

  @property
  def model_name(self) -> str:
    """The class name of the user's model (Linen or NNX), for messages."""
    if self.is_nnx:
      nodes = getattr(self.module, 'nodes', None)
      node_type = getattr(nodes[0], 'type', None) if nodes else None
      if isinstance(node_type, type):
        return node_type.__name__
    return type(self.module).__name__

  @property
  def is_nnx(self) -> bool:
    return self.nnx_keys is not None

  @property
  def mutable(self) -> list[str]:
    """The collections a train step updates."""
    names = {k for k, _, _ in self.shapes}
    cols = sorted({c for (c, _) in names})
    return [c for c in cols if c != 'params']

  def apply(self, variables: Mapping[str, Any], x: jax.Array,
            train: bool = False, mutable: Any = False,
            rng: Optional[jax.Array] = None) -> Any:
    """Logits of ``x`` (``[B, *input_shape]``), and with ``mutable`` the
    updated collections (Linen's convention)."""
    variables = {k: v for k, v in variables.items()
                 if k not in ('activations', 'intermediates')}
    if train and self.axis_names:
      return _with_axes(self.axis_names, lambda: self._apply(
          variables, x, train, mutable, rng))
    return self._apply(variables, x, train, mutable, rng)

  def _apply(self, variables, x, train, mutable, rng):
    if self.is_nnx:
      return self._apply_nnx(variables, x, train, mutable)
    kwargs = {}
    if self.mode_arg:
      kwargs[self.mode_arg] = train == _MODE_ARGS[self.mode_arg]
    rngs = {'dropout': rng} if (train and rng is not None) else None
    if self.handwritten:
      return self.module.apply(variables, x, mutable=mutable, rngs=rngs,
                               **kwargs)
    with nn.intercept_methods(sizes_from_params):
      return self.module.apply(variables, x, mutable=mutable, rngs=rngs,
                               **kwargs)

  def _apply_nnx(self, variables, x, train, mutable):
    from flax import nnx  # pylint: disable=g-import-not-at-top
    module = self.module_at(variables)
    if train:
      module.train()
    else:
      module.eval()
    kwargs = {self.mode_arg: train == _MODE_ARGS[self.mode_arg]} if (
        self.mode_arg) else {}
    y = module(x, **kwargs)
    if mutable is False:
      return y
    _, *new = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    out = {}
    keys = dict(self.nnx_keys)
    for name, state in zip(('params', 'batch_stats', 'nnx'), new):
      if name in keys and name != 'params' and (mutable is True or
                                                 name in mutable):
        out[name] = _str_keys(nnx.to_pure_dict(state))[0]
    return y, _key_data(out)[0]

  def batch_statistics(self, variables: Mapping[str, Any], x: jax.Array
                       ) -> dict:
    """``batch_stats`` as one train-mode forward on ``x`` sets them with a
    momentum of 0: every BatchNorm's mean and (biased) variance of its
    input on this batch (earlier norms normalising with their own batch
    statistics, as in training). ``{}`` without BatchNorm."""
    if 'batch_stats' not in variables:
      return {}
    if not self.is_nnx:
      with nn.intercept_methods(_momentum_zero):
        _, new = self.apply(variables, x, train=True,
                            mutable=['batch_stats'])
      return _unfreeze(new['batch_stats'])
    return _with_axes(self.axis_names,
                      lambda: self._nnx_batch_statistics(variables, x))

  def _nnx_batch_statistics(self, variables, x):
    from flax import nnx  # pylint: disable=g-import-not-at-top
    module = self.module_at(variables)
    module.train()
    for _, m in nnx.iter_graph(module):
      if isinstance(m, nnx.BatchNorm):
        m.momentum = 0.0
    kwargs = {self.mode_arg: _MODE_ARGS[self.mode_arg]} if (
        self.mode_arg) else {}
    module(x, **kwargs)
    _, stats, _ = nnx.split(module, nnx.BatchStat, ...)
    return _str_keys(nnx.to_pure_dict(stats))[0]

  def _eval_fn(self, variables, x):
    return self.apply(variables, x, train=False)

  def compute_eps(self) -> float:
    """The machine epsilon of the least precise float the eval-mode
    forward pass computes in (``dtype=jnp.bfloat16`` layers: ``2**-7``),
    which bounds how exactly a narrower copy can reproduce its outputs."""
    from demp_jax import program as prog  # pylint: disable=g-import-not-at-top
    return prog.coarsest_eps(prog.trace(
        self._eval_fn, self.abstract_variables(), self._abstract_input()))

  def _abstract_input(self, batch: int = 2):
    return jax.ShapeDtypeStruct((batch,) + self.input_shape, jnp.float32)

  def abstract_variables(self, sharding: Any = None) -> dict:
    """``jax.ShapeDtypeStruct``s of every variable at these widths."""
    out: dict = {}
    for (collection, path), shape, dtype in self.shapes:
      node = out.setdefault(collection, {})
      for p in path[:-1]:
        node = node.setdefault(p, {})
      node[path[-1]] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    return out

  def activations(self, variables: Mapping[str, Any], x: jax.Array
                  ) -> tuple[jax.Array, dict[str, list[jax.Array]]]:
    """Eval-mode ``(logits, {group: [activation, ...]})``: every site of
    every unit group of :attr:`topology`, each ``[B, ..., n]`` with the
    units last. ``logits`` is what the model returns (an array, or a tuple
    or dict of them)."""
    variables = {k: v for k, v in variables.items()
                 if k not in ('activations', 'intermediates')}
    if self.handwritten:
      kwargs = {self.mode_arg: not _MODE_ARGS[self.mode_arg]} if (
          self.mode_arg) else {}
      logits, state = self.module.apply(variables, x, mutable=['activations'],
                                        **kwargs)
      import flax  # pylint: disable=g-import-not-at-top
      flat = flax.traverse_util.flatten_dict(
          dict(state).get('activations', {}), sep='/')
      return logits, {k: [v[-1]] for k, v in flat.items()}
    d = derive_lib.derive(self._eval_fn, variables, x, units=self.topology)
    _, leaves = _flat(variables)
    # the groups of this net's topology: not those left out (fixed widths)
    names = [n for n in self.topology.names if n in d.sites]
    extra = [s.var for n in names for s in d.sites[n]]
    outputs, values = _evaluate(d.program, leaves, x, extra)
    logits = jax.tree.unflatten(d.out_tree, outputs)  # any output pytree
    out: dict[str, list] = {}
    it = iter(values)
    for n in names:
      for site in d.sites[n]:
        v = next(it)
        if site.positions is not None:  # unit u at positions[u, :]
          v = jnp.take(v, jnp.asarray(site.positions.reshape(-1)), axis=-1)
          v = v.reshape(v.shape[:-1] + site.positions.shape)  # [..., n, k]
          v = jnp.moveaxis(v, -1, -2)  # [..., k, n]: the units last
        out.setdefault(n, []).append(v)
    return logits, out

  # ---- widths

  @property
  def widths(self) -> tuple[int, ...]:
    return tuple(g.size for g in self.topology.groups)

  def at_widths(self, widths: Mapping[str, int] | Sequence[int],
                rederive: bool = True) -> 'Net':
    """The same model with ``widths[g]`` units in group ``g`` (a mapping,
    or one width per group in topology order; groups left out keep
    theirs). Shapes only: slice the variables with
    :func:`demp_jax.surgery.shrink`."""
    if not isinstance(widths, Mapping):
      widths = tuple(int(w) for w in widths)
      if len(widths) != len(self.topology.groups):
        raise ValueError(f'{len(widths)} widths for '
                         f'{len(self.topology.groups)} unit groups '
                         f'{list(self.topology.names)}')
      widths = dict(zip(self.topology.names, widths))
    unknown = sorted(set(widths) - set(self.topology.names))
    if unknown:
      raise ValueError(f'widths name unknown unit groups {unknown}; the '
                       f'model has {list(self.topology.names)}')
    if self.handwritten:
      module = self.module.with_widths(
          [int(widths.get(g.name, g.size)) for g in self.topology.groups])
      shapes = _shapes(jax.eval_shape(
          lambda: _init_linen(module, self.input_shape, self.mode_arg)))
      net = dataclasses.replace(self, module=module, shapes=shapes)
      return net._with_topology()
    shapes = _resized_shapes(self.shapes, self.topology, widths)
    net = dataclasses.replace(self, shapes=shapes)
    if self.is_nnx and shapes != self.shapes:  # (the same GraphDef: equal)
      net = dataclasses.replace(net, module=_nnx_graphdef_at(net))
    return net._with_topology() if rederive else net

  def variables_of(self, module: Any) -> dict:
    """NNX: the variables of a live module in this net's form (the inverse
    of :meth:`module_at`; what :meth:`create` returns), to read statistics
    of or shrink a module an NNX training loop has been updating."""
    if not self.is_nnx:
      raise ModelError('variables_of: a Linen net keeps its variables apart '
                       'from the module; use them directly')
    if not _is_nnx(module):
      raise ModelError(f'variables_of: got {type(module).__name__}, not an '
                       'nnx.Module')
    variables = _nnx_split(module)[1]
    mismatch = self.shape_mismatch(variables)
    if mismatch:
      raise ModelError(
          'variables_of: the module\'s arrays are not the shapes of this net '
          f'({mismatch}); pass the net that describes the module as it is '
          'now')
    return variables

  def shape_mismatch(self, variables: Mapping[str, Any]) -> Optional[str]:
    """``None`` if ``variables`` have this net's leaves and shapes (in the
    net's collections; others are not compared), else the first leaf that
    differs, ``'params/fc/kernel: (3, 4) where the net has (3, 8)'``."""
    collections = {key[0] for key, _, _ in self.shapes}
    mine = {c: v for c, v in variables.items() if c in collections}
    want = {k: s for k, s, _ in self.shapes}
    have = {k: s for k, s, _ in _shapes(mine)}
    for key in sorted(set(want) | set(have)):
      if want.get(key) != have.get(key):
        name = '/'.join((key[0],) + tuple(key[1]))
        return (f'{name}: {have.get(key, "missing")} where the net has '
                f'{want.get(key, "none")}')
    return None

  def module_at(self, variables: Mapping[str, Any]) -> Any:
    """NNX: a live module holding ``variables``, its size attributes
    matching its arrays. Linen: the module (use it with ``variables`` under
    :func:`sizes_from_params`)."""
    if not self.is_nnx:
      return self.module
    from flax import nnx  # pylint: disable=g-import-not-at-top
    keys = dict(self.nnx_keys)
    variables = _wrap_keys(variables, self.rng_keys)
    states = [_restore_keys(variables[c], keys[c])
              for c in ('params', 'batch_stats', 'nnx') if c in keys]
    return nnx.merge(self.module, *states)


# ------------------------------------------------------------------ helpers


def _nnx_split(module: Any) -> tuple[Any, dict, tuple, tuple]:
  """``(graphdef, variables, nnx_keys, rng_keys)`` of a live NNX module:
  params, batch statistics and every other variable (``'nnx'``) as dicts
  with str keys, RNG keys as their key data."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  graphdef, *states = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
  variables, keys = {}, []
  for name, state in zip(('params', 'batch_stats', 'nnx'), states):
    pure, k = _str_keys(nnx.to_pure_dict(state))
    if pure:
      variables[name] = pure
      keys.append((name, k))
  variables, rng_keys = _key_data(variables)
  return graphdef, variables, tuple(keys), rng_keys


def _key_data(variables: Mapping[str, Any]) -> tuple[dict, tuple]:
  """Variables with every typed RNG key replaced by its ``uint32`` key
  data, and ``((collection, path), impl)`` of those keys."""
  found = []

  def plain(path, leaf):
    dtype = getattr(leaf, 'dtype', None)
    if dtype is not None and jax.dtypes.issubdtype(dtype,
                                                   jax.dtypes.prng_key):
      keys = topo.key_path(path)
      found.append(((keys[0], keys[1:]), str(jax.random.key_impl(leaf))))
      return jax.random.key_data(leaf)
    return leaf

  out = jax.tree_util.tree_map_with_path(plain, dict(variables))
  return out, tuple(found)


def _wrap_keys(variables: Mapping[str, Any], rng_keys: tuple) -> dict:
  """The inverse of :func:`_key_data`."""
  out = dict(variables)
  for key, impl in rng_keys:
    leaf = topo.get_leaf(out, key)
    if leaf is not None:
      wrap = functools.partial(jax.random.wrap_key_data, impl=impl)
      out = topo.set_leaf(out, key, jax.eval_shape(wrap, leaf) if isinstance(
          leaf, jax.ShapeDtypeStruct) else wrap(leaf))  # (restore targets)
  return out


def _unfreeze(tree):
  if isinstance(tree, Mapping):
    return {k: _unfreeze(v) for k, v in tree.items()}
  return tree


def _flat(variables) -> tuple[list, list]:
  from demp_jax import program  # pylint: disable=g-import-not-at-top
  return program.flatten_variables(variables)


def _evaluate(program, leaves, x, extra):
  from demp_jax import program as prog  # pylint: disable=g-import-not-at-top
  return prog.evaluate(program, leaves, x, extra)


def _shapes(variables: Mapping[str, Any]) -> tuple:
  keys, leaves = _flat(variables)
  return tuple((k, tuple(int(s) for s in np.shape(l)),
                getattr(l, 'dtype', jnp.dtype(jnp.float32)))
               for k, l in zip(keys, leaves))


def _input_shape(input_shape: Any) -> tuple[int, ...]:
  """``input_shape`` as a tuple of positive ints, or a :class:`ModelError`
  naming it."""
  try:
    shape = tuple(int(s) for s in input_shape)
  except (TypeError, ValueError):
    shape = ()
  if not shape or min(shape) < 1:
    raise ModelError(f'input_shape={input_shape!r} is not the shape of one '
                     'example (a tuple of positive ints, without the batch '
                     'axis, e.g. (28, 28, 1))')
  return shape


@contextlib.contextmanager
def _runs_on(model: Any, input_shape: tuple[int, ...]) -> Iterator[None]:
  """Turns the model's own failure on a batch of ``(2, *input_shape)``
  into one :class:`ModelError` that names the model and the shape."""
  try:
    yield
  except ModelError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ModelError(f'{type(model).__name__} does not run on a batch of '
                     f'shape {(2,) + input_shape} (input_shape='
                     f'{input_shape}, without the batch axis): '
                     f'{one_line(e)}') from e


def run_once(fn: Callable, *args: Any) -> Any:
  """``jax.jit(fn)(*args)`` for a function run once (initialisation).

  On CPU it is compiled at XLA's backend optimisation level 1: the
  threefry RNG of every initialiser otherwise takes seconds to compile
  (measured: 2.9 s -> 0.7 s for the demo CNN, 7.5 s -> 1.9 s for a narrow
  ResNet-18), while the values it makes are the same bits (integer RNG,
  then the same float ops; tests/test_net.py checks it). Elsewhere it is a
  plain jit."""
  lowered = jax.jit(fn).lower(*args)
  options = ({'xla_backend_optimization_level': 1}
             if jax.default_backend() == 'cpu' else {})
  return lowered.compile(compiler_options=options)(*args)


def _record_module(called: list, next_fun, args, kwargs, context):
  """Linen interceptor: appends every module it sees to ``called``."""
  called.append(context.module)
  return next_fun(*args, **kwargs)


def _axis_names(modules: Iterable[Any]) -> tuple[str, ...]:
  """The ``axis_name``s the modules reduce over (a str or a tuple of
  them each; None for most), in order, once each."""
  names = []
  for m in modules:
    value = getattr(m, 'axis_name', None)
    for name in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(name, str) and name not in names:
        names.append(name)
  return tuple(names)


def _with_axes(names: Sequence[str], thunk: Callable[[], Any]) -> Any:
  """``thunk()`` with every name in ``names`` bound to a mapped axis of
  size 1 (``jax.vmap``): a collective over it (``pmean``) is the
  identity."""
  if not names:
    return thunk()
  out = jax.vmap(lambda _: _with_axes(names[1:], thunk),
                 axis_name=names[0])(jnp.zeros((1,)))
  return jax.tree.map(lambda a: a[0], out)


def _init_linen(module, input_shape, mode_arg, key=None):
  """A Linen module's variables in eval mode, without sown collections."""
  x = jnp.zeros((2,) + tuple(input_shape), jnp.float32)
  kwargs = {mode_arg: not _MODE_ARGS[mode_arg]} if mode_arg else {}
  key = jax.random.PRNGKey(0) if key is None else key
  v = module.init(key, x, **kwargs)
  return _unfreeze({k: val for k, val in dict(v).items()
                    if k not in ('activations', 'intermediates')})


def _resized_shapes(shapes: tuple, topology: topo.UnitTopology,
                    widths: Mapping[str, int]) -> tuple:
  """Leaf shapes after keeping the first ``widths[g]`` units of each
  group (shapes only)."""
  refs = topology.leaf_refs()
  out = []
  for key, shape, dtype in shapes:
    shape = list(shape)
    for group, ref, _ in refs.get(key, ()):
      new = int(widths.get(group.name, group.size))
      if not 0 <= new <= group.size:
        raise ValueError(f'width {new} for unit group {group.name!r} of '
                         f'{group.size} units')
      axis = ref.axis % len(shape)
      per_unit = 1 if ref.kind == 'index' else ref.tile * ref.inner
      shape[axis] -= (group.size - new) * per_unit
    out.append((key, tuple(shape), dtype))
  return tuple(out)


def _nnx_graphdef_at(net: Net) -> Any:
  """The NNX graph definition with size attributes matching ``net.shapes``."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  module = nnx.eval_shape(lambda: net.module_at(net.abstract_variables()))
  set_nnx_sizes(module)
  return nnx.split(module)[0]


def set_nnx_sizes(module: Any) -> Any:
  """Sets ``in_features``/``out_features``/``num_features`` of NNX
  ``Linear``, ``LinearGeneral``, ``Conv``, ``ConvTranspose`` and norm
  layers from their arrays; returns the module."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  for _, m in nnx.iter_graph(module):
    kernel = getattr(m, 'kernel', None)
    if isinstance(m, (nnx.Linear, nnx.Conv, nnx.ConvTranspose)) and (
        kernel is not None):
      shape = _value_shape(kernel)
      groups = getattr(m, 'feature_group_count', 1)
      if _depthwise(m.out_features, groups, shape):
        groups = int(shape[-1])
        object.__setattr__(m, 'feature_group_count', groups)
      object.__setattr__(m, 'in_features', int(shape[-2]) * groups)
      object.__setattr__(m, 'out_features', int(shape[-1]))
    elif isinstance(m, nnx.LinearGeneral) and kernel is not None:
      # kernel [*batch, *in_features, *out_features]
      shape = tuple(int(n) for n in _value_shape(kernel))
      n_out = len(m.out_features)
      start = len(shape) - n_out - len(m.in_features)
      object.__setattr__(m, 'in_features', shape[start:len(shape) - n_out])
      object.__setattr__(m, 'out_features', shape[len(shape) - n_out:])
    elif isinstance(m, (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm,
                        nnx.GroupNorm)):
      for name in ('scale', 'bias', 'mean', 'var'):
        v = getattr(m, name, None)
        if v is not None:
          object.__setattr__(m, 'num_features', int(_value_shape(v)[-1]))
          break
  return module


def _value_shape(variable: Any) -> tuple[int, ...]:
  """The shape of an ``nnx.Variable``'s value (an array or an abstract
  ``ShapeDtypeStruct``)."""
  value = variable.get_value() if hasattr(variable, 'get_value') else variable
  return tuple(value.shape)


def load_factory(spec: str) -> Callable[[], Any]:
  """``'package.module:factory'`` -> the zero-argument callable."""
  if spec.count(':') != 1:
    raise ModelError(f'config.model.name={spec!r}: a user model is '
                     '"package.module:factory"')
  mod_name, fn_name = spec.split(':')
  try:
    mod = importlib.import_module(mod_name)
  except ImportError as e:
    raise ModelError(f'config.model.name={spec!r}: cannot import '
                     f'{mod_name!r} ({e}); it must be importable from the '
                     'current directory or PYTHONPATH') from e
  fn = getattr(mod, fn_name, None)
  if not callable(fn):
    raise ModelError(f'config.model.name={spec!r}: {mod_name} has no '
                     f'callable {fn_name!r}')
  return fn


def make_model(spec: str) -> Any:
  """Calls a user factory and checks that it returns a Flax model."""
  factory = load_factory(spec)
  try:
    model = factory()
  except Exception as e:  # pylint: disable=broad-except
    raise ModelError(f'config.model.name={spec!r}: the factory raised '
                     f'{type(e).__name__}: {e}') from e
  if isinstance(model, type):
    raise ModelError(f'config.model.name={spec!r} returned the class '
                     f'{model.__name__}; the factory must return a module '
                     f'(an instance, {model.__name__}(...))')
  if not (isinstance(model, nn.Module) or _is_nnx(model)):
    raise ModelError(f'config.model.name={spec!r} returned {model!r:.60} '
                     f'(a {type(model).__name__}), not a flax.linen Module '
                     'or a flax.nnx Module')
  return model


__all__ = ['Net', 'ModelError', 'sizes_from_params', 'set_nnx_sizes',
           'load_factory', 'make_model']
