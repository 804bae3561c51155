"""The trade-off sweep harness and its report: grids, schedules, the command
line, the measures, tables and speed at matched accuracy, every method end
to end at tiny settings on the real Fashion-MNIST, resumability."""
import importlib.util
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
from experiments import tradeoff_report as report  # pylint: disable=g-import-not-at-top

needs_fmnist = pytest.mark.skipif(
    not os.path.isdir(fashion_mnist.DEBIAN_DIR),
    reason='Debian package dataset-fashion-mnist not installed')
needs_jaxpruner = pytest.mark.skipif(
    importlib.util.find_spec('jaxpruner') is None,
    reason='jaxpruner is not installed (optional; see README)')
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
  # a grid under a name no method has (a typo) is an error, not a silently
  # ignored flag; one for a known method left out of the sweep is not
  with pytest.raises(ValueError, match=r"--grid names unknown method\(s\) "
                     r"\['dmep'\]"):
    tradeoff.plan_runs(['demp'], 2, grids={'dmep': [0.1]})
  assert tradeoff.plan_runs(['snap'], 2, grids={'snap': [0.5], 'demp': [1.0]}
                            ) == [('snap', 0.5, 0)]
  # every registered-name method spec names a registered algorithm
  from demp_jax.algorithms import all_algorithm_names
  assert {s.algorithm for s in tradeoff.METHODS.values()} <= set(
      all_algorithm_names())


def test_jaxpruner_grids_and_schedule():
  # JaxPruner's ResNet-50 schedule (every 1,000 of 31,250 steps, from 10,000
  # to 25,000) scaled to the demo's 1,400 steps
  assert tradeoff.jaxpruner_schedule(1400) == {
      'update_freq': 45, 'update_start_step': 450, 'update_end_step': 1125}
  assert tradeoff.jaxpruner_schedule(12)['update_end_step'] == 12
  grid = tradeoff.METHODS['jaxpruner_rigl'].grid(4)
  assert grid[0] == 0.5 and grid[-1] == 0.95  # densities log-spaced
  assert np.allclose(np.diff(np.log(1 - np.array(grid))), np.log(0.1) / 3,
                     atol=0.01)
  c = tradeoff.METHODS
  d = c['jaxpruner_rigl_erk'].defaults(1400, 468)
  assert (d['dist_type'], d['drop_fraction'], c['jaxpruner_rigl_erk']
          .algorithm) == ('erk', 0.1, 'jaxpruner_rigl')
  assert c['jaxpruner_magnitude'].defaults(1400, 468)['dist_type'] == (
      'uniform')
  d = c['demp_rigl'].defaults(1400, 468)
  assert (d['sparsity'], d['dist_type'], d['update_end_step']) == (
      0.8, 'erk', 1050)
  assert {m.structure for k, m in c.items() if k.startswith('jaxpruner_')
          and k != 'jaxpruner_channel'} == {report.WEIGHT_MASKS}
  assert c['jaxpruner_channel'].structure == report.UNIT_MASKS


def test_command_line_is_config_flags_plus_the_harness_flags(tmp_path):
  args = tradeoff.parse_args([
      '--config', CONFIG + ':tiny', '--methods', 'snap,demp', '--out', 'o',
      '--config.num_steps=7', '--config.optimizer.learning_rate', '1',
      '--config.sparsity_config.prune_every=6', '--seeds', '0,2',
      '--grid', 'snap=0.1,0.2', '--grid=demp=0.3', '--noplots',
      '--jaxpruner_tree_map_alias'])
  cfg = args.config
  assert cfg.num_steps == 7 and cfg.sparsity_config.reg_span == 6
  assert cfg.optimizer.learning_rate == 1.0
  assert args.user_sparsity == {'prune_every': 6}
  assert (args.methods, args.seeds, args.out) == (['snap', 'demp'], [0, 2],
                                                  'o')
  assert args.grids == {'snap': [0.1, 0.2], 'demp': [0.3]}
  assert not args.plots and args.jaxpruner_alias
  assert tradeoff.config_hash(cfg) != tradeoff.config_hash(
      tradeoff.parse_args(['--config', CONFIG + ':tiny', '--methods', 'snap',
                           '--out', 'o']).config)
  # bad command lines: one line, naming what is wrong
  for argv, match in [
      (['--config.sparsity_config.update_freq=3'], "override 'update_freq'"),
      (['--bogus=1'], "flag 'bogus'"),
      (['--grid', 'snap'], 'METHOD=v1'),
      (['--grid', 'snap=0.5,abc'], "--grid 'snap=0.5,abc': 'abc' is not a "
       'number'),
      (['--grid', 'snap='], "--grid 'snap=': '' is not a number"),
      (['--seeds', '0,x'], "--seeds: 'x' is not an integer"),
      (['--seeds', '-1'], '--seeds: -1 is below 0'),
      (['--points', '0'], '--points: 0 is below 1'),
  ]:
    with pytest.raises(ValueError, match=match):
      tradeoff.parse_args(['--config', CONFIG, '--methods', 'snap', '--out',
                           'o', *argv])
  with pytest.raises(ValueError, match='No such file') as e:
    tradeoff.parse_args(['--config', str(tmp_path / 'none.py'), '--methods',
                         'snap', '--out', 'o'])
  assert '\n' not in str(e.value)
  with pytest.raises(ValueError, match='--out'):
    tradeoff.parse_args(['--config', CONFIG, '--methods', 'snap'])
  assert tradeoff.main(['--config', CONFIG, '--methods', 'snip', '--out',
                        str(tmp_path)]) == 2
  # the method's config: its defaults, the knob and the user's keys on top
  c = tradeoff.method_config(cfg, 'early_crop', 0.7, 2, 5,
                             {'check_every': 2})
  sc = c.sparsity_config
  assert (sc.algorithm, sc.sparsity, sc.check_every, sc.max_prune_step,
          c.seed) == ('early_crop', 0.7, 2, 3, 2)


def test_the_demo_config_is_the_reference_sweeps():
  """The demo config, as the README's reference sweep ran it (the hash its
  committed rows carry)."""
  rows = tradeoff.read_rows(os.path.join(ROOT, 'results',
                                         'tradeoff_fmnist_cnn'))
  (ran,) = {r['config_hash'] for r in rows}
  demo = tradeoff.parse_args(['--config', CONFIG, '--methods', 'snap',
                              '--out', 'o']).config
  assert tradeoff.config_hash(demo) == ran


def _row(method, knob, acc, params, *, kind='units', neurons=None,
         zeros=0.0, train=50.0, step=0.02, flops=10e6, env=None):
  return {'method': method, 'knob': knob, 'knob_name': 'sparsity',
          'seed': 0, 'status': 'ok', 'test_accuracy': acc,
          'neuron_sparsity': neurons if kind == 'units' else 0.0,
          'masked_unit_fraction': neurons if kind != 'units' else None,
          'param_sparsity': params, 'param_zero_fraction': zeros,
          'sparsity_kind': kind, 'flops_initial': 10e6, 'flops_final': flops,
          'train_seconds': train, 'step_seconds_last': step,
          'timing_env': env or {'host': 'a'}, 'config_hash': 'other'}


def _rows():
  return [
      _row('no_prune', None, 0.93, 0.0, neurons=0.0, train=100, step=0.05),
      _row('demp', 0.01, 0.925, 0.75, neurons=0.5, train=70, step=0.03,
           flops=4e6),
      _row('demp', 0.04, 0.91, 0.9, neurons=0.8, train=60, step=0.02,
           flops=2e6),
      _row('jaxpruner_magnitude', 0.8, 0.926, 0.0, kind='weight_masks',
           zeros=0.8, train=110, step=0.05),
      _row('jaxpruner_magnitude', 0.95, 0.921, 0.0, kind='weight_masks',
           zeros=0.95, train=110, step=0.05),
      _row('jaxpruner_channel', 0.5, 0.90, 0.0, kind='unit_masks',
           neurons=0.5, zeros=0.6, train=105, step=0.05),
      {**_row('snap', 0.7, 0.0, 0.5), 'status': 'error'},
  ]


def test_sparsities_and_speed_at_matched_accuracy():
  rows = _rows()
  by = {(r['method'], r['knob']): r for r in rows}
  # removed or zero, over the initial parameters
  assert report.param_sparsity(by['demp', 0.04]) == pytest.approx(0.9)
  assert report.param_sparsity(
      {**by['demp', 0.04], 'param_zero_fraction': 0.5}) == pytest.approx(
          0.95)
  assert report.param_sparsity(
      by['jaxpruner_magnitude', 0.8]) == pytest.approx(0.8)
  assert report.param_sparsity(
      {**by['demp', 0.04], 'param_zero_fraction': float('nan')}) == 0.9
  # neuron sparsity: removed units, masked whole units, or nothing
  assert report.neuron_sparsity(by['demp', 0.04]) == 0.8
  assert report.neuron_sparsity(by['jaxpruner_channel', 0.5]) == 0.5
  assert report.neuron_sparsity(by['jaxpruner_magnitude', 0.8]) is None
  points = report.aggregate(rows)
  assert len(points) == 6  # the failed run is out
  m = report.matched_accuracy(points)
  assert m['threshold'] == pytest.approx(0.92)
  best = m['best']
  assert (best['JaxPruner'].method, best['JaxPruner'].knob) == (
      'jaxpruner_magnitude', 0.95)  # the sparsest within 1 point
  assert (best['DemP'].knob, best['DemP+RigL']) == (0.01, None)
  assert m['closest']['DemP+RigL'] is None  # no such row at all
  comp = report.comparison(rows)
  demp = comp['matched_accuracy']['DemP']['best']
  assert demp['train_speedup_vs_dense'] == pytest.approx(100 / 70)
  assert demp['last_step_speedup_vs_dense'] == pytest.approx(0.05 / 0.03)
  assert demp['timing_env_as_dense']
  assert comp['matched_accuracy']['JaxPruner']['best'][
      'last_step_speedup_vs_dense'] == pytest.approx(1.0)
  json.dumps(comp)  # serialisable as it is
  # the DemP row slips out of 1 point: none, and its most accurate point
  m = report.matched_accuracy(points, tolerance=0.001)
  assert m['best']['DemP'] is None and m['closest']['DemP'].knob == 0.01
  lines = report.speed_table(points, tolerance=0.001)
  assert ('| DemP | none within 0.1 point; most accurate: demp at 0.9250 '
          '| | | | | | |') in lines
  assert not any('not all measured' in l for l in lines)
  rows[1]['timing_env'] = {'host': 'b'}
  lines = report.speed_table(report.aggregate(rows))
  assert any('not all measured under the same conditions' in l
             for l in lines)


def test_table_matches_sparsities_without_extrapolating():
  table = report.markdown_table(_rows(), neuron_at=(0.5, 0.7, 0.9),
                                  param_at=(0.8, 0.85, 0.95))
  lines = table.splitlines()
  assert sum(l.startswith('| demp |') for l in lines) == 4  # 2 runs, 2 curves
  assert not any(l.startswith('| snap |') for l in lines)  # the failed run
  # masked methods: every weight where it was, dense FLOPs
  assert ('| jaxpruner_magnitude | sparsity=0.95 | 0.9210 | - | 0.950 | '
          '1.000 | 10.00 | 0.0500 | 110.0 |') in lines
  assert '| jaxpruner_channel | sparsity=0.5 | 0.9000 | 0.500 (masked) |' in (
      table)
  # neuron sparsity: demp between its points, nothing beyond them
  assert '| demp | **0.9250** | **0.9150** | - |' in lines
  # one point is no curve: the channel run is in the list of runs only
  assert sum(l.startswith('| jaxpruner_channel |') for l in lines) == 1
  # parameter sparsity, with the training seconds there
  assert '| demp | 0.9200 (66.7 s) | 0.9150 (63.3 s) | - |' in lines
  assert ('| jaxpruner_magnitude | **0.9260** (110.0 s) | **0.9243** '
          '(110.0 s) | **0.9210** (110.0 s) |') in lines
  assert ('| DemP | demp | 0.01 | 0.9250 | 0.750 | 4.00 | 70.0 (1.43x faster) '
          '| 0.0300 (1.67x faster) |') in lines
  assert ('| JaxPruner | jaxpruner_magnitude | 0.95 | 0.9210 | 0.950 | 10.00 '
          '| 110.0 (1.10x slower) | 0.0500 (dense) |') in lines
  assert '| DemP+RigL | no run | | | | | | |' in lines


def test_refuses_to_mix_configs_and_plots(tmp_path):
  cfg = tradeoff.parse_args(['--config', CONFIG + ':tiny', '--methods',
                             'snap', '--out', str(tmp_path)]).config
  out = str(tmp_path)
  with open(os.path.join(out, tradeoff.RESULTS), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in _rows())
  with pytest.raises(ValueError, match='another config'):
    tradeoff.run_sweep(cfg, ['snap'], 1, out)
  path = report.plot(report.aggregate(_rows()),
                       os.path.join(out, report.PLOT))
  assert os.path.getsize(path) > 10_000


# The tiny settings of the end-to-end runs: the demo's tiny config on an
# MLP, with the method keys the command line sets declared.
TINY = """
import importlib.util
import ml_collections
_spec = importlib.util.spec_from_file_location('demo', {config!r})
_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_demo)


def get_config():
  c = _demo.get_config('tiny')
  c.dataset.train_subset = 512
  c.dataset.test_subset = 256
  c.model = ml_collections.ConfigDict({{'name': 'mlp', 'widths': (16, 8)}})
  c.round_widths_to = 1
  s = c.sparsity_config
  s.prune_every = 6
  s.death_batch_size = 64
  s.score_batches = 1
  s.score_batch_size = 64
  # declared so that the command line may set them (the methods' own
  # defaults replace these values otherwise)
  s.update_freq = 1
  s.check_every = 1
  return c
"""


def _tiny_config(tmp_path) -> str:
  path = tmp_path / 'tiny_config.py'
  path.write_text(TINY.format(config=CONFIG))
  return str(path)


@needs_fmnist
def test_every_method_runs_through_the_harness_and_resumes(tmp_path,
                                                           capsys):
  out = str(tmp_path / 'sweep')
  argv = ['--config', _tiny_config(tmp_path), '--methods', ','.join(NATIVE),
          '--points', '1', '--out', out, '--grid', 'demp=0.05',
          '--config.num_steps', '12',
          '--config.sparsity_config.update_freq=3',
          '--config.sparsity_config.check_every=3']
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
  assert os.path.getsize(os.path.join(out, report.PLOT)) > 10_000
  table = open(os.path.join(out, report.TABLE)).read()
  assert all(f'| {m} |' in table for m in NATIVE)
  # a row removed (an unfinished run) is run again over its old workdir
  with open(os.path.join(out, tradeoff.RESULTS), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows if r['method'] != 'snap')
  assert tradeoff.main(argv + ['--methods', 'snap']) == 0
  again = {r['method']: r for r in tradeoff.read_rows(out)}
  assert again['snap']['status'] == 'ok' and len(again) == len(NATIVE)
  # a second invocation adds nothing
  capsys.readouterr()
  assert tradeoff.main(argv + ['--noplots']) == 0
  assert len(tradeoff.read_rows(out)) == len(NATIVE)
  assert f'0 run(s), {len(NATIVE)} skipped' in capsys.readouterr().out


@needs_fmnist
@needs_jaxpruner
def test_jaxpruner_methods_through_the_harness(tmp_path, monkeypatch):
  # jax.tree_map for this test only (the harness flag would set it for the
  # whole process)
  import jax  # pylint: disable=g-import-not-at-top
  if not hasattr(jax, 'tree_map'):
    monkeypatch.setattr(jax, 'tree_map', jax.tree_util.tree_map,
                        raising=False)
  out = str(tmp_path / 'sweep')
  methods = ('no_prune', 'jaxpruner_magnitude', 'jaxpruner_rigl_erk',
             'jaxpruner_global_magnitude', 'jaxpruner_channel', 'demp_rigl')
  argv = ['--config', _tiny_config(tmp_path), '--methods', ','.join(methods),
          '--out', out, '--grid', 'jaxpruner_magnitude=0.8',
          '--grid', 'jaxpruner_rigl_erk=0.8',
          '--grid', 'jaxpruner_global_magnitude=0.8',
          '--grid', 'jaxpruner_channel=0.5', '--grid', 'demp_rigl=0.05',
          '--config.num_steps', '12']
  assert tradeoff.main(argv) == 0
  by = {r['method']: r for r in tradeoff.read_rows(out)}
  assert sorted(by) == sorted(methods)
  dense = by['no_prune']
  for m in methods[1:5]:  # masks only: every weight stays, at dense cost
    r = by[m]
    assert r['status'] == 'ok' and r['sparsity_kind'] != 'units', m
    assert r['params_final'] == dense['params_final'], m
    assert r['flops_final'] == dense['flops_final'], m
    assert r['neuron_sparsity'] == 0.0 and r['prune_steps'] == [], m
  for m in ('jaxpruner_magnitude', 'jaxpruner_rigl_erk',
            'jaxpruner_global_magnitude'):
    # 80% of the kernels (biases and norms are not masked)
    assert 0.77 < report.param_sparsity(by[m]) < 0.8, m
    assert report.neuron_sparsity(by[m]) is None
  # channel: half the units of each layer masked, none removed
  ch = by['jaxpruner_channel']
  assert ch['masked_unit_fraction'] == 0.5
  assert report.neuron_sparsity(ch) == 0.5
  # DemP+RigL: RigL's zeros in whatever DemP kept
  dr = by['demp_rigl']
  assert dr['param_zero_fraction'] > 0.7
  assert report.param_sparsity(dr) >= dr['param_sparsity']
  comp = json.load(open(os.path.join(out, report.COMPARISON)))
  assert comp['dense']['test_accuracy'] == dense['test_accuracy']
  assert set(comp['matched_accuracy']) == {'JaxPruner', 'DemP', 'DemP+RigL'}
  assert len(comp['points']) == len(methods)
  table = open(os.path.join(out, report.TABLE)).read()
  assert all(f'| {m} |' in table for m in methods)
  assert 'Speed at matched accuracy' in table
  assert os.path.getsize(os.path.join(out, report.PLOT)) > 10_000
