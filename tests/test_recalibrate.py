"""BatchNorm recalibration: the running statistics a train-mode pass sees."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import randomize_batch_stats
from demp_jax import models
from demp_jax.net import Net
from demp_jax.training import loop
from demp_jax.training import recalibrate as recalibrate_lib
from demp_jax.training.recalibrate import recalibrate
from test_loop import needs_fmnist, tiny
import user_models

ARCHS = {
    'vgg': (lambda: models.VGG(conv_widths=(4, 6), pool_after=(0,),
                               dense_widths=(5,), num_classes=3),
            (8, 8, 1)),
    'resnet18': (lambda: models.ResNet18(base_width=2, num_classes=3,
                                         pool_size=None), (8, 8, 3)),
    'nnx_cnn': (lambda: user_models.NFlattenCNN(user_models.nnx.Rngs(0)),
                user_models.IMAGE),
}


def _net(make, shape):
  return Net.create(make(), shape)


def _setup(name, n=3, batch=16):
  make, shape = ARCHS[name]
  model, variables = _net(make, shape)
  # stale running statistics: random, far from the batch statistics
  variables = randomize_batch_stats(variables, seed=1)
  x = 1.5 * jax.random.normal(jax.random.PRNGKey(2), (n, batch) + shape) + 0.5
  return model, variables, x


@pytest.mark.parametrize('name', sorted(ARCHS))
def test_one_batch_makes_eval_mode_equal_train_mode(name):
  # With the statistics of one batch, the eval-mode forward normalises that
  # batch exactly as the train-mode forward does, in every layer.
  model, variables, x = _setup(name, n=1)
  train_logits, _ = model.apply(variables, x[0], train=True,
                                mutable=['batch_stats'])
  stale = model.apply(variables, x[0], train=False)
  new = recalibrate(model, variables, x)
  fresh = model.apply(new, x[0], train=False)
  scale = float(jnp.max(jnp.abs(train_logits)))
  assert float(jnp.max(jnp.abs(stale - train_logits))) > 1e-2 * scale
  np.testing.assert_allclose(fresh, train_logits, atol=1e-5 * scale + 1e-6)


def test_several_batches_average_the_batch_statistics():
  model, variables, x = _setup('vgg', n=3)
  together = recalibrate(model, variables, x)
  alone = [recalibrate(model, variables, x[i:i + 1]) for i in range(3)]
  expected = jax.tree.map(lambda *s: sum(s) / 3,
                          *[a['batch_stats'] for a in alone])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               together['batch_stats'], expected)
  # nothing but the running statistics changes
  assert set(together) == set(variables)
  jax.tree.map(np.testing.assert_array_equal, together['params'],
               variables['params'])
  assert (jax.tree.map(lambda a: (a.shape, a.dtype), together['batch_stats'])
          == jax.tree.map(lambda a: (a.shape, a.dtype),
                          variables['batch_stats']))


def test_first_layer_statistics_match_a_direct_computation():
  # MLP: the first norm's input is x W + b, so its statistics are known.
  model, variables = _net(lambda: models.MLP(widths=(6, 4), num_classes=3),
                          (5,))
  variables = randomize_batch_stats(variables, seed=3)
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 32, 5)) * 3.0 + 1.0
  new = recalibrate(model, variables, x)
  p = variables['params']['dense_0']
  h = np.asarray(x) @ np.asarray(p['kernel']) + np.asarray(p['bias'])
  np.testing.assert_allclose(new['batch_stats']['bn_0']['mean'],
                             h.mean(axis=1).mean(axis=0), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(new['batch_stats']['bn_0']['var'],
                             h.var(axis=1).mean(axis=0), rtol=1e-4,
                             atol=1e-5)


def test_a_model_without_batch_norm_is_returned_unchanged():
  model, variables = _net(
      lambda: models.MLP(widths=(6,), num_classes=3, use_bn=False), (5,))
  new = recalibrate(model, variables, jnp.ones((2, 4, 5)))
  assert set(new) == set(variables) == {'params'}
  jax.tree.map(np.testing.assert_array_equal, new, variables)


def test_batches_without_a_batch_axis_are_refused_by_shape():
  model, variables = _net(lambda: models.MLP(widths=(6,), num_classes=3),
                          (5,))
  with pytest.raises(ValueError, match=r'\[N, B, \.\.\.\].*\(32, 5\)'):
    recalibrate(model, variables, jnp.ones((32, 5)))


@needs_fmnist
def test_the_loop_recalibrates_before_every_death_check_and_evaluation(
    tmp_path, monkeypatch):
  calls = []

  def counted(model, variables, batches):
    calls.append(batches.shape)
    return recalibrate(model, variables, batches)

  monkeypatch.setattr(recalibrate_lib, 'recalibrate', counted)
  c = tiny(**{'bn_recalibration_batches': 2, 'eval_every': 10})
  s = loop.train(c, str(tmp_path / 'on'))
  events, evals = s['pruning_events'], s['evals']
  assert [e['step'] for e in events] == [10, 20, 30]
  assert [e['step'] for e in evals] == [10, 20, 30]
  # one per death check, one per evaluation and one for the final test
  assert len(calls) == len(events) + len(evals) + 1
  assert all(shape[:2] == (2, c.batch_size) for shape in calls)
  assert all(e['recalibrate_seconds'] > 0 for e in events)
  assert all(0 <= e['test_accuracy_running_stats'] <= 1 for e in evals)
  # the final test with both statistics, on the same network
  assert s['test_loss'] != s['test_loss_running_stats']

  calls.clear()
  s = loop.train(tiny(), str(tmp_path / 'off'))
  assert not calls and 'test_accuracy_running_stats' not in s
