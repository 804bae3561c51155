"""The DemP updater on JaxPruner's conventions, built from a config."""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import demp_jax
from demp_jax.algorithms import base, demp
from demp_jax import stats


def _config(**kw):
  c = ml_collections.ConfigDict({'algorithm': 'demp', 'reg_peak': 0.1,
                                 'reg_span': 50, 'noise_peak': 1e-2,
                                 'prune_every': 5, 'min_width': 2})
  c.update(kw)
  return c


def test_registry_and_config_construction(small_mlp):
  assert {'demp', 'no_prune'} <= set(demp_jax.all_algorithm_names())
  t = small_mlp[0].topology
  u = demp_jax.create_updater_from_config(_config(), topology=t)
  assert isinstance(u, demp.DemonPruning)
  assert (u.reg_peak, u.reg_span, u.min_width) == (0.1, 50, 2)
  assert u.topology is t
  d = demp_jax.create_updater_from_config(_config(algorithm='no_prune'))
  assert isinstance(d, base.NoPruning)  # DemP keys ignored by no_prune
  when = u.schedule
  assert when.is_update_step(5) and when.is_update_step(10)
  assert not when.is_update_step(7) and not when.is_update_step(0)
  assert when.at_end  # and a death check after the last step
  assert u.probe == base.ProbeSpec(3, 512, 'train', 0.0, stats=True)
  assert not d.schedule.is_update_step(5) and not d.schedule.at_end


def test_register_algorithm_adds_a_dataclass():
  @dataclasses.dataclass
  class Mine(base.BaseUpdater):
    knob: float = 1.0

  demp_jax.register_algorithm('mine_for_test', Mine)
  try:
    u = demp_jax.create_updater_from_config({'algorithm': 'mine_for_test',
                                             'knob': 3.0})
    assert isinstance(u, Mine) and u.knob == 3.0
  finally:
    del demp_jax.ALGORITHM_REGISTRY['mine_for_test']
  with pytest.raises(TypeError, match='not a dataclass'):
    demp_jax.register_algorithm('x', object)


def test_unknown_algorithm_and_key_are_clear_errors():
  with pytest.raises(ValueError, match=r"algorithm='demq'.*did you mean 'demp'"):
    demp_jax.create_updater_from_config(_config(algorithm='demq'))
  with pytest.raises(ValueError, match=r'sparsity_config.reg_peek.*reg_peak'):
    demp_jax.create_updater_from_config(_config(reg_peek=1.0))
  with pytest.raises(ValueError, match='regularizer'):
    demp_jax.create_updater_from_config(_config(regularizer='l3'))
  with pytest.raises(ValueError, match='prune_every'):
    demp_jax.create_updater_from_config(_config(prune_every=0))


def test_state_layout_is_jaxpruners(small_mlp):
  net, v = small_mlp
  u = demp_jax.create_updater_from_config(_config(), topology=net.topology)
  s = u.wrap_optax(optax.adamw(1e-3)).init(v['params'])
  assert s._fields[:4] == ('masks', 'inner_state', 'target_sparsities',
                           'count')
  assert s.masks['logits']['bias'] is None
  assert s.masks['dense_0']['kernel'].dtype == jnp.uint8


def _train(net, v, updater, tx, state, x, steps):
  def loss(p, bs):
    out, new = net.apply({'params': p, 'batch_stats': bs}, x, train=True,
                         mutable=net.mutable)
    return jnp.mean((out - 1.0) ** 2), new['batch_stats']

  @jax.jit
  def step(p, bs, s):
    pf = updater.pre_forward_update(p, s)
    (_, bs), g = jax.value_and_grad(loss, has_aux=True)(pf, bs)
    u, s = tx.update(g, s, p)
    p = updater.post_gradient_update(optax.apply_updates(p, u), s)
    return p, bs, s

  p, bs = v['params'], v['batch_stats']
  for _ in range(steps):
    p, bs, state = step(p, bs, state)
  return {'params': p, 'batch_stats': bs}, state


def test_masked_units_stay_exactly_zero_and_get_no_noise(small_mlp):
  net, v = small_mlp
  shape = net.input_shape
  t = net.topology
  u = demp_jax.create_updater_from_config(_config(), topology=t)
  tx = u.wrap_optax(optax.adamw(1e-2, weight_decay=1e-3))
  s = tx.init(v['params'])
  x = jax.random.normal(jax.random.PRNGKey(0), (16,) + shape)
  v, s = _train(net, v, u, tx, s, x, 3)  # non-zero moments
  live = {'dense_0': np.arange(12) >= 4, 'dense_1': np.ones(9, bool)}
  s = u.mask_units(s, v['params'], live)
  v = {**v, 'params': u.post_gradient_update(v['params'], s)}
  v2, s2 = _train(net, v, u, tx, s, x, 10)
  p = v2['params']
  assert np.all(np.asarray(p['dense_0']['kernel'])[:, :4] == 0)
  assert np.all(np.asarray(p['bn_0']['scale'])[:4] == 0)
  assert np.all(np.asarray(p['dense_1']['kernel'])[:4] == 0)
  assert not np.any(np.asarray(p['dense_0']['kernel'])[:, 4:] == 0)
  _, acts = net.activations(v2, x)
  (a,) = acts['dense_0']
  assert np.all(np.asarray(a)[:, :4] == 0)


def test_noise_reaches_live_units_but_never_dead_ones(small_mlp):
  """lr 0: every change of the params is the noise."""
  net, v = small_mlp
  shape = net.input_shape
  p = v['params']
  # unit 0 of dense_0 dead on all inputs: BN scale 0, offset -1
  p['bn_0']['scale'] = p['bn_0']['scale'].at[0].set(0.0)
  p['bn_0']['bias'] = p['bn_0']['bias'].at[0].set(-1.0)
  t = net.topology
  u = demp_jax.create_updater_from_config(_config(reg_peak=0.0), topology=t)
  tx = u.wrap_optax(optax.sgd(0.0))
  s = tx.init(p)
  x = jax.random.normal(jax.random.PRNGKey(1), (16,) + shape)
  v2, _ = _train(net, v, u, tx, s, x, 4)
  d = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), v2['params'], p)
  # dead unit 0 (not even masked: found by its zero gradient) is untouched
  assert np.all(d['dense_0']['kernel'][:, 0] == 0)
  assert d['dense_0']['bias'][0] == 0
  assert d['bn_0']['scale'][0] == 0 and d['bn_0']['bias'][0] == 0
  assert np.all(d['dense_1']['kernel'][0] == 0)
  # live units move by the noise
  assert np.all(d['dense_0']['kernel'][:, 1:] != 0)
  assert np.all(d['logits']['bias'] != 0)


def _unit_stats(dead, mean_abs):
  n = len(dead)
  return stats.UnitStats(dead=jnp.array(dead), apoz=jnp.zeros(n),
                         mean_abs=jnp.array(mean_abs, jnp.float32),
                         dormancy=jnp.zeros(n), min=jnp.zeros(n),
                         max=jnp.array(mean_abs, jnp.float32))


def test_keep_from_stats_respects_min_width():
  u = demp.DemonPruning(min_width=2)
  s = {'a': _unit_stats([True, True, True, False], [0.0, 0.3, 0.1, 1.0]),
       'b': _unit_stats([False, True], [1.0, 1.0])}
  keep = u.keep_from_stats(s)
  np.testing.assert_array_equal(keep['a'], [False, True, False, True])
  np.testing.assert_array_equal(keep['b'], [True, True])


def test_decide_removes_dead_and_constant_units_and_folds_the_constants():
  # layer mean |a| = 1.0: a unit whose range is within 0.1 of it is constant
  s = {'a': stats.UnitStats(
      dead=jnp.array([True, False, False, False]), apoz=jnp.zeros(4),
      mean_abs=jnp.array([0.0, 1.5, 2.0, 0.5]), dormancy=jnp.zeros(4),
      min=jnp.array([0.0, 0.0, 2.0, 0.5]),
      max=jnp.array([0.0, 3.0, 2.05, 1.0]))}
  ctx = base.PruneContext(7, None, None, {}, None,
                          stats_fn=lambda variables, images, eps: s)
  d = demp.DemonPruning().decide(ctx)
  np.testing.assert_array_equal(d.keep['a'], [False, True, False, True])
  np.testing.assert_array_equal(d.constants['a'],
                                np.float32([0.0, np.nan, 2.025, np.nan]))
  np.testing.assert_array_equal(d.scores['a'], [0.0, 1.5, 2.0, 0.5])
  assert d.metrics['dead_found'] == {'a': 1} and d.masks is None
  plain = demp.DemonPruning(fold_constants=False).decide(ctx)
  np.testing.assert_array_equal(plain.keep['a'], [False, True, True, True])
  assert plain.constants is None
