"""A workdir belongs to one run: its outputs' places, one process at a
time, and resumes only under the run's own settings."""
import os
import subprocess
import sys
import time

import ml_collections
import pytest

from demp_jax.training import workdir


def test_what_stands_where_the_run_writes_is_named(tmp_path):
  workdir.check_outputs(str(tmp_path / 'not_yet'))  # a new workdir passes
  workdir.check_outputs(str(tmp_path))
  (tmp_path / 'metrics.csv').mkdir()
  with pytest.raises(IsADirectoryError, match='metrics.csv is a directory'):
    workdir.check_outputs(str(tmp_path))
  (tmp_path / 'metrics.csv').rmdir()
  (tmp_path / 'tensorboard').write_text('x')
  with pytest.raises(NotADirectoryError, match='tensorboard is a file'):
    workdir.check_outputs(str(tmp_path))


def test_one_run_at_a_time_and_no_stale_lock(tmp_path):
  d = str(tmp_path)
  with workdir.exclusive(d):
    with pytest.raises(BlockingIOError, match='is in use'):
      with workdir.exclusive(d):
        pass
    with workdir.exclusive(d, enabled=False):  # another host's process
      pass
  with workdir.exclusive(d):  # released
    pass
  assert os.listdir(d) == []  # the lock adds no file
  # a process that holds it and is killed leaves it free
  holder = subprocess.Popen([sys.executable, '-c', (
      'import sys, time; from demp_jax.training import workdir\n'
      f'with workdir.exclusive({d!r}):\n'
      '  print("held", flush=True); time.sleep(60)')],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    t0 = time.perf_counter()
    with pytest.raises(BlockingIOError):
      with workdir.exclusive(d):
        pass
    assert time.perf_counter() - t0 < 1  # at once, never a wait
  finally:
    holder.kill()
    holder.wait()
  with workdir.exclusive(d):
    pass


def _config(**model):
  c = ml_collections.ConfigDict({
      'seed': 0, 'batch_size': 8, 'num_steps': 10, 'eval_every': 5,
      'dataset': {'name': 'fashion_mnist', 'data_dir': '/a'},
      'model': {'name': 'vgg', 'conv_widths': (8, 16), **model},
      'optimizer': {'name': 'adamw', 'learning_rate': 1e-3},
      'sparsity_config': {'algorithm': 'demp', 'reg_peak': 0.01}})
  return c


def test_a_resume_under_another_runs_settings_is_refused():
  saved = {'run_config': workdir.run_identity(_config())}
  # tuples come back from JSON as lists: the same run
  workdir.check_same_run(workdir.run_identity(_config()), saved, 4, 'ckpts')
  other = _config()  # settings that may change on a resume
  other.num_steps, other.eval_every, other.seed = 20, 2, 5
  other.optimizer.learning_rate = 1e-4
  other.sparsity_config.reg_peak = 0.1
  other.dataset.data_dir = '/moved'
  workdir.check_same_run(workdir.run_identity(other), saved, 4, 'ckpts')
  wider = workdir.run_identity(_config(conv_widths=(16, 32)))
  with pytest.raises(ValueError) as e:
    workdir.check_same_run(wider, saved, 4, 'ckpts')
  assert str(e.value) == (
      'config.resume: ckpts holds checkpoints of another run: '
      'config.model.conv_widths is [16, 32] here and [8, 16] in the run of '
      "step 4; resume with that run's settings or use a new workdir")
  several = _config()
  several.sparsity_config.algorithm = 'no_prune'
  several.optimizer.name = 'sgd'
  with pytest.raises(ValueError, match=r"config.optimizer.name is 'sgd' here "
                     r"and 'adamw' .*\(and 1 more: "
                     r'sparsity_config.algorithm\)'):
    workdir.check_same_run(workdir.run_identity(several), saved, 4, 'ckpts')
  # a key on one side only (a later library's setting), an older
  # checkpoint without an identity: both pass
  newer = _config()
  newer.model.new_setting = 1
  workdir.check_same_run(workdir.run_identity(newer), saved, 4, 'ckpts')
  workdir.check_same_run(wider, {'run': {}}, 4, 'ckpts')
