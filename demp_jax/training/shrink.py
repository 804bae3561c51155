"""The shrink controller: decide, hold, shrink in the background, swap.

At a step of the updater's schedule the controller runs one pruning event:

1. **decide**: the held batches the updater's ``probe`` asks for, one
   ``decision = updater.decide(ctx)``; new masks are applied at once;
2. **hold**: the units the decision does not keep are held at exactly zero
   at once, the constant ones folded into their consumers first
   (:func:`fold_and_hold`), so the masked network computes what the shrunk
   one will; widths are rounded up to a bucket (``round_widths_to``) and the
   padding units stay masked, so most events change no array shape;
3. **start**: when the arrays do shrink, a background thread slices a host
   snapshot (:func:`demp_jax.surgery.shrink`), checks it on a probe batch
   and compiles the shrunk train step and death check
   (:func:`shrink_job`), while training goes on masked;
4. **swap**: ``shrink_delay`` steps after the decision (a fixed step, the
   same on every process and in a resumed run) the live state is sliced and
   the compiled step takes over; a checkpoint follows.

Unit masks are ``{group: bool[width]}``: ``keep`` (an updater's answer),
``live`` (the units in use over the current arrays), ``kept`` (what the
surgery keeps in the arrays: live units and bucket padding) and
``live_after`` (which kept units are live after it). Everything the cycle
must remember is in the :class:`~demp_jax.training.record.RunRecord`, the
checkpoint's meta. An exception on the background thread stops the run at
the next step with that exception; a run that ends otherwise waits for
the job (:meth:`ShrinkController.close`).
"""
from __future__ import annotations

import functools
import os
import threading
import time
from concurrent import futures
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import numpy as np

from demp_jax import buckets
from demp_jax import flops as flops_lib
from demp_jax import stats as stats_lib
from demp_jax import surgery
from demp_jax import topology as topo
from demp_jax.algorithms.base import Decision, PruneContext
from demp_jax.net import Net
from demp_jax.training import parallel
from demp_jax.training.held import Held
from demp_jax.training.record import PendingShrink, RunRecord
from demp_jax.training.steps import CompiledStep, Compiler, TrainState


def removed_constants(constants: Optional[Mapping[str, Any]],
                      live: Mapping[str, np.ndarray]) -> Optional[dict]:
  """The constant output of every unit that is not live (0 for the live
  ones and for those without a constant); None when there is nothing to
  fold."""
  if constants is None:
    return None
  out = {}
  for name, c in constants.items():
    c = np.asarray(c, np.float64)
    out[name] = np.where(~live[name] & np.isfinite(c), c, 0.0)
  return out if any(np.any(v) for v in out.values()) else None


def fold_and_hold(updater: Any, state: TrainState,
                  live: Mapping[str, np.ndarray],
                  constants: Optional[Mapping[str, Any]],
                  dp: parallel.DataParallel) -> TrainState:
  """Folds the ``constants`` of removed units into their consumers
  (:func:`demp_jax.surgery.fold_into_consumers`), then masks every unit
  that is not ``live`` (held at zero from now on) and points index maps
  (residual gathers) away from them, so the masked network computes what
  the shrunk one will."""
  # On host copies (replicated values: the same on every process), so no
  # eager op compiles for the new widths.
  variables = parallel.fetch(state.variables)
  if constants is not None:
    variables = surgery.fold_into_consumers(updater.topology, variables,
                                            constants)
  opt_state = updater.mask_units(parallel.fetch(state.opt_state),
                                 variables['params'], live)
  variables = topo.silence_units(updater.topology, variables, live)
  variables = {**variables, 'params': topo.apply_masks(variables['params'],
                                                       opt_state.masks)}
  return dp.replicate(TrainState(state.step, variables, opt_state))


class Shrunk(NamedTuple):
  """What the background job hands to the swap."""
  model: Net
  step: CompiledStep
  stats_fn: Optional[Callable]  # the death check compiled for the new widths
  info: dict                    # numbers for the event record


def shrink_job(model: Net, variables: dict, opt_state: Any,
               kept: Mapping[str, np.ndarray], *, tx: Any,
               compiler: Compiler, dp: parallel.DataParallel,
               probe: Optional[jax.Array] = None,
               reference: Optional[dict] = None,
               held_images: Optional[jax.ShapeDtypeStruct] = None,
               epsilon: float = 0.0) -> Shrunk:
  """The background part of a shrink, on host snapshots: the surgery
  (checked on ``probe`` when given), ``max_output_change`` against the
  variables before the units were held (``reference``), the shrunk train
  step's compile and, for ``held_images`` (the shape and sharding of the
  death check's batches), the death check's."""
  _lower_thread_priority()
  t0 = time.perf_counter()
  res = surgery.shrink(model, variables, kept, opt_state=opt_state, tx=tx,
                       probe=probe)
  info = {'surgery_seconds': time.perf_counter() - t0,
          'max_masked_diff': res.max_masked_diff}
  if reference is not None:
    before = surgery.eval_logits(model, reference, probe)
    after = surgery.eval_logits(res.model, res.variables, probe)
    info['max_output_change'] = float(np.max(np.abs(
        np.asarray(after) - np.asarray(before))))
  abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype,
                                     sharding=dp.replicated),
      TrainState(np.zeros([], np.int32), res.variables, res.opt_state))
  step = compiler(res.model, abstract)
  stats_fn = None
  if held_images is not None:
    t1 = time.perf_counter()
    stats_fn = stats_lib.saturation_stats.lower(
        res.model, abstract.variables, held_images, epsilon).compile()
    info['check_compile_seconds'] = time.perf_counter() - t1
  return Shrunk(res.model, step, stats_fn, info)


def _lower_thread_priority() -> None:
  """Lowest CPU priority for the calling thread (Linux; elsewhere a no-op).

  It reaches the job's Python side (surgery, tracing, lowering), not XLA's
  compile, which runs on XLA's own worker threads at their priority: on a
  2-core CPU the held steps run about 2x slower while it compiles."""
  try:
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
  except (AttributeError, OSError):
    pass


class BackgroundJob:
  """``fn()`` on a thread of its own; its result or failure is kept for the
  caller.

  Not a daemon thread: a process that ends while XLA compiles on a daemon
  thread aborts (SIGABRT in XLA's C++ runtime), so an exiting interpreter
  waits for the job instead (a compile: seconds)."""

  def __init__(self, fn: Callable[[], Any], name: str = 'shrink'):
    self._future: futures.Future = futures.Future()
    threading.Thread(target=self._run, args=(fn,), name=name).start()

  def _run(self, fn: Callable[[], Any]) -> None:
    self._future.set_running_or_notify_cancel()
    try:
      self._future.set_result(fn())
    except BaseException as e:  # pylint: disable=broad-except
      self._future.set_exception(e)

  def raise_if_failed(self) -> None:
    """Re-raises the job's exception if it has failed (does not wait)."""
    if self._future.done() and self._future.exception() is not None:
      self._future.result()

  def result(self) -> Any:
    """Waits for the job; re-raises its exception."""
    return self._future.result()

  def wait(self) -> None:
    """Waits for the job, whatever its outcome."""
    futures.wait([self._future])


def _snapshot(tree):
  """Host copies that stay valid after the device buffers are donated."""
  return jax.tree.map(lambda a: np.array(a, copy=True), parallel.fetch(tree))


class ShrinkController:
  """Runs the shrink cycle (see the module doc) for the training loop.

  It holds what a swap changes: the model, its topology, the updater (with
  that topology), the compiled train step and death check, and the
  :class:`RunRecord`. The loop calls :meth:`before_step` before every step
  and :meth:`finish` after the last; both take and return the train state.

  Args:
    model: the model at the record's widths (a :class:`demp_jax.net.Net`).
    updater: its updater.
    record: the run's record (a fresh one, or a checkpoint's).
    step: the train step compiled for ``model``.
    compiler: compiles the shrunk steps.
    draw: ``(spec, step) -> Held``: the held data of an event.
    save: ``(step, state) -> None``: writes a checkpoint (after a swap).
    clock: ``() -> float``: the training clock, for the event records.
    tx, dp: the wrapped optimiser, the data parallelism.
    view: ``(model, variables, step) -> variables`` the decisions see
      (:class:`demp_jax.training.recalibrate.EvalView`; default: the
      state's own).
    round_widths_to, shrink_delay, num_steps: the width bucket, the steps
      between a decision and its swap, the run's length.
  """

  def __init__(self, *, model: Net, updater: Any, record: RunRecord,
               step: CompiledStep, compiler: Compiler,
               draw: Callable[[Any, int], Held],
               save: Callable[[int, TrainState], None],
               clock: Callable[[], float], tx: Any,
               dp: parallel.DataParallel, round_widths_to: int,
               shrink_delay: int, num_steps: int,
               view: Callable[[Net, dict, int], dict] = (
                   lambda model, variables, step: variables)):
    self.record = record
    self.step = step
    self.stats_fn: Optional[Callable] = None
    self._compiler, self._draw, self._save = compiler, draw, save
    self._clock, self._tx, self._dp, self._view = clock, tx, dp, view
    self._round_to, self._delay, self._num_steps = (
        round_widths_to, shrink_delay, num_steps)
    self._job: Optional[BackgroundJob] = None
    self._resize(model, updater)

  def _resize(self, model: Net, updater: Any) -> None:
    """The one place where the controller's model changes."""
    self.model = model
    self.topology = model.topology
    self.updater = updater.with_topology(self.topology)

  # -------------------------------------------------------- the loop's side

  def close(self) -> None:
    """Waits for a background job still running (the run is ending, by an
    error or otherwise), so that none outlives :func:`loop.train`."""
    if self._job is not None:
      self._job.wait()

  def resume(self, state: TrainState) -> None:
    """Restarts the background job of a checkpoint's pending shrink."""
    p = self.record.pending
    if p is not None:
      self._start(p, _snapshot(state.variables), _snapshot(state.opt_state))

  def before_step(self, step: int, state: TrainState) -> TrainState:
    """The swap when it is due (else a background failure, raised); then
    the pruning event when the schedule has one."""
    if self.record.pending is not None:
      if step >= self.record.pending.swap_step:
        state = self.swap(step, state)
      else:
        self._job.raise_if_failed()
    if self.updater.schedule.is_update_step(step):
      state = self.event(step, state)
    return state

  def finish(self, num_steps: int, state: TrainState,
             trained: bool) -> TrainState:
    """After the last step: the pending swap, then the schedule's final
    event (when this run trained any step)."""
    if self.record.pending is not None:
      state = self.swap(num_steps, state)
    if trained and self.updater.schedule.at_end:
      state = self.event(num_steps, state)
    return state

  # ---------------------------------------------------------------- phases

  def event(self, step: int, state: TrainState) -> TrainState:
    """One pruning event: decide, then hold (and shrink) what goes."""
    if self.record.pending is not None:
      state = self.swap(step, state)  # decide on the network as it is
    spec = self.updater.probe
    held = self._draw(spec, step)
    t0 = time.perf_counter()
    seen = self._view(self.model, state.variables, step)
    recalibrate_seconds = time.perf_counter() - t0
    ctx = PruneContext(step, self.model, self.topology, seen,
                       state.opt_state, held.images, held.labels,
                       spec.epsilon, stats_fn=self.stats_fn)
    t0 = time.perf_counter()
    decision = self.updater.decide(ctx)
    event = {'step': step, 'decide_seconds': time.perf_counter() - t0,
             'clock': self._clock(), 'steps_before': step}
    if seen is not state.variables:
      event['recalibrate_seconds'] = recalibrate_seconds
    self.record.events.append(event)
    if decision.masks is not None:
      state = TrainState(state.step, {
          **state.variables,
          'params': topo.apply_masks(state.variables['params'],
                                     decision.masks)},
                         state.opt_state._replace(masks=decision.masks))
      event['active_params'] = flops_lib.count_active(
          decision.masks, state.variables['params'])
    event.update(decision.metrics)
    if decision.keep is None:
      return state
    return self.hold(step, state, decision, held, spec.stats, event)

  def hold(self, step: int, state: TrainState, decision: Decision,
           held: Held, reads_stats: bool, event: dict) -> TrainState:
    """Holds the units the decision removes at zero (constants folded) and,
    when the arrays shrink, starts the background job (which also compiles
    the death check for the new widths when the updater ``reads_stats``).
    Groups the decision leaves out keep their live units."""
    t0 = time.perf_counter()
    live = self.record.live
    keep = {k: v & np.asarray(decision.keep[k], bool)
            if k in decision.keep else v for k, v in live.items()}
    plan = buckets.plan(keep, self._round_to, decision.scores)
    # the variables before the hold, for max_output_change
    reference = _snapshot(state.variables) if plan.shrinks else None
    constants = removed_constants(decision.constants, keep)
    changed = any(not np.array_equal(keep[k], live[k]) for k in keep)
    self.record.live = keep
    if changed or constants or decision.masks is not None:
      # a round trip through the host: skipped when no unit changed
      state = fold_and_hold(self.updater, state, keep, constants, self._dp)
    event['folded'] = {k: int(np.count_nonzero(v))
                       for k, v in (constants or {}).items()}
    event['widths'] = dict(self.topology.sizes)
    event['live_units'] = self.record.live_units
    if plan.shrinks:
      pending = PendingShrink(min(step + self._delay, self._num_steps),
                              plan.kept, plan.live_after,
                              len(self.record.events) - 1)
      held_images = jax.ShapeDtypeStruct(
          held.images.shape, held.images.dtype, sharding=held.images.sharding)
      # the probe is this process's own images (every process holds the
      # same replicated values, so every process checks the same surgery)
      self._start(pending, _snapshot(state.variables),
                  _snapshot(state.opt_state), held.probe(), reference,
                  held_images if reads_stats else None)
    event['hold_seconds'] = time.perf_counter() - t0
    pending = self.record.pending
    if pending is not None and pending.swap_step <= step:  # shrink_delay=0
      state = self.swap(step, state)
    return state

  def _start(self, pending: PendingShrink, variables: dict, opt_state: Any,
             probe: Optional[jax.Array] = None,
             reference: Optional[dict] = None,
             held_images: Optional[jax.ShapeDtypeStruct] = None) -> None:
    """Starts the surgery and compiles of ``pending`` on the background
    thread, from host snapshots of the held state."""
    self._job = BackgroundJob(functools.partial(
        shrink_job, self.model, variables, opt_state, pending.kept,
        tx=self._tx, compiler=self._compiler,
        dp=self._dp, probe=probe, reference=reference,
        held_images=held_images, epsilon=self.updater.probe.epsilon))
    self.record.pending = pending

  def swap(self, step: int, state: TrainState) -> TrainState:
    """Slices the live state, switches to the step compiled in the
    background (waiting for it if it is not ready; its failure is raised
    here) and checkpoints."""
    p = self.record.pending
    t0 = time.perf_counter()
    shrunk = self._job.result()
    wait = time.perf_counter() - t0
    res = surgery.shrink(self.model, parallel.fetch(state.variables), p.kept,
                         opt_state=parallel.fetch(state.opt_state),
                         tx=self._tx)
    self._resize(res.model, self.updater)
    if self.topology.sizes != shrunk.model.topology.sizes:
      raise AssertionError('the background surgery and the swap disagree on '
                           'the new widths')
    self.step, self.stats_fn = shrunk.step, shrunk.stats_fn
    self.record.live = p.live_after
    state = fold_and_hold(self.updater, TrainState(
        state.step, res.variables, res.opt_state), p.live_after, None,
                          self._dp)
    jax.block_until_ready(state)
    ev = self.record.events[p.event]
    overlap = self.record.step_seconds[ev['steps_before']:]
    ev.update(shrunk.info)
    ev.update({
        'swap_step': step, 'wait_seconds': wait,
        'swap_seconds': time.perf_counter() - t0,
        'recompile_seconds': shrunk.step.seconds,
        # steps trained held (at the old widths) while the job ran
        'overlap_steps': len(overlap),
        'overlap_step_seconds': sum(overlap),
        'widths': dict(self.topology.sizes),
        'live_units': self.record.live_units})
    self.record.kept_history.append({'step': ev['step'], 'kept': {
        k: np.flatnonzero(v).tolist() for k, v in p.kept.items()}})
    self.record.pending, self._job = None, None
    self.record.widths = [int(w) for w in self.topology.sizes.values()]
    self._save(step, state)
    return state
