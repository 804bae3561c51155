"""The long-horizon report: means, spreads and deltas from made-up rows."""
import json
import os

import pytest

from experiments import long_report


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
