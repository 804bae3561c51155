"""Step-level speed of DemP, measured side by side in one process.

    python -m experiments.bench_step --config configs/fashion_mnist_demp.py \
        --out runs/bench_step.json

Writes JSON with, on the same batches and the same model:

* ``overhead_ratio``: DemP's train step (penalty, noise, updater hooks)
  over a plain optax train step;
* ``death_check_ratio``: the death-check pass over a plain eval forward on
  the same examples;
* for each keep fraction: ``shrunk_speedup`` (dense step / physically
  shrunk step), ``flop_speedup`` and ``bytes_speedup`` (XLA's cost
  analysis of the two steps: FLOPs, and bytes read plus written),
  ``masked_speedup`` (dense step / the same keep fraction applied as masks
  only, JaxPruner-style), and ``surgery_seconds`` / ``recompile_seconds``.

Timings are medians over interleaved rounds, so drift in the machine's
load hits every variant alike.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from demp_jax import stats, surgery
from demp_jax import topology as topo
from demp_jax.data import held_batches, normalize, train_batches
from demp_jax.training import loop
from demp_jax.training import metrics
from demp_jax.training import optim
from demp_jax.training.steps import Compiler, TrainState, make_train_step
from experiments.benchlib import machine, runtime_env


class _Plain:
  """The plain optax step's updater: no hooks."""

  def pre_forward_update(self, params, opt_state):
    del opt_state
    return params

  def post_gradient_update(self, params, opt_state):
    del opt_state
    return params


class StepVariant:
  """A compiled train step, its state, and a way to time it."""

  def __init__(self, model, tx, updater, params_state, batches, mean, std):
    self.batches = batches
    key = jax.random.PRNGKey(0)
    compiled = Compiler(lambda m: make_train_step(m, tx, updater, mean, std),
                        (*batches[0], key))(model, params_state)
    self.step = compiled.fn
    self.compile_seconds = compiled.seconds
    self.flops = compiled.flops
    self.bytes_accessed = compiled.bytes_accessed
    self.state = jax.tree.map(jnp.copy, params_state)  # donated: own copy
    self.key = key
    self.times: list[float] = []
    self.faults: list[int] = []

  def run(self, n: int) -> None:
    for i in range(n):
      images, labels = self.batches[i % len(self.batches)]
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      t0 = time.perf_counter()
      self.state, m = self.step(self.state, images, labels, self.key)
      jax.block_until_ready(self.state)
      self.times.append(time.perf_counter() - t0)
      self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                         - f0)

  @property
  def seconds(self) -> float:
    return float(statistics.median(self.times))

  @property
  def page_faults(self) -> float:
    """Median minor page faults of the process per step: memory the step's
    buffers touch for the first time (4 KiB each without huge pages)."""
    return float(statistics.median(self.faults))


def interleave(variants: dict, rounds: int, steps: int) -> None:
  for v in variants.values():
    v.run(2)  # warm-up
    v.times.clear()
    v.faults.clear()
  for _ in range(rounds):
    for v in variants.values():
      v.run(steps)


def time_interleaved(fns: dict, rounds: int) -> dict[str, float]:
  """Median seconds of each ``fn()``, run in turn ``rounds`` times so that
  drift in the machine's load hits all of them alike."""
  for fn in fns.values():
    jax.block_until_ready(fn())
  ts = {k: [] for k in fns}
  for _ in range(rounds):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      ts[k].append(time.perf_counter() - t0)
  return {k: float(statistics.median(v)) for k, v in ts.items()}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  splits, shape, model, variables, topology, updater, demp_tx = (
      loop.build(config, int(config.num_steps)))
  opt = optim.make_optimizer(config.optimizer, int(config.num_steps))
  it = train_batches(splits.train, int(config.batch_size), int(config.seed))
  batches = [tuple(map(jnp.asarray, next(it))) for _ in range(4)]
  mean, std = splits.mean, splits.std

  def state(tx, v):
    v = jax.tree.map(jnp.copy, v)  # each variant donates its own buffers
    return TrainState(jnp.zeros([], jnp.int32), v, tx.init(v['params']))

  variants = {
      'plain': StepVariant(model, opt, _Plain(), state(opt, variables),
                           batches, mean, std),
      'demp': StepVariant(model, demp_tx, updater, state(demp_tx, variables),
                          batches, mean, std)}
  rng = np.random.default_rng(0)
  events = {}
  for frac in map(float, _KEEP.value):
    keep = {}
    for g in topology.groups:
      k = np.zeros(g.size, bool)
      k[rng.choice(g.size, max(1, round(frac * g.size)), replace=False)] = True
      keep[g.name] = k
    s = state(demp_tx, variables)
    t0 = time.perf_counter()
    res = surgery.shrink(model, s.variables, keep, opt_state=s.opt_state,
                         tx=demp_tx)
    jax.block_until_ready(res.variables)
    surgery_s = time.perf_counter() - t0
    shrunk_updater = updater.with_topology(res.model.topology)
    variants[f'shrunk_{frac}'] = StepVariant(
        res.model, demp_tx, shrunk_updater,
        TrainState(s.step, res.variables, res.opt_state), batches, mean, std)
    masked_state = s._replace(opt_state=updater.mask_units(
        s.opt_state, s.variables['params'], keep))
    masked_state = masked_state._replace(variables={
        **s.variables, 'params': topo.apply_masks(
            s.variables['params'], masked_state.opt_state.masks)})
    variants[f'masked_{frac}'] = StepVariant(model, demp_tx, updater,
                                             masked_state, batches, mean, std)
    events[frac] = {'surgery_seconds': surgery_s,
                    'recompile_seconds':
                        variants[f'shrunk_{frac}'].compile_seconds}

  interleave(variants, _ROUNDS.value, _STEPS.value)

  # Death check vs a plain eval forward over the same held examples.
  probe = updater.probe
  images, _ = held_batches(splits.train, probe.batches, probe.batch_size,
                           seed=0)
  held = normalize(jnp.asarray(images), mean, std)
  plain_eval = jax.jit(lambda v, x: jax.lax.map(
      lambda xb: model.apply(v, xb, train=False), x))
  t = time_interleaved(
      {'check': lambda: stats.saturation_stats(model, variables, held, 0.0),
       'forward': lambda: plain_eval(variables, held)}, 3 * _ROUNDS.value)
  check, forward = t['check'], t['forward']

  dense = variants['demp']
  out = {
      'machine': machine(),
      'env': runtime_env(),
      'config': str(_CONFIG.value.model.to_dict()),
      'batch_size': int(config.batch_size),
      'plain_step_seconds': variants['plain'].seconds,
      'demp_step_seconds': dense.seconds,
      'overhead_ratio': dense.seconds / variants['plain'].seconds,
      'plain_step_page_faults': variants['plain'].page_faults,
      'demp_step_page_faults': dense.page_faults,
      'death_check_seconds': check,
      'eval_forward_seconds': forward,
      'death_check_ratio': check / forward,
      'death_check_examples': int(held.shape[0] * held.shape[1]),
      'keep': {},
  }
  for frac, ev in events.items():
    shrunk, masked = variants[f'shrunk_{frac}'], variants[f'masked_{frac}']
    speedup = dense.seconds / shrunk.seconds
    flop = dense.flops / shrunk.flops
    bytes_ = dense.bytes_accessed / shrunk.bytes_accessed
    out['keep'][str(frac)] = {
        'shrunk_step_seconds': shrunk.seconds,
        'masked_step_seconds': masked.seconds,
        'shrunk_speedup': speedup,
        'flop_speedup': flop,
        'bytes_speedup': bytes_,
        'masked_speedup': dense.seconds / masked.seconds,
        'shrunk_step_page_faults': shrunk.page_faults,
        'shrunk_over_flop': speedup / flop,
        'shrunk_over_bytes': speedup / bytes_,
        **ev}
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  metrics.write_json(_OUT.value, out)
  print(json.dumps(out, indent=2))


if __name__ == '__main__':
  # flags only for the command line (see experiments/train.py)
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.')
  _OUT = flags.DEFINE_string('out', None, 'Output JSON file.')
  _ROUNDS = flags.DEFINE_integer('rounds', 7, 'Interleaved timing rounds.')
  _STEPS = flags.DEFINE_integer('steps', 5, 'Steps per round and variant.')
  _KEEP = flags.DEFINE_list('keep', ['0.5', '0.25'], 'Keep fractions.')
  flags.mark_flags_as_required(['config', 'out'])
  app.run(main)
