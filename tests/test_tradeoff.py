"""The trade-off sweep harness: grids, overrides, every method end to end at
tiny settings on the real Fashion-MNIST, resumability and plots."""
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # experiments/ is not an installed package
  sys.path.insert(0, ROOT)
from demp_jax.data import fashion_mnist  # pylint: disable=g-import-not-at-top
from experiments import tradeoff  # pylint: disable=g-import-not-at-top

needs_fmnist = pytest.mark.skipif(
    not os.path.isdir(fashion_mnist.DEBIAN_DIR),
    reason='Debian package dataset-fashion-mnist not installed')
CONFIG = os.path.join(ROOT, 'configs', 'fashion_mnist_demp.py')
NATIVE = ('no_prune', 'demp', 'snap', 'crop_it', 'early_snap', 'early_crop',
          'structured_magnitude', 'network_slimming')
STRUCTURED = NATIVE[2:]


def test_plan_runs_grids_seeds_and_overrides():
  runs = tradeoff.plan_runs(['no_prune', 'snap', 'demp'], 3, seeds=(0, 1))
  assert [r for r in runs if r[0] == 'no_prune'] == [('no_prune', None, 0),
                                                     ('no_prune', None, 1)]
  snap = sorted({r[1] for r in runs if r[0] == 'snap'})
  assert snap == [0.3, 0.6, 0.9]
  demp = sorted({r[1] for r in runs if r[0] == 'demp'})
  assert demp[0] == pytest.approx(1e-2) and demp[-1] == pytest.approx(1.6e-1)
  assert demp[1] == pytest.approx(4e-2)  # log-spaced
  # breadth first: every method's first point before any second point
  assert [r[0] for r in runs[:6]] == ['no_prune', 'snap', 'demp'] * 2
  assert [r[0] for r in runs[6:]] == ['snap', 'demp'] * 4
  runs = tradeoff.plan_runs(['snap'], 3, grids={'snap': [0.5]})
  assert runs == [('snap', 0.5, 0)]
  with pytest.raises(ValueError, match='unknown method'):
    tradeoff.plan_runs(['snip'], 2)
  # every registered-name method spec names a registered algorithm
  from demp_jax.algorithms import all_algorithm_names
  assert {s.algorithm for s in tradeoff.METHODS.values()} <= set(
      all_algorithm_names())


def test_config_overrides_and_cli_parsing():
  cfg = tradeoff.load_config(CONFIG + ':tiny')
  tradeoff.apply_override(cfg, 'num_steps=7')
  tradeoff.apply_override(cfg, 'optimizer.learning_rate=1')  # int -> float
  tradeoff.apply_override(cfg, "model={'name': 'mlp', 'widths': (4, 3)}")
  tradeoff.apply_override(cfg, 'sparsity_config.score_batches=2')
  assert cfg.num_steps == 7 and cfg.sparsity_config.reg_span == 6
  assert isinstance(cfg.optimizer.learning_rate, float)
  assert cfg.model.to_dict() == {'name': 'mlp', 'widths': (4, 3)}
  assert cfg.sparsity_config.score_batches == 2
  with pytest.raises(ValueError, match='KEY=VALUE'):
    tradeoff.apply_override(cfg, 'num_steps')
  args = tradeoff.parse_args([
      '--config', 'c.py', '--methods', 'snap', '--out', 'o',
      '--config.num_steps=5', '--config.seed', '3', '--set', 'a.b=x',
      '--grid', 'snap=0.1,0.2'])
  assert args.overrides == ['a.b=x', 'num_steps=5', 'seed=3']
  assert tradeoff._parse_grid(args.grid) == {'snap': [0.1, 0.2]}
  # the method's config: its defaults, the knob and the user's keys on top
  c = tradeoff.method_config(cfg, 'early_crop', 0.7, 2, 5,
                             {'check_every': 2})
  sc = c.sparsity_config
  assert (sc.algorithm, sc.sparsity, sc.check_every, sc.max_prune_step,
          c.seed) == ('early_crop', 0.7, 2, 3, 2)


def test_refuses_to_mix_configs_and_plots_rows(tmp_path):
  cfg = tradeoff.load_config(CONFIG + ':tiny')
  out = str(tmp_path)
  rows = [{'method': 'snap', 'knob': k, 'seed': 0, 'status': 'ok',
           'test_accuracy': 0.9 - k / 2, 'neuron_sparsity': k,
           'param_sparsity': k / 2, 'param_zero_fraction': k / 2,
           'sparsity_kind': 'physical', 'train_seconds': 10 - k,
           'config_hash': 'other'} for k in (0.3, 0.6)]
  rows.append({**rows[0], 'method': 'jaxpruner_magnitude', 'knob': 0.8,
               'sparsity_kind': 'masked', 'param_sparsity': 0.0})
  with open(os.path.join(out, tradeoff.RESULTS), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
  with pytest.raises(ValueError, match='another config'):
    tradeoff.run_sweep(cfg, ['snap'], 1, out)
  # masked methods are plotted at their zero-weight fraction
  pts = tradeoff._points(rows, tradeoff._param_x)
  assert pts['jaxpruner_magnitude'][0] == [0.15] and pts['snap'][0] == [
      0.15, 0.3]
  paths = tradeoff.plot(rows, out)
  assert [os.path.basename(p) for p in paths] == list(tradeoff.PLOTS)
  assert all(os.path.getsize(p) > 1000 for p in paths)


def test_table_lists_every_run_and_matches_sparsities_without_extrapolating():
  def row(method, knob, acc, sparsity):
    return {'method': method, 'knob': knob, 'knob_name': 'sparsity',
            'seed': 0, 'status': 'ok', 'test_accuracy': acc,
            'neuron_sparsity': sparsity, 'param_sparsity': sparsity,
            'sparsity_kind': 'physical', 'flops_initial': 100.0,
            'flops_final': 100.0 * (1 - sparsity), 'train_seconds': 5.0,
            'step_seconds_last': 0.01}
  rows = [row('a', 0.4, 0.90, 0.4), row('a', 0.8, 0.80, 0.8),
          row('b', 0.6, 0.88, 0.6), row('b', 0.95, 0.70, 0.95),
          {**row('b', 0.7, 0.0, 0.7), 'status': 'error'}]
  assert tradeoff.accuracy_at([0.4, 0.8], [0.9, 0.8], 0.7) == pytest.approx(
      0.825)
  assert tradeoff.accuracy_at([0.4, 0.8], [0.9, 0.8], 0.9) is None
  table = tradeoff.markdown_table(rows, matched=(0.5, 0.7, 0.9))
  lines = table.splitlines()
  assert sum(l.startswith('| a |') for l in lines) == 3  # 2 runs + matched
  assert sum(l.startswith('| b |') for l in lines) == 3  # the error is out
  assert '| a | **0.8750** | 0.8250 | - |' in lines
  assert '| b | - | **0.8286** | **0.7257** |' in lines


@needs_fmnist
def test_every_method_runs_through_the_harness_and_resumes(tmp_path,
                                                           capsys):
  out = str(tmp_path / 'sweep')
  argv = ['--config', CONFIG + ':tiny', '--methods', ','.join(NATIVE),
          '--points', '1', '--out', out, '--grid', 'demp=0.05',
          '--config.num_steps', '12',
          '--set', 'dataset.train_subset=512',
          '--set', 'dataset.test_subset=256',
          '--set', "model={'name': 'mlp', 'widths': (16, 8)}",
          '--set', 'round_widths_to=1',
          '--set', 'sparsity_config.update_freq=3',
          '--set', 'sparsity_config.prune_every=6',
          '--set', 'sparsity_config.death_batch_size=64',
          '--set', 'sparsity_config.score_batches=1',
          '--set', 'sparsity_config.score_batch_size=64',
          '--set', 'sparsity_config.check_every=3']
  assert tradeoff.main(argv) == 0
  rows = tradeoff.read_rows(out)
  assert sorted(r['method'] for r in rows) == sorted(NATIVE)
  by = {r['method']: r for r in rows}
  for r in rows:
    assert r['status'] == 'ok', r
    for key in ('test_accuracy', 'neuron_sparsity', 'param_sparsity',
                'flops_final', 'train_seconds', 'step_seconds_last'):
      assert np.isfinite(r[key]), (r['method'], key)
    assert 0.05 < r['test_accuracy'] <= 1.0
  assert by['no_prune']['neuron_sparsity'] == 0.0
  assert by['demp']['knob'] == 0.05 and by['demp']['knob_name'] == 'reg_peak'
  units0 = 24
  for m in STRUCTURED:
    r = by[m]
    assert r['knob'] == 0.6 and r['knob_name'] == 'sparsity'
    # 60% of the 24 units: 10 kept (global) or 6 + 3 (uniform per layer)
    assert r['units_final'] in (9, 10), (m, r['units_final'])
    assert r['neuron_sparsity'] == pytest.approx(1 - r['units_final'] / units0)
    assert r['param_sparsity'] > 0.3 and r['flops_final'] < by[
        'no_prune']['flops_final'], m
    assert r['prune_steps'], m
  assert by['snap']['prune_steps'] == [0] and by['crop_it']['prune_steps'] == [
      0]
  assert by['network_slimming']['prune_steps'] == [6]
  assert 0 < by['early_snap']['prune_steps'][0] <= 6
  for name in tradeoff.PLOTS:
    assert os.path.getsize(os.path.join(out, name)) > 1000
  table = open(os.path.join(out, tradeoff.TABLE)).read()
  assert all(f'| {m} |' in table for m in NATIVE)
  # a row removed (an unfinished run) is run again over its old workdir
  with open(os.path.join(out, tradeoff.RESULTS), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows if r['method'] != 'snap')
  assert tradeoff.main(argv + ['--methods', 'snap']) == 0
  again = {r['method']: r for r in tradeoff.read_rows(out)}
  assert again['snap']['status'] == 'ok' and len(again) == len(NATIVE)
  # a second invocation adds nothing
  capsys.readouterr()
  assert tradeoff.main(argv + ['--no-plots']) == 0
  assert len(tradeoff.read_rows(out)) == len(NATIVE)
  assert f'0 run(s), {len(NATIVE)} skipped' in capsys.readouterr().out
