"""The training loop: train, check for dead units, shrink, go on.

At a pruning event the units to remove are held at exactly zero at once;
when the arrays shrink, the surgery is checked and the shrunk train step
compiled on a background thread while training continues masked, and the
swap to the smaller arrays happens ``config.shrink_delay`` steps later.

``train(config, workdir)`` runs one configured job, data-parallel over every
device of every process, and writes ``workdir/summary.json``, metrics
(``metrics.csv``, ``metrics.jsonl``, TensorBoard) and orbax checkpoints
that survive shrinking (``--config.resume=True`` continues from the latest
one). See ``configs/fashion_mnist_demp.py`` for the config fields.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import threading
import time
from concurrent import futures
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from demp_jax import buckets
from demp_jax import flops as flops_lib
from demp_jax import models
from demp_jax import stats as stats_lib
from demp_jax import surgery
from demp_jax import topology as topo
from demp_jax.algorithms import create_updater_from_config
from demp_jax.algorithms.base import PruneContext
from demp_jax.data import (augment as augment_lib, eval_batches,
                           held_batches, load_dataset, normalize, prefetch,
                           train_batches)
from demp_jax.training import checkpoint as ckpt_lib
from demp_jax.training import metrics as metrics_lib
from demp_jax.training import optim
from demp_jax.training import parallel
from demp_jax.training.recalibrate import recalibrate
from demp_jax.training.steps import (TrainState, make_eval_step,
                                     make_train_step)


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the run stopped."""


def init_variables(model, seed: int, input_shape) -> dict:
  """The model's variables (no sown activations), initialised under jit."""
  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  init = jax.jit(lambda key: model.init(key, x, train=False))
  variables = init(jax.random.PRNGKey(seed))
  return {k: v for k, v in variables.items() if k != 'activations'}


class Setup(NamedTuple):
  splits: Any
  input_shape: tuple
  model_config: dict
  model: Any
  variables: dict
  topology: topo.UnitTopology
  updater: Any
  tx: Any


def build(config) -> Setup:
  """Data, model, initial variables, updater and its wrapped optimiser."""
  splits = load_dataset(config.dataset)
  input_shape = tuple(splits.train.example_shape)
  model_cfg = dict(config.model)
  model_cfg.setdefault('num_classes', splits.num_classes)
  model = models.build_model(model_cfg)
  variables = init_variables(model, int(config.seed), input_shape)
  topology = model.unit_topology(input_shape)
  topology.validate(variables)
  updater = create_updater_from_config(config.sparsity_config,
                                       topology=topology)
  tx = updater.wrap_optax(optim.make_optimizer(config.optimizer,
                                               int(config.num_steps)))
  return Setup(splits, input_shape, model_cfg, model, variables, topology,
               updater, tx)


class CompiledStep(NamedTuple):
  fn: Any         # the AOT-compiled train step
  seconds: float  # lowering plus XLA compilation
  flops: float    # XLA's cost analysis of one step (NaN when unknown)
  bytes_accessed: float  # the same analysis: bytes the step reads + writes


class Compiler:
  """AOT-compiles train steps and counts compilations and their seconds
  (safe to call from a background thread)."""

  def __init__(self, make_step):
    self.make_step = make_step
    self.count = 0
    self.seconds = 0.0
    self._lock = threading.Lock()

  def __call__(self, model, *args) -> CompiledStep:
    t0 = time.perf_counter()
    fn = jax.jit(self.make_step(model), donate_argnums=0)
    compiled = fn.lower(*args).compile()
    seconds = time.perf_counter() - t0
    with self._lock:
      self.seconds += seconds
      self.count += 1
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    cost = cost or {}
    return CompiledStep(compiled, seconds,
                        float(cost.get('flops', float('nan'))),
                        float(cost.get('bytes accessed', float('nan'))))


def evaluate(model, variables, ds, batch_size, mean, std,
             dp: parallel.DataParallel) -> dict:
  """Accuracy and mean loss over every example of ``ds``."""
  dp.check_batch(batch_size, 'config.eval_batch_size')
  fn = jax.jit(make_eval_step(model, mean, std))
  correct = loss = 0.0
  for images, labels, valid in eval_batches(ds, batch_size, dp.process_index,
                                            dp.process_count):
    c, l = fn(variables, *dp.shard_batch((images, labels, valid)))
    correct += float(c)
    loss += float(l)
  return {'accuracy': correct / len(ds), 'loss': loss / len(ds)}


def removed_constants(constants, alive) -> Optional[dict]:
  """The constant output of every unit that is not alive (0 for the alive
  ones and for those without a constant); None when there is nothing to
  fold."""
  if constants is None:
    return None
  out = {}
  for name, c in constants.items():
    c = np.asarray(c, np.float64)
    out[name] = np.where(~alive[name] & np.isfinite(c), c, 0.0)
  return out if any(np.any(v) for v in out.values()) else None


class PendingShrink(NamedTuple):
  """A physical shrink decided at ``event['step']``: the units are held at
  zero from then on, the shrunk step compiles in the background, and the
  arrays are sliced at ``swap_step`` (a fixed step, so every process and
  every resumed run swaps at the same one)."""
  swap_step: int
  keep: dict        # group -> bool[current n]: units kept physically
  alive: dict       # group -> bool[new n]: kept units left unmasked
  job: futures.Future  # -> (shrunk model, CompiledStep)
  event: dict


def _lower_thread_priority() -> None:
  """Lowest CPU priority for the calling thread (Linux; elsewhere a no-op).

  It reaches the job's Python side (surgery, tracing, lowering), not XLA's
  compile, which runs on XLA's own worker threads at their priority: on a
  2-core CPU the held steps run about 2x slower while it compiles."""
  try:
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
  except (AttributeError, OSError):
    pass


def _snapshot(tree):
  """Host copies that stay valid after the device buffers are donated."""
  return jax.tree.map(lambda a: np.array(a, copy=True), parallel.fetch(tree))


def hold_dead(updater, state: TrainState, alive, constants,
              dp: parallel.DataParallel) -> TrainState:
  """Masks the units that are not alive (held at zero from now on),
  folding the constant ones into their consumers first, and points index
  maps (residual gathers) away from them, so the masked network computes
  what the shrunk one will."""
  # On host copies (replicated values: the same on every process), so no
  # eager op compiles for the new widths.
  variables = parallel.fetch(state.variables)
  if constants is not None:
    variables = surgery.fold_into_consumers(updater.topology, variables,
                                            constants)
  opt_state = updater.set_alive(parallel.fetch(state.opt_state),
                                variables['params'], alive)
  variables = topo.silence_units(updater.topology, variables, alive)
  variables = {**variables, 'params': topo.apply_masks(variables['params'],
                                                       opt_state.masks)}
  return dp.replicate(TrainState(state.step, variables, opt_state))


def _median(xs):
  return float(statistics.median(xs)) if xs else float('nan')


def train(config, workdir: str) -> dict:
  """Runs the configured job; returns the summary it writes to
  ``workdir/summary.json``."""
  parallel.maybe_initialize_distributed(config)
  dp = parallel.DataParallel()
  main = dp.process_index == 0
  os.makedirs(workdir, exist_ok=True)
  t_start = time.perf_counter()
  num_steps = int(config.num_steps)
  if num_steps < 1:
    raise ValueError(f'config.num_steps must be >= 1, got {num_steps}')
  batch_size = int(config.batch_size)
  dp.check_batch(batch_size, 'config.batch_size')
  (splits, input_shape, model_cfg, model, variables, topology, updater,
   tx) = build(config)
  mean, std = splits.mean, splits.std
  make_step = lambda m: make_train_step(
      m, tx, updater, mean, std, float(config.get('label_smoothing', 0.0)),
      augment_lib.get(splits.augment))
  compiler = Compiler(make_step)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'))
  existing = ckpt.latest_step()
  if existing is not None and not config.get('resume', False):
    ckpt.close()  # before anything in workdir is written over
    raise FileExistsError(
        f'{ckpt.directory} already holds checkpoints (latest step '
        f'{existing}): set config.resume=True to continue that run, or use '
        'a new workdir')
  writer = metrics_lib.MetricWriter(workdir, enabled=main)
  key = jax.random.PRNGKey(int(config.seed) + 1)
  round_to = int(config.get('round_widths_to', 1) or 1)

  # Everything a checkpoint must hold to continue exactly where it stopped.
  run = {
      'params_initial': flops_lib.count_params(variables['params']),
      'units_initial': sum(g.size for g in topology.groups),
      'flops_initial': flops_lib.forward_flops(model, variables, input_shape),
      'events': [], 'kept_history': [],
      'alive': {g.name: [True] * g.size for g in topology.groups},
      'last_good': None,
  }
  start = 0
  latest = ckpt.latest_step() if config.get('resume', False) else None
  if latest is not None:
    run = ckpt.read_meta(latest)['run']
    model = model.with_widths(run['widths'])
    topology = model.unit_topology(input_shape)
    updater = updater.with_topology(topology)
    abstract = jax.eval_shape(lambda: TrainState(
        jnp.zeros([], jnp.int32), init_variables(model, 0, input_shape),
        tx.init(init_variables(model, 0, input_shape)['params'])))
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                       sharding=dp.replicated), abstract)
    state = ckpt.restore(latest, abstract)
    start = latest
  else:
    state = dp.replicate(TrainState(jnp.zeros([], jnp.int32), variables,
                                    tx.init(variables['params'])))
    if config.get('resume', False) and main:
      print(f'resume: no checkpoint in {ckpt.directory}; starting fresh',
            file=sys.stderr)
  alive = {k: np.asarray(v, bool) for k, v in run['alive'].items()}
  step_times: list[float] = []
  # Steps trained with the removed units held at zero while the shrunk step
  # compiles on a background thread (0: shrink and compile at once).
  delay = int(config.get('shrink_delay', 0) or 0)
  if delay < 0:
    raise ValueError(f'config.shrink_delay must be >= 0, got {delay}')
  executor = futures.ThreadPoolExecutor(1, thread_name_prefix='shrink')
  pending: Optional[PendingShrink] = None
  stats_fn = None  # the death check compiled for the current widths
  recal_batches = int(config.get('bn_recalibration_batches', 0) or 0)

  def eval_variables(variables, step: int):
    """``variables`` for the death check and evaluation: BatchNorm
    statistics recomputed from ``config.bn_recalibration_batches`` held,
    non-augmented training batches (:mod:`recalibrate`); 0: as they are."""
    if not recal_batches:
      return variables
    local, _ = held_batches(getattr(splits, 'train_eval', None) or
                            splits.train, recal_batches, batch_size,
                            seed=int(config.seed) * 1_000_003 + step,
                            process_index=dp.process_index,
                            process_count=dp.process_count)
    images = normalize(dp.shard_held(local), mean, std)
    return dp.replicate(recalibrate(model, variables, images))

  def save(step: int) -> None:
    run['widths'] = [int(w) for w in model.widths]
    run['alive'] = {k: v.tolist() for k, v in alive.items()}
    run['pending'] = None if pending is None else {
        'swap_step': pending.swap_step,
        'keep': {k: v.tolist() for k, v in pending.keep.items()},
        'alive': {k: v.tolist() for k, v in pending.alive.items()},
        'event': len(run['events']) - 1}
    ckpt.save(step, state, {'step': step, 'model': model_cfg, 'run': run})
    run['last_good'] = step

  def start_shrink(swap_step: int, keep: dict, new_alive: dict,
                   probe=None, reference=None,
                   held_images=None) -> PendingShrink:
    """Slices a host snapshot (the held units are exactly zero, so this is
    the network being trained), checks it on ``probe`` and compiles the
    shrunk train step, all on a background thread at low priority.
    ``reference``: the variables before the units were held, for
    ``max_output_change``; ``held_images``: the shape and sharding of the
    death check's batches, to compile it for the new widths too."""
    variables = _snapshot(state.variables)
    opt_state = _snapshot(state.opt_state)
    old_model = model

    def job():
      _lower_thread_priority()
      t0 = time.perf_counter()
      res = surgery.shrink(old_model, variables, keep, input_shape=input_shape,
                           opt_state=opt_state, tx=tx, probe=probe)
      info = {'surgery_seconds': time.perf_counter() - t0,
              'max_masked_diff': res.max_masked_diff}
      if reference is not None:
        before = surgery.eval_logits(old_model, reference, probe)
        after = surgery.eval_logits(res.model, res.variables, probe)
        info['max_output_change'] = float(np.max(np.abs(
            np.asarray(after) - np.asarray(before))))
      abstract = jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype,
                                         sharding=dp.replicated),
          TrainState(np.zeros([], np.int32), res.variables, res.opt_state))
      compiled = compiler(res.model, abstract, *sample)
      check = None
      if held_images is not None:
        t1 = time.perf_counter()
        check = stats_lib.saturation_stats.lower(
            res.model, abstract.variables, held_images,
            float(getattr(updater, 'epsilon', 0.0))).compile()
        info['check_compile_seconds'] = time.perf_counter() - t1
      return res.model, compiled, check, info

    return PendingShrink(swap_step, keep, new_alive, executor.submit(job),
                         run['events'][-1])

  def swap(step: int) -> None:
    """Slices the live state, switches to the shrunk step compiled in the
    background (waiting for it if it is not ready) and checkpoints."""
    nonlocal model, state, step_fn, step_flops, updater, alive, pending
    nonlocal stats_fn
    p = pending
    t0 = time.perf_counter()
    new_model, compiled, stats_fn, info = p.job.result()  # SurgeryError
    wait = time.perf_counter() - t0
    res = surgery.shrink(model, parallel.fetch(state.variables), p.keep,
                         input_shape=input_shape,
                         opt_state=parallel.fetch(state.opt_state), tx=tx)
    assert tuple(res.model.widths) == tuple(new_model.widths)
    model = res.model
    updater = updater.with_topology(model.unit_topology(input_shape))
    step_fn, step_flops = compiled.fn, compiled.flops
    alive = p.alive
    state = hold_dead(updater, TrainState(state.step, res.variables,
                                          res.opt_state), alive, None, dp)
    jax.block_until_ready(state)
    ev = p.event
    overlap = step_times[ev['steps_before']:]
    ev.update(info)
    ev.update({
        'swap_step': step, 'wait_seconds': wait,
        'swap_seconds': time.perf_counter() - t0,
        'recompile_seconds': compiled.seconds,
        # steps trained held (at the old widths) while the job ran
        'overlap_steps': len(overlap),
        'overlap_step_seconds': sum(overlap),
        'widths': dict(zip(updater.topology.names, map(int, model.widths))),
        'live_units': {k: int(v.sum()) for k, v in alive.items()}})
    run['kept_history'].append({'step': ev['step'], 'kept': {
        k: np.flatnonzero(v).tolist() for k, v in p.keep.items()}})
    pending = None
    save(step)

  def prune(step: int) -> None:
    nonlocal state, alive, pending
    if pending is not None:
      swap(step)  # decide on the network as it is
    n, b = updater.held_batches_shape()
    where = getattr(updater, 'probe_split', 'train')
    # train_eval: training images with eval preprocessing (ImageNet crops)
    source = {'train': getattr(splits, 'train_eval', None) or splits.train,
              'holdout': splits.holdout, 'test': splits.test}[where]
    if source is None:
      raise ValueError(f'{type(updater).__name__} probes a held-out split: '
                       'set config.dataset.holdout to a number of examples')
    b -= b % dp.num_devices
    local = held_batches(source, n, b,
                         seed=int(config.seed) * 1_000_003 + step,
                         process_index=dp.process_index,
                         process_count=dp.process_count)
    images, labels = dp.shard_held(local)
    t0 = time.perf_counter()
    variables = jax.block_until_ready(eval_variables(state.variables, step))
    recal_seconds = time.perf_counter() - t0
    ctx = PruneContext(step, model, variables, state.opt_state,
                       input_shape, normalize(images, mean, std), labels,
                       getattr(updater, 'epsilon', 0.0), stats_fn=stats_fn)
    t0 = time.perf_counter()
    keep = updater.choose_keep(ctx)
    event = {'step': step, 'decide_seconds': time.perf_counter() - t0,
             'recalibrate_seconds': recal_seconds,
             'clock': time.perf_counter() - t_loop,
             'steps_before': len(step_times)}
    run['events'].append(event)
    masks = updater.update_masks(ctx)
    if masks is not None:
      state = TrainState(state.step, {
          **state.variables,
          'params': topo.apply_masks(state.variables['params'], masks)},
                         state.opt_state._replace(masks=masks))
      event['active_params'] = flops_lib.count_active(
          masks, state.variables['params'])
      event.update(updater.event_metrics(ctx, masks))
    if ctx._stats is not None:
      event['dead_found'] = {k: int(np.sum(np.asarray(s.dead)))
                             for k, s in ctx._stats.items()}
      event['apoz_mean'] = {k: float(np.mean(np.asarray(s.apoz)))
                            for k, s in ctx._stats.items()}
    if keep is None:
      return
    t0 = time.perf_counter()
    keep = {k: np.asarray(v, bool) & alive[k] for k, v in keep.items()}
    scores = ({k: np.asarray(s.mean_abs) for k, s in ctx._stats.items()}
              if ctx._stats is not None else None)
    plan = buckets.plan(keep, round_to, scores)
    probe = reference = None
    if plan.shrinks:
      # this process's own probe images (every process holds the same
      # replicated values, so every process checks the same surgery)
      probe = normalize(np.asarray(local[0][0][:256]), mean, std)
      reference = _snapshot(state.variables)
    # From now on the removed units are held at zero (constant ones folded
    # into their consumers first): the masked network is the shrunk one.
    constants = removed_constants(updater.constants(ctx), keep)
    changed = any(not np.array_equal(keep[k], alive[k]) for k in keep)
    alive = keep
    if changed or constants or masks is not None:
      # a round trip through the host: skipped when no unit changed
      state = hold_dead(updater, state, alive, constants, dp)
    event['folded'] = {k: int(np.count_nonzero(v))
                       for k, v in (constants or {}).items()}
    event['widths'] = dict(zip(updater.topology.names,
                               map(int, model.widths)))
    event['live_units'] = {k: int(v.sum()) for k, v in alive.items()}
    if plan.shrinks:
      # the updater reads the death check: compile it for the new widths
      held = (jax.ShapeDtypeStruct(ctx.images.shape, ctx.images.dtype,
                                   sharding=ctx.images.sharding)
              if ctx._stats is not None else None)
      pending = start_shrink(min(step + delay, num_steps), plan.physical,
                             plan.alive, probe, reference, held)
    event['hold_seconds'] = time.perf_counter() - t0
    if pending is not None and pending.swap_step <= step:
      swap(step)

  batches = prefetch(train_batches(splits.train, batch_size,
                                   int(config.seed), start, dp.process_index,
                                   dp.process_count), 2)
  sample = (*dp.shard_batch(next(train_batches(
      splits.train, batch_size, int(config.seed), 0, dp.process_index,
      dp.process_count))), key)
  first = compiler(model, state, *sample)
  step_fn, step_flops = first.fn, first.flops
  if run.get('pending'):  # resumed between a shrink decision and its swap
    p = run['pending']
    pending = start_shrink(
        p['swap_step'], {k: np.asarray(v, bool) for k, v in p['keep'].items()},
        {k: np.asarray(v, bool) for k, v in p['alive'].items()})
    pending = pending._replace(event=run['events'][p['event']])
    pending.event['steps_before'] = 0
  progress = _progress(num_steps, start, config, main)
  t_loop = time.perf_counter()
  checkpoint_every = int(config.get('checkpoint_every', 0) or 0)
  log_every = int(config.get('log_every', 50) or 50)
  eval_every = int(config.get('eval_every', 0) or 0)
  eval_seconds = 0.0
  loss = float('nan')
  for step in range(start, num_steps):
    if pending is not None and step >= pending.swap_step:
      swap(step)
    if updater.prunes_at(step):
      prune(step)
    images, labels = dp.shard_batch(next(batches))
    t0 = time.perf_counter()
    state, metrics = step_fn(state, images, labels,
                             jax.random.fold_in(key, step))
    jax.block_until_ready(state)
    step_times.append(time.perf_counter() - t0)
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      progress.close()
      batches.close()
      executor.shutdown(wait=False, cancel_futures=True)
      last = run['last_good']
      msg = (f'loss is {loss} at step {step}; the run stopped. ' +
             (f'The last good checkpoint is step {last} in {ckpt.directory}.'
              if last is not None else
              'No checkpoint was written before it.'))
      if main:
        _write_json(os.path.join(workdir, 'summary.json'),
                    {'status': 'non_finite_loss', 'error': msg, 'step': step,
                     'last_good_checkpoint': last,
                     'config': config.to_dict()})
      ckpt.close()
      writer.close()
      raise NonFiniteLossError(msg)
    live = sum(int(v.sum()) for v in alive.values())
    if step % log_every == 0 or step == num_steps - 1:
      writer.write(step, {
          'loss': loss, 'accuracy': float(metrics['accuracy']),
          'live_units': live, 'step_seconds': step_times[-1],
          'params': flops_lib.count_params(state.variables['params']),
          'train_step_flops': step_flops,
          **{f'live_units/{k}': int(v.sum()) for k, v in alive.items()},
          **updater.scalar_metrics(step)})
    if eval_every and (step + 1) % eval_every == 0:
      t0 = time.perf_counter()
      record = {'step': step + 1, 'test_accuracy': evaluate(
          model, eval_variables(state.variables, step + 1), splits.test,
          int(config.get('eval_batch_size', 1000)), mean, std,
          dp)['accuracy']}
      if recal_batches:  # the same network with its moving averages
        record['test_accuracy_running_stats'] = evaluate(
            model, state.variables, splits.test,
            int(config.get('eval_batch_size', 1000)), mean, std,
            dp)['accuracy']
      eval_seconds += time.perf_counter() - t0
      # training wall time so far: steps, pruning and compiles, no evals
      clock = time.perf_counter() - t_loop - eval_seconds
      acc = record['test_accuracy']
      record['train_clock_seconds'] = clock
      run.setdefault('evals', []).append(record)
      writer.write(step, {'test_accuracy': acc, 'train_clock_seconds': clock})
    if checkpoint_every and (step + 1) % checkpoint_every == 0:
      save(step + 1)
    progress.update(1)
    if step % 10 == 0 or step == num_steps - 1:
      progress.set_postfix(loss=f'{loss:.3f}',
                           acc=f'{float(metrics["accuracy"]):.3f}',
                           units=live, refresh=False)
  progress.close()
  batches.close()
  if pending is not None:
    swap(num_steps)
  if updater.prunes_at_end() and start < num_steps:
    prune(num_steps)
  executor.shutdown()
  train_seconds = time.perf_counter() - t_loop - eval_seconds
  save(num_steps)
  ckpt.close()
  test = evaluate(model, eval_variables(state.variables, num_steps),
                  splits.test, int(config.get('eval_batch_size', 1000)), mean,
                  std, dp)
  if recal_batches:  # the same network with its moving averages
    running = evaluate(model, state.variables, splits.test,
                       int(config.get('eval_batch_size', 1000)), mean, std, dp)

  params_final = flops_lib.count_params(state.variables['params'])
  zeros = sum(int(np.sum(np.asarray(p) == 0))
              for p in jax.tree.leaves(state.variables['params']))
  units_final = int(sum(int(v.sum()) for v in alive.values()))
  flops_final = flops_lib.forward_flops(model, state.variables, input_shape)
  tenth = max(1, len(step_times) // 10)
  names = model.unit_topology(input_shape).names
  summary = {
      'status': 'ok',
      'algorithm': config.sparsity_config.algorithm,
      'test_accuracy': test['accuracy'],
      'test_loss': test['loss'],
      **({'test_accuracy_running_stats': running['accuracy'],
          'test_loss_running_stats': running['loss']} if recal_batches
         else {}),
      'final_train_loss': loss,
      'params_initial': run['params_initial'],
      'params_final': params_final,
      'units_initial': run['units_initial'],
      'units_final': units_final,
      'neuron_sparsity': 1.0 - units_final / run['units_initial'],
      'param_sparsity': 1.0 - params_final / run['params_initial'],
      # JaxPruner's _total_sparsity: exact zeros among the params kept
      'param_zero_fraction': zeros / max(params_final, 1),
      'flops_initial': run['flops_initial'],
      'flops_final': flops_final,
      'widths_final': dict(zip(names, map(int, model.widths))),
      'live_units_final': {k: int(v.sum()) for k, v in alive.items()},
      'train_seconds': train_seconds,
      'compile_seconds': compiler.seconds,
      # compiles inside the loop (after surgeries), part of train_seconds
      'recompile_seconds': sum(e.get('recompile_seconds', 0.0)
                               for e in run['events']),
      'compiles': compiler.count,
      'total_seconds': time.perf_counter() - t_start,
      'steps': num_steps,
      'resumed_from': start or None,
      'step_seconds_first': _median(step_times[:tenth]),
      'step_seconds_last': _median(step_times[-tenth:]),
      'pruning_events': run['events'],
      'kept_history': run['kept_history'],
      'evals': run.get('evals', []),
      'device': (f'{jax.device_count()} x {jax.devices()[0].device_kind} '
                 f'in {jax.process_count()} process(es)'),
      'config': config.to_dict(),
  }
  summary['step_time_ratio'] = (summary['step_seconds_last'] /
                                summary['step_seconds_first'])
  summary['shrink_overhead'] = shrink_overhead(run['events'], step_times,
                                               train_seconds)
  summary['death_check_seconds'] = sum(e.get('decide_seconds', 0.0)
                                       for e in run['events'])
  summary['max_shrink_overhead_fraction'] = max(
      (e['fraction'] for e in summary['shrink_overhead']), default=0.0)
  if main:
    _write_json(os.path.join(workdir, 'summary.json'), summary)
  writer.close()
  return summary


def shrink_overhead(events: list[dict], step_times: list[float],
                    train_seconds: float) -> list[dict]:
  """For every physical shrink, the wall time it added against a shrink
  that cost nothing, and that time over its pruning interval.

  ``overhead = hold + swap + sum(held step times) - held steps x (median
  of the next 20 steps, at the new widths)``: holding the units, the swap
  (slicing, and waiting for the compile if it is late) and every step
  trained at the old widths, beside the compile, beyond what the same
  steps cost shrunk. The death check is apart (``decide_seconds``). The
  interval runs from the event to the next one (or the end).
  """
  out = []
  for i, e in enumerate(events):
    if 'swap_seconds' not in e or 'clock' not in e:
      continue
    first = e['steps_before'] + e['overlap_steps']
    after = _median(step_times[first:first + 20])
    if not math.isfinite(after):  # swapped at the end: no shrunk steps
      after = 0.0
    overhead = (e['hold_seconds'] + e['swap_seconds'] +
                e['overlap_step_seconds'] - e['overlap_steps'] * after)
    end = events[i + 1]['clock'] if i + 1 < len(events) else train_seconds
    interval = max(end - e['clock'], 1e-9)
    out.append({'step': e['step'], 'swap_step': e['swap_step'],
                'overhead_seconds': overhead,
                'interval_seconds': interval,
                'fraction': overhead / interval})
  return out


def _progress(total: int, start: int, config, main: bool):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=start,
              desc=str(config.sparsity_config.algorithm),
              disable=not (main and config.get('progress', True)),
              mininterval=1.0, file=sys.stderr, dynamic_ncols=True)


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
