"""DemP against the dense reference: same steps, same data, time to accuracy.

    python -m experiments.bench_train --config configs/fashion_mnist_demp.py \
        --out runs/bench_train.json [--target 0.88] [--eval_every 100]

Runs the config twice (``algorithm`` as configured, then ``no_prune``),
each evaluating on the test split every ``eval_every`` steps, and writes
JSON with, per run: total training wall time with compile time reported
apart, final test accuracy, the training time (steps, pruning and
compiles, evaluations excluded) at which each first reached ``target``,
and for every physical shrink the wall time it added (surgery, the part of
the compile not hidden behind training, the swap) against the time between
its pruning event and the next.
"""
from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from demp_jax.training import loop
from experiments.benchlib import machine, runtime_env

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.')
_OUT = flags.DEFINE_string('out', None, 'Output JSON file.')
_TARGET = flags.DEFINE_float('target', 0.88, 'Target test accuracy.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 100, 'Steps between evals.')
flags.mark_flags_as_required(['config', 'out'])


def time_to(evals: list[dict], target: float):
  for e in evals:
    if e['test_accuracy'] >= target:
      return {'step': e['step'], 'train_seconds': e['train_clock_seconds']}
  return None


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  base = os.path.splitext(os.path.abspath(_OUT.value))[0]
  out = {'machine': machine(), 'env': runtime_env(),
         'target_accuracy': _TARGET.value, 'runs': {}}
  for algorithm in (_CONFIG.value.sparsity_config.algorithm, 'no_prune'):
    config = _CONFIG.value.copy_and_resolve_references()
    config.unlock()
    config.sparsity_config.algorithm = algorithm
    config.eval_every = _EVAL_EVERY.value
    s = loop.train(config, f'{base}_{algorithm}')
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
  out['speedup_train_seconds'] = (r['no_prune']['train_seconds'] /
                                  r[names[0]]['train_seconds'])
  with open(_OUT.value, 'w') as f:
    json.dump(out, f, indent=2)
  print(json.dumps({k: v for k, v in out.items() if k != 'runs'}, indent=2))
  for name, run in r.items():
    print(name, {k: v for k, v in run.items() if k != 'evals'})


if __name__ == '__main__':
  app.run(main)
