"""The long-horizon report: means, spreads and deltas from made-up rows."""
import json
import os

import pytest

from experiments import long_report
from experiments.tradeoff import read_rows


def _row(method, knob, seed, acc, units, status='ok'):
  return {'method': method, 'knob': knob, 'seed': seed, 'status': status,
          'test_accuracy': acc, 'neuron_sparsity': units,
          'param_sparsity': units + 0.1}


def _write(path, rows):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'results.jsonl'), 'w') as f:
    for r in rows:
      f.write(json.dumps(r) + '\n')


MAIN = [
    _row('no_prune', None, 0, 0.93, 0.0), _row('no_prune', None, 1, 0.91, 0.0),
    _row('demp', 0.01, 0, 0.90, 0.6), _row('demp', 0.01, 1, 0.92, 0.6),
    _row('demp', 0.03, 0, 0.88, 1.0), _row('demp', 0.03, 1, 0.86, 1.0),
    _row('demp', 0.1, 0, float('nan'), 0.0, status='non_finite_loss'),
]


def test_points_are_means_and_sample_sds_over_seeds():
  g = long_report.group(MAIN)
  assert g[('demp', 0.01)]['acc'] == pytest.approx((0.91, 0.02 / 2 ** 0.5, 2))
  assert g[('demp', 0.01)]['seeds'] == [0, 1]
  assert g[('demp', 0.1)]['bad'] == 1 and 'acc' not in g[('demp', 0.1)]
  table = '\n'.join(long_report.points_table(g))
  assert '| demp | reg_peak=0.01 | 2 | 0.9100 ± 0.0141 | 0.600 ± 0.000 |' \
      in table
  assert 'failed (1)' in table


def test_matched_sparsity_interpolates_and_never_extrapolates():
  table = long_report.matched_table(long_report.group(MAIN), (0.5, 0.8))
  demp = next(line for line in table if line.startswith('| demp'))
  # halfway between (0.6, 0.91) and (1.0, 0.87): 0.89; nothing at 0.5
  assert demp == '| demp | 2 | - | 0.8900 ± 0.0141 |'
  assert any(line.startswith('| dense (no_prune) | 2 | 0.9200 ± 0.0141')
             for line in table)


def test_ablations_compare_with_the_base_at_the_same_seeds(tmp_path):
  _write(tmp_path / 'sweep' / 'main', MAIN)
  _write(tmp_path / 'sweep' / 'abl_l2', [_row('demp', 0.01, 0, 0.95, 0.5),
                                         _row('demp', 0.01, 1, 0.93, 0.7)])
  path = long_report.write_report(str(tmp_path / 'sweep'),
                                  str(tmp_path / 'out'))
  text = open(path).read()
  line = next(l for l in text.splitlines() if l.startswith('| L2'))
  # deltas +0.05 and +0.01 over seeds 0 and 1; the variant's mean sparsity
  # (0.6) is the base curve's 0.01 point (0.91): +0.03 there as well
  assert line.endswith('| 0.9100 ± 0.0141 | 0.600 ± 0.000 | '
                       '0.0300 ± 0.0283 | 0.9100 | +0.0300 |')
  assert os.path.exists(tmp_path / 'out' / 'abl_l2.jsonl')
  assert os.path.exists(tmp_path / 'out' / 'main.jsonl')


def test_a_missing_sweep_directory_is_named(tmp_path, capsys):
  with pytest.raises(SystemExit):
    long_report.main(['--sweep', str(tmp_path / 'nope'), '--out',
                      str(tmp_path / 'out')])
  assert 'nope' in capsys.readouterr().err


def test_ablations_meet_the_base_curve_where_they_landed():
  """A variant that kills more units is compared with the base curve at
  its own sparsity (interpolated), and not at all outside the curve."""
  parts = {'abl_sgd': [_row('demp', 0.01, 0, 0.90, 0.8)],
           'abl_l2': [_row('demp', 0.01, 0, 0.93, 0.1)]}
  lines = long_report.ablation_table(MAIN, parts)
  sgd = next(l for l in lines if l.startswith('| SGD'))
  l2 = next(l for l in lines if l.startswith('| L2'))
  # base curve: (0.6, 0.91) and (1.0, 0.87); at 0.8 it is 0.89
  assert sgd.endswith('| 0.8900 | +0.0100 |')
  assert l2.endswith('| - | - |')  # 0.1 is below the curve's first point


def _evals(seconds_per_step, accs, every=100):
  return [{'step': every * (i + 1), 'test_accuracy': a,
           'train_clock_seconds': seconds_per_step * every * (i + 1)}
          for i, a in enumerate(accs)]


def _bench() -> dict:
  demp_evals = _evals(0.5, [0.6, 0.89, 0.91, 0.92])
  return {
      'machine': 'test machine', 'target_accuracy': 0.88,
      'dense_final_target': 0.92,
      'runs': {
          'demp': {
              'test_accuracy': 0.92, 'neuron_sparsity': 0.75,
              'train_seconds': 200.0, 'compile_seconds': 3.0,
              'time_to_target': {'step': 200, 'train_seconds': 100.0},
              'time_to_dense_final': {'step': 400, 'train_seconds': 200.0},
              'evals': demp_evals,
              'phases': {
                  # an event clock that counted evaluations: the report
                  # reads the evaluation's clock at that step instead
                  'dense_phase': {'step': 200, 'train_seconds': 130.0},
                  'death_check_seconds': 1.0, 'recalibrate_seconds': 0.0,
                  'shrink_overhead_seconds': 4.0,
                  'step_seconds_first': 0.5, 'step_seconds_last': 0.25,
                  'accuracy_dip': {'step': 300, 'test_accuracy': 0.85,
                                   'dense_test_accuracy': 0.9}}},
          'no_prune': {
              'test_accuracy': 0.93, 'neuron_sparsity': 0.0,
              'train_seconds': 400.0, 'compile_seconds': 1.0,
              'time_to_target': {'step': 100, 'train_seconds': 100.0},
              'time_to_dense_final': None,
              'evals': _evals(1.0, [0.88, 0.9, 0.92, 0.93])}}}


def test_time_to_accuracy_is_read_against_the_dense_training_time(tmp_path):
  bench = _bench()
  table = '\n'.join(long_report.bench_table(bench))
  assert ('| demp | 0.9200 (-1.00 points) | 0.750 | 200.0 (0.500x) | 3.0 | '
          'step 200, 100.0 s (0.250x) | step 400, 200.0 s (0.500x) |') in table
  assert '| no_prune | 0.9300 (+0.00 points)' in table
  assert 'not reached' in table
  assert 'full width until step 200 (100.0 s; the dense run there: 200.0 s)' \
      in table
  # write_report copies the JSON and its load samples next to the report
  sweep = tmp_path / 'sweep'
  _write(str(sweep / 'main'), MAIN)
  os.makedirs(sweep / 'bench_train')
  (sweep / 'bench_train' / 'bench_train.json').write_text(json.dumps(bench))
  (sweep / 'bench_train' / 'load_samples.txt').write_text('0.1 0.1 0.1\n')
  path = long_report.write_report(str(sweep), str(tmp_path / 'out'))
  assert '## Time to accuracy: `bench_train`' in open(path).read()
  assert (tmp_path / 'out' / 'bench_train.json').exists()
  assert (tmp_path / 'out' / 'bench_train_loadavg.txt').exists()


def test_a_fresh_checkout_restores_the_committed_results(tmp_path):
  sweep, out = tmp_path / 'sweep', tmp_path / 'out'
  _write(str(sweep / 'main'), MAIN)
  _write(str(sweep / 'abl_l2'), [_row('demp', 0.01, 0, 0.95, 0.5)])
  os.makedirs(sweep / 'bench_train')
  (sweep / 'bench_train' / 'bench_train.json').write_text(
      json.dumps(_bench()))
  (sweep / 'bench_train' / 'load_samples.txt').write_text('0.1 0.1 0.1\n')
  os.makedirs(sweep / 'collapse' / 'demo')
  (sweep / 'collapse' / 'demo' / 'summary.json').write_text(json.dumps({
      'evals': _evals(1.0, [0.8, 0.3, 0.9]), 'test_accuracy': 0.9,
      'neuron_sparsity': 0.7, 'pruning_events': [
          {'step': 2, 'live_units': {'a': 3, 'b': 4}}]}))
  report = open(long_report.write_report(str(sweep), str(out))).read()
  assert '0.9000' in report and 'collapse' in report
  # the runs' directory is gone (a fresh checkout): restore, report again
  fresh = tmp_path / 'fresh'
  written = long_report.restore(str(out), str(fresh))
  assert (fresh / 'main' / 'results.jsonl').read_text() == \
      (sweep / 'main' / 'results.jsonl').read_text()
  assert (fresh / 'bench_train' / 'load_samples.txt').exists()
  assert (fresh / 'collapse' / 'demo' / long_report.RESTORED).exists()
  again = open(long_report.write_report(str(fresh), str(tmp_path / 'o2')))
  assert again.read() == report
  # what the sweep already holds is never overwritten
  _write(str(fresh / 'main'), MAIN[:1])
  assert long_report.restore(str(out), str(fresh)) == []
  assert len(written) == 5  # 2 parts, the bench and its load, collapse
  assert len(read_rows(str(fresh / 'main'))) == 1
  # a collapse run restarted (its directory emptied) loses no record
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(fresh / 'collapse' / 'demo', fresh / 'collapse' / 'other')
  shutil.rmtree(fresh / 'collapse' / 'demo')
  (fresh / 'collapse' / 'demo').mkdir()
  long_report.write_report(str(fresh), str(out))
  assert set(json.load(open(out / 'collapse.json'))) == {'demo', 'other'}
