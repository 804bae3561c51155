"""Iterative pruning with rewinding: rounds of train -> prune -> rewind.

``run_cycles(config, workdir)`` runs ``R = config.cycles.rounds`` pruning
rounds after a dense round 0 and writes ``workdir/summary.json``. Round
``r`` (with masks ``m`` and start point ``theta_0 = theta_start ⊙ m``):

1. a fresh optimiser state (``tx.init``: no moment survives a round) and
   ``steps_per_round`` training steps from ``theta_0`` to ``theta_T``; the
   learning-rate schedule spans one round;
2. test accuracy, sparsity and the dynamic dead-neuron rate of
   ``theta_T`` are recorded (:func:`demp_jax.stats.dead_rates`);
3. unless it is the last round, the updater prunes ``prune_rate`` of what
   remains (its ``prune_round``: AP = base + AP selection; or a base pruner
   alone), given ``theta_T`` and ``theta_0``;
4. the weights rewind: ``theta_start`` is the dense initialisation
   (``rewind='init'``, lottery-ticket rewinding, the same ``theta_0 ⊙ m``
   the round started from) or a fresh random initialisation
   (``rewind='reinit'``, the AP code's default).

Masks are strict throughout (the updater's ``wrap_optax`` and
``post_gradient_update``), so pruned weights stay exactly 0. The shapes
never change, so the train step compiles once.

``config`` is a training config (``seed``, ``batch_size``,
``eval_batch_size``, ``label_smoothing``, ``dataset``, ``model``,
``optimizer``, ``sparsity_config``, ``progress``) plus ``config.cycles``:

* ``rounds``: pruning rounds ``R`` (``R + 1`` trainings).
* ``steps_per_round``: training steps per round.
* ``prune_rate``: ``p``, the fraction of the remaining items pruned per
  round (0.2: ``1 - 0.8^R`` of the weights after ``R`` rounds).
* ``rewind``: ``'init'`` or ``'reinit'``.
* ``probe_batches``, ``probe_batch_size``: the held batches of the base's
  decision (data-driven bases such as SNAP) and of the dead-rate probe.
* ``score_split``: where the decision batches come from (``'train'``,
  un-augmented; or ``'holdout'``).
* ``dnr_split``: where the dead rates are measured (``'test'``,
  ``'holdout'`` or ``'train'``); a diagnostic, AP never reads it.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from demp_jax import flops as flops_lib
from demp_jax import stats as stats_lib
from demp_jax import topology as topo
from demp_jax.algorithms import scores
from demp_jax.algorithms.base import ProbeSpec, PruneContext
from demp_jax.data import train_batches
from demp_jax.training import held as held_lib
from demp_jax.training import metrics as metrics_lib
from demp_jax.training import parallel
from demp_jax.training import workdir as workdir_lib
from demp_jax.training.loop import build, evaluate, make_step
from demp_jax.training.options import require
from demp_jax.training.steps import TrainState

REWIND = ('init', 'reinit')


def weight_sparsity(masks: Any, params: Any) -> float:
  """Fraction of the kernel entries (leaves with ``ndim > 1``) masked; a
  kernel without a mask counts as dense."""
  ones, total = 0, 0
  pl = jax.tree_util.tree_flatten_with_path(params)[0]
  ml = dict((topo.key_path(p), m) for p, m in
            jax.tree_util.tree_flatten_with_path(
                masks, is_leaf=lambda x: x is None)[0])
  for path, p in pl:
    if np.ndim(p) < 2:
      continue
    m = ml.get(topo.key_path(path))
    total += int(np.size(p))
    ones += int(np.size(p)) if m is None else int(np.sum(np.asarray(m)))
  return 1.0 - ones / max(total, 1)


def start_round(tx, start: dict, masks: Any,
                dp: parallel.DataParallel | None = None
                ) -> tuple[TrainState, dict]:
  """The rewind: ``(train state, theta_0)`` for a round from the variables
  ``start`` under ``masks``.

  ``theta_0 = start ⊙ m`` (params masked; other collections as they are);
  the train state holds a copy of it (the train step donates its state),
  step 0 and a fresh optimiser state ``tx.init(theta_0)`` with the masks:
  no moment or count from an earlier round survives. With ``dp`` the state
  is replicated over its devices.
  """
  theta0 = {**start, 'params': topo.apply_masks(start['params'], masks)}
  opt_state = tx.init(theta0['params'])._replace(masks=masks)
  state = TrainState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.copy, theta0),
                     opt_state)
  return (state if dp is None else dp.replicate(state)), theta0


def run_cycles(config, workdir: str) -> dict:
  """Runs the configured rounds; returns the summary it writes to
  ``workdir/summary.json``."""
  parallel.maybe_initialize_distributed(config)
  dp = parallel.DataParallel()
  workdir_lib.check_outputs(workdir)
  os.makedirs(workdir, exist_ok=True)
  t_start = time.perf_counter()
  opts = require(config, ('seed', 'batch_size', 'eval_batch_size',
                          'label_smoothing', 'progress'))
  cyc = config.cycles
  rounds = int(cyc.rounds)
  steps = int(cyc.steps_per_round)
  rate = float(cyc.prune_rate)
  rewind = str(cyc.get('rewind', 'init'))
  if rounds < 0 or steps < 1:
    raise ValueError(f'config.cycles needs rounds >= 0 and steps_per_round '
                     f'>= 1, got {rounds} and {steps}')
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'config.cycles.prune_rate must be in [0, 1), got {rate}')
  if rewind not in REWIND:
    raise ValueError(f'config.cycles.rewind={rewind!r}; use one of {REWIND}')
  setup = build(config, steps)  # the learning rate spans one round
  splits, model, updater, tx = (setup.splits, setup.model, setup.updater,
                                setup.tx)
  if updater.granularity is None:
    raise ValueError(
        f'sparsity_config.algorithm={config.sparsity_config.algorithm!r} '
        'does not prune in rounds: use "ap", an unstructured pruner (e.g. '
        '"global_magnitude") or a structured one (e.g. '
        '"structured_magnitude")')
  seed = int(opts['seed'])
  step_fn = jax.jit(make_step(setup, float(opts['label_smoothing']))(model),
                    donate_argnums=0)
  sources = {what: held_lib.split_source(splits, str(cyc.get(what, default)),
                                         f'config.cycles.{what}')
             for what, default in (('score_split', 'train'),
                                   ('dnr_split', 'test'))}
  probe = ProbeSpec(int(cyc.probe_batches), int(cyc.probe_batch_size))

  def held(what: str, s: int) -> held_lib.Held:
    return held_lib.draw_held(sources[what], probe.batches, probe.batch_size,
                              s, dp, splits.mean, splits.std)

  dnr_images = held('dnr_split', seed + 17).images
  dp.check_batch(int(opts['batch_size']), 'config.batch_size')
  batches = train_batches(splits.train, int(opts['batch_size']), seed, 0,
                          dp.process_index, dp.process_count)
  key = jax.random.PRNGKey(seed + 1)
  eval_bs = int(opts['eval_batch_size'])

  masks = updater.get_initial_masks(setup.variables['params'])
  start = setup.variables
  records = []
  step = 0
  for r in range(rounds + 1):
    state, theta0 = start_round(tx, start, masks, dp)
    t0 = time.perf_counter()
    for _ in range(steps):
      images, labels = dp.shard_batch(next(batches))
      state, metrics = step_fn(state, images, labels,
                               jax.random.fold_in(key, step))
      step += 1
    loss = float(metrics['loss'])
    masks = state.opt_state.masks  # the state (and its masks) was donated
    train_seconds = time.perf_counter() - t0
    test = evaluate(model, state.variables, splits.test, eval_bs,
                    splits.mean, splits.std, dp)
    live = scores.live_units(setup.topology, state.opt_state)
    rates = stats_lib.dead_rates(model, state.variables, dnr_images, live)
    params = state.variables['params']
    rec = {'round': r,
           'weight_sparsity': weight_sparsity(masks, params),
           'param_sparsity': 1.0 - flops_lib.count_active(masks, params) /
                             flops_lib.count_params(params),
           'live_units': int(sum(int(v.sum()) for v in live.values())),
           'test_accuracy': test['accuracy'], 'test_loss': test['loss'],
           'final_train_loss': loss, **rates._asdict(),
           'max_masked_abs': _max_masked(params, masks),
           'train_seconds': train_seconds}
    if r < rounds:
      h = held('score_split', seed * 1_000_003 + r)
      ctx = PruneContext(step, model, setup.topology, state.variables,
                         state.opt_state, h.images, h.labels)
      t1 = time.perf_counter()
      masks, info = updater.prune_round(ctx, masks, rate,
                                        start_params=theta0['params'])
      rec['prune'] = {**info, 'seconds': time.perf_counter() - t1}
      if rewind == 'reinit':
        start = model.init(seed + 1000 * (r + 1))
    records.append(rec)
    if opts['progress'] and dp.process_index == 0:
      print(f'round {r}: sparsity {rec["weight_sparsity"]:.4f} test acc '
            f'{rec["test_accuracy"]:.4f} dynamic dead rate '
            f'{rec["dynamic_dead_rate"]:.4f} (live units '
            f'{rec["dynamic_dead_rate_live"]:.4f}) dead units '
            f'{rec["dead_units"]}', file=sys.stderr, flush=True)

  sconf = config.sparsity_config
  summary = {
      'status': 'ok',
      'algorithm': sconf.algorithm,
      'base': sconf.get('base') if sconf.algorithm == 'ap' else None,
      'ap_rate': float(getattr(updater, 'ap_rate', 0.0)),
      'prune_rate': rate,
      'rewind': rewind,
      'rounds': records,
      'final': records[-1],
      'total_seconds': time.perf_counter() - t_start,
      'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      'config': config.to_dict(),
  }
  parallel.on_main(metrics_lib.write_json,
                   os.path.join(workdir, 'summary.json'), summary)
  return summary


def _max_masked(params: Any, masks: Any) -> float:
  """``max |w|`` over masked entries: 0.0 when the masks held."""
  vals = jax.tree.map(
      lambda m, p: 0.0 if m is None else float(
          jnp.max(jnp.abs(p) * (1 - m.astype(p.dtype)), initial=0.0)),
      masks, params, is_leaf=lambda x: x is None)
  return max([0.0] + [float(v) for v in jax.tree.leaves(vals)])
