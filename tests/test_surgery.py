"""Surgery: the shrunk net computes what the masked net computes, and every
params-shaped leaf of the optimiser state is sliced like the params."""
import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from demp_jax import surgery
from demp_jax import topology as topo
from demp_jax.algorithms import create_updater_from_config
from conftest import randomize_batch_stats
from testlib_models import random_variables

OPTIMIZERS = {
    'adamw': lambda: optax.adamw(1e-3, weight_decay=1e-4),
    'sgd_momentum': lambda: optax.sgd(1e-2, momentum=0.9),
}


def _random_keep(t, seed):
  rng = np.random.default_rng(seed)
  keep = {}
  for g in t.groups:
    k = rng.random(g.size) < rng.uniform(0.2, 0.9)
    k[rng.integers(g.size)] = True  # at least one unit
    keep[g.name] = k
  return keep


def _step(net, v, tx, opt_state, x):
  """One real training step, so the optimiser moments are non-zero."""
  def loss(p):
    out, _ = net.apply({**v, 'params': p}, x, train=True, mutable=net.mutable)
    return jnp.mean(out ** 2)
  @jax.jit
  def step(params, opt_state):
    u, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, u), opt_state
  params, opt_state = step(v['params'], opt_state)
  return {**v, 'params': params}, opt_state


@pytest.mark.parametrize('opt', sorted(OPTIMIZERS))
@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('arch', ['mlp', 'cnn'])
def test_shrunk_equals_masked_on_random_dead_sets(arch, seed, opt, small_mlp,
                                                 small_cnn):
  net, _ = small_mlp if arch == 'mlp' else small_cnn
  shape = net.input_shape
  # random weights per seed (numpy, no init to compile), some scales zero
  v = randomize_batch_stats(
      random_variables(net, np.random.default_rng(seed)), seed)
  tx = OPTIMIZERS[opt]()
  x = jax.random.normal(jax.random.PRNGKey(seed), (6,) + shape)
  v, opt_state = _step(net, v, tx, tx.init(v['params']), x)
  t = net.topology
  keep = _random_keep(t, seed)
  res = surgery.shrink(net, v, keep, opt_state=opt_state, tx=tx, probe=x)
  assert res.max_masked_diff <= 1e-5
  assert list(res.model.widths) == [int(keep[n].sum()) for n in t.names]
  assert res.removed == {n: int((~keep[n]).sum()) for n in t.names}
  # every params-shaped optimiser leaf matches the new params
  shapes = jax.tree.map(jnp.shape, res.variables['params'])
  optax.tree_map_params(
      tx, lambda leaf, s: np.testing.assert_equal(jnp.shape(leaf), s),
      res.opt_state, shapes)
  # scalar counters kept, moments sliced (not reset)
  before = jax.tree.leaves(opt_state)
  after = jax.tree.leaves(res.opt_state)
  for a, b in zip(before, after):
    if jnp.ndim(a) == 0:
      assert int(a) == int(b)
  # the shrunk state trains on
  _step(res.model, res.variables, tx, res.opt_state, x)


def test_a_layer_shrunk_to_one_unit_stays_a_unit_group(small_mlp):
  net, v = small_mlp
  keep = {'dense_0': np.arange(12) == 4}
  res = surgery.shrink(net, v, keep, probe=jnp.ones((2,) + net.input_shape))
  assert res.model.topology.names == net.topology.names
  assert res.model.widths == (1, 9)


def test_moments_are_sliced_with_the_params(small_cnn):
  net, v = small_cnn
  tx = optax.adam(1e-3)
  x = jax.random.normal(jax.random.PRNGKey(0), (4,) + net.input_shape)
  v, s = _step(net, v, tx, tx.init(v['params']), x)
  keep = {'conv_1': np.array([1, 0, 1, 1, 0, 0, 1, 1], bool)}
  res = surgery.shrink(net, v, keep, opt_state=s, tx=tx)
  kept = np.flatnonzero(keep['conv_1'])
  np.testing.assert_array_equal(res.opt_state[0].mu['conv_1']['kernel'],
                                np.asarray(s[0].mu['conv_1']['kernel'])[
                                    ..., kept])
  np.testing.assert_array_equal(res.opt_state[0].nu['conv_2']['kernel'],
                                np.asarray(s[0].nu['conv_2']['kernel'])[
                                    :, :, kept, :])
  np.testing.assert_array_equal(res.variables['batch_stats']['conv_bn_1']
                                ['mean'], np.asarray(v['batch_stats']
                                                     ['conv_bn_1']['mean'])[
                                                         kept])


def test_common_optax_optimisers_are_sliced_and_adafactor_is_named(small_cnn):
  net, v = small_cnn
  x = jax.random.normal(jax.random.PRNGKey(0), (4,) + net.input_shape)
  keep = {'conv_1': np.array([1, 0, 1, 1, 0, 0, 1, 1], bool)}
  kept = np.flatnonzero(keep['conv_1'])
  label = lambda p: jax.tree.map(lambda a: 'w' if a.ndim > 1 else 'b', p)
  for tx in (optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)),
             optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3),
             optax.multi_transform({'w': optax.adamw(1e-3),
                                    'b': optax.sgd(1e-2, momentum=0.9)}, label),
             optax.MultiSteps(optax.adam(1e-3), every_k_schedule=2),
             optax.contrib.schedule_free_adamw(1e-3)):
    v1, s = _step(net, v, tx, tx.init(v['params']), x)
    res = surgery.shrink(net, v1, keep, opt_state=s, tx=tx)
    # every state leaf shaped like conv_1's kernel is sliced like it
    before = [a for a in jax.tree.leaves(s) if getattr(a, 'shape', None) ==
              v['params']['conv_1']['kernel'].shape]
    after = [a for a in jax.tree.leaves(res.opt_state)
             if getattr(a, 'shape', None) ==
             res.variables['params']['conv_1']['kernel'].shape]
    assert before and len(before) == len(after)
    for a, b in zip(after, before):
      np.testing.assert_array_equal(a, np.asarray(b)[..., kept])
  tx = optax.adafactor(1e-3)
  v1, s = _step(net, v, tx, tx.init(v['params']), x)
  with pytest.raises(ValueError, match='optimizer state: .*Adafactor'):
    surgery.shrink(net, v1, keep, opt_state=s, tx=tx)
  tx = optax.sm3(1e-2)  # a list of per-axis accumulators per parameter
  v1, s = _step(net, v, tx, tx.init(v['params']), x)
  with pytest.raises(ValueError, match=r'optimizer state \(ScaleBySM3State'
                     '.*surgery cannot slice it.*per-axis accumulators'):
    surgery.shrink(net, v1, keep, opt_state=s, tx=tx)
  # lookahead's slow weights are in its params container: slicing the fast
  # moments alone used to pass and break the next update
  tx = optax.lookahead(optax.adam(1e-3), 5, 0.5)
  s = tx.init(optax.LookaheadParams.init_synced(v['params']))
  with pytest.raises(ValueError, match='cannot slice optax.lookahead'):
    surgery.shrink(net, v, keep, opt_state=s, tx=tx)
  # a label function that reads the params' tree meets optax's placeholder
  labels = lambda p: flax.traverse_util.path_aware_map(
      lambda path, x: 'k' if path[-1] == 'kernel' else 'o', p)
  tx = optax.multi_transform({'k': optax.adam(1e-3), 'o': optax.sgd(1e-2)},
                             labels)
  with pytest.raises(ValueError, match='pass the labels as a pytree'):
    surgery.shrink(net, v, keep, opt_state=tx.init(v['params']), tx=tx)
  tx = optax.multi_transform({'k': optax.adam(1e-3), 'o': optax.sgd(1e-2)},
                             labels(v['params']))  # as the message says
  surgery.shrink(net, v, keep, opt_state=tx.init(v['params']), tx=tx)


def test_updater_state_masks_are_sliced(small_mlp):
  net, v = small_mlp
  t = net.topology
  upd = create_updater_from_config({'algorithm': 'demp', 'reg_span': 10},
                                   topology=t)
  tx = upd.wrap_optax(optax.adamw(1e-3))
  s = tx.init(v['params'])
  alive = {'dense_0': np.arange(12) < 9, 'dense_1': np.ones(9, bool)}
  s = upd.mask_units(s, v['params'], alive)
  keep = {'dense_0': np.arange(12) < 10}  # keeps one masked unit (index 9)
  res = surgery.shrink(net, v, keep, opt_state=s, tx=tx)
  m = res.opt_state.masks
  assert m['logits']['bias'] is None
  np.testing.assert_array_equal(m['bn_0']['scale'], [1] * 9 + [0])
  assert m['dense_1']['kernel'].shape == (10, 9)
  assert int(res.opt_state.count) == int(s.count)


def test_wrong_topology_is_caught_by_the_probe_check(small_mlp):
  """A topology that forgets a leaf: shapes break (the rebuilt model meets
  the unsliced kernel: flax names the parameter) or logits differ."""
  net, v = small_mlp
  t = net.topology
  g = t.groups[1]
  produces = tuple(r for r in g.produces if r.path != ('dense_1', 'kernel'))
  assert len(produces) == len(g.produces) - 1     # drops the kernel
  forgetful = dataclasses.replace(net, topology=topo.UnitTopology((
      t.groups[0], topo.UnitGroup(g.name, g.size, produces, g.consumes))))
  with pytest.raises((surgery.SurgeryError, ValueError,
                      flax.errors.ScopeParamShapeError)):
    surgery.shrink(forgetful, v, {'dense_1': np.arange(9) < 5},
                   probe=jnp.ones((3,) + net.input_shape))


def test_bad_keep_is_a_clear_error(small_mlp):
  net, v = small_mlp
  with pytest.raises(ValueError, match='unknown unit groups'):
    surgery.shrink(net, v, {'dense_9': np.ones(3, bool)})
  with pytest.raises(ValueError, match='shape'):
    surgery.shrink(net, v, {'dense_0': np.ones(3, bool)})
  with pytest.raises(ValueError, match='every unit'):
    surgery.shrink(net, v, {'dense_0': np.zeros(12, bool)})
  with pytest.raises(ValueError, match='tx'):
    surgery.shrink(net, v, {}, opt_state=())


def test_a_model_returning_logits_and_features_is_checked_on_both():
  import user_models as um  # pylint: disable=g-import-not-at-top
  from demp_jax.net import Net  # pylint: disable=g-import-not-at-top
  net, v = Net.create(um.LogitsAndFeatures(), (4, 4, 3))
  # the features are an output: their units stay; the layer before is a group
  assert net.topology.names == ('Dense_0',)
  assert any('Dense_1' in what for what, _ in net.skipped)
  rng = np.random.default_rng(0)
  keep = {'Dense_0': rng.random(24) < 0.5}
  res = surgery.shrink(net, v, keep, probe=jnp.asarray(
      rng.normal(size=(3, 4, 4, 3)), jnp.float32))
  assert res.max_masked_diff <= 1e-5
  x = jnp.asarray(rng.normal(size=(5, 4, 4, 3)), jnp.float32)
  masked = net.apply(topo.silence_units(net.topology, v, keep), x)
  shrunk = res.model.apply(res.variables, x)
  assert isinstance(shrunk, tuple) and len(shrunk) == 2
  for a, b in zip(shrunk, masked):
    np.testing.assert_allclose(a, b, atol=1e-5)


class _NoScaleBN(flax.linen.Module):
  """Dense without bias, BatchNorm without scale, ReLU: the usual advice
  before a ReLU. Silencing a unit by its scale and offset is not enough
  here: ``(0 - mean) / std`` stays."""

  @flax.linen.compact
  def __call__(self, x, train: bool = False):
    nn = flax.linen
    x = nn.Dense(10, use_bias=False, name='Dense_0')(x)
    x = nn.BatchNorm(use_running_average=not train, use_scale=False)(x)
    return nn.Dense(3, name='Dense_1')(nn.relu(x))


class _Sigmoid(flax.linen.Module):
  """Units whose activation is 0.5 at 0: cutting them is not zeroing
  their incoming weights."""

  @flax.linen.compact
  def __call__(self, x):
    nn = flax.linen
    h = nn.sigmoid(nn.Dense(10, name='Dense_0')(x))
    return nn.Dense(3, name='Dense_1')(h)


@pytest.mark.parametrize('module', [_NoScaleBN, _Sigmoid])
def test_removed_units_are_cut_out_whatever_they_output_at_zero(module):
  from demp_jax.net import Net  # pylint: disable=g-import-not-at-top
  net, v = Net.create(module(), input_shape=(16,))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(32, 16)) + 0.5, jnp.float32)
  if 'batch_stats' in v:  # real running statistics, far from 0
    v = {**v, 'batch_stats': net.batch_statistics(v, x)}
  (group,) = net.topology.names
  keep = {group: np.arange(10) % 3 == 0}
  # the probe check compares with the masked network: it must pass
  res = surgery.shrink(net, v, keep, probe=x)
  assert res.max_masked_diff < 1e-5
  # and the masked network is the original with the removed units' reads
  # zeroed in the consumer (what removal computes), not act(0) through them
  kernel = np.array(v['params']['Dense_1']['kernel'])
  kernel[~keep[group]] = 0
  cut = {**v, 'params': {**v['params'], 'Dense_1': {
      **v['params']['Dense_1'], 'kernel': jnp.asarray(kernel)}}}
  if 'batch_stats' not in v:
    np.testing.assert_allclose(res.model.apply(res.variables, x),
                               net.apply(cut, x), atol=1e-5)
