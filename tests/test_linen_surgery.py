"""DemP in a user's own Linen loop: a ``TrainState`` with ``batch_stats``,
``state.apply_fn`` in a jitted step, :func:`demp_jax.linen_surgery.shrink`.
"""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import demp_jax
from demp_jax import linen_surgery, models
from demp_jax.net import ModelError, Net


class UserCNN(nn.Module):
  """Written the way Linen users write them: widths in the body."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, name='bn')(x)
    x = nn.avg_pool(nn.relu(x), (4, 4), strides=(4, 4))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(16, name='fc1')(x))
    x = nn.relu(nn.Dense(12, name='fc2')(x))
    return nn.Dense(10, name='head')(x)


class TrainState(train_state.TrainState):
  batch_stats: Any


X = jax.random.normal(jax.random.PRNGKey(1), (32, 28, 28, 1))
Y = jnp.arange(32) % 10
DEAD = {'conv': [1, 6], 'fc1': [3, 4, 9], 'fc2': [0]}


@jax.jit
def train_step(state, x, y):
  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, updates
  grads, updates = jax.grad(loss_fn, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads,
                               batch_stats=updates['batch_stats'])


def kill(params):
  """Dead on every input: a zero BatchNorm scale with a negative offset, a
  zero kernel column with a negative bias."""
  p = jax.tree.map(np.array, params)
  for name, units in DEAD.items():
    if name == 'conv':
      p['bn']['scale'][units] = 0.0
      p['bn']['bias'][units] = -1.0
    else:
      p[name]['kernel'][:, units] = 0.0
      p[name]['bias'][units] = -1.0
  return jax.tree.map(jnp.asarray, p)


def trained_with_dead_units():
  model = UserCNN()
  net, variables = Net.create(model, input_shape=(28, 28, 1))
  updater = demp_jax.create_updater_from_config(
      {'algorithm': 'demp', 'reg_peak': 1e-2, 'reg_span': 50,
       'noise_peak': 0.0}, topology=net.topology)
  state = TrainState.create(
      apply_fn=model.apply, params=variables['params'],
      batch_stats=variables['batch_stats'],
      tx=updater.wrap_optax(optax.adamw(1e-2, weight_decay=1e-3)))
  for _ in range(3):
    state = train_step(state, X, Y)
  state = state.replace(params=kill(state.params))
  for _ in range(2):
    state = train_step(state, X, Y)
  return net, state


def test_shrunk_state_continues_like_the_full_one():
  net, state = trained_with_dead_units()
  keep = {g: ~np.isin(np.arange(net.topology.group(g).size), u)
          for g, u in DEAD.items()}
  res = linen_surgery.shrink(net, state, keep, probe=X)
  assert res.removed == {g: len(u) for g, u in DEAD.items()}
  assert res.max_masked_diff <= 1e-5
  assert int(res.state.step) == 5
  assert res.state.params['fc1']['kernel'].shape == (7 * 7 * 6, 13)
  assert res.state.batch_stats['bn']['mean'].shape == (6,)
  # the model's own apply fails at the new widths; the state's runs
  with pytest.raises(Exception):
    state.apply_fn({'params': res.state.params,
                    'batch_stats': res.state.batch_stats}, X)
  full, small = train_step(state, X, Y), train_step(res.state, X, Y)
  conv = np.setdiff1d(np.arange(8), DEAD['conv'])
  f1 = np.setdiff1d(np.arange(16), DEAD['fc1'])
  f2 = np.setdiff1d(np.arange(12), DEAD['fc2'])
  rows = (np.arange(49)[:, None] * 8 + conv[None, :]).reshape(-1)
  fp, sp = full.params, small.params
  pairs = [
      (sp['conv']['kernel'], fp['conv']['kernel'][..., conv]),
      (sp['bn']['scale'], fp['bn']['scale'][conv]),
      (small.batch_stats['bn']['var'], full.batch_stats['bn']['var'][conv]),
      (sp['fc1']['kernel'], fp['fc1']['kernel'][rows][:, f1]),
      (sp['fc2']['kernel'], fp['fc2']['kernel'][f1][:, f2]),
      (sp['head']['kernel'], fp['head']['kernel'][f2]),
      (sp['head']['bias'], fp['head']['bias']),
  ]
  for i, (got, want) in enumerate(pairs):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                               err_msg=str(i))
  # a second shrink unwraps the first's apply_fn instead of nesting it
  again = linen_surgery.shrink(res.net, small, {'fc2': np.arange(11) < 5})
  assert again.state.apply_fn == res.state.apply_fn
  train_step(again.state, X, Y)


def test_a_built_in_model_gets_its_rebuilt_apply():
  model = models.ResNet(stage_sizes=(1,), base_width=4, pool_size=None)
  net, variables = Net.create(model, input_shape=(8, 8, 3))
  assert net.handwritten
  assert set(variables) == {'params', 'batch_stats', 'shortcut'}

  class ResNetState(TrainState):
    shortcut: Any  # its per-block gather maps

  state = ResNetState.create(
      apply_fn=model.apply, params=variables['params'],
      batch_stats=variables['batch_stats'], shortcut=variables['shortcut'],
      tx=optax.sgd(0.1, momentum=0.9))
  name = net.topology.names[0]
  size = net.topology.group(name).size
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
  res = linen_surgery.shrink(net, state, {name: np.arange(size) % 2 == 0},
                             probe=x)
  assert res.state.apply_fn == res.net.module.apply
  new_vars = {'params': res.state.params, 'shortcut': res.state.shortcut,
              'batch_stats': res.state.batch_stats}
  np.testing.assert_allclose(res.state.apply_fn(new_vars, x),
                             res.net.apply(new_vars, x), atol=1e-6)
  with pytest.raises(ValueError, match='must be the model.s own apply'):
    linen_surgery.shrink(net, state.replace(apply_fn=lambda *a: None),
                         {name: np.arange(size) % 2 == 0})


def test_bad_inputs_are_named():
  net, variables = Net.create(UserCNN(), input_shape=(28, 28, 1))
  plain = train_state.TrainState.create(
      apply_fn=UserCNN().apply, params=variables['params'],
      tx=optax.adam(1e-3))
  with pytest.raises(ValueError, match="no field 'batch_stats'"):
    linen_surgery.shrink(net, plain, {'fc2': np.arange(12) < 5})
  state = TrainState.create(
      apply_fn=UserCNN().apply, params=variables['params'],
      batch_stats=variables['batch_stats'], tx=optax.adam(1e-3))
  with pytest.raises(ValueError, match=r'probe has shape \(28, 28, 1\)'):
    linen_surgery.shrink(net, state, {'fc2': np.arange(12) < 5}, probe=X[0])
  res = linen_surgery.shrink(net, state, {'fc2': np.arange(12) < 5})
  with pytest.raises(ValueError, match=r'do not fit the net of .*'
                     r'params/fc2/bias: \(5,\) where the net has \(12,\)\); '
                     'pass the net that describes them'):  # the net before
    linen_surgery.shrink(net, res.state, {'fc2': np.arange(5) < 3})

  class Tiny(nnx.Module):
    def __init__(self):
      self.fc = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
      self.out = nnx.Linear(4, 2, rngs=nnx.Rngs(0))

    def __call__(self, x):
      return self.out(nnx.relu(self.fc(x)))

  nnx_net, _ = Net.create(Tiny(), input_shape=(3,))
  with pytest.raises(ModelError, match='NNX'):
    linen_surgery.shrink(nnx_net, plain, {})


def test_frozen_dict_params_stay_frozen_for_the_optimizer():
  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2, name='out')(nn.relu(nn.Dense(6, name='fc')(x)))

  model = Tiny()
  net, variables = Net.create(model, input_shape=(3,))
  # older Flax code (and flax.core.freeze) keeps params in a FrozenDict,
  # and the optimizer state in that layout
  params = flax.core.freeze(variables['params'])
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=optax.adam(1e-2))
  res = linen_surgery.shrink(net, state, {'fc': np.arange(6) < 4})
  assert isinstance(res.state.params, flax.core.FrozenDict)
  x = jnp.ones((2, 3))
  grads = jax.grad(lambda p: res.state.apply_fn({'params': p}, x).sum())(
      res.state.params)
  new = res.state.apply_gradients(grads=grads)  # same tree as opt_state's
  assert new.params['fc']['kernel'].shape == (3, 4)
