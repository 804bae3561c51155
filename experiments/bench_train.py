"""DemP against the dense reference: same steps, same data, time to accuracy.

    python -m experiments.bench_train --config configs/fashion_mnist_demp.py \
        --out runs/bench_train.json [--target 0.88] [--eval_every 100] \
        [--dense_margin 0.01]

Runs the config twice (``algorithm`` as configured, then ``no_prune``),
each evaluating on the test split every ``eval_every`` steps, and writes
JSON with, per run: total training wall time with compile time reported
apart, final test accuracy, the training time (steps, pruning and
compiles, evaluations excluded) at which each first reached ``target`` and
the dense run's final accuracy minus ``dense_margin``
(``time_to_dense_final``), for every physical shrink the wall time it added
(surgery, the part of the compile not hidden behind training, the swap)
against the time between its pruning event and the next, and
:func:`phases`: what bounds the pruned run's time to accuracy.

A bad command line (a config file or override, ``--eval_every`` below 1,
run directories of ``--out`` that exist: it times fresh runs) is one
``error: ...`` line and exit code 2 before anything runs.
"""
from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from demp_jax.training import loop
from demp_jax.training import validate
from experiments import train
from experiments.benchlib import machine, runtime_env



def time_to(evals: list[dict], target: float):
  for e in evals:
    if e['test_accuracy'] >= target:
      return {'step': e['step'], 'train_seconds': e['train_clock_seconds']}
  return None


def phases(summary: dict, dense_evals: list[dict]) -> dict:
  """What bounds a pruned run's time to accuracy, from its summary.

  * ``dense_phase``: the step and training clock of the first pruning event
    that removed a unit (every step before it ran at full width);
  * ``death_check_seconds`` / ``recalibrate_seconds``: the passes at the
    pruning events; ``shrink_overhead_seconds``: the wall time the shrinks
    added (:func:`demp_jax.training.loop.shrink_overhead`);
  * ``step_seconds_first`` / ``last``: median step time in the first and
    last tenth;
  * ``accuracy_dip``: the lowest test accuracy after the first evaluation
    that reached 0.5 (the penalty's dip), its step, and the dense run's
    accuracy at the same step.
  """
  units = summary['units_initial']
  first = next((e for e in summary['pruning_events']
                if sum(e.get('live_units', {}).values() or [units]) < units),
               None)
  evals = summary['evals']
  start = next((i for i, e in enumerate(evals) if e['test_accuracy'] >= 0.5),
               None)
  dip = None
  if start is not None:
    low = min(evals[start:], key=lambda e: e['test_accuracy'])
    dense_at = {e['step']: e['test_accuracy'] for e in dense_evals}
    dip = {'step': low['step'], 'test_accuracy': low['test_accuracy'],
           'dense_test_accuracy': dense_at.get(low['step'])}
  return {
      'dense_phase': None if first is None else {
          'step': first['step'], 'train_seconds': first['clock']},
      'death_check_seconds': sum(e.get('decide_seconds', 0.0)
                                 for e in summary['pruning_events']),
      'recalibrate_seconds': sum(e.get('recalibrate_seconds', 0.0)
                                 for e in summary['pruning_events']),
      'shrink_overhead_seconds': sum(e['overhead_seconds']
                                     for e in summary['shrink_overhead']),
      'step_seconds_first': summary['step_seconds_first'],
      'step_seconds_last': summary['step_seconds_last'],
      'accuracy_dip': dip,
  }


def check_command_line(config, eval_every: int, base: str,
                       algorithms) -> None:
  """Exits with one ``error: ...`` line (code 2) before anything runs on
  a config out of range, ``--eval_every`` below 1 (no time to accuracy
  without evaluations) or a run directory of ``--out`` that exists (the
  benchmark times fresh runs; it never resumes one)."""
  try:
    validate.validate_config(config)
  except validate.ConfigError as e:
    train.fail(e, train.BAD_COMMAND_LINE)
  if eval_every < 1:
    train.fail(f'--eval_every={eval_every}: must be >= 1 (the times to '
               'accuracy come from the evaluations)', train.BAD_COMMAND_LINE)
  for algorithm in algorithms:
    if os.path.exists(f'{base}_{algorithm}'):
      train.fail(f'--out: {base}_{algorithm} already exists; bench_train '
                 'times fresh runs: choose another --out or remove it',
                 train.BAD_COMMAND_LINE)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  base = os.path.splitext(os.path.abspath(_OUT.value))[0]
  algorithms = (_CONFIG.value.sparsity_config.algorithm, 'no_prune')
  check_command_line(_CONFIG.value, _EVAL_EVERY.value, base, algorithms)
  out = {'machine': machine(), 'env': runtime_env(),
         'target_accuracy': _TARGET.value, 'runs': {}}
  summaries = {}
  for algorithm in algorithms:
    config = _CONFIG.value.copy_and_resolve_references()
    config.unlock()
    config.sparsity_config.algorithm = algorithm
    config.eval_every = _EVAL_EVERY.value
    s = summaries[algorithm] = loop.train(config, f'{base}_{algorithm}')
    out['runs'][algorithm] = {
        'test_accuracy': s['test_accuracy'],
        'total_seconds': s['total_seconds'],
        'train_seconds': s['train_seconds'],
        'compile_seconds': s['compile_seconds'],
        # compiles of shrunk steps (on a background thread when
        # config.shrink_delay > 0, so not all of it is added wall time)
        'recompile_seconds': s['recompile_seconds'],
        # the wall time the shrinks added, each against its pruning interval
        'shrink_overhead_seconds': sum(
            e['overhead_seconds'] for e in s['shrink_overhead']),
        'shrink_overhead': s['shrink_overhead'],
        'max_shrink_overhead_fraction': s['max_shrink_overhead_fraction'],
        'compiles': s['compiles'],
        'neuron_sparsity': s['neuron_sparsity'],
        'flops_final': s['flops_final'],
        'time_to_target': time_to(s['evals'], _TARGET.value),
        'evals': s['evals'],
    }
  r = out['runs']
  names = list(r)
  dense = summaries['no_prune']
  out['dense_final_target'] = dense['test_accuracy'] - _DENSE_MARGIN.value
  for name, s in summaries.items():
    r[name]['time_to_dense_final'] = time_to(s['evals'],
                                             out['dense_final_target'])
  if names[0] != 'no_prune':
    r[names[0]]['phases'] = phases(summaries[names[0]], dense['evals'])
    reached = r[names[0]]['time_to_dense_final']
    out['time_to_dense_final_over_dense_train_seconds'] = (
        None if reached is None else
        reached['train_seconds'] / r['no_prune']['train_seconds'])
  out['speedup_train_seconds'] = (r['no_prune']['train_seconds'] /
                                  r[names[0]]['train_seconds'])
  with open(_OUT.value, 'w') as f:
    json.dump(out, f, indent=2)
  print(json.dumps({k: v for k, v in out.items() if k != 'runs'}, indent=2))
  for name, run in r.items():
    print(name, {k: v for k, v in run.items() if k != 'evals'})


if __name__ == '__main__':
  # flags only for the command line: the tests import this module
  # beside the other benchmarks, which define --out too
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.')
  _OUT = flags.DEFINE_string('out', None, 'Output JSON file.')
  _TARGET = flags.DEFINE_float('target', 0.88, 'Target test accuracy.')
  _EVAL_EVERY = flags.DEFINE_integer('eval_every', 100, 'Steps between evals.')
  _DENSE_MARGIN = flags.DEFINE_float(
      'dense_margin', 0.01, 'time_to_dense_final: the time to reach the dense '
      'run\'s final test accuracy minus this.')
  flags.mark_flags_as_required(['config', 'out'])
  app.run(main, flags_parser=train.parse_flags)
