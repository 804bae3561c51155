"""Data parallelism: 8 simulated CPU devices, two processes with
jax.distributed on localhost, and kill-and-resume from checkpoints.

Each run is a real ``experiments.train`` subprocess on tiny real-data
settings, so the device count and the distributed runtime are fresh."""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from demp_jax.data import fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(
    not os.path.isdir(fashion_mnist.DEBIAN_DIR),
    reason='Debian package dataset-fashion-mnist not installed')

# Every unit counts as dead (epsilon huge), so at step 10 each layer keeps
# its min_width most active units: the decision depends on statistics that
# must be reduced over every device and process to agree.
TINY = ['--config=configs/fashion_mnist_demp.py:tiny',
        '--config.sparsity_config.epsilon=1e12',
        '--config.sparsity_config.min_width=4', '--config.round_widths_to=1',
        '--config.num_steps=30', '--config.log_every=1']


def _run(workdir, *args, devices=1, wait=True):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  cmd = [sys.executable, '-m', 'experiments.train', f'--workdir={workdir}',
         *TINY, *args]
  p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
  if not wait:
    return p
  out, _ = p.communicate(timeout=600)
  assert p.returncode == 0, out[-3000:]
  return json.load(open(os.path.join(workdir, 'summary.json')))


def _losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return np.array([r['loss'] for r in rows])


# Checkpoints every 2 steps change no number; the kill-and-resume test needs
# them.
CHECKPOINTS = ['--config.checkpoint_every=2']


@pytest.fixture(scope='module')
def one_device(tmp_path_factory):
  """``(workdir, summary)`` of the run on one device: the reference of every
  test here."""
  workdir = tmp_path_factory.mktemp('parallel') / 'one'
  return workdir, _run(workdir, *CHECKPOINTS, devices=1)


def test_eight_devices_decide_like_one(tmp_path, one_device):
  one_dir, one = one_device
  eight = _run(tmp_path / 'eight', devices=8)
  assert eight['device'].startswith('8 x')
  assert one['kept_history'] and one['kept_history'] == eight['kept_history']
  assert one['widths_final'] == eight['widths_final']
  np.testing.assert_allclose(_losses(tmp_path / 'eight'), _losses(one_dir),
                             rtol=2e-3, atol=2e-4)


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_train_prune_and_checkpoint_together(tmp_path,
                                                           one_device):
  port = _free_port()
  procs = [_run(tmp_path / 'multi', '--config.distributed.num_processes=2',
                f'--config.distributed.process_id={i}',
                f'--config.distributed.coordinator_address=localhost:{port}',
                devices=2, wait=False) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  multi = json.load(open(tmp_path / 'multi' / 'summary.json'))
  assert multi['device'] == '4 x cpu in 2 process(es)'
  one_dir, one = one_device
  assert multi['kept_history'] == one['kept_history']
  assert multi['widths_final'] == one['widths_final']
  np.testing.assert_allclose(_losses(tmp_path / 'multi'), _losses(one_dir),
                             rtol=2e-3, atol=2e-4)
  assert os.path.isdir(tmp_path / 'multi' / 'checkpoints' / '30')


def _final_params(workdir):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  state = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', '30', 'state'))
  return state['variables']['params']


def test_sigkill_after_a_shrink_then_resume_matches_uninterrupted(
    tmp_path, one_device):
  args = CHECKPOINTS
  work = tmp_path / 'killed'
  p = _run(work, *args, wait=False)
  kill_after = random.Random(os.getpid()).randint(14, 26)
  deadline = time.time() + 300
  metrics = work / 'metrics.jsonl'
  while time.time() < deadline and p.poll() is None:
    if metrics.exists() and sum(1 for _ in open(metrics)) > kill_after:
      p.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  p.wait()
  assert p.returncode == -signal.SIGKILL, 'the run ended before the kill'
  # every checkpoint orbax lists is complete and readable
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  steps = ocp.CheckpointManager(str(work / 'checkpoints')).all_steps()
  assert steps and max(steps) >= 10  # at least the shrink at step 10
  for s in steps:
    ocp.StandardCheckpointer().metadata(str(work / 'checkpoints' / str(s) /
                                            'state'))
  resumed = _run(work, *args, '--config.resume=True')
  assert resumed['resumed_from'] in steps
  a, b = _final_params(one_device[0]), _final_params(work)
  for x, y in zip(jax_leaves(a), jax_leaves(b)):
    np.testing.assert_array_equal(x, y)


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(tree)
