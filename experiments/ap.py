"""Iterative pruning with rewinding (AP or a base pruner alone); writes
WORKDIR/summary.json with one record per round.

    python -m experiments.ap --config configs/fashion_mnist_ap.py \
        --workdir runs/ap [--config.a.b=value ...]

The command line is experiments.train's (its --config and --workdir flags,
and their one-line errors); the job is the rounds of
:func:`demp_jax.training.cycles.run_cycles`.
"""
from absl import app
from absl import flags
from absl import logging

from demp_jax.training import cycles
from experiments import train

FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    summary = cycles.run_cycles(FLAGS.config, FLAGS.workdir)
  except train.run_errors() as e:
    train.fail(e, train.RUN_FAILED)
  print(f'\nsummary ({FLAGS.workdir}/summary.json): '
        f'{summary["algorithm"]} base={summary["base"]} '
        f'ap_rate={summary["ap_rate"]}')
  print('round  sparsity  test_acc  dyn_dead_rate  dyn_dead_rate_live  '
        'dead_units')
  for r in summary['rounds']:
    print(f'{r["round"]:>5}  {r["weight_sparsity"]:8.4f}  '
          f'{r["test_accuracy"]:8.4f}  {r["dynamic_dead_rate"]:13.4f}  '
          f'{r["dynamic_dead_rate_live"]:18.4f}  {r["dead_units"]:>10}')


if __name__ == '__main__':
  train.define_flags()
  app.run(main, flags_parser=train.parse_flags)
