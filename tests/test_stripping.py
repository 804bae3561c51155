"""Synaptic Stripping: the quantile rule by hand, strict masks, the loop."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import testlib_models
from conftest import load_config
from demp_jax import models
from demp_jax import topology as topo
from demp_jax.algorithms import base
from demp_jax.algorithms import create_updater_from_config
from demp_jax.algorithms import masked
from demp_jax.algorithms import stripping
from demp_jax.net import Net


def _net(model, shape, seed=0):
  """``(net, random variables)`` from the shapes alone: nothing to
  compile."""
  net, _ = Net.create(model, shape, init=False)
  return net, testlib_models.random_variables(
      net, np.random.default_rng(seed), 0.0)


# --------------------------------------------------------- the rule by hand


def _strip(w, m, dead, q):
  return np.asarray(stripping.strip_columns(
      jnp.asarray(w, jnp.float32), jnp.asarray(m, jnp.uint8),
      jnp.asarray(dead, bool), q))


def test_twenty_nonzeros_q005_interpolates_between_the_two_lowest():
  # k = 20 non-zeros: pos = 0.05 * 19 = 0.95, so
  # tau = v0 + 0.95 (v1 - v0) = -1.0 + 0.95 * 0.2 = -0.81: only -1.0 goes.
  v = np.array([-1.0, -0.8, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, -0.805])
  out = _strip(v[:, None], np.ones((20, 1)), [True], 0.05)[:, 0]
  assert out.tolist() == [0] + [1] * 19
  # q = 0.1: pos = 1.9, tau = v(1) + 0.9 (v(2) - v(1)) with the sorted
  # values -1.0, -0.805, -0.8: tau = -0.8045, so -1.0 and -0.805 go.
  out = _strip(v[:, None], np.ones((20, 1)), [True], 0.1)[:, 0]
  assert out.tolist() == [0] + [1] * 18 + [0]
  # k = 21: pos = 1.0 exactly, tau = v(1) = -0.805 itself; strict < keeps it.
  v21 = np.append(v, 2.0)
  out = _strip(v21[:, None], np.ones((21, 1)), [True], 0.05)[:, 0]
  assert out.tolist() == [0] + [1] * 20


def test_only_remaining_nonzero_weights_count_and_masks_accumulate():
  # Column of 6: two entries already masked (very negative values that must
  # not count), one live exact zero (not counted). Non-zeros: -0.5, 0.1,
  # 0.2, 0.9 -> pos = 0.5 * 3 = 1.5, tau = 0.1 + 0.5 * 0.1 = 0.15 > 0:
  # -0.5, 0.1 and the live zero are below it (strict <), 0.2 and 0.9 stay.
  w = np.array([-9.0, -0.5, 0.1, 0.0, 0.2, -7.0, 0.9])[:, None]
  m = np.array([0, 1, 1, 1, 1, 0, 1])[:, None]
  out = _strip(w, m, [True], 0.5)[:, 0]
  assert out.tolist() == [0, 0, 0, 0, 1, 0, 1]
  assert np.all(out <= m[:, 0])  # never unmasks


def test_only_dead_columns_change_and_tiny_columns_survive():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(10, 4))
  m = np.ones((10, 4), np.uint8)
  m[1:, 2] = 0   # column 2 has k = 1: nothing goes
  m[:, 3] = 0    # column 3 has k = 0: nothing goes
  out = _strip(w, m, [False, True, True, True], 0.05)
  np.testing.assert_array_equal(out[:, 0], 1)           # not dead
  assert out[:, 1].sum() == 9                           # pos 0.45: 1 goes
  assert out[:, 1].argmin() == w[:, 1].argmin()         # the most negative
  np.testing.assert_array_equal(out[:, 2:], m[:, 2:])


def test_matches_numpy_linear_quantile_on_ragged_columns():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(50, 30)).astype(np.float32)
  m = (rng.uniform(size=(50, 30)) < rng.uniform(0.05, 1.0, 30)).astype(
      np.uint8)
  q = 0.05
  out = _strip(w, m, np.ones(30, bool), q)
  for j in range(30):
    nz = (w[:, j] * m[:, j])[m[:, j] != 0]
    if nz.size == 0:
      np.testing.assert_array_equal(out[:, j], m[:, j])
      continue
    tau = np.quantile(nz.astype(np.float64), q)  # method='linear'
    want = m[:, j] * ~((w[:, j] * m[:, j]) < tau)
    np.testing.assert_array_equal(out[:, j], want, err_msg=f'column {j}')


def test_conv_kernels_strip_per_output_channel():
  net, v = _net(models.VGG(conv_widths=(3, 4), dense_widths=(5,),
                           pool_after=(0,), num_classes=2), (8, 8, 2))
  params = v['params']
  topology = net.topology
  upd = stripping.SynapticStripping(topology=topology)
  masks = upd.get_initial_masks(params)
  assert masks['conv_1']['kernel'].shape == (3, 3, 3, 4)
  assert masks['conv_bn_1']['scale'] is None  # only kernels are stripped
  dead = {g.name: np.zeros(g.size, bool) for g in topology.groups}
  dead['conv_1'][2] = True
  new = stripping.strip_masks(topology, params, masks, dead, 0.25)
  k = np.asarray(params['conv_1']['kernel'])
  got = np.asarray(new['conv_1']['kernel'])
  # Channel 2's 27 incoming weights: those below their 25 % quantile go.
  col = k[..., 2].reshape(-1)
  want = (col >= np.quantile(col, 0.25)).reshape(3, 3, 3)
  np.testing.assert_array_equal(got[..., 2], want)
  np.testing.assert_array_equal(np.delete(got, 2, axis=-1), 1)
  np.testing.assert_array_equal(new['conv_0']['kernel'], 1)


# ------------------------------------------------- the updater on an MLP


def _mlp_with_a_dead_unit():
  """dense_1 unit 3 is dead by construction: its incoming weights (from the
  ReLU outputs of dense_0, all >= 0) are negative and its bias is -0.1; the
  other dense_1 units have bias 1 (alive)."""
  net, v = _net(models.MLP(widths=(40, 6), num_classes=3, use_bn=False),
                (4, 4, 1))
  params = v['params']
  k = np.asarray(params['dense_1']['kernel']).copy()
  k[:, 3] = -np.abs(np.linspace(0.1, 2.0, 40))
  b = np.ones(6)  # the other units of dense_1 are alive
  b[3] = -0.1
  params = {**params, 'dense_1': {'kernel': jnp.asarray(k),
                                  'bias': jnp.asarray(b)}}
  return net, params


def _ctx(net, params, opt_state, seed=0):
  x = jax.random.normal(jax.random.PRNGKey(seed), (2, 16) + net.input_shape)
  return base.PruneContext(7, net, net.topology, {'params': params},
                           opt_state, x, jnp.zeros((2, 16), jnp.int32))


def test_decide_strips_the_dead_unit_only():
  net, params = _mlp_with_a_dead_unit()
  upd = create_updater_from_config(
      {'algorithm': 'synaptic_stripping', 'stripping_factor': 0.05},
      topology=net.topology)
  assert isinstance(upd, stripping.SynapticStripping)
  tx = upd.wrap_optax(optax.adamw(1e-3))
  state = tx.init(params)
  ctx = _ctx(net, params, state)
  stats = ctx.stats()
  assert np.flatnonzero(np.asarray(stats['dense_1'].dead)).tolist() == [3]
  decision = upd.decide(ctx)
  new = decision.masks
  assert decision.keep is None  # no unit is removed
  assert upd.probe.stats and upd.probe.split == 'holdout'
  assert [t for t in range(3500) if upd.schedule.is_update_step(t)] == [
      1000, 2000, 3000] and upd.schedule.at_end
  # k = 40: pos = 0.05 * 39 = 1.95 -> the 2 most negative of the column go.
  col = np.asarray(new['dense_1']['kernel'])[:, 3]
  assert col.sum() == 38
  assert np.flatnonzero(col == 0).tolist() == [38, 39]  # -1.95.., -2.0
  others = np.delete(np.asarray(new['dense_1']['kernel']), 3, axis=1)
  np.testing.assert_array_equal(others, 1)
  dead0 = np.asarray(stats['dense_0'].dead)
  k0 = np.asarray(new['dense_0']['kernel'])
  assert np.all(k0[:, ~dead0] == 1)
  metrics = decision.metrics
  assert metrics['stripped_now'] == 40 - 38 + int((k0 == 0).sum())
  assert metrics['dead_units'] == int(dead0.sum()) + 1
  assert metrics['dead_found'] == {'dense_0': int(dead0.sum()), 'dense_1': 1}
  # Off (q = 0): measures, strips nothing.
  off = stripping.SynapticStripping(topology=upd.topology,
                                    stripping_factor=0.0)
  same = off.decide(ctx).masks
  assert masked.mask_counts(same) == masked.mask_counts(state.masks)


def test_masks_survive_adamw_with_nonzero_moments():
  net, params = _mlp_with_a_dead_unit()
  upd = stripping.SynapticStripping(topology=net.topology)
  tx = upd.wrap_optax(optax.adamw(1e-2, weight_decay=1e-2))
  inner = optax.adamw(1e-2, weight_decay=1e-2)
  state, inner_state = tx.init(params), inner.init(params)
  grads_fn = lambda p: jax.tree.map(lambda x: jnp.ones_like(x) * 0.3, p)

  @jax.jit
  def step(params, state):
    u, state = tx.update(grads_fn(params), state, params)
    return u, upd.post_gradient_update(optax.apply_updates(params, u),
                                       state), state

  inner_update = jax.jit(lambda g, s, p: inner.update(g, s, p))
  # Build up Adam moments on every weight with all-ones masks.
  for _ in range(3):
    _, params, state = step(params, state)
    _, inner_state = inner_update(grads_fn(params), inner_state, params)
  # Strip: mask 5 weights of dense_1 column 3 and zero them in the params.
  m = np.ones(params['dense_1']['kernel'].shape, np.uint8)
  m[:5, 3] = 0
  masks = {**state.masks, 'dense_1': {**state.masks['dense_1'],
                                      'kernel': jnp.asarray(m)}}
  state = state._replace(masks=masks)
  params = upd.apply_masks(params, masks)
  # The plain optimiser would move them: its first moment is not zero.
  u_plain, _ = inner_update(grads_fn(params), inner_state, params)
  assert np.all(np.asarray(u_plain['dense_1']['kernel'])[:5, 3] != 0)
  for _ in range(4):
    u, params, state = step(params, state)
    assert np.all(np.asarray(u['dense_1']['kernel'])[:5, 3] == 0)
    assert np.all(np.asarray(params['dense_1']['kernel'])[:5, 3] == 0)
  assert np.all(np.asarray(params['dense_1']['kernel'])[5:, 3] != 0)


def test_vit_mlp_groups_get_masks_and_patterns_select_them():
  net, v = _net(models.ViT(patch_size=8, hidden_size=16, depth=2,
                           num_heads=2, mlp_dim=24, activation='relu',
                           mlp_out_activation=True), (16, 16, 3))
  params = v['params']
  topology = net.topology
  upd = stripping.SynapticStripping(topology=topology)
  masks = upd.get_initial_masks(params)
  with_masks = sorted('/'.join(topo.key_path(k)) for k, v in
                      jax.tree_util.tree_flatten_with_path(
                          masks, is_leaf=lambda x: x is None)[0]
                      if v is not None)
  assert len(with_masks) == 4 and all('fc1' in k or 'fc2' in k
                                      for k in with_masks)
  only_fc1 = stripping.SynapticStripping(topology=topology,
                                         strip_groups=('*/mlp/act',))
  m1 = only_fc1.get_initial_masks(params)
  assert m1['block_0']['mlp']['fc1']['kernel'] is not None
  assert m1['block_0']['mlp']['fc2']['kernel'] is None
  with pytest.raises(ValueError, match='matches no unit group'):
    stripping.SynapticStripping(topology=topology,
                                strip_groups=('attn*',)).get_initial_masks(
                                    params)


def test_config_errors_name_the_key():
  with pytest.raises(ValueError, match='probe_split'):
    create_updater_from_config({'algorithm': 'synaptic_stripping',
                                'probe_split': 'validation'})
  with pytest.raises(ValueError, match='stripping_factor'):
    create_updater_from_config({'algorithm': 'synaptic_stripping',
                                'stripping_factor': 1.5})


# ------------------------------------------------------------- the loop


def test_tiny_run_strips_on_the_holdout_and_records_events(tmp_path):
  from demp_jax.data import fashion_mnist
  if not os.path.isdir(fashion_mnist.DEBIAN_DIR):
    pytest.skip('Fashion-MNIST is not installed')
  from demp_jax.training import loop
  config = load_config('fashion_mnist_stripping', 'tiny')
  config.optimizer.learning_rate = 3e-2  # kill some units
  summary = loop.train(config, str(tmp_path))
  events = summary['pruning_events']
  assert [e['step'] for e in events] == [10, 20, 30]
  active = [e['active_params'] for e in events]
  assert active == sorted(active, reverse=True)  # masks only accumulate
  assert all('dead_found' in e for e in events)
  stripped = summary['params_initial'] - active[-1]
  assert stripped > 0, 'no unit died: raise the learning rate'
  on_disk = json.loads((tmp_path / 'summary.json').read_text())
  assert on_disk['algorithm'] == 'synaptic_stripping'


def test_test_split_probe_runs(tmp_path):
  from demp_jax.training import loop
  config = load_config('cifar_vit_stripping', 'tiny')
  config.num_steps = 6
  config.steps_per_epoch = 3
  config.optimizer.warmup_steps = 2
  config.sparsity_config.probe_split = 'test'
  summary = loop.train(config, str(tmp_path))
  assert [e['step'] for e in summary['pruning_events']] == [3, 6]
  assert set(summary['pruning_events'][0]['dead_found']) == {
      'block_0/mlp/act', 'block_0/mlp/out_act'}
