"""Trains one configured job and writes WORKDIR/summary.json.

    python -m experiments.train --config configs/fashion_mnist_demp.py \
        --workdir runs/demo [--config.a.b=value ...]
"""
import json
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from demp_jax.training import loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.')
flags.mark_flags_as_required(['config', 'workdir'])

SHOWN = ('test_accuracy', 'neuron_sparsity', 'param_sparsity', 'units_initial',
         'units_final', 'params_initial', 'params_final', 'flops_initial',
         'flops_final', 'step_seconds_first', 'step_seconds_last',
         'step_time_ratio', 'train_seconds', 'compile_seconds', 'compiles')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    summary = loop.train(_CONFIG.value, _WORKDIR.value)
  except (loop.NonFiniteLossError, FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  width = max(map(len, SHOWN))
  print(f'\nsummary ({_WORKDIR.value}/summary.json):')
  for k in SHOWN:
    v = summary[k]
    print(f'  {k:<{width}}  {v:.4g}' if isinstance(v, float) else
          f'  {k:<{width}}  {v}')
  print('  widths_final'.ljust(width + 2), ' ', json.dumps(
      summary['widths_final']))


def parse_flags(argv):
  """absl flag parsing, with config override errors on one line."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    msg = e
    while isinstance(msg, BaseException) and msg.args:
      msg = msg.args[0]
    print(f'error: bad command line: unknown or invalid config override '
          f'{msg}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
