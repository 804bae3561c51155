"""The training loop: train, check for dead units, shrink, go on.

``train(config, workdir)`` runs one configured job, data-parallel over every
device of every process, and writes ``workdir/summary.json``, metrics
(``metrics.csv``, ``metrics.jsonl``, TensorBoard) and orbax checkpoints
that survive shrinking (``--config.resume=True`` continues from the latest
one). The pruning events and the shrinks are the
:class:`~demp_jax.training.shrink.ShrinkController`'s; the settings are
:class:`~demp_jax.training.options.TrainOptions` (see
``demp_jax/training/config_blocks.py``).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import statistics
import sys
import threading
import time
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from demp_jax import flops as flops_lib
from demp_jax import models
from demp_jax.net import Net
from demp_jax import topology as topo
from demp_jax.algorithms import create_updater_from_config
from demp_jax.data import (augment as augment_lib, eval_batches, load_dataset,
                           prefetch, train_batches)
from demp_jax.training import checkpoint as ckpt_lib
from demp_jax.training import held as held_lib
from demp_jax.training import metrics as metrics_lib
from demp_jax.training import optim
from demp_jax.training import parallel
from demp_jax.training import workdir as workdir_lib
from demp_jax.training.options import TrainOptions
from demp_jax.training.recalibrate import EvalView
from demp_jax.training.record import RunRecord
from demp_jax.training.shrink import ShrinkController
from demp_jax.training.validate import validate_config
from demp_jax.training.steps import (Compiler, TrainState, make_eval_step,
                                     make_train_step)


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the run stopped."""


class Setup(NamedTuple):
  splits: Any
  input_shape: tuple
  model: Net        # the model as the library sees it, at full width
  variables: dict
  topology: topo.UnitTopology
  updater: Any
  tx: Any


def build(config, num_steps: int) -> Setup:
  """Data, model, initial variables, updater and its wrapped optimiser
  (the learning-rate schedule spans ``num_steps``).

  ``config.model.name`` is a built-in model or a user's
  ``'package.module:factory'`` (a Linen or NNX module); either way its unit
  topology comes from :class:`demp_jax.net.Net`."""
  splits = load_dataset(config.dataset)
  input_shape = tuple(splits.train.example_shape)
  model_cfg = dict(config.model)
  if ':' in str(model_cfg.get('name', '')):  # a user model's factory
    unused = sorted(set(model_cfg) - {'name'})
    if unused and jax.process_index() == 0:
      print(f'config.model: the user model {model_cfg["name"]} takes no '
            f'settings; {", ".join(unused)} are not used', file=sys.stderr)
  else:
    model_cfg.setdefault('num_classes', splits.num_classes)
  net, variables = Net.create(models.build_model(model_cfg), input_shape,
                              seed=int(config.seed))
  _require_logits(net, variables, splits.num_classes, model_cfg['name'])
  _require_nonempty(variables)
  if jax.process_index() == 0:
    for line in unit_report(net):
      print(line, file=sys.stderr)
  net.topology.validate(variables)
  updater = create_updater_from_config(config.sparsity_config,
                                       topology=net.topology)
  if not net.topology.groups and updater.needs_units:
    raise ValueError(
        f'config.model.name={model_cfg["name"]}: the model has no unit group '
        f'for {config.sparsity_config.algorithm} to prune (the "model:" '
        'lines above say why each part is left out); train it with an '
        'unstructured method or sparsity_config.algorithm=no_prune')
  tx = updater.wrap_optax(optim.make_optimizer(config.optimizer, num_steps))
  return Setup(splits, input_shape, net, variables, net.topology,
               updater, tx)


def unit_report(net: Net) -> list[str]:
  """What of the model can be pruned, one line each: the unit groups,
  then every part left out with its first reason."""
  groups = net.topology.groups
  lines = [f'model: {len(groups)} unit group{"s" * (len(groups) != 1)}, '
           f'{sum(g.size for g in groups)} units'
           + (f' ({", ".join(f"{g.name} {g.size}" for g in groups[:8])}'
              f'{", ..." if len(groups) > 8 else ""})' if groups else
              ': nothing can be pruned')]
  for what, reasons in net.skipped:
    more = f' (and {len(reasons) - 1} more)' if len(reasons) > 1 else ''
    lines.append(f'model: {what} left out: {reasons[0]}{more}')
  return lines


def _require_logits(net: Net, variables: dict, num_classes: int,
                    name: str) -> None:
  """A ``ValueError`` unless the model maps a batch to ``[B, classes]``."""
  x = jax.ShapeDtypeStruct((2,) + net.input_shape, jnp.float32)
  out = jax.eval_shape(net.apply, variables, x)
  if not isinstance(out, jax.ShapeDtypeStruct):
    raise ValueError(f'config.model.name={name!r} returns a '
                     f'{type(out).__name__} of {len(jax.tree.leaves(out))} '
                     'arrays; the trainer needs the logits alone, one array '
                     f'[B, {num_classes}]')
  shape = out.shape
  if tuple(shape) != (2, num_classes):
    raise ValueError(f'config.model.name={name!r} maps a batch of 2 to '
                     f'logits of shape {tuple(shape)}; the dataset needs '
                     f'(2, {num_classes})')


def _require_nonempty(variables: dict) -> None:
  """A ``ValueError`` naming the first variable of zero size: a layer of
  width 0 cannot train, and orbax fails on it at the first checkpoint in a
  way that can hang the interpreter's exit."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    if np.size(leaf) == 0:
      raise ValueError(f'model variable {jax.tree_util.keystr(path)} has '
                       f'shape {np.shape(leaf)}: every width in config.model '
                       'must be >= 1')


def make_step(setup: Setup, label_smoothing: float):
  """``model -> train step`` with everything else of ``setup`` bound."""
  return functools.partial(
      make_train_step, tx=setup.tx, updater=setup.updater,
      mean=setup.splits.mean, std=setup.splits.std,
      label_smoothing=label_smoothing,
      augment=augment_lib.get(setup.splits.augment))


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


def evaluate_test(view: EvalView, splits: Any, opts: TrainOptions,
                  dp: parallel.DataParallel, model: Net, variables: dict,
                  step: int) -> dict:
  """``test_accuracy`` and ``test_loss`` of the network the view shows at
  ``step``; when it recalibrates the BatchNorm statistics, also
  ``test_accuracy_running_stats`` and ``test_loss_running_stats``, the same
  network with its moving averages."""
  run = functools.partial(evaluate, model, ds=splits.test,
                          batch_size=opts.eval_batch_size, mean=splits.mean,
                          std=splits.std, dp=dp)
  seen = run(view(model, variables, step))
  out = {'test_accuracy': seen['accuracy'], 'test_loss': seen['loss']}
  if view:
    own = run(variables)
    out.update(test_accuracy_running_stats=own['accuracy'],
               test_loss_running_stats=own['loss'])
  return out


class TrainClock:
  """Training wall time: the earlier parts of a resumed run plus this one,
  evaluations excluded."""

  def __init__(self, before: float = 0.0):
    self.before = before
    self.start = time.perf_counter()
    self.excluded = 0.0

  def begin(self) -> None:
    """Starts counting from now."""
    self.start = time.perf_counter()

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Time spent inside does not count (evaluations)."""
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.excluded += time.perf_counter() - t0

  def __call__(self) -> float:
    return self.before + time.perf_counter() - self.start - self.excluded


@contextlib.contextmanager
def interrupt_between_steps() -> Iterator[threading.Event]:
  """Defers Ctrl-C to the end of the current step: the handler sets the
  event (the loop raises ``KeyboardInterrupt`` there), so an interrupt
  never lands inside an orbax save, which can then hang the interpreter's
  exit; a second Ctrl-C interrupts at once. Outside the main thread
  (where signals cannot be handled) the event is never set."""
  event = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield event
    return

  def handler(signum, frame):
    del frame
    event.set()
    signal.signal(signum, signal.default_int_handler)

  previous = signal.signal(signal.SIGINT, handler)
  try:
    yield event
  finally:
    signal.signal(signal.SIGINT, previous)


def open_checkpoints(workdir: str, resume: bool) -> ckpt_lib.Checkpointer:
  """The run's checkpoints; a fresh run refuses a workdir that has some."""
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'))
  existing = ckpt.latest_step()
  if existing is not None and not resume:
    ckpt.close()  # before anything in workdir is written over
    raise FileExistsError(
        f'{ckpt.directory} already holds checkpoints (latest step '
        f'{existing}): set config.resume=True to continue that run, or use '
        'a new workdir')
  return ckpt


def save(ckpt: ckpt_lib.Checkpointer, identity: dict, record: RunRecord,
         step: int, state: TrainState) -> None:
  """A checkpoint of ``state`` with the record and the run's identity
  (:func:`demp_jax.training.workdir.run_identity`) as its meta."""
  ckpt.save(step, state, {'step': step, 'run_config': identity,
                          'run': record.to_json()})


def check_resume(ckpt: ckpt_lib.Checkpointer, identity: dict,
                 num_steps: int) -> None:
  """A ``ValueError`` when the newest checkpoint is of another run
  (:func:`demp_jax.training.workdir.check_same_run`) or past
  ``num_steps``, before anything is restored."""
  newest = ckpt.newest_meta()
  if newest is None:
    return
  step, meta = newest
  if step > num_steps:
    raise ValueError(
        f'config.num_steps={num_steps} is below step {step} of the newest '
        f'checkpoint in {ckpt.directory}: set num_steps >= {step} to resume')
  workdir_lib.check_same_run(identity, meta, step, ckpt.directory)


def restore(ckpt: ckpt_lib.Checkpointer, setup: Setup,
            dp: parallel.DataParallel, resume: bool
            ) -> tuple[int, RunRecord, TrainState, Net]:
  """``(start step, record, state, model)``: with ``resume``, from the
  newest checkpoint that restores (at its widths; damaged newer ones are
  named and set aside, see :meth:`Checkpointer.restore_latest`), else a
  fresh start."""
  def abstract_state(meta: dict) -> TrainState:
    net = setup.model.at_widths(RunRecord.from_json(meta['run']).widths)
    params = net.abstract_variables()['params']
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                       sharding=dp.replicated),
        TrainState(jax.ShapeDtypeStruct((), jnp.int32),
                   net.abstract_variables(), jax.eval_shape(setup.tx.init,
                                                            params)))

  restored = ckpt.restore_latest(abstract_state) if resume else None
  if restored is None:
    if resume and dp.process_index == 0:
      print(f'resume: no checkpoint in {ckpt.directory}; starting fresh',
            file=sys.stderr)
    v, shape = setup.variables, setup.input_shape
    record = RunRecord(
        flops_lib.count_params(v['params']),
        sum(g.size for g in setup.topology.groups),
        flops_lib.forward_flops(setup.model, v, shape),
        widths=[g.size for g in setup.topology.groups],
        live={g.name: np.ones(g.size, bool) for g in setup.topology.groups})
    state = TrainState(jnp.zeros([], jnp.int32), v, setup.tx.init(v['params']))
    return 0, record, dp.replicate(state), setup.model
  record = RunRecord.from_json(restored.meta['run'])
  return (restored.step, record, restored.state,
          setup.model.at_widths(record.widths))


def train(config, workdir: str) -> dict:
  """Runs the configured job; returns the summary it writes to
  ``workdir/summary.json``."""
  parallel.maybe_initialize_distributed(config)
  dp = parallel.DataParallel()
  validate_config(config, num_devices=dp.num_devices)
  opts = TrainOptions.from_config(config)
  workdir_lib.check_outputs(workdir)
  t_start = time.perf_counter()
  setup = build(config, opts.num_steps)
  os.makedirs(workdir, exist_ok=True)  # nothing written before the data
  identity = workdir_lib.run_identity(config)
  splits, seed = setup.splits, opts.seed
  batches_from = lambda s: train_batches(
      splits.train, opts.batch_size, seed, s, dp.process_index,
      dp.process_count)
  with contextlib.ExitStack() as stack:
    stack.enter_context(workdir_lib.exclusive(workdir, dp.process_index == 0))
    interrupted = stack.enter_context(interrupt_between_steps())
    ckpt = stack.enter_context(contextlib.closing(
        open_checkpoints(workdir, opts.resume)))
    if opts.resume:
      check_resume(ckpt, identity, opts.num_steps)
    start, record, state, model = restore(ckpt, setup, dp, opts.resume)
    writer = stack.enter_context(contextlib.closing(metrics_lib.MetricWriter(
        workdir, enabled=dp.process_index == 0)))
    key = jax.random.PRNGKey(seed + 1)
    sample = (*dp.shard_batch(next(batches_from(0))), key)
    compiler = Compiler(make_step(setup, opts.label_smoothing), sample)
    clock = TrainClock(record.train_seconds)
    checkpoint = functools.partial(save, ckpt, identity, record)
    view = EvalView(opts.bn_recalibration_batches, lambda step: (
        held_lib.draw_held(held_lib.split_source(splits, 'train', 'train'),
                           opts.bn_recalibration_batches, opts.batch_size,
                           seed * 1_000_003 + step, dp, splits.mean,
                           splits.std).images))
    test_of = functools.partial(evaluate_test, view, splits, opts, dp)
    shrinker = ShrinkController(
        model=model, updater=setup.updater, record=record,
        step=compiler(model, state), compiler=compiler, save=checkpoint,
        draw=held_lib.EventProbes(splits, seed, dp),
        clock=clock, tx=setup.tx, dp=dp,
        round_widths_to=opts.round_widths_to, shrink_delay=opts.shrink_delay,
        num_steps=opts.num_steps, view=view)
    stack.callback(shrinker.close)
    shrinker.resume(state)
    batches = stack.enter_context(contextlib.closing(prefetch(
        batches_from(start), 2)))
    progress = stack.enter_context(_progress(opts, start, config, dp))
    clock.begin()
    for step in range(start, opts.num_steps):
      state = shrinker.before_step(step, state)
      images, labels = dp.shard_batch(next(batches))
      t0 = time.perf_counter()
      state, metrics = shrinker.step.fn(state, images, labels,
                                        jax.random.fold_in(key, step))
      jax.block_until_ready(state)
      record.step_seconds.append(time.perf_counter() - t0)
      record.final_train_loss = loss = float(metrics['loss'])
      if not math.isfinite(loss):
        raise stop_non_finite(config, workdir, step, loss, ckpt, dp)
      live = sum(record.live_units.values())
      if step % opts.log_every == 0 or step == opts.num_steps - 1:
        writer.write(step, {
            'loss': loss, 'accuracy': float(metrics['accuracy']),
            'live_units': live, 'step_seconds': record.step_seconds[-1],
            'params': flops_lib.count_params(state.variables['params']),
            'train_step_flops': shrinker.step.flops,
            **{f'live_units/{k}': v for k, v in record.live_units.items()},
            **shrinker.updater.scalar_metrics(step)})
      if opts.eval_every and (step + 1) % opts.eval_every == 0:
        with clock.paused():
          test = test_of(shrinker.model, state.variables, step + 1)
        record.evals.append({'step': step + 1, 'train_clock_seconds': clock(),
                             **test})
        writer.write(step, {'test_accuracy': test['test_accuracy'],
                            'train_clock_seconds': clock()})
      if opts.checkpoint_every and (step + 1) % opts.checkpoint_every == 0:
        record.train_seconds = clock()
        checkpoint(step + 1, state)
      if interrupted.is_set():
        raise KeyboardInterrupt
      progress.update(1)
      if step % 10 == 0 or step == opts.num_steps - 1:
        progress.set_postfix(loss=f'{loss:.3f}',
                             acc=f'{float(metrics["accuracy"]):.3f}',
                             units=live, refresh=False)
    state = shrinker.finish(opts.num_steps, state, start < opts.num_steps)
    record.train_seconds = clock()
    checkpoint(opts.num_steps, state)
  test = test_of(shrinker.model, state.variables, opts.num_steps)
  summary = summarize(config, record, shrinker, state, setup.input_shape,
                      test, start, time.perf_counter() - t_start, compiler)
  if dp.process_index == 0:
    metrics_lib.write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary


def stop_non_finite(config, workdir: str, step: int, loss: float,
                    ckpt: ckpt_lib.Checkpointer,
                    dp: parallel.DataParallel) -> NonFiniteLossError:
  """Sets aside the checkpoints whose weights gave the non-finite loss,
  writes the stopped run's summary and returns the error to raise.

  The loss of step ``s`` is computed from the weights after ``s`` updates,
  which is checkpoint ``s``: it gave that loss, and a resume from it would
  meet it again at once, so every checkpoint from step ``s`` on is moved
  to ``checkpoints.nonfinite/`` (kept, not deleted). Each earlier one gave
  a finite loss at its own step."""
  bad = [s for s in ckpt.all_steps() if s >= step]
  moved = ckpt.set_aside(bad, 'nonfinite') if bad else []
  good = [s for s in ckpt.all_steps() if s < step]
  last = good[-1] if good else None
  msg = (f'loss is {loss} at step {step}; the run stopped. ' +
         (f'The last good checkpoint is step {last} in {ckpt.directory} '
          '(config.resume=True continues from it).'
          if last is not None else 'No checkpoint was written before it.') +
         (f' The checkpoint of the weights that gave it was moved to '
          f'{", ".join(moved)}.' if moved else ''))
  if dp.process_index == 0:
    metrics_lib.write_json(os.path.join(workdir, 'summary.json'), {
        'status': 'non_finite_loss', 'error': msg, 'step': step,
        'last_good_checkpoint': last, 'config': config.to_dict()})
  return NonFiniteLossError(msg)


def summarize(config, record: RunRecord, shrinker: ShrinkController,
              state: TrainState, input_shape: tuple, test: dict, start: int,
              total_seconds: float, compiler: Compiler) -> dict:
  """``summary.json``: the final network against the initial one, the
  timings and every pruning event."""
  params = state.variables['params']
  params_final = flops_lib.count_params(params)
  zeros = sum(int(np.sum(np.asarray(p) == 0)) for p in jax.tree.leaves(params))
  units_final = sum(record.live_units.values())
  times = record.step_seconds
  tenth = max(1, len(times) // 10)
  summary = {
      'status': 'ok',
      'algorithm': config.sparsity_config.algorithm,
      **test,
      'final_train_loss': record.final_train_loss,
      'params_initial': record.params_initial,
      'params_final': params_final,
      'units_initial': record.units_initial,
      'units_final': units_final,
      'neuron_sparsity': (1.0 - units_final / record.units_initial
                          if record.units_initial else 0.0),
      'param_sparsity': 1.0 - params_final / record.params_initial,
      # JaxPruner's _total_sparsity: exact zeros among the params kept
      'param_zero_fraction': zeros / max(params_final, 1),
      'flops_initial': record.flops_initial,
      'flops_final': flops_lib.forward_flops(shrinker.model, state.variables,
                                             input_shape),
      'widths_final': dict(shrinker.topology.sizes),
      'live_units_final': record.live_units,
      'train_seconds': record.train_seconds,
      'compile_seconds': compiler.seconds,
      # compiles inside the loop (after surgeries), part of train_seconds
      'recompile_seconds': sum(e.get('recompile_seconds', 0.0)
                               for e in record.events),
      'compiles': compiler.count,
      'total_seconds': total_seconds,
      'steps': config.num_steps,
      'resumed_from': start or None,
      'step_seconds_first': _median(times[:tenth]),
      'step_seconds_last': _median(times[-tenth:]),
      'pruning_events': record.events,
      'kept_history': record.kept_history,
      'evals': record.evals,
      'device': (f'{jax.device_count()} x {jax.devices()[0].device_kind} '
                 f'in {jax.process_count()} process(es)'),
      'config': config.to_dict(),
  }
  summary['step_time_ratio'] = (summary['step_seconds_last'] /
                                summary['step_seconds_first'])
  summary['shrink_overhead'] = shrink_overhead(record.events, times,
                                               record.train_seconds)
  summary['death_check_seconds'] = sum(e.get('decide_seconds', 0.0)
                                       for e in record.events)
  summary['max_shrink_overhead_fraction'] = max(
      (e['fraction'] for e in summary['shrink_overhead']), default=0.0)
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


def _median(xs):
  return float(statistics.median(xs)) if xs else float('nan')


def _progress(opts: TrainOptions, start: int, config,
              dp: parallel.DataParallel):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=opts.num_steps, initial=start,
              desc=str(config.sparsity_config.algorithm),
              disable=not (dp.process_index == 0 and opts.progress),
              mininterval=1.0, file=sys.stderr, dynamic_ncols=True)
