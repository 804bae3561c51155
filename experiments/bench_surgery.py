"""How long one surgery takes on a full-width model, and the recompile after.

    python -m experiments.bench_surgery --model resnet50 --out FILE

Builds the model at its full widths (ResNet-50: ImageNet widths, topology
for a 224x224x3 input), random variables (params, BatchNorm statistics,
identity shortcut maps) and a random AdamW state (``mu``/``nu``), then
removes a random ``--dead`` fraction of the units of every group (each keeps
at least one) with :func:`demp_jax.surgery.shrink`: params, statistics,
index maps and optimiser state, no probe forward pass. Variables are made
from ``jax.eval_shape`` plus numpy, so no forward pass runs at all.

Writes JSON with

* ``surgery_seconds``: the median over ``--repeats`` surgeries (each on a
  fresh random dead set; every value in ``surgery_seconds_all``), timed to
  ``jax.block_until_ready`` of the results;
* ``recompile_seconds``: lowering plus XLA compilation of the shrunk model's
  jitted train step (forward, backward, AdamW; BatchNorm in train mode) for
  a batch of ``--compile_batch`` examples at the topology's input shape
  (``--compile=forward``: the eval forward only; ``none``: skip);
* ``machine``, the widths, parameter counts and leaf counts.

``--set KEY=VALUE`` (repeatable; Python literals) overrides model fields,
e.g. ``--set base_width=8`` for a quick smoke run.
"""
from __future__ import annotations

import ast
import json
import math
import os
import statistics
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import flags

from demp_jax import flops as flops_lib
from demp_jax import models, surgery
from demp_jax.net import Net
from demp_jax import topology as topo
from demp_jax.training import metrics
from experiments.benchlib import machine, runtime_env



def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def random_variables(net: Net, shapes: dict,
                     rng: np.random.Generator) -> dict:
  """Variables of the right ``shapes`` without running the model.

  Kernels ``N(0, 2/fan_in)``, norm scales 1, offsets 0, running means 0 and
  variances 1, index maps at their initial identity (``j`` if the consumed
  group has a unit ``j``, else -1; produce-only maps ``arange``).
  """
  consumed = {ref.key: g.size for g in net.topology.groups
              for ref in g.consumes if ref.kind == 'index'}

  def fill(path, s):
    keys = topo.key_path(path)
    shape, name = tuple(s.shape), keys[-1]
    if keys[0] == 'shortcut':
      j = np.arange(shape[0])
      bound = consumed.get((keys[0], keys[1:]), shape[0])
      return jnp.asarray(np.where(j < bound, j, -1), s.dtype)
    if name == 'kernel':
      std = math.sqrt(2.0 / max(1, math.prod(shape[:-1])))
      return jnp.asarray(rng.standard_normal(shape, np.float32) * std)
    if name in ('scale', 'var'):
      return jnp.ones(shape, s.dtype)
    return jnp.zeros(shape, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def random_adamw_state(tx: Any, params: Any, rng: np.random.Generator):
  """An AdamW state with random moments and step count 1000."""
  shapes = jax.eval_shape(tx.init, params)
  return optax.tree_map_params(
      tx, lambda s: jnp.asarray(np.abs(rng.standard_normal(
          s.shape, np.float32)) * 1e-3), shapes,
      transform_non_params=lambda s: jnp.full(s.shape, 1000, s.dtype))


def random_keep(topology: topo.UnitTopology, dead: float,
                rng: np.random.Generator) -> dict:
  keep = {}
  for g in topology.groups:
    k = rng.random(g.size) >= dead
    if not k.any():
      k[rng.integers(g.size)] = True
    keep[g.name] = k
  return keep


def compile_seconds(model: Any, variables: dict, opt_state: Any, tx: Any,
                    input_shape: Sequence[int], batch: int, what: str
                    ) -> float:
  """Seconds to lower and compile the model's train step (or forward)."""
  x = jax.ShapeDtypeStruct((batch,) + tuple(input_shape), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  if what == 'forward':
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    args = (variables, x)
  else:
    def step(variables, opt_state, x, y):
      others = {k: v for k, v in variables.items() if k != 'params'}

      def loss_fn(p):
        logits, new = model.apply({**others, 'params': p}, x, train=True,
                                  mutable=model.mutable)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.mean(loss), new

      (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          variables['params'])
      updates, opt_state = tx.update(grads, opt_state, variables['params'])
      params = optax.apply_updates(variables['params'], updates)
      return {**others, **dict(new), 'params': params}, opt_state, loss

    fn = jax.jit(step, donate_argnums=(0, 1))
    args = (variables, opt_state, x, y)
  t0 = time.perf_counter()
  fn.lower(*args).compile()
  return time.perf_counter() - t0


def run(model_name: str, overrides: dict, input_shape: Sequence[int],
        dead: float, repeats: int, seed: int, compile_what: str,
        compile_batch: int) -> dict:
  """The benchmark; returns the JSON record."""
  rng = np.random.default_rng(seed)
  model, shapes = Net.create(models.build_model(
      {'name': model_name, **overrides}), input_shape, init=False)
  topology = model.topology
  t0 = time.perf_counter()
  variables = random_variables(model, shapes, rng)
  tx = optax.adamw(1e-3, weight_decay=1e-4)
  opt_state = random_adamw_state(tx, variables['params'], rng)
  jax.block_until_ready((variables, opt_state))
  setup = time.perf_counter() - t0
  topology.validate(variables)
  times, res = [], None
  for _ in range(repeats):
    keep = random_keep(topology, dead, rng)
    t0 = time.perf_counter()
    res = surgery.shrink(model, variables, keep, opt_state=opt_state,
                         tx=tx)
    jax.block_until_ready((res.variables, res.opt_state))
    times.append(time.perf_counter() - t0)
  recompile = None  # JSON null when skipped
  if compile_what != 'none':
    recompile = compile_seconds(res.model, res.variables, res.opt_state, tx,
                                input_shape, compile_batch, compile_what)
  n_leaves = len(jax.tree.leaves((variables, opt_state)))
  return {
      'model': model_name,
      'model_overrides': overrides,
      'input_shape': list(input_shape),
      'dead_fraction': dead,
      'surgery_seconds': statistics.median(times),
      'surgery_seconds_all': times,
      'recompile_seconds': recompile,
      'recompile_what': compile_what,
      'compile_batch': compile_batch,
      'setup_seconds': setup,
      'optimizer': 'adamw',
      'units_before': int(sum(model.widths)),
      'units_after': int(sum(res.model.widths)),
      'groups': len(topology.groups),
      'params_before': flops_lib.count_params(variables['params']),
      'params_after': flops_lib.count_params(res.variables['params']),
      'leaves_in': n_leaves,
      'bytes_in': int(sum(np.asarray(x).nbytes for x in
                          jax.tree.leaves((variables, opt_state)))),
      'machine': machine(),
      'env': runtime_env(),
      'hostname': os.uname().nodename,
  }


def main(argv):
  del argv
  name = _MODEL.value
  if _INPUT.value:
    input_shape = tuple(int(v) for v in _INPUT.value)
  else:
    input_shape = (224, 224, 3) if name == 'resnet50' else (32, 32, 3)
  overrides = {}
  for item in _SET.value:
    key, _, value = item.partition('=')
    overrides[key] = _literal(value)
  record = run(name, overrides, input_shape, _DEAD.value, _REPEATS.value,
               _SEED.value, _COMPILE.value, _COMPILE_BATCH.value)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  metrics.write_json(_OUT.value, record)
  print(json.dumps(record, indent=2))


if __name__ == '__main__':
  # flags only for the command line: the tests import this module
  # beside the other benchmarks, which define --out too
  _MODEL = flags.DEFINE_string('model', 'resnet50', 'Key of models.MODELS.')
  _OUT = flags.DEFINE_string('out', None, 'Output JSON file.')
  _INPUT = flags.DEFINE_list(
      'input_shape', None, 'H,W,C of one example (default: 224,224,3 for '
      'resnet50, else 32,32,3).')
  _DEAD = flags.DEFINE_float('dead', 0.5, 'Fraction of units removed.')
  _REPEATS = flags.DEFINE_integer('repeats', 3, 'Surgeries timed.')
  _SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
  _COMPILE = flags.DEFINE_enum('compile', 'train_step',
                               ['train_step', 'forward', 'none'],
                               'What to compile after the surgery.')
  _COMPILE_BATCH = flags.DEFINE_integer('compile_batch', 2,
                                        'Batch size of the compiled step.')
  _SET = flags.DEFINE_multi_string('set', [], 'Model field KEY=VALUE.')
  flags.mark_flags_as_required(['out'])
  app.run(main)
