"""DemP in a user's own NNX loop: ``nnx.Optimizer``, ``optimizer.update``,
the death check on the live module and :func:`demp_jax.nnx_surgery.shrink`.
"""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import demp_jax
from demp_jax import nnx_surgery, stats, transforms
from demp_jax.net import ModelError, Net


class UserCNN(nnx.Module):
  """Written the way NNX users write them: layers in ``__init__``, a list
  of hidden layers, a flatten from NHWC into a dense layer."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.hidden = nnx.List([nnx.Linear(7 * 7 * 8, 16, rngs=rngs),
                            nnx.Linear(16, 12, rngs=rngs)])
    self.head = nnx.Linear(12, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    x = nnx.avg_pool(x, (4, 4), strides=(4, 4))
    x = x.reshape((x.shape[0], -1))
    for layer in self.hidden:
      x = nnx.relu(layer(x))
    return self.head(x)


X = jax.random.normal(jax.random.PRNGKey(1), (32, 28, 28, 1))
Y = jnp.arange(32) % 10
DEAD = {'conv': [1, 6], 'hidden/0': [3, 4, 9], 'hidden/1': [0]}


@nnx.jit
def train_step(model, optimizer, x, y):
  def loss(m):
    return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
  grads = nnx.grad(loss)(model)
  optimizer.update(model, grads)


def kill(model):
  """Makes the units of ``DEAD`` dead on every input: a zero BatchNorm
  scale with a negative offset, a zero kernel column with a negative bias;
  ReLU gives 0 and every gradient through them is 0."""
  for name, units in DEAD.items():
    u = np.array(units)
    if name == 'conv':
      model.bn.scale[...] = model.bn.scale[...].at[u].set(0.0)
      model.bn.bias[...] = model.bn.bias[...].at[u].set(-1.0)
    else:
      layer = model.hidden[int(name.split('/')[1])]
      layer.kernel[...] = layer.kernel[...].at[:, u].set(0.0)
      layer.bias[...] = layer.bias[...].at[u].set(-1.0)


def demp_optimizer(model, topology, noise_peak=0.0):
  updater = demp_jax.create_updater_from_config(
      {'algorithm': 'demp', 'reg_peak': 1e-2, 'reg_span': 50,
       'noise_peak': noise_peak}, topology=topology)
  return updater, nnx.Optimizer(
      model, updater.wrap_optax(optax.adamw(1e-2, weight_decay=1e-3)),
      wrt=nnx.Param)


def trained_with_dead_units():
  model = UserCNN(nnx.Rngs(0))
  net, _ = Net.create(model, input_shape=(28, 28, 1))
  updater, optimizer = demp_optimizer(model, net.topology)
  for _ in range(3):  # moments that differ from unit to unit
    train_step(model, optimizer, X, Y)
  kill(model)
  for _ in range(2):
    train_step(model, optimizer, X, Y)
  return net, updater, model, optimizer


def test_the_death_check_reads_the_live_module():
  net, updater, model, _ = trained_with_dead_units()
  held = X.reshape(2, 16, 28, 28, 1)
  dead = {g: set(np.flatnonzero(np.asarray(s.dead)).tolist()) for g, s in
          stats.saturation_stats(net, net.variables_of(model), held,
                                 0.0).items()}
  fresh = UserCNN(nnx.Rngs(0))
  dead_fresh = stats.saturation_stats(net, net.variables_of(fresh), held, 0.0)
  # the killed conv channels are dead in the trained module only (random
  # hidden units behind ReLU inputs may be dead from the start)
  assert dead['conv'] == set(DEAD['conv'])
  assert not np.asarray(dead_fresh['conv'].dead).any()
  for g, units in DEAD.items():
    assert set(units) <= dead[g], g
  keep = updater.keep_from_stats(stats.saturation_stats(
      net, net.variables_of(model), held, 0.0))
  for g, units in DEAD.items():
    assert not np.asarray(keep[g])[units].any(), g


def test_shrunk_module_and_optimizer_continue_like_the_full_ones():
  net, _, model, optimizer = trained_with_dead_units()
  keep = {g: ~np.isin(np.arange(net.topology.group(g).size), u)
          for g, u in DEAD.items()}
  before = jax.tree.map(np.array, nnx.state(model, nnx.Param))
  res = nnx_surgery.shrink(net, model, keep, optimizer=optimizer, probe=X)
  assert res.removed == {g: len(u) for g, u in DEAD.items()}
  assert res.max_masked_diff <= 1e-5
  assert (res.model.conv.out_features, res.model.bn.num_features,
          res.model.hidden[0].in_features, res.model.hidden[0].out_features,
          res.model.hidden[1].in_features, res.model.head.in_features) == (
              6, 6, 7 * 7 * 6, 13, 13, 11)
  assert int(res.optimizer.step[...]) == int(optimizer.step[...]) == 5
  # the originals are untouched
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.array, nnx.state(model, nnx.Param)))
  assert nnx.as_pure(optimizer.opt_state).inner_state[1][0].mu[
      'conv']['kernel'].shape == (3, 3, 1, 8)

  # one more step each: the kept units move exactly alike, so the moments
  # and masks were sliced with the params
  train_step(model, optimizer, X, Y)
  train_step(res.model, res.optimizer, X, Y)
  full = nnx.as_pure(nnx.state(model, nnx.Param))
  small = nnx.as_pure(nnx.state(res.model, nnx.Param))
  conv = np.setdiff1d(np.arange(8), DEAD['conv'])
  h0 = np.setdiff1d(np.arange(16), DEAD['hidden/0'])
  h1 = np.setdiff1d(np.arange(12), DEAD['hidden/1'])
  rows = (np.arange(49)[:, None] * 8 + conv[None, :]).reshape(-1)
  expect = {
      ('conv', 'kernel'): full['conv']['kernel'][..., conv],
      ('bn', 'scale'): full['bn']['scale'][conv],
      ('hidden', 0, 'kernel'): full['hidden'][0]['kernel'][rows][:, h0],
      ('hidden', 1, 'kernel'): full['hidden'][1]['kernel'][h0][:, h1],
      ('hidden', 1, 'bias'): full['hidden'][1]['bias'][h1],
      ('head', 'kernel'): full['head']['kernel'][h1],
      ('head', 'bias'): full['head']['bias'],
  }
  for path, want in expect.items():
    got = small
    for k in path:
      got = got[k]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                               err_msg=str(path))


def test_updater_masks_follow_the_params_inside_nnx_optimizer():
  model = UserCNN(nnx.Rngs(0))
  net, _ = Net.create(model, input_shape=(28, 28, 1))
  _, optimizer = demp_optimizer(model, net.topology)
  masks = nnx.as_pure(optimizer.opt_state).masks
  # nnx.Optimizer initialises from nnx.Variables, whose key paths end in
  # `.value`: the masks must still find their topology entries
  assert masks['conv']['kernel'].shape == (3, 3, 1, 8)
  assert masks['hidden'][1]['kernel'].shape == (16, 12)
  assert masks['head']['bias'] is None  # the logits are not units


def test_transforms_take_the_live_mask_through_optimizer_update():
  model = UserCNN(nnx.Rngs(0))
  kill(model)
  optimizer = nnx.Optimizer(model, optax.chain(
      optax.sgd(0.0), transforms.live_unit_noise(1e-2, seed=3)),
                            wrt=nnx.Param)
  grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(
      m(X), Y).mean())(model)
  before = np.array(model.hidden[0].kernel[...])
  optimizer.update(model, grads,
                   live_mask=jax.tree.map(lambda g: g != 0, grads))
  moved = np.array(model.hidden[0].kernel[...]) != before
  live = np.array(grads['hidden'][0]['kernel'][...]) != 0
  assert not live[:, DEAD['hidden/0']].any()
  assert live.sum() > 1000
  np.testing.assert_array_equal(moved, live)  # noise on live entries only


def test_scale_penalty_finds_nnx_norm_scales():
  model = UserCNN(nnx.Rngs(0))
  model.bn.scale[...] = jnp.linspace(-1.0, 1.0, 8)
  optimizer = nnx.Optimizer(model, optax.chain(
      transforms.scale_penalty(0.1), optax.sgd(1.0)), wrt=nnx.Param)
  zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  before = jax.tree.map(np.array, nnx.as_pure(nnx.state(model, nnx.Param)))
  optimizer.update(model, zeros)
  after = nnx.as_pure(nnx.state(model, nnx.Param))
  np.testing.assert_allclose(
      after['bn']['scale'],
      before['bn']['scale'] - 0.1 * np.sign(before['bn']['scale']), atol=1e-7)
  np.testing.assert_array_equal(after['conv']['kernel'],
                                before['conv']['kernel'])


def test_model_and_optimizer_holds_the_new_module():
  model = UserCNN(nnx.Rngs(0))
  net, _ = Net.create(model, input_shape=(28, 28, 1))
  optimizer = nnx.ModelAndOptimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  res = nnx_surgery.shrink(net, model, {'hidden/1': np.arange(12) < 5},
                           optimizer=optimizer, probe=X)
  assert res.optimizer.model is res.model
  res.optimizer.update(nnx.grad(lambda m: m(X).sum())(res.model))
  assert res.model.head.kernel.shape == (5, 10)


def test_bad_inputs_are_named():
  model = UserCNN(nnx.Rngs(0))
  net, _ = Net.create(model, input_shape=(28, 28, 1))
  keep = {'hidden/1': np.arange(12) < 5}
  with pytest.raises(ValueError, match='selects bn/mean, which is not an '
                     'nnx.Param'):
    nnx_surgery.shrink(net, model, keep, optimizer=nnx.Optimizer(
        model, optax.adam(1e-3), wrt=nnx.Variable))
  with pytest.raises(TypeError, match='not an nnx.Optimizer'):
    nnx_surgery.shrink(net, model, keep, optimizer=optax.adam(1e-3))
  with pytest.raises(ValueError, match=r'probe has shape \(4, 28, 28\); it '
                     r'must be a batch .*\[B, 28, 28, 1\]'):
    nnx_surgery.shrink(net, model, keep, probe=X[:4, ..., 0])
  with pytest.raises(ValueError,
                     match=r"keep\['hidden/1'\] has dtype float64"):
    nnx_surgery.shrink(net, model, {'hidden/1': np.array([0.5, 3.0])})
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  res = nnx_surgery.shrink(net, model, keep, optimizer=optimizer)
  with pytest.raises(ValueError, match=r'mu/head/kernel has shape \(12, 10\) '
                     r'where tx.init\(params\) makes \(5, 10\): it was not '
                     'made for these params'):  # the optimizer before a shrink
    nnx_surgery.shrink(res.net, res.model, {'hidden/1': np.arange(5) < 3},
                       optimizer=optimizer)
  other = UserCNN(nnx.Rngs(0))
  other.head = nnx.Linear(12, 3, rngs=nnx.Rngs(1))
  with pytest.raises(ModelError, match=r'params/head/bias: \(3,\) where the '
                     r'net has \(10,\)'):
    nnx_surgery.shrink(net, other, keep)
  linen, _ = Net.create(nn.Dense(4), input_shape=(3,))
  with pytest.raises(ModelError, match='Linen'):
    nnx_surgery.shrink(linen, model, keep)


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_the_new_module_keeps_the_mode_it_was_given(mode):
  class WithDropout(nnx.Module):
    def __init__(self, rngs):
      self.fc = nnx.Linear(6, 8, rngs=rngs)
      self.bn = nnx.BatchNorm(8, rngs=rngs)
      self.drop = nnx.Dropout(0.5, rngs=rngs)
      self.out = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.out(self.drop(nnx.relu(self.bn(self.fc(x)))))

  model = WithDropout(nnx.Rngs(0))
  getattr(model, 'eval' if mode == 'train' else 'train')()
  net, _ = Net.create(model, input_shape=(6,))  # made in the other mode
  getattr(model, mode)()
  new = nnx_surgery.shrink(net, model, {'fc': np.arange(8) < 3}).model
  assert new.bn.use_running_average == new.drop.deterministic == (
      mode == 'eval')
  assert new.fc.out_features == new.bn.num_features == 3


def test_a_mode_unset_when_the_net_was_made_follows_the_module():
  class Attention(nnx.Module):
    def __init__(self, rngs):
      self.emb = nnx.Linear(4, 8, rngs=rngs)
      # deterministic=None until model.train() / model.eval()
      self.att = nnx.MultiHeadAttention(2, 8, dropout_rate=0.5, rngs=rngs)
      self.fc = nnx.Linear(8, 6, rngs=rngs)
      self.out = nnx.Linear(6, 2, rngs=rngs)

    def __call__(self, x):
      h = self.emb(x)
      h = h + self.att(h, decode=False)
      return self.out(nnx.relu(self.fc(h.mean(axis=1))))

  model = Attention(nnx.Rngs(0))
  net, _ = Net.create(model, input_shape=(3, 4))
  assert model.att.deterministic is None
  model.eval()
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4))
  new = nnx_surgery.shrink(net, model, {'fc': np.arange(6) < 4}).model
  assert new.att.deterministic is True
  assert new(x).shape == (2, 2)  # no "deterministic argument" error


SHARDED = '''
import numpy as np, jax, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from flax import nnx
from demp_jax import nnx_surgery
from demp_jax.net import Net

mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ('data', 'model'))
model = nnx.Sequential(nnx.Linear(3, 8, rngs=nnx.Rngs(0)), nnx.relu,
                       nnx.Linear(8, 4, rngs=nnx.Rngs(1)))
net, _ = Net.create(model, input_shape=(3,))
cols, rep = NamedSharding(mesh, P(None, 'model')), NamedSharding(mesh, P())
nnx.update(model, jax.tree.map(
    lambda a: jax.device_put(a, cols if a.ndim == 2 else rep),
    nnx.state(model)))
optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
res = nnx_surgery.shrink(net, model, {'layers/0': np.arange(8) < 6},
                         optimizer=optimizer)
mu = nnx.as_pure(res.optimizer.opt_state)[0].mu
for a in (res.model.layers[0].kernel[...], mu['layers'][0]['kernel']):
  assert a.shape == (3, 6) and a.sharding.mesh == mesh, a.sharding
  assert tuple(a.sharding.spec) == (None, None), a.sharding  # 4 ∤ 6
assert tuple(res.model.layers[2].kernel[...].sharding.spec) == (None,
                                                                'model')
x = jax.device_put(np.ones((8, 3), np.float32), NamedSharding(mesh, P('data')))
nnx.jit(lambda m, x: m(x))(res.model, x).block_until_ready()
'''


def test_a_width_the_mesh_no_longer_divides_stays_on_the_mesh():
  """8 simulated devices (a fresh process): a kernel sharded over a mesh
  axis of 4 and shrunk to 6 columns is replicated over that axis, not
  dropped onto one device; the other leaves keep their sharding."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  run = subprocess.run([sys.executable, '-c', SHARDED], env=env,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
