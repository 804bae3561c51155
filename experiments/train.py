"""Trains one configured job and writes WORKDIR/summary.json.

    python -m experiments.train --config configs/fashion_mnist_demp.py \
        --workdir runs/demo [--config.a.b=value ...]

A mistake on the command line (a config file that is missing, does not
parse or raises, an unknown or invalid override, a config value out of its
range, a workdir that is a file or cannot be written) is one ``error: ...``
line on stderr and exit code 2, before anything is loaded, compiled or
written. A run that fails (a data file, a non-finite loss, no checkpoint
that restores, another run's checkpoints) is one line and exit code 1;
an interrupted one (Ctrl-C) says where it can resume, exit code 130.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from typing import NoReturn, Optional

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from demp_jax.training import validate
from demp_jax.training import workdir as workdir_lib

BAD_COMMAND_LINE, RUN_FAILED, INTERRUPTED = 2, 1, 130

SHOWN = ('test_accuracy', 'neuron_sparsity', 'param_sparsity', 'units_initial',
         'units_final', 'params_initial', 'params_final', 'flops_initial',
         'flops_final', 'step_seconds_first', 'step_seconds_last',
         'step_time_ratio', 'train_seconds', 'compile_seconds', 'compiles')


def fail(message: object, code: int) -> NoReturn:
  """Prints ``error: message`` on one line of stderr and exits."""
  print('error: ' + ' '.join(str(message).split()), file=sys.stderr)
  sys.exit(code)


def run_errors() -> tuple[type[BaseException], ...]:
  """The failures of a run that its message says in one line: a data file,
  a non-finite loss, no checkpoint that restores, a shrink that fails its
  probe check; each names its file, step or model."""
  # pylint: disable=g-import-not-at-top
  from demp_jax import surgery
  from demp_jax.training import checkpoint, loop
  return (loop.NonFiniteLossError, checkpoint.CheckpointError, OSError,
          EOFError, ValueError, ImportError, surgery.SurgeryError)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  try:
    validate.validate_config(config)
  except validate.ConfigError as e:
    fail(e, BAD_COMMAND_LINE)
  created = prepare_workdir(workdir)
  from demp_jax.training import loop  # pylint: disable=g-import-not-at-top
  try:
    summary = loop.train(config, workdir)
  except run_errors() as e:
    if created:
      _remove_if_empty(workdir)
    fail(e, RUN_FAILED)
  except KeyboardInterrupt:
    # an interrupted orbax save leaves async work that complains at exit
    # ("Event loop is closed"); the line below says all there is to say
    sys.unraisablehook = lambda _: None
    fail(f'interrupted; {last_checkpoint(workdir)}', INTERRUPTED)
  width = max(map(len, SHOWN))
  print(f'\nsummary ({workdir}/summary.json):')
  for k in SHOWN:
    v = summary[k]
    print(f'  {k:<{width}}  {v:.4g}' if isinstance(v, float) else
          f'  {k:<{width}}  {v}')
  print('  widths_final'.ljust(width + 2), ' ', json.dumps(
      summary['widths_final']))


def prepare_workdir(path: str) -> bool:
  """Makes ``path`` a directory this process can write to, or exits with
  one line; True when it was created here."""
  if os.path.exists(path) and not os.path.isdir(path):
    fail(f'--workdir={path} is an existing file, not a directory',
         BAD_COMMAND_LINE)
  try:
    workdir_lib.check_outputs(path)
  except OSError as e:
    fail(f'--workdir={path}: {e}', BAD_COMMAND_LINE)
  created = not os.path.exists(path)
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    if created:
      _remove_if_empty(path)
    fail(f'--workdir={path} cannot be written: {e.strerror or e}',
         BAD_COMMAND_LINE)
  return created


def last_checkpoint(workdir: str) -> str:
  """Where an interrupted run can resume from, in words."""
  directory = os.path.join(workdir, 'checkpoints')
  steps = sorted(int(d) for d in (os.listdir(directory) if os.path.isdir(
      directory) else []) if d.isdigit())
  if not steps:
    return 'no checkpoint was written'
  return (f'the last checkpoint is step {steps[-1]} in {directory} '
          '(--config.resume=True continues from it)')


def _remove_if_empty(path: str) -> None:
  try:
    os.rmdir(path)
  except OSError:
    pass


def parse_flags(argv):
  """absl flag parsing; every error one ``error: ...`` line (exit 2)."""
  path = _config_path(argv)
  if path is not None:
    check_config_file(path)
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    root = _root_cause(e)
    if path is not None and _raised_in(root, path):
      fail(f'config file {path}: {type(root).__name__}: {root}',
           BAD_COMMAND_LINE)
    fail(f'bad command line: {_flag_message(e)}', BAD_COMMAND_LINE)
  config = flags.FLAGS.config
  if not isinstance(config, ml_collections.ConfigDict):
    try:
      config.get('seed')  # config_flags defers a file's load errors to here
      what = f'get_config() returned {type(config).__name__}'
    except Exception as e:  # pylint: disable=broad-except
      what = str(_root_cause(e)).splitlines()[-1].strip()
    fail(f'config file {path}: {what}, not an ml_collections.ConfigDict',
         BAD_COMMAND_LINE)
  return rest


def _config_path(argv) -> Optional[str]:
  """The file part of ``--config=FILE[:STRING]`` in ``argv`` (None if
  absent)."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg[len('--config='):].split(':', 1)[0]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1].split(':', 1)[0]
  return None


def check_config_file(path: str) -> None:
  """A config file that exists, is a file and parses as Python; its
  ``get_config`` runs later, in absl's flag parsing."""
  if not os.path.exists(path):
    fail(f'config file {path}: no such file', BAD_COMMAND_LINE)
  if not os.path.isfile(path):
    fail(f'config file {path}: not a file', BAD_COMMAND_LINE)
  try:
    with open(path, 'rb') as f:
      compile(f.read(), path, 'exec')
  except SyntaxError as e:
    fail(f'config file {path}: syntax error at line {e.lineno}: {e.msg}',
         BAD_COMMAND_LINE)
  except (OSError, ValueError) as e:
    fail(f'config file {path}: cannot be read: {e}', BAD_COMMAND_LINE)


def _root_cause(e: BaseException) -> BaseException:
  seen = set()
  while id(e) not in seen and (e.__cause__ or e.__context__) is not None:
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return e


def _raised_in(e: BaseException, path: str) -> bool:
  """Whether ``e`` was raised while running the file ``path``."""
  where = os.path.abspath(path)
  return any(os.path.abspath(frame.filename) == where
             for frame in traceback.extract_tb(e.__traceback__))


def _flag_message(e: BaseException) -> str:
  """An override error's own words (absl and ml_collections nest them)."""
  unknown = isinstance(e, (AttributeError, KeyError))
  msg: object = e
  while isinstance(msg, BaseException) and msg.args:
    msg = msg.args[0]
  return f'unknown config override {msg}' if unknown else str(msg)


def define_flags() -> None:
  """``--config`` and ``--workdir`` on absl's flags: called by a script's
  ``__main__`` only (this one and experiments.ap), so that the experiment
  modules import together, each defining ``--config`` only when run."""
  config_flags.DEFINE_config_file('config', None, 'Config file.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Output directory.')
  flags.mark_flags_as_required(['config', 'workdir'])


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
