"""Checkpointer.restore_latest on real orbax checkpoints of a real Flax
model and optax state: damaged steps are named, the newest good one is
used, and no file of a good step is touched or deleted."""
import glob
import hashlib
import os
import shutil

import jax
import numpy as np
import optax
import pytest

from demp_jax import models
from demp_jax.training import checkpoint as ckpt_lib

TX = optax.adam(1e-3)


def make_state(width: int, seed: int):
  model = models.MLP(widths=(width,), num_classes=3, use_bn=False)
  variables = model.init(jax.random.PRNGKey(seed), np.zeros((1, 20)))
  params = variables['params']
  return {'params': params, 'opt': TX.init(params)}


def build_abstract(meta):
  """What the loop does: the target at the checkpoint's own widths."""
  return jax.eval_shape(lambda: make_state(meta['width'], 0))


def save_run(directory, widths_by_step, max_to_keep=3):
  """Saves a state of the given width at each step; returns the states."""
  ckpt = ckpt_lib.Checkpointer(directory, max_to_keep=max_to_keep)
  states = {}
  for step, width in widths_by_step.items():
    states[step] = make_state(width, seed=step)
    ckpt.save(step, states[step], {'step': step, 'width': width})
  ckpt.close()
  return states


def digest(directory):
  """``{relative path: sha256}`` of every file under ``directory``."""
  out = {}
  for path in glob.glob(os.path.join(directory, '**'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(
            f.read()).hexdigest()
  return out


def assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _largest_array_file(step_dir):
  files = glob.glob(os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd',
                                 '*'))
  return max(files, key=os.path.getsize)


def _overwrite(path, offset=100, n=16):
  with open(path, 'r+b') as f:
    f.seek(offset)
    f.write(b'\xff' * n)
  return path


def _truncate(path):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 3])
  return path


DAMAGE = {
    # the case: one metadata file of the latest step overwritten
    'state_metadata': (lambda d: _overwrite(os.path.join(d, 'state',
                                                         '_METADATA')),
                       lambda d: os.path.join(d, 'state', '_METADATA') +
                       ' is corrupt (UnicodeDecodeError'),
    'meta_json': (lambda d: _overwrite(os.path.join(d, 'meta', 'metadata'), 2),
                  lambda d: os.path.join(d, 'meta', 'metadata') +
                  ' is corrupt'),
    'truncated_array_file': (lambda d: _truncate(_largest_array_file(d)),
                             lambda d: os.path.join(d, 'state') + ' (array '),
    'overwritten_array_bytes': (  # orbax reads these without complaint
        lambda d: _overwrite(_largest_array_file(d), 300, 200),
        lambda d: os.path.join(d, 'state') + ': ValueError: array '),
    'directory_deleted_half_way': (
        lambda d: shutil.rmtree(os.path.join(d, 'state', 'ocdbt.process_0')),
        lambda d: os.path.join(d, 'state') + ' (array '),
    'item_deleted': (lambda d: shutil.rmtree(os.path.join(d, 'state')),
                     lambda d: os.path.join(d, 'state') + ' is missing'),
}


@pytest.mark.parametrize('case', sorted(DAMAGE))
def test_a_damaged_latest_step_falls_back_to_the_previous_one(tmp_path,
                                                              capsys, case):
  directory = str(tmp_path / 'checkpoints')
  # the run shrank between the two steps: step 10 is 64 wide, step 20 is 48
  states = save_run(directory, {10: 64, 20: 48})
  good = digest(os.path.join(directory, '10'))
  damage, where = DAMAGE[case]
  latest = os.path.join(directory, '20')
  damage(latest)
  damaged = digest(latest)

  ckpt = ckpt_lib.Checkpointer(directory)
  restored = ckpt.restore_latest(build_abstract)
  assert restored.step == 10 and restored.meta == {'step': 10, 'width': 64}
  assert_same(restored.state, states[10])
  err = capsys.readouterr().err
  assert f'checkpoint: step 20 does not restore: {where(latest)}' in err
  moved = directory + '.corrupt/20'
  assert (f'resuming from step 10, the newest checkpoint that restores; the '
          f'damaged newer step(s) were moved to {moved}') in err
  # nothing deleted: the good step as it was, the damaged one set aside
  assert digest(os.path.join(directory, '10')) == good
  assert digest(moved) == damaged
  assert ckpt.all_steps() == [10]
  ckpt.close()


def test_with_no_step_that_restores_nothing_moves(tmp_path, capsys):
  directory = str(tmp_path / 'checkpoints')
  save_run(directory, {10: 64, 20: 64})
  _overwrite(os.path.join(directory, '10', 'state', '_METADATA'))
  _truncate(_largest_array_file(os.path.join(directory, '20')))
  before = digest(directory)
  ckpt = ckpt_lib.Checkpointer(directory)
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    ckpt.restore_latest(build_abstract)
  msg = str(e.value)
  assert msg.startswith(f'no checkpoint in {directory} restores (nothing was '
                        'moved or deleted): step 20: ')
  assert f'; step 10: {directory}/10/state/_METADATA is corrupt' in msg
  assert digest(directory) == before
  assert not os.path.exists(directory + '.corrupt')
  assert capsys.readouterr().err == ''  # the error is the one report
  ckpt.close()


def test_later_saves_keep_the_good_step_while_newer_ones_are_damaged(
    tmp_path):
  # max_to_keep=2 with two damaged steps newer than the good one: left in
  # place, they would be the two orbax keeps, so it would delete step 10
  # and then every step the resumed run saves.
  directory = str(tmp_path / 'checkpoints')
  states = save_run(directory, {10: 64, 20: 64, 30: 64}, max_to_keep=3)
  for step in (20, 30):
    _overwrite(os.path.join(directory, str(step), 'state', '_METADATA'))
  ckpt = ckpt_lib.Checkpointer(directory, max_to_keep=2)
  assert ckpt.restore_latest(build_abstract).step == 10
  ckpt.save(15, states[10], {'step': 15, 'width': 64})
  assert ckpt.all_steps() == [10, 15]
  ckpt.save(16, states[10], {'step': 16, 'width': 64})
  assert ckpt.all_steps() == [15, 16]
  ckpt.close()
  ckpt = ckpt_lib.Checkpointer(directory, max_to_keep=2)
  assert ckpt.restore_latest(build_abstract).step == 16
  ckpt.close()
  assert sorted(os.listdir(directory + '.corrupt')) == ['20', '30']


def test_a_half_written_save_is_ignored_and_left_alone(tmp_path, capsys):
  directory = str(tmp_path / 'checkpoints')
  states = save_run(directory, {10: 64})
  # what a save cut short leaves: orbax's temporary directory
  tmp = os.path.join(directory, '20.orbax-checkpoint-tmp-1234567')
  shutil.copytree(os.path.join(directory, '10', 'meta'),
                  os.path.join(tmp, 'meta'))
  ckpt = ckpt_lib.Checkpointer(directory)
  restored = ckpt.restore_latest(build_abstract)
  assert restored.step == 10
  assert_same(restored.state, states[10])
  assert capsys.readouterr().err == ''
  assert os.path.isdir(os.path.join(tmp, 'meta'))
  ckpt.close()


def test_an_empty_directory_restores_nothing(tmp_path, capsys):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / 'checkpoints'))
  assert ckpt.restore_latest(build_abstract) is None
  assert capsys.readouterr().err == ''
  ckpt.close()


def test_an_unsavable_array_fails_fast_and_the_process_exits(tmp_path):
  # orbax 0.12.8 fails on a zero-size array inside its save, and a thread it
  # started then blocks the interpreter's exit; the check before orbax
  # names the array and the process ends.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = (
      'import sys, jax.numpy as jnp\n'
      'from demp_jax.training.checkpoint import Checkpointer\n'
      f'c = Checkpointer({str(tmp_path / "ck")!r})\n'
      'try:\n'
      "  c.save(1, {'w': jnp.zeros((3, 0)), 'b': jnp.ones(2)}, {})\n"
      'except ValueError as e:\n'
      '  print(e)\n'
      '  sys.exit(7)\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, timeout=120, cwd=root,
                       env={**os.environ, 'PYTHONPATH': root})
  assert out.returncode == 7, out.stderr[-2000:]
  assert "['w'] has shape (3, 0)" in out.stdout
