"""The synthetic dataset, generic subsets, sharded batches and prefetch."""
import threading
import time

import numpy as np
import pytest

from demp_jax.data import (Subset, held_batches, load_dataset, prefetch,
                           split, take, train_batches)
from demp_jax.data.synthetic import SyntheticSource, nearest_template


@pytest.mark.parametrize('shape', [(32, 32, 3), (28, 28, 1), (224, 224, 3),
                                   (17, 9, 2)])
def test_any_shape(shape):
  src = SyntheticSource(50, shape, 7, seed=1)
  x, y = src.get(np.array([4, 0, 49]))
  assert x.shape == (3,) + shape and x.dtype == np.uint8
  assert y.dtype == np.int32 and y.min() >= 0 and y.max() < 7
  assert src.example_shape == shape and len(src) == 50


def test_example_is_a_function_of_its_index():
  src = SyntheticSource(100, (32, 32, 3), 10, seed=3)
  x1, y1 = src.get(np.array([5, 17, 2]))
  x2, y2 = src.get(np.array([2, 5, 5, 17]))
  np.testing.assert_array_equal(x1[[2, 0, 1]], x2[[0, 1, 3]])
  np.testing.assert_array_equal(x2[1], x2[2])
  np.testing.assert_array_equal(y1, src.labels(np.array([5, 17, 2])))
  # another split draws other examples over the same templates
  test = SyntheticSource(100, (32, 32, 3), 10, seed=3, split=1)
  assert not np.array_equal(test.get(np.array([5]))[0], x1[:1])
  np.testing.assert_array_equal(test.templates, src.templates)
  other = SyntheticSource(100, (32, 32, 3), 10, seed=4)
  assert not np.array_equal(other.templates, src.templates)
  with pytest.raises(IndexError):
    src.get(np.array([100]))


def test_signal_is_learnable_and_balanced():
  src = SyntheticSource(400, (32, 32, 3), 10, seed=0)
  x, y = src.get(np.arange(400))
  assert np.mean(nearest_template(src, x) == y) > 0.95
  assert np.bincount(y, minlength=10).min() > 20
  # a linear probe fitted on half generalises to the other half
  feats = x.reshape(400, -1).astype(np.float32) / 255.0
  feats = np.concatenate([feats, np.ones((400, 1), np.float32)], 1)
  w, *_ = np.linalg.lstsq(feats[:200], np.eye(10)[y[:200]], rcond=None)
  assert np.mean(np.argmax(feats[200:] @ w, 1) == y[200:]) > 0.5
  # with no signal, the same classifier is at chance
  flat = SyntheticSource(400, (32, 32, 3), 10, seed=0, signal=0.0)
  x0, y0 = flat.get(np.arange(400))
  assert np.mean(nearest_template(flat, x0) == y0) < 0.25


def test_bad_configs_name_the_key():
  with pytest.raises(ValueError, match='image_shape'):
    SyntheticSource(10, (32, 32), 10)
  with pytest.raises(ValueError, match='num_classes'):
    SyntheticSource(10, (8, 8, 1), 1)
  with pytest.raises(ValueError, match='train_size'):
    load_dataset({'name': 'synthetic', 'train_size': -1})
  with pytest.raises(ValueError, match="unknown key.*'classes'"):
    load_dataset({'name': 'synthetic', 'classes': 3})
  with pytest.raises(ValueError, match="not a known dataset.*'synthetic'"):
    load_dataset({'name': 'synthetc'})
  with pytest.raises(ValueError, match='config.dataset.mean has 2'):
    load_dataset({'name': 'synthetic', 'mean': (0.1, 0.2)})


def test_load_dataset_synthetic():
  s = load_dataset({'name': 'synthetic', 'image_shape': (16, 16, 3),
                    'num_classes': 5, 'train_size': 64, 'test_size': 32,
                    'train_subset': 40, 'holdout': 8, 'normalize': False,
                    'augment': 'crop_flip_reflect', 'seed': 2})
  assert s.num_classes == 5 and s.augment == 'crop_flip_reflect'
  assert (len(s.train), len(s.holdout), len(s.test)) == (32, 8, 32)
  assert s.mean == (0.0,) * 3 and s.std == (1.0,) * 3
  base = SyntheticSource(64, (16, 16, 3), 5, seed=2)
  np.testing.assert_array_equal(s.holdout.get(np.arange(8))[0],
                                base.get(np.arange(32, 40))[0])
  s2 = load_dataset({'name': 'synthetic', 'image_shape': (8, 8, 1)})
  assert s2.mean == (0.5,) and s2.std == (0.24,)
  s3 = load_dataset({'name': 'synthetic', 'mean': (0.1,), 'std': (2.0,)})
  assert s3.mean == (0.1,) * 3 and s3.std == (2.0,) * 3


def test_take_and_split_of_streaming_sources():
  src = SyntheticSource(20, (4, 4, 1), 3)
  assert take(src, 50) is src
  head = take(src, 5)
  assert isinstance(head, Subset) and len(head) == 5
  a, b = split(src, 6)
  assert (len(a), len(b)) == (14, 6)
  np.testing.assert_array_equal(b.get(np.array([0]))[0],
                                src.get(np.array([14]))[0])
  with pytest.raises(ValueError):
    split(src, 20)


class _StepSource:
  """Records the step passed through ``get_at_step``."""

  def __init__(self, n):
    self.n, self.steps = n, []

  def __len__(self):
    return self.n

  example_shape = (1, 1, 1)

  def get(self, idx):
    raise AssertionError('train_batches must call get_at_step')

  def get_at_step(self, idx, step):
    self.steps.append(step)
    idx = np.asarray(idx)
    return (np.full((idx.size, 1, 1, 1), step, np.uint8),
            idx.astype(np.int32))


def test_train_batches_pass_the_global_step():
  src = _StepSource(40)
  it = train_batches(Subset(src, np.arange(40)), 8, seed=0, start_step=7)
  for _ in range(4):
    next(it)
  assert src.steps == [7, 8, 9, 10]  # 5 batches per epoch, so 10 is epoch 2


@pytest.mark.parametrize('count', [2, 4])
def test_process_slices_make_the_global_batch(count):
  src = SyntheticSource(96, (8, 8, 3), 4, seed=5)
  full = train_batches(src, 16, seed=1)
  parts = [train_batches(src, 16, seed=1, process_index=p,
                         process_count=count) for p in range(count)]
  for _ in range(8):  # crosses an epoch boundary (6 batches per epoch)
    x, y = next(full)
    xs, ys = zip(*(next(p) for p in parts))
    np.testing.assert_array_equal(np.concatenate(xs), x)
    np.testing.assert_array_equal(np.concatenate(ys), y)
  h = [held_batches(src, 2, 8, seed=3, process_index=p, process_count=count)
       for p in range(count)]
  hx, _ = held_batches(src, 2, 8, seed=3)
  np.testing.assert_array_equal(np.concatenate([a for a, _ in h], 1), hx)


def test_prefetch_order_errors_and_stop():
  assert list(prefetch(iter(range(10)), 3)) == list(range(10))
  assert list(prefetch(iter(range(4)), 0)) == list(range(4))

  def boom():
    yield 1
    raise RuntimeError('bad record')

  it = prefetch(boom())
  assert next(it) == 1
  with pytest.raises(RuntimeError, match='bad record'):
    next(it)

  produced = []

  def endless():
    i = 0
    while True:
      produced.append(i)
      yield i
      i += 1

  before = threading.active_count()
  it = prefetch(endless(), 2)
  assert [next(it) for _ in range(3)] == [0, 1, 2]
  it.close()
  time.sleep(0.5)
  n = len(produced)
  time.sleep(0.3)
  assert len(produced) == n <= 3 + 2 + 1
  assert threading.active_count() <= before
