"""bench_train's time-to-accuracy and phase accounting, on made-up runs."""
from experiments import bench_train


def _evals(accs, every=100, seconds=2.0):
  return [{'step': every * (i + 1), 'test_accuracy': a,
           'train_clock_seconds': seconds * (i + 1)}
          for i, a in enumerate(accs)]


def _summary(evals):
  return {
      'units_initial': 10, 'evals': evals,
      'pruning_events': [
          {'step': 100, 'clock': 2.5, 'decide_seconds': 0.5,
           'recalibrate_seconds': 0.25, 'live_units': {'a': 6, 'b': 4}},
          {'step': 200, 'clock': 5.0, 'decide_seconds': 0.5,
           'recalibrate_seconds': 0.25, 'live_units': {'a': 3, 'b': 4}},
          {'step': 300, 'clock': 7.0, 'decide_seconds': 0.5,
           'live_units': {'a': 2, 'b': 1}}],
      'shrink_overhead': [{'overhead_seconds': 1.0},
                          {'overhead_seconds': 0.5}],
      'step_seconds_first': 0.04, 'step_seconds_last': 0.01}


def test_time_to_is_the_first_evaluation_at_or_above_the_target():
  evals = _evals([0.5, 0.89, 0.87, 0.9])
  assert bench_train.time_to(evals, 0.89) == {'step': 200,
                                              'train_seconds': 4.0}
  assert bench_train.time_to(evals, 0.95) is None


def test_phases_find_the_first_deaths_the_costs_and_the_dip():
  dense = _evals([0.8, 0.85, 0.88, 0.9, 0.91])
  s = _summary(_evals([0.1, 0.8, 0.3, 0.86, 0.9]))
  p = bench_train.phases(s, dense)
  # the first event kills nobody (6 + 4 = 10 units): the second does
  assert p['dense_phase'] == {'step': 200, 'train_seconds': 5.0}
  assert p['death_check_seconds'] == 1.5
  assert p['recalibrate_seconds'] == 0.5
  assert p['shrink_overhead_seconds'] == 1.5
  # the dip is after the first evaluation at 0.5 or more (0.1 is the start)
  assert p['accuracy_dip'] == {'step': 300, 'test_accuracy': 0.3,
                               'dense_test_accuracy': 0.88}
  assert (p['step_seconds_first'], p['step_seconds_last']) == (0.04, 0.01)


def test_a_bad_command_line_stops_before_any_run(tmp_path, capsys):
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  from configs import fashion_mnist_demp  # pylint: disable=g-import-not-at-top
  config = fashion_mnist_demp.get_config('tiny')
  base = str(tmp_path / 'bench')
  algorithms = ('demp', 'no_prune')
  bench_train.check_command_line(config, 10, base, algorithms)  # fine
  bad_config = fashion_mnist_demp.get_config('tiny')
  bad_config.batch_size = 0
  os.makedirs(base + '_no_prune')
  for args, words in [
      ((bad_config, 10), 'config.batch_size=0'),
      ((config, 0), '--eval_every=0: must be >= 1'),
      ((config, 10), f'{base}_no_prune already exists'),
  ]:
    with pytest.raises(SystemExit) as e:
      bench_train.check_command_line(*args, base, algorithms)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and words in err and '\n' not in err
