"""Activate-while-Pruning: the selection by hand, exact counts on top of
global and structured bases, the dead rates, rewinding and a tiny run."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import testlib_models
from conftest import load_config
from demp_jax import models
from demp_jax import stats as stats_lib
from demp_jax.algorithms import ap
from demp_jax.algorithms import base
from demp_jax.algorithms import create_updater_from_config
from demp_jax.algorithms import magnitude
from demp_jax.algorithms import masked
from demp_jax.net import Net


def _a(x):
  return jnp.asarray(x, jnp.float32)


def _m(x):
  return jnp.asarray(x, jnp.uint8)


# ------------------------------------------------------ AP's selection


def _hand_built():
  theta_t = {'a': {'kernel': _a([[-0.5, 0.3], [-0.2, -0.9]])},
             'b': {'kernel': _a([[-0.1], [0.4], [-0.7]]), 'bias': _a([-0.3])}}
  theta_0 = {'a': {'kernel': _a([[-0.45, 0.3], [-0.6, -0.91]])},
             'b': {'kernel': _a([[-0.13], [0.4], [-0.7]]), 'bias': _a([-0.3])}}
  # -0.9 is already pruned; the bias is 1-D (never AP's); 0.3 and 0.4 are
  # positive. Candidates and movements: a[0,0] 0.05, a[1,0] 0.4,
  # b[0] 0.03, b[2] 0.0.
  masks = {'a': {'kernel': _m([[1, 1], [1, 0]])},
           'b': {'kernel': _m([[1], [1], [1]]), 'bias': _m([1])}}
  return theta_t, theta_0, masks


@pytest.mark.parametrize('n, pruned', [
    (1, [('b', 2)]),
    (2, [('b', 2), ('b', 0)]),
    (3, [('b', 2), ('b', 0), ('a', 0)]),
    (10, [('b', 2), ('b', 0), ('a', 0), ('a', 2)]),  # only 4 candidates
])
def test_ap_prunes_the_negative_survivors_that_moved_least(n, pruned):
  theta_t, theta_0, masks = _hand_built()
  new, k = ap.ap_select(theta_t, theta_0, masks, n)
  assert k == len(pruned)
  want = {'a': np.array([1, 1, 1, 0]), 'b': np.array([1, 1, 1])}
  for leaf, i in pruned:
    want[leaf][i] = 0
  np.testing.assert_array_equal(np.ravel(new['a']['kernel']), want['a'])
  np.testing.assert_array_equal(np.ravel(new['b']['kernel']), want['b'])
  np.testing.assert_array_equal(new['b']['bias'], [1])


def _mlp_ctx(seed=0):
  net, _ = Net.create(models.MLP(widths=(20, 10), num_classes=3,
                                 use_bn=False), (4, 4, 1), init=False)
  rng = np.random.default_rng(seed)
  theta_0 = testlib_models.random_variables(net, rng)['params']
  theta_t = jax.tree.map(
      lambda x: jnp.asarray(np.asarray(x) + rng.normal(0, 0.05, x.shape),
                            jnp.float32), theta_0)
  ctx = base.PruneContext(0, net, net.topology, {'params': theta_t}, None)
  return net, theta_0, theta_t, ctx


def _kernel_count(masks):
  return masked.mask_counts(masks, masked.not_dim_one,
                            jax.tree.map(jnp.zeros_like, masks))


def test_ap_on_global_magnitude_hits_the_base_sparsity_exactly():
  net, theta_0, theta_t, ctx = _mlp_ctx()
  topology = net.topology
  upd = create_updater_from_config(
      {'algorithm': 'ap', 'base': 'global_magnitude', 'ap_rate': 0.02},
      topology=topology)
  masks = upd.get_initial_masks(theta_t)
  n = _kernel_count(masks)[0]
  new, info = upd.prune_round(ctx, masks, 0.2, start_params=theta_0)
  n_ap = math.floor(0.02 * n)
  assert info['n_ap'] == info['pruned_ap'] == n_ap
  assert n - _kernel_count(new)[0] == round(0.2 * n)
  alone = magnitude.GlobalMagnitudePruning(topology=topology)
  base_masks, _ = alone.prune_round(ctx, masks, 0.2)
  assert _kernel_count(base_masks)[0] == _kernel_count(new)[0]  # same count
  # What AP took on top of the base's own share: negative, least moved.
  own = magnitude.global_magnitude_masks(theta_t, masks,
                                         (round(0.2 * n) - n_ap) / n)
  moved, taken_w, left_w = [], [], []
  for leaf in ('dense_0', 'dense_1', 'logits'):
    o = np.ravel(own[leaf]['kernel'])
    f = np.ravel(new[leaf]['kernel'])
    w = np.ravel(theta_t[leaf]['kernel'])
    mv = np.abs(w - np.ravel(theta_0[leaf]['kernel']))
    taken = (o == 1) & (f == 0)
    survivors = (f == 1) & (w < 0)
    taken_w.append(w[taken])
    moved.append(mv[taken])
    left_w.append(mv[survivors])
  taken_w, moved = np.concatenate(taken_w), np.concatenate(moved)
  assert taken_w.size == n_ap and np.all(taken_w < 0)
  assert moved.max() <= np.concatenate(left_w).min()


def test_ap_on_a_structured_base_masks_whole_units_then_weights():
  net, theta_0, theta_t, ctx = _mlp_ctx(seed=3)
  topology = net.topology
  upd = create_updater_from_config(
      {'algorithm': 'ap', 'base': 'structured_magnitude', 'ap_rate': 0.02,
       'base_config': {'update_start_step': 0, 'update_end_step': 0}},
      topology=topology)
  masks = upd.get_initial_masks(theta_t)
  n = _kernel_count(masks)[0]
  new, info = upd.prune_round(ctx, masks, 0.2, start_params=theta_0)
  # 18 % of the units of each layer: 20 -> 16 kept, 10 -> 8 kept.
  assert int(np.sum(new['dense_0']['bias'])) == 16
  assert int(np.sum(new['dense_1']['bias'])) == 8
  gone = np.flatnonzero(np.asarray(new['dense_0']['bias']) == 0)
  np.testing.assert_array_equal(new['dense_0']['kernel'][:, gone], 0)
  np.testing.assert_array_equal(new['dense_1']['kernel'][gone, :], 0)
  l1 = np.abs(np.asarray(theta_t['dense_0']['kernel'])).sum(0)
  assert set(gone) == set(np.argsort(l1)[:4])
  assert info['pruned_ap'] == math.floor(0.02 * n)
  assert n - _kernel_count(new)[0] == info['pruned_base'] + info['pruned_ap']


def test_ap_is_built_from_the_registry_and_refuses_the_single_run_loop():
  upd = create_updater_from_config({'algorithm': 'ap', 'ap_rate': 0.05})
  assert isinstance(upd, ap.ActivateWhilePruning) and upd.ap_rate == 0.05
  with pytest.raises(ValueError, match='run_cycles'):
    upd.schedule.is_update_step(0)
  with pytest.raises(ValueError, match='ap_rate'):
    create_updater_from_config({'algorithm': 'ap', 'ap_rate': 1.5})
  with pytest.raises(ValueError, match='cannot be AP'):
    create_updater_from_config({'algorithm': 'ap', 'base': 'no_prune'}
                               ).base_pruner()
  with pytest.raises(ValueError, match='does not prune in rounds'):
    base.NoPruning().prune_round(None, None, 0.2)


# ----------------------------------------------- global magnitude alone


def test_global_magnitude_one_shot_in_the_loop_hooks():
  net, _, theta_t, _ = _mlp_ctx()
  upd = create_updater_from_config(
      {'algorithm': 'global_magnitude', 'sparsity': 0.5,
       'update_start_step': 5, 'update_end_step': 5})
  tx = upd.wrap_optax(optax.sgd(0.1))
  state = tx.init(theta_t)
  assert [s for s in range(10) if upd.schedule.is_update_step(s)] == [5]
  assert not upd.schedule.at_end
  ctx = base.PruneContext(5, net, net.topology, {'params': theta_t}, state)
  decision = upd.decide(ctx)
  new = decision.masks
  assert decision.keep is None
  ones, total = masked.mask_counts(new)
  assert total - ones == round(0.5 * total)
  w = np.concatenate([np.abs(np.ravel(theta_t[k]['kernel']))
                      for k in ('dense_0', 'dense_1', 'logits')])
  m = np.concatenate([np.ravel(new[k]['kernel'])
                      for k in ('dense_0', 'dense_1', 'logits')])
  assert w[m == 0].max() <= w[m == 1].min()
  assert new['dense_0']['bias'] is None


# ------------------------------------------------------- dead rates


def test_dynamic_dead_rate_on_a_hand_built_net():
  # Two hidden units on a 2-pixel input: unit 0 = relu(x0), unit 1 =
  # relu(-x0 - 10), dead on every input here. Per example the zero fraction
  # is 1/2 where x0 > 0 and 2/2 where x0 < 0: the rate is 0.75 on
  # x0 in {1, -1, 2, -2}; over the live unit 0 alone it is 0.5.
  net, _ = Net.create(models.MLP(widths=(2,), num_classes=2, use_bn=False),
                      (1, 2, 1), init=False)
  params = {'dense_0': {'kernel': _a([[1.0, -1.0], [0.0, 0.0]]),
                        'bias': _a([0.0, -10.0])},
            'logits': {'kernel': _a(np.ones((2, 2))), 'bias': _a([0, 0])}}
  x = _a([1.0, -1.0, 2.0, -2.0])
  images = jnp.stack([x, jnp.zeros(4)], -1).reshape(2, 2, 1, 2, 1)
  r = stats_lib.dead_rates(net, {'params': params}, images,
                           live={'dense_0': np.array([True, False])})
  assert r.dynamic_dead_rate == pytest.approx(0.75)
  assert r.dynamic_dead_rate_live == pytest.approx(0.5)
  assert r.dead_units == 1 and r.units == 2
  assert stats_lib.dead_rates(net, {'params': params},
                              images).dynamic_dead_rate_live == (
                                  pytest.approx(0.75))


def test_dead_rates_weigh_conv_positions_like_the_activations():
  shape = (6, 6, 1)
  net, _ = Net.create(models.VGG(conv_widths=(4,), dense_widths=(3,),
                                 pool_after=(0,), num_classes=2), shape,
                      init=False)
  v = testlib_models.random_variables(net, np.random.default_rng(0), 0.0)
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8) + shape),
                       jnp.float32)
  _, acts = net.activations(v, images.reshape((16,) + shape))
  sites = [a for group in acts.values() for a in group]
  assert len(sites) == 2   # the conv map and the dense layer
  zeros = sum(np.sum(np.asarray(a).reshape(16, -1) == 0, 1) for a in sites)
  per_example = zeros / sum(np.asarray(a[0]).size for a in sites)
  assert stats_lib.dead_rates(net, v, images).dynamic_dead_rate == (
      pytest.approx(float(np.mean(per_example)), abs=1e-6))


# ------------------------------------------------------- the cycles


def test_start_round_rewinds_and_resets_the_optimiser():
  from demp_jax.training import cycles
  _, theta_0, _, _ = _mlp_ctx()
  upd = magnitude.GlobalMagnitudePruning()
  tx = upd.wrap_optax(optax.adam(1e-2))
  masks = upd.get_initial_masks(theta_0)
  masks = {**masks, 'dense_1': {**masks['dense_1'],
                                'kernel': masks['dense_1']['kernel'].at[
                                    0, :].set(0)}}
  state, th0 = cycles.start_round(tx, {'params': theta_0}, masks)
  np.testing.assert_array_equal(state.variables['params']['dense_1'][
      'kernel'][0], 0)
  np.testing.assert_array_equal(
      state.variables['params']['dense_0']['kernel'],
      theta_0['dense_0']['kernel'])
  np.testing.assert_array_equal(th0['params']['dense_1']['kernel'][0], 0)
  assert state.variables['params'] is not th0  # a copy: the step donates
  adam = state.opt_state.inner_state[0]
  assert int(adam.count) == 0
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(adam.mu))
  assert state.opt_state.masks is masks


def test_tiny_cycles_prune_exactly_and_hold_the_masks(tmp_path):
  from demp_jax.data import fashion_mnist
  if not os.path.isdir(fashion_mnist.DEBIAN_DIR):
    pytest.skip('Fashion-MNIST is not installed')
  from demp_jax.training import cycles
  summary = cycles.run_cycles(load_config('fashion_mnist_ap', 'tiny'),
                              str(tmp_path))
  rounds = summary['rounds']
  assert [r['round'] for r in rounds] == [0, 1, 2]
  total = 784 * 32 + 32 * 16 + 16 * 10
  alive, sparsity = total, [0.0]
  for r in rounds[:-1]:
    assert r['prune']['alive_before'] == alive
    assert r['prune']['pruned_ap'] == math.floor(0.02 * alive)
    alive -= round(0.2 * alive)
    sparsity.append(1 - alive / total)
  assert [r['weight_sparsity'] for r in rounds] == pytest.approx(sparsity)
  for r in rounds:
    assert r['max_masked_abs'] == 0.0
    assert 0.0 <= r['dynamic_dead_rate'] <= 1.0
  assert (tmp_path / 'summary.json').exists()
