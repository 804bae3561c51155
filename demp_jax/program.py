"""A model's forward pass as one flat list of primitive equations.

:func:`trace` turns ``fn(variables, x)`` into a :class:`Program`: the jaxpr
of the call with every call-like wrapper inlined (``jit``, ``custom_jvp_call``,
``custom_vjp_call``, ``closed_call``, ``remat``/``remat2``: ``nn.remat``,
``nnx.remat`` and ``jax.checkpoint``), so that every primitive the
model runs is one :class:`Eqn` at the top level, and the variables' leaves
are named by their ``(collection, path)``. :func:`evaluate` runs a program
(inside or outside ``jit``) and returns any of its intermediate values too:
that is how the death check reads the activations at the unit sites of a
model that does not ``sow`` them.

Inlining drops custom derivative rules; programs are for forward passes
(the derivation of the unit topology and the statistics pass), never for
gradients.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np

from demp_jax import topology as topo

# Call-like primitives whose body is inlined, and where their jaxpr lives.
_INLINE = {'jit': 'jaxpr', 'pjit': 'jaxpr', 'closed_call': 'call_jaxpr',
           'core_call': 'call_jaxpr', 'custom_jvp_call': 'call_jaxpr',
           'custom_vjp_call': 'call_jaxpr', 'custom_vjp_call_jaxpr':
           'fun_jaxpr', 'remat': 'jaxpr', 'remat2': 'jaxpr',
           'checkpoint': 'jaxpr'}

_ids = itertools.count()


class Var:
  """A value of the program: ``aval`` is its abstract shape and dtype."""
  __slots__ = ('aval', 'id')

  def __init__(self, aval):
    self.aval = aval
    self.id = next(_ids)

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.aval.shape)

  @property
  def dtype(self):
    return self.aval.dtype

  def __repr__(self) -> str:
    return f'v{self.id}{list(self.shape)}'


class Const:
  """A value known when tracing: a literal or a closed-over array."""
  __slots__ = ('value', 'aval')

  def __init__(self, value):
    self.value = value
    self.aval = jax.typeof(value)

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(np.shape(self.value))

  @property
  def dtype(self):
    return self.aval.dtype


Atom = Any  # Var | Const


@dataclasses.dataclass(frozen=True)
class Eqn:
  """One primitive application: ``outvars = primitive.bind(*invars, **params)``.

  ``where`` is the user's source line that made it, for error messages."""
  primitive: Any
  invars: tuple
  outvars: tuple
  params: dict
  where: str

  @property
  def name(self) -> str:
    return self.primitive.name


@dataclasses.dataclass(frozen=True)
class Program:
  """``outputs = f(leaves..., x)`` as a flat list of equations.

  ``leaves[i]`` is the ``(collection, path)`` of ``leaf_vars[i]``."""
  eqns: tuple[Eqn, ...]
  leaf_vars: tuple[Var, ...]
  leaves: tuple[topo.LeafKey, ...]
  input_var: Var
  outputs: tuple


_LIBRARY_DIRS = ('/jax/', '/jaxlib/', '/flax/', '/optax/', '/demp_jax/net.py',
                 '/demp_jax/program.py', '/demp_jax/derive.py')


def _where(source_info) -> str:
  """``file:line (function)`` of the model code that made an equation: the
  innermost frame outside JAX, Flax and this tracer."""
  try:
    from jax._src import source_info_util  # pylint: disable=g-import-not-at-top
    frames = source_info_util.user_frames(source_info.traceback)
    for f in frames:
      if not any(d in f.file_name for d in _LIBRARY_DIRS):
        return f'{f.file_name}:{f.start_line} ({f.function_name})'
    return source_info_util.summarize(source_info)
  except Exception:  # pylint: disable=broad-except
    return '?'


def _inline(jaxpr, consts, env: dict, out: list, where: str = '') -> None:
  """Appends the equations of ``jaxpr`` to ``out``; ``env`` maps its
  variables to atoms of the flat program."""
  for v, c in zip(jaxpr.constvars, consts):
    env[v] = Const(c)

  def read(a):
    if isinstance(a, jax_core.Literal):
      return Const(a.val)
    return env[a]

  for e in jaxpr.eqns:
    ins = tuple(read(a) for a in e.invars)
    here = where or _where(e.source_info)
    key = _INLINE.get(e.primitive.name)
    sub = e.params.get(key) if key else None
    if sub is not None:
      closed = sub if hasattr(sub, 'jaxpr') else None
      inner = closed.jaxpr if closed is not None else sub
      inner_consts = closed.consts if closed is not None else ()
      n = len(inner.invars)
      inner_env = dict(zip(inner.invars, ins[len(ins) - n:]))
      _inline(inner, inner_consts, inner_env, out, here)
      for o, io in zip(e.outvars, inner.outvars):
        if isinstance(o, jax_core.DropVar):
          continue
        env[o] = (Const(io.val) if isinstance(io, jax_core.Literal)
                  else inner_env[io])
      continue
    outs = []
    for o in e.outvars:
      v = Var(o.aval)
      if not isinstance(o, jax_core.DropVar):
        env[o] = v
      outs.append(v)
    out.append(Eqn(e.primitive, ins, tuple(outs), dict(e.params), here))


def flatten_variables(variables: Mapping[str, Any]
                      ) -> tuple[list[topo.LeafKey], list[Any]]:
  """``(keys, leaves)`` of a variables dict, ``key = (collection, path)``."""
  keys, leaves = [], []
  for path, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]:
    p = topo.key_path(path)
    keys.append((p[0], p[1:]))
    leaves.append(leaf)
  return keys, leaves


def trace(fn: Callable[[Any, Any], Any], variables: Mapping[str, Any],
          x: Any) -> Program:
  """The flat program of ``fn(variables, x)`` (abstract shapes suffice)."""
  keys, leaves = flatten_variables(variables)
  treedef = jax.tree_util.tree_structure(dict(variables))

  def flat_fn(leaves, x):
    return fn(jax.tree_util.tree_unflatten(treedef, leaves), x)

  closed = jax.make_jaxpr(flat_fn)(leaves, x)
  jaxpr = closed.jaxpr
  env: dict = {}
  vars_in = [Var(v.aval) for v in jaxpr.invars]
  env.update(zip(jaxpr.invars, vars_in))
  eqns: list[Eqn] = []
  _inline(jaxpr, closed.consts, env, eqns)
  outputs = tuple(Const(o.val) if isinstance(o, jax_core.Literal)
                  else env[o] for o in jaxpr.outvars)
  return Program(tuple(eqns), tuple(vars_in[:-1]), tuple(keys), vars_in[-1],
                 outputs)


def evaluate(program: Program, leaves: Sequence[Any], x: Any,
             extra: Sequence[Var] = ()) -> tuple[tuple, tuple]:
  """Runs the program on ``leaves`` (in ``program.leaves`` order) and ``x``;
  returns ``(outputs, values of extra)``. Works under ``jit``."""
  env: dict[int, Any] = {v.id: a for v, a in zip(program.leaf_vars, leaves)}
  env[program.input_var.id] = x

  def read(a):
    return a.value if isinstance(a, Const) else env[a.id]

  for e in program.eqns:
    outs = e.primitive.bind(*(read(a) for a in e.invars), **e.params)
    if not e.primitive.multiple_results:
      outs = (outs,)
    for v, o in zip(e.outvars, outs):
      env[v.id] = o
  return (tuple(read(a) for a in program.outputs),
          tuple(read(a) for a in extra))


def users(program: Program) -> dict[int, list[Eqn]]:
  """Var id -> the equations that read it."""
  out: dict[int, list[Eqn]] = {}
  for e in program.eqns:
    for a in e.invars:
      if isinstance(a, Var):
        out.setdefault(a.id, []).append(e)
  return out


def producers(program: Program) -> dict[int, Eqn]:
  """Var id -> the equation that writes it."""
  return {v.id: e for e in program.eqns for v in e.outvars}


def find_leaf(program: Program, key: topo.LeafKey) -> Optional[Var]:
  for k, v in zip(program.leaves, program.leaf_vars):
    if k == key:
      return v
  return None


def coarsest_eps(program: Program) -> float:
  """The machine epsilon of the least precise floating-point value the
  program computes (``2**-7`` when any step runs in bfloat16, ``2**-23``
  for a float32 program): the rounding a result of it can carry."""
  eps = [float(jnp.finfo(v.dtype).eps) for e in program.eqns
         for v in e.outvars if jnp.issubdtype(v.dtype, jnp.floating)]
  return max(eps, default=float(jnp.finfo(jnp.float32).eps))
