"""Width buckets: widths rounded up, padded with the best removed units."""
import numpy as np
import pytest

from demp_jax import buckets


def test_widths_round_up_to_the_bucket_and_never_past_the_layer():
  assert buckets.bucket_width(3, 32, 8) == 8
  assert buckets.bucket_width(9, 32, 8) == 16
  assert buckets.bucket_width(30, 31, 8) == 31
  assert buckets.bucket_width(0, 32, 8) == 1  # a layer keeps one unit
  with pytest.raises(ValueError, match='round_widths_to'):
    buckets.bucket_width(3, 32, 0)


def test_padding_keeps_the_highest_scoring_removed_units():
  live = {'a': np.array([1, 0, 0, 1, 0, 0], bool), 'b': np.ones(3, bool)}
  scores = {'a': np.array([0.0, 0.1, 0.9, 0.0, 0.5, 0.2])}
  plan = buckets.plan(live, 4, scores)
  assert plan.kept['a'].tolist() == [True, False, True, True, True, False]
  assert plan.live_after['a'].tolist() == [True, False, True, False]
  assert plan.kept['b'].all() and plan.live_after['b'].all()
  assert plan.shrinks
  assert not buckets.plan(live, 8, scores).shrinks  # one bucket: no cut
  first = buckets.plan(live, 4)  # no scores: the first removed units
  assert first.kept['a'].tolist() == [True, True, True, True, False, False]
