"""The training loop: train, check for dead units, shrink, recompile, go on.

``train(config, workdir)`` runs one configured job and writes
``workdir/summary.json``; see ``configs/fashion_mnist_demp.py`` for the
config fields.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from demp_jax import buckets
from demp_jax import flops as flops_lib
from demp_jax import models
from demp_jax import surgery
from demp_jax import topology as topo
from demp_jax.algorithms import create_updater_from_config
from demp_jax.algorithms.base import PruneContext
from demp_jax.data import (augment as augment_lib, eval_batches,
                           held_batches, load_dataset, normalize,
                           train_batches)
from demp_jax.training import checkpoint as ckpt_lib
from demp_jax.training import optim
from demp_jax.training.steps import (TrainState, make_eval_step,
                                     make_train_step)


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the run stopped."""


def init_variables(model, seed: int, input_shape) -> dict:
  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  variables = model.init(jax.random.PRNGKey(seed), x, train=False)
  return {k: v for k, v in variables.items() if k != 'activations'}


class Compiler:
  """AOT-compiles train steps and counts compilations and their seconds."""

  def __init__(self, make_step):
    self.make_step = make_step
    self.count = 0
    self.seconds = 0.0

  def __call__(self, model, state, images, labels, key):
    t0 = time.perf_counter()
    fn = jax.jit(self.make_step(model), donate_argnums=0)
    compiled = fn.lower(state, images, labels, key).compile()
    self.seconds += time.perf_counter() - t0
    self.count += 1
    return compiled


def evaluate(model, variables, ds, batch_size, mean, std) -> dict:
  """Accuracy and mean loss over every example of ``ds``."""
  fn = jax.jit(make_eval_step(model, mean, std))
  correct = loss = 0.0
  for images, labels, valid in eval_batches(ds, batch_size):
    c, l = fn(variables, images, labels, valid)
    correct += float(c)
    loss += float(l)
  return {'accuracy': correct / len(ds), 'loss': loss / len(ds)}


def _median(xs):
  return float(statistics.median(xs)) if xs else float('nan')


def train(config, workdir: str) -> dict:
  """Runs the configured job; returns the summary it writes to
  ``workdir/summary.json``."""
  os.makedirs(workdir, exist_ok=True)
  t_start = time.perf_counter()
  num_steps = int(config.num_steps)
  if num_steps < 1:
    raise ValueError(f'config.num_steps must be >= 1, got {num_steps}')
  splits = load_dataset(config.dataset)
  input_shape = splits.train.example_shape
  model_cfg = dict(config.model)
  model_cfg.setdefault('num_classes', splits.num_classes)
  model = models.build_model(model_cfg)
  variables = init_variables(model, int(config.seed), input_shape)
  topology = model.unit_topology(input_shape)
  topology.validate(variables)
  updater = create_updater_from_config(config.sparsity_config,
                                       topology=topology)
  tx = updater.wrap_optax(optim.make_optimizer(config.optimizer, num_steps))
  state = TrainState(jnp.zeros([], jnp.int32), variables,
                     tx.init(variables['params']))
  mean, std = splits.mean, splits.std
  make_step = lambda m: make_train_step(
      m, tx, updater, mean, std, float(config.get('label_smoothing', 0.0)),
      augment_lib.get(splits.augment))
  compiler = Compiler(make_step)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'))
  key = jax.random.PRNGKey(int(config.seed) + 1)

  params_initial = flops_lib.count_params(variables['params'])
  units_initial = sum(g.size for g in topology.groups)
  flops_initial = flops_lib.forward_flops(model, variables, input_shape)
  events: list[dict] = []
  alive = {g.name: np.ones(g.size, bool) for g in topology.groups}
  round_to = int(config.get('round_widths_to', 1) or 1)
  kept_history: list[dict] = []
  step_times: list[float] = []
  last_good: Optional[int] = None

  def meta(step):
    return {'step': step, 'widths': list(model.widths),
            'model': model_cfg, 'kept_history': kept_history}

  def prune(step: int) -> None:
    nonlocal model, state, step_fn, updater, alive
    n, b = updater.held_batches_shape()
    probe_split = getattr(updater, 'probe_split', 'train')
    probe_source = {'train': splits.train, 'holdout': splits.holdout,
                    'test': splits.test}[probe_split]
    if probe_source is None:
      raise ValueError(f'{type(updater).__name__} probes a held-out split: '
                       'set config.dataset.holdout to a number of examples')
    images, labels = held_batches(probe_source, n, b,
                                  seed=int(config.seed) * 1_000_003 + step)
    ctx = PruneContext(step, model, state.variables, state.opt_state,
                       input_shape, normalize(jnp.asarray(images), mean, std),
                       jnp.asarray(labels), getattr(updater, 'epsilon', 0.0))
    t0 = time.perf_counter()
    keep = updater.choose_keep(ctx)
    event = {'step': step, 'decide_seconds': time.perf_counter() - t0}
    masks = updater.update_masks(ctx)
    if masks is not None:
      state = TrainState(state.step, {
          **state.variables,
          'params': topo.apply_masks(state.variables['params'], masks)},
                         state.opt_state._replace(masks=masks))
      event['active_params'] = flops_lib.count_active(masks,
                                                      state.variables['params'])
    if keep is None:
      events.append(event)
      return
    if ctx._stats is not None:
      event['dead_found'] = {k: int(np.sum(np.asarray(s.dead)))
                             for k, s in ctx._stats.items()}
      event['apoz_mean'] = {k: float(np.mean(np.asarray(s.apoz)))
                            for k, s in ctx._stats.items()}
    keep = {k: np.asarray(v, bool) & alive[k] for k, v in keep.items()}
    scores = ({k: np.asarray(s.mean_abs) for k, s in ctx._stats.items()}
              if ctx._stats is not None else None)
    plan = buckets.plan(keep, round_to, scores)
    if plan.shrinks:
      t0 = time.perf_counter()
      res = surgery.shrink(model, state.variables, plan.physical,
                           input_shape=input_shape, opt_state=state.opt_state,
                           tx=tx, probe=ctx.images[0][:256])
      jax.block_until_ready(res.variables)
      event['surgery_seconds'] = time.perf_counter() - t0
      event['max_masked_diff'] = res.max_masked_diff
      event['max_output_change'] = res.max_output_change
      kept_history.append({'step': step, 'kept': {
          k: np.flatnonzero(v).tolist() for k, v in plan.physical.items()}})
      model = res.model
      updater = updater.with_topology(model.unit_topology(input_shape))
      state = TrainState(state.step, res.variables, res.opt_state)
      c0 = compiler.seconds
      step_fn = compiler(model, state, *sample)
      event['recompile_seconds'] = compiler.seconds - c0
    alive = plan.alive
    opt_state = updater.set_alive(state.opt_state, state.variables['params'],
                                  alive)
    params = topo.apply_masks(state.variables['params'], opt_state.masks)
    state = TrainState(state.step, {**state.variables, 'params': params},
                       opt_state)
    if plan.shrinks:
      ckpt.save(step, state, meta(step))
    event['widths'] = dict(zip(updater.topology.names, map(int, model.widths)))
    event['live_units'] = {k: int(v.sum()) for k, v in alive.items()}
    events.append(event)

  batches = train_batches(splits.train, int(config.batch_size),
                          int(config.seed))
  sample = (*next(train_batches(splits.train, int(config.batch_size),
                                int(config.seed))), key)
  step_fn = compiler(model, state, *sample)
  progress = _progress(num_steps, config)
  t_loop = time.perf_counter()
  checkpoint_every = int(config.get('checkpoint_every', 0) or 0)
  loss = float('nan')
  for step in range(num_steps):
    if updater.prunes_at(step):
      prune(step)
    images, labels = next(batches)
    t0 = time.perf_counter()
    state, metrics = step_fn(state, images, labels,
                             jax.random.fold_in(key, step))
    jax.block_until_ready(state)
    step_times.append(time.perf_counter() - t0)
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      progress.close()
      msg = (f'loss is {loss} at step {step}; the run stopped. ' +
             (f'The last good checkpoint is step {last_good} in '
              f'{ckpt.directory}.' if last_good is not None else
              'No checkpoint was written before it.'))
      _write_json(os.path.join(workdir, 'summary.json'),
                  {'status': 'non_finite_loss', 'error': msg, 'step': step,
                   'last_good_checkpoint': last_good,
                   'config': config.to_dict()})
      ckpt.close()
      raise NonFiniteLossError(msg)
    if checkpoint_every and (step + 1) % checkpoint_every == 0:
      ckpt.save(step + 1, state, meta(step + 1))
      last_good = step + 1
    progress.update(1)
    if step % 10 == 0 or step == num_steps - 1:
      progress.set_postfix(loss=f'{loss:.3f}',
                           acc=f'{float(metrics["accuracy"]):.3f}',
                           units=sum(int(v.sum()) for v in alive.values()),
                           refresh=False)
  progress.close()
  if updater.prunes_at_end():
    prune(num_steps)
  train_seconds = time.perf_counter() - t_loop
  ckpt.save(num_steps, state, meta(num_steps))
  ckpt.close()
  test = evaluate(model, state.variables, splits.test,
                  int(config.get('eval_batch_size', 1000)), mean, std)

  params_final = flops_lib.count_params(state.variables['params'])
  units_final = int(sum(int(v.sum()) for v in alive.values()))
  flops_final = flops_lib.forward_flops(model, state.variables, input_shape)
  tenth = max(1, num_steps // 10)
  summary = {
      'status': 'ok',
      'algorithm': config.sparsity_config.algorithm,
      'test_accuracy': test['accuracy'],
      'test_loss': test['loss'],
      'final_train_loss': loss,
      'params_initial': params_initial,
      'params_final': params_final,
      'units_initial': units_initial,
      'units_final': units_final,
      'neuron_sparsity': 1.0 - units_final / units_initial,
      'param_sparsity': 1.0 - params_final / params_initial,
      'flops_initial': flops_initial,
      'flops_final': flops_final,
      'widths_final': dict(zip(model.unit_topology(input_shape).names,
                               map(int, model.widths))),
      'live_units_final': {k: int(v.sum()) for k, v in alive.items()},
      'train_seconds': train_seconds,
      'compile_seconds': compiler.seconds,
      'compiles': compiler.count,
      'total_seconds': time.perf_counter() - t_start,
      'steps': num_steps,
      'step_seconds_first': _median(step_times[:tenth]),
      'step_seconds_last': _median(step_times[-tenth:]),
      'pruning_events': events,
      'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      'config': config.to_dict(),
  }
  summary['step_time_ratio'] = (summary['step_seconds_last'] /
                                summary['step_seconds_first'])
  _write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary


def _progress(total: int, config):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, desc=str(config.sparsity_config.algorithm),
              disable=not config.get('progress', True), mininterval=1.0,
              file=sys.stderr, dynamic_ncols=True)


def _write_json(path: str, obj: dict) -> None:
  """Writes atomically: a temporary file renamed over the target."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, default=_jsonable)
  os.replace(tmp, path)


def _jsonable(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, tuple):
    return list(x)
  return str(x)
