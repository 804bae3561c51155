"""The trainer end to end on tiny real-data settings, and its failures."""
import json
import math
import os
import subprocess
import sys

import pytest

from demp_jax.data import fashion_mnist
from demp_jax.training import loop
from demp_jax.training import shrink

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_fmnist = pytest.mark.skipif(
    not os.path.isdir(fashion_mnist.DEBIAN_DIR),
    reason='Debian package dataset-fashion-mnist not installed')

SUMMARY_KEYS = {
    'test_accuracy', 'params_initial', 'params_final', 'units_initial',
    'units_final', 'neuron_sparsity', 'param_sparsity', 'flops_initial',
    'flops_final', 'train_seconds', 'compile_seconds', 'compiles', 'steps',
    'pruning_events', 'step_seconds_first', 'step_seconds_last', 'config'}


def tiny(**overrides):
  sys.path.insert(0, ROOT)
  from configs import fashion_mnist_demp  # pylint: disable=g-import-not-at-top
  c = fashion_mnist_demp.get_config('tiny')
  for k, v in overrides.items():
    node = c
    *path, last = k.split('.')
    for p in path:
      node = node[p]
    node[last] = v
  return c


@needs_fmnist
def test_demp_prunes_shrinks_and_writes_the_summary(tmp_path):
  # epsilon huge: every unit counts as dead, so the loop must keep
  # min_width units per layer through real surgery and recompiles.
  c = tiny(**{'sparsity_config.epsilon': 1e12, 'sparsity_config.min_width': 3,
              'round_widths_to': 1, 'num_steps': 25})
  s = loop.train(c, str(tmp_path))
  assert SUMMARY_KEYS <= set(s)
  on_disk = json.load(open(tmp_path / 'summary.json'))
  assert on_disk['units_final'] == s['units_final'] == 9
  assert s['widths_final'] == {'conv_0': 3, 'conv_1': 3, 'dense_0': 3}
  assert s['neuron_sparsity'] == pytest.approx(1 - 9 / 56)
  assert s['params_final'] < s['params_initial']
  assert s['flops_final'] < s['flops_initial']
  shrink_events = [e for e in s['pruning_events'] if 'surgery_seconds' in e]
  assert len(shrink_events) == 1 and shrink_events[0]['step'] == 10
  assert shrink_events[0]['max_masked_diff'] <= 1e-5
  # the death check for the new widths is compiled with the shrunk step
  assert shrink_events[0]['check_compile_seconds'] > 0
  assert s['compiles'] == 2  # the first compile and one after the surgery
  assert 0 <= s['test_accuracy'] <= 1
  assert os.path.isdir(tmp_path / 'checkpoints' / '25')


@needs_fmnist
def test_pruning_events_and_evaluations_read_one_training_clock(tmp_path):
  # Evaluations are excluded from the training clock; a pruning event's
  # clock must exclude them too, or phases and shrink intervals computed
  # from events disagree with the evaluations' times (time to accuracy).
  # In the order things happen (the evaluation after step N-1, then the
  # event before step N) the clock never goes back.
  s = loop.train(tiny(**{'eval_every': 5, 'num_steps': 30}), str(tmp_path))
  marks = sorted([(e['step'], 0, e['train_clock_seconds']) for e in s['evals']]
                 + [(e['step'], 1, e['clock']) for e in s['pruning_events']])
  assert len(s['pruning_events']) >= 3 and len(s['evals']) == 6
  clocks = [c for _, _, c in marks]
  assert clocks == sorted(clocks), marks
  assert clocks[-1] <= s['train_seconds']


@needs_fmnist
def test_events_that_change_no_unit_skip_the_host_round_trip(tmp_path,
                                                              monkeypatch):
  # every unit is dead at once (huge epsilon): step 10 removes all but
  # min_width, and the later events find nothing more to remove
  calls = []
  real = shrink.fold_and_hold

  def counting(updater, state, live, constants, dp):
    calls.append(int(state.step))
    return real(updater, state, live, constants, dp)

  monkeypatch.setattr(shrink, 'fold_and_hold', counting)
  c = tiny(**{'sparsity_config.epsilon': 1e12, 'sparsity_config.min_width': 3,
              'round_widths_to': 1, 'num_steps': 25})
  s = loop.train(c, str(tmp_path))
  events = [e['step'] for e in s['pruning_events']]
  assert len(events) >= 3 and s['units_final'] == 9
  # one hold at the event that removed units, one on the shrunk state at
  # the swap; none at the events after it
  swap = s['pruning_events'][0]['swap_step']
  assert calls == [events[0], swap]


@needs_fmnist
def test_width_buckets_mask_instead_of_recompiling(tmp_path):
  c = tiny(**{'sparsity_config.epsilon': 1e12, 'sparsity_config.min_width': 3,
              'round_widths_to': 8, 'num_steps': 25})
  s = loop.train(c, str(tmp_path))
  # 3 live units per layer, physically rounded up to 8
  assert s['widths_final'] == {'conv_0': 8, 'conv_1': 8, 'dense_0': 8}
  assert s['live_units_final'] == {'conv_0': 3, 'conv_1': 3, 'dense_0': 3}
  assert s['units_final'] == 9
  assert s['compiles'] == 2


@needs_fmnist
def test_no_prune_is_the_dense_reference(tmp_path):
  c = tiny(**{'sparsity_config.algorithm': 'no_prune'})
  s = loop.train(c, str(tmp_path))
  assert s['neuron_sparsity'] == 0 and s['param_sparsity'] == 0
  assert s['pruning_events'] == [] and s['compiles'] == 1


@needs_fmnist
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  # (1e30 gives NaN at step 1, before any good checkpoint; 1e6 diverges
  # over a few steps)
  c = tiny(**{'optimizer.learning_rate': 1e6, 'checkpoint_every': 1,
              'sparsity_config.algorithm': 'no_prune',
              'optimizer.schedule': 'constant'})
  with pytest.raises(loop.NonFiniteLossError, match='last good checkpoint'):
    loop.train(c, str(tmp_path))
  s = json.load(open(tmp_path / 'summary.json'))
  assert s['status'] == 'non_finite_loss'
  good = s['last_good_checkpoint']
  # checkpoint s['step'] holds the weights that gave the non-finite loss:
  # set aside (kept), so that a resume starts from the one before
  assert good is not None and good < s['step']
  assert os.path.isdir(tmp_path / 'checkpoints' / str(good))
  assert not os.path.exists(tmp_path / 'checkpoints' / str(s['step']))
  assert os.path.isdir(tmp_path / 'checkpoints.nonfinite' / str(s['step']))
  assert 'moved to' in s['error']
  # a sane learning rate resumes from the good one and finishes
  c.optimizer.learning_rate, c.resume = 1e-3, True
  done = loop.train(c, str(tmp_path))
  assert done['resumed_from'] == good
  assert math.isfinite(done['final_train_loss'])


@needs_fmnist
def test_a_resume_under_another_config_is_refused(tmp_path):
  c = tiny(**{'sparsity_config.algorithm': 'no_prune', 'num_steps': 4,
              'checkpoint_every': 2})
  loop.train(c, str(tmp_path))
  before = sorted(os.listdir(tmp_path / 'checkpoints'))
  wider = tiny(**{'sparsity_config.algorithm': 'no_prune', 'num_steps': 4,
                  'checkpoint_every': 2, 'resume': True,
                  'model.conv_widths': (16, 32)})
  # it used to resume silently at the checkpoint's widths
  with pytest.raises(ValueError, match='config.model.conv_widths is '
                     r'\[16, 32\] here and \[8, 16\]'):
    loop.train(wider, str(tmp_path))
  other = tiny(**{'num_steps': 4, 'resume': True, 'checkpoint_every': 2})
  with pytest.raises(ValueError, match="sparsity_config.algorithm is 'demp' "
                     "here and 'no_prune'"):
    loop.train(other, str(tmp_path))
  shorter = tiny(**{'sparsity_config.algorithm': 'no_prune', 'num_steps': 3,
                    'checkpoint_every': 2, 'resume': True})
  with pytest.raises(ValueError, match='config.num_steps=3 is below step 4 '
                     'of the newest checkpoint'):
    loop.train(shorter, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == before  # kept


def test_missing_data_directory_is_named(tmp_path):
  c = tiny(**{'dataset.data_dir': str(tmp_path / 'nowhere'),
              'dataset.source': 'idx'})
  with pytest.raises(FileNotFoundError, match='nowhere.*does not exist'):
    loop.train(c, str(tmp_path / 'run'))


def _cli(*args):
  return subprocess.run(
      [sys.executable, '-m', 'experiments.train',
       '--config', 'configs/fashion_mnist_demp.py:tiny', *args],
      cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_rejects_unknown_config_keys_and_algorithms(tmp_path):
  r = _cli('--workdir', str(tmp_path), '--config.sparsity_config.reg_peek=1')
  assert r.returncode != 0 and 'reg_peek' in r.stderr
  r = _cli('--workdir', str(tmp_path),
           '--config.sparsity_config.algorithm=demq')
  assert r.returncode == 2  # a bad command line, refused before the run
  assert "algorithm='demq' is not a registered algorithm" in r.stderr


@pytest.mark.parametrize('arch', ['resnet18', 'vit'])
def test_fold_and_hold_silences_padding_units_behind_index_maps(arch):
  """Units masked to fill a width bucket output exactly zero, also where a
  residual gather or an MLP-output scatter would carry them."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from demp_jax.algorithms import create_updater_from_config  # pylint: disable=g-import-not-at-top
  from demp_jax.training import parallel  # pylint: disable=g-import-not-at-top
  from demp_jax.training.steps import TrainState  # pylint: disable=g-import-not-at-top
  import testlib_models  # pylint: disable=g-import-not-at-top
  net = testlib_models.tiny_net(arch)
  v = testlib_models.random_variables(net, np.random.default_rng(0))
  t = net.topology
  upd = create_updater_from_config({'algorithm': 'demp', 'reg_span': 10},
                                   topology=t)
  tx = upd.wrap_optax(optax.sgd(0.1))
  state = TrainState(np.int32(0), v, tx.init(v['params']))
  rng = np.random.default_rng(0)
  live = {g.name: rng.random(g.size) < 0.5 for g in t.groups}
  held = shrink.fold_and_hold(upd, state, live, None,
                              parallel.DataParallel())
  x = jax.random.normal(jax.random.PRNGKey(0), (3,) + net.input_shape)
  _, acts = net.activations(held.variables, x)
  checked = 0
  for name, al in live.items():
    if name in acts and (~al).any():
      for site in acts[name]:
        assert np.all(np.asarray(site)[..., ~al] == 0), name
      checked += 1
  assert checked >= 3


class _Killed(Exception):
  pass


@needs_fmnist
def test_background_compile_swaps_at_a_fixed_step_and_resumes_exactly(
    tmp_path, monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  settings = {'sparsity_config.epsilon': 1e12, 'sparsity_config.min_width': 3,
              'round_widths_to': 1, 'num_steps': 20, 'shrink_delay': 4,
              'checkpoint_every': 2}
  s = loop.train(tiny(**settings), str(tmp_path / 'straight'))
  ev = [e for e in s['pruning_events'] if 'swap_step' in e]
  assert [(e['step'], e['swap_step']) for e in ev] == [(10, 14)]
  assert ev[0]['overlap_steps'] == 4 and ev[0]['max_masked_diff'] <= 1e-5
  assert ev[0]['widths'] == {'conv_0': 3, 'conv_1': 3, 'dense_0': 3}
  assert s['shrink_overhead'][0]['interval_seconds'] > 0
  assert s['compiles'] == 2
  # Die right after the checkpoint of step 12: decided and held, not yet
  # shrunk. The resumed run must compile, swap at step 14 and end bitwise
  # where the straight one did.
  save = loop.ckpt_lib.Checkpointer.save

  def save_then_die(self, step, state, meta):
    save(self, step, state, meta)
    if step == 12:
      assert meta['run']['pending']['swap_step'] == 14
      raise _Killed()

  work = str(tmp_path / 'killed')
  monkeypatch.setattr(loop.ckpt_lib.Checkpointer, 'save', save_then_die)
  with pytest.raises(_Killed):
    loop.train(tiny(**settings), work)
  monkeypatch.setattr(loop.ckpt_lib.Checkpointer, 'save', save)
  r = loop.train(tiny(**settings, resume=True), work)
  assert r['resumed_from'] == 12 and r['widths_final'] == s['widths_final']
  restore = lambda w: ocp.StandardCheckpointer().restore(
      os.path.join(w, 'checkpoints', '20', 'state'))['variables']['params']
  for x, y in zip(jax.tree.leaves(restore(str(tmp_path / 'straight'))),
                  jax.tree.leaves(restore(work))):
    np.testing.assert_array_equal(x, y)


@needs_fmnist
def test_a_fresh_run_refuses_a_workdir_with_checkpoints(tmp_path):
  c = tiny(**{'sparsity_config.algorithm': 'no_prune', 'num_steps': 3})
  loop.train(c, str(tmp_path))
  before = open(tmp_path / 'metrics.csv').read()
  with pytest.raises(FileExistsError, match='resume=True'):
    loop.train(c, str(tmp_path))
  assert open(tmp_path / 'metrics.csv').read() == before  # nothing lost
  assert os.path.isdir(tmp_path / 'checkpoints' / '3')


def test_negative_shrink_delay_is_refused(tmp_path):
  with pytest.raises(ValueError, match='shrink_delay'):
    loop.train(tiny(shrink_delay=-1), str(tmp_path))


@needs_fmnist
def test_a_failing_background_shrink_stops_the_run_at_once(tmp_path,
                                                           monkeypatch):
  """The swap is due only at the end (shrink_delay past num_steps), so the
  run must stop on the background failure itself, not wait for the swap."""
  import time  # pylint: disable=g-import-not-at-top

  class Broken(RuntimeError):
    pass

  def broken_surgery(*args, **kwargs):
    raise Broken('surgery failed on the background thread')

  monkeypatch.setattr(shrink, 'shrink_job', broken_surgery)
  c = tiny(**{'sparsity_config.epsilon': 1e12, 'sparsity_config.min_width': 3,
              'round_widths_to': 1, 'num_steps': 30, 'shrink_delay': 1000,
              'log_every': 1})
  t0 = time.perf_counter()
  with pytest.raises(Broken, match='background thread'):
    loop.train(c, str(tmp_path))
  assert time.perf_counter() - t0 < 120
  # the event is at step 10; the failure is seen a step or two later
  steps = [json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')]
  assert max(steps) < 20, steps


@needs_fmnist
def test_resuming_a_finished_run_writes_a_complete_summary(tmp_path, capsys):
  import math  # pylint: disable=g-import-not-at-top
  c = tiny(**{'sparsity_config.algorithm': 'no_prune', 'num_steps': 4,
              'resume': True})
  loop.train(c, str(tmp_path))
  assert 'no checkpoint' in capsys.readouterr().err  # says it starts fresh
  first = json.load(open(tmp_path / 'summary.json'))
  again = loop.train(c, str(tmp_path))
  assert again['resumed_from'] == 4
  assert math.isfinite(again['final_train_loss'])
  assert again['final_train_loss'] == first['final_train_loss']
  assert again['test_accuracy'] == first['test_accuracy']
  for k in ('step_seconds_first', 'step_seconds_last'):  # kept to 1 us
    assert again[k] == pytest.approx(first[k], abs=1e-6), k
  assert again['train_seconds'] >= first['train_seconds'] > 0


def test_a_zero_width_layer_is_refused_before_training(tmp_path):
  """It used to train until the first checkpoint, where orbax failed on the
  zero-size arrays and could hang the interpreter's exit. The config check
  refuses it now, as a bad command line."""
  if not os.path.isdir(fashion_mnist.DEBIAN_DIR):
    pytest.skip('Fashion-MNIST is not installed')
  r = _cli('--workdir', str(tmp_path), '--config.model.conv_widths=(8,0)',
           '--config.checkpoint_every=5')
  assert r.returncode == 2, r.stderr[-2000:]
  assert 'error: config.model.conv_widths=(8, 0)' in r.stderr
  assert 'integer >= 1' in r.stderr
  assert not os.path.exists(tmp_path / 'metrics.jsonl')  # no step trained
