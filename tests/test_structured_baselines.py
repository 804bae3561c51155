"""Structured baselines: gate scores, selection, schedules, EarlyCroP timing,
and the updaters' keep decisions (physical runs are in test_tradeoff.py)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from demp_jax import models
from demp_jax import topology as topo
from demp_jax.algorithms import base
from demp_jax.algorithms import create_updater_from_config
from demp_jax.algorithms import schedules
from demp_jax.algorithms import scores as sc
from demp_jax.algorithms import structured
from demp_jax.net import Net

IN = (2, 3, 1)  # tiny "images": 6 inputs


def init_vars(net, seed=0):
  """Random variables of the net's shapes, without running (and
  compiling) its initialisers: normal params, random running means and
  positive running variances, so eval mode is not the identity."""
  shapes = net.abstract_variables()
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = topo.key_path(path)[-1]
    if name == 'var':
      return jnp.asarray(rng.uniform(0.5, 2.0, s.shape), s.dtype)
    scale = 0.5 if name in ('kernel', 'mean') else 0.3
    return jnp.asarray(rng.normal(0, scale, s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _data(n=2, b=7, classes=3, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(k1, (n, b) + IN),
          jax.random.randint(k2, (n, b), 0, classes))


def _explicit_loss(variables, gates, x, y, use_bn):
  """The MLP written out by hand, the gate multiplying each post-ReLU
  output: ``a_i = c_i * relu(z_i)``. Works for numpy float64 and jnp."""
  xp = jnp if isinstance(gates[0], jax.Array) else np
  p = variables['params']
  h = x.reshape(x.shape[0], -1)
  for i, c in enumerate(gates):
    z = h @ p[f'dense_{i}']['kernel'] + p[f'dense_{i}']['bias']
    if use_bn:
      s = variables['batch_stats'][f'bn_{i}']
      z = ((z - s['mean']) / xp.sqrt(s['var'] + 1e-5) * p[f'bn_{i}']['scale']
           + p[f'bn_{i}']['bias'])
    h = xp.maximum(z, 0) * c
  logits = h @ p['logits']['kernel'] + p['logits']['bias']
  logits = logits - logits.max(-1, keepdims=True)
  logp = logits - xp.log(xp.exp(logits).sum(-1, keepdims=True))
  return -logp[xp.arange(len(y)), y].mean()


def _mlp(widths, use_bn=True, num_classes=3):
  """The MLP's Net on ``IN`` (shapes only)."""
  return Net.create(models.MLP(widths=widths, num_classes=num_classes,
                               use_bn=use_bn), IN, init=False)[0]


def _model_and_vars(use_bn, widths=(5, 4), seed=0):
  net = _mlp(widths, use_bn)
  return net, init_vars(net, seed=seed)


def test_gate_gradient_equals_the_explicit_formula_without_norm():
  """One hidden layer, no norm: dL/dc_j = sum_b mean_x a_xj * (p_x - y_x) .
  W2[j, :], with a the post-ReLU output and p the softmax."""
  m, v = _model_and_vars(use_bn=False, widths=(5,))
  x, y = _data()
  got = sc.gate_gradient(m, v, x, y)['dense_0']
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), v['params'])
  want = np.zeros(5)
  for b in range(x.shape[0]):
    h = np.asarray(x[b], np.float64).reshape(x.shape[1], -1)
    a = np.maximum(h @ p['dense_0']['kernel'] + p['dense_0']['bias'], 0)
    logits = a @ p['logits']['kernel'] + p['logits']['bias']
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    delta = prob - np.eye(3)[np.asarray(y[b])]
    want += np.mean(a * (delta @ p['logits']['kernel'].T), axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # the gate went through the kernel column and the bias (no norm layer)
  refs = sc.gate_refs(m.topology)['dense_0']
  assert {r.path for r in refs} == {('dense_0', 'kernel'), ('dense_0', 'bias')}


def test_gate_gradient_through_batchnorm_matches_finite_differences():
  """With BatchNorm the gate rescales scale and offset; the gradient must
  equal central differences of the hand-written gated forward (float64)."""
  m, v = _model_and_vars(use_bn=True)
  x, y = _data()
  got = sc.gate_gradient(m, v, x, y)
  assert {r.path for r in sc.gate_refs(m.topology)['dense_1']} == {
      ('bn_1', 'scale'), ('bn_1', 'bias')}
  v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), v)
  xs = [np.asarray(x[b], np.float64) for b in range(x.shape[0])]
  ys = [np.asarray(y[b]) for b in range(x.shape[0])]

  def total(c0, c1):
    return sum(_explicit_loss(v64, (c0, c1), xb, yb, True)
               for xb, yb in zip(xs, ys))

  eps = 1e-5
  for layer, n in ((0, 5), (1, 4)):
    fd = np.zeros(n)
    for i in range(n):
      cs = [np.ones(5), np.ones(4)]
      cs[layer][i] += eps
      up = total(*cs)
      cs[layer][i] -= 2 * eps
      fd[i] = (up - total(*cs)) / (2 * eps)
    np.testing.assert_allclose(got[f'dense_{layer}'], fd, rtol=2e-3, atol=2e-5)
  # SNAP is the absolute value of that sum
  snap = sc.snap_scores(m, v, x, y)
  np.testing.assert_allclose(snap['dense_1'], np.abs(got['dense_1']))


def test_crop_score_is_abs_of_summed_hessian_gradient_products():
  """CroP-it-S: |sum_b H_b g_b| over the gates of all layers jointly."""
  m, v = _model_and_vars(use_bn=True)
  x, y = _data()
  got = sc.crop_scores(m, v, x, y)
  want = [np.zeros(5), np.zeros(4)]

  @jax.jit
  def hg_fn(xb, yb):
    f = lambda c: _explicit_loss(v, (c[:5], c[5:]), xb, yb, True)
    c = jnp.ones(9)
    return jax.hessian(f)(c) @ jax.grad(f)(c)

  for b in range(x.shape[0]):
    hg = hg_fn(x[b], y[b])
    want[0] += np.asarray(hg[:5])
    want[1] += np.asarray(hg[5:])
  np.testing.assert_allclose(got['dense_0'], np.abs(want[0]), rtol=2e-3,
                             atol=1e-6)
  np.testing.assert_allclose(got['dense_1'], np.abs(want[1]), rtol=2e-3,
                             atol=1e-6)


def test_zero_gates_compute_the_masked_network(small_cnn):
  """Gate 0 through the norm's scale and offset silences a conv channel
  exactly like topology.silence_units (which also zeroes the kernel)."""
  net, _ = small_cnn
  v = init_vars(net, seed=1)
  t = net.topology
  alive = {g.name: np.arange(g.size) % 3 != 1 for g in t.groups}
  gated = sc.apply_gates(v['params'], sc.gate_refs(t),
                         {k: a.astype(np.float32) for k, a in alive.items()})
  x = jax.random.normal(jax.random.PRNGKey(3), (4,) + net.input_shape)
  apply = jax.jit(lambda variables: net.apply(variables, x))
  got = apply({**v, 'params': gated})
  want = apply(topo.silence_units(t, v, alive))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_select_units_global_keeps_the_top_scores_and_min_width():
  scores = {'a': np.array([5., 1., 4., 0.]), 'b': np.array([3., 2., 0.5])}
  alive = {'a': np.ones(4, bool), 'b': np.ones(3, bool)}
  sizes = {'a': 4, 'b': 3}
  keep = sc.select_units(scores, alive, 4 / 7, sizes)  # keep round(3) units
  assert keep['a'].tolist() == [True, False, True, False]
  assert keep['b'].tolist() == [True, False, False]
  # at high sparsity layer b would vanish; min_width tops it up with its best
  keep = sc.select_units(scores, alive, 0.8, sizes, min_width=2)
  assert keep['a'].tolist() == [True, False, True, False]
  assert keep['b'].tolist() == [True, True, False]
  # removed units never come back; the target is against initial sizes
  alive2 = {'a': np.array([True, False, True, False]), 'b': np.ones(3, bool)}
  keep = sc.select_units(scores, alive2, 0.0, sizes)
  assert keep['a'].tolist() == alive2['a'].tolist() and keep['b'].all()


def test_select_units_uniform_prunes_each_layer_alike():
  scores = {'a': np.array([1., 3., 2., 4.]), 'b': np.array([9., 7.])}
  alive = {'a': np.ones(4, bool), 'b': np.ones(2, bool)}
  keep = sc.select_units(scores, alive, 0.5, {'a': 4, 'b': 2},
                         dist_type='uniform')
  assert keep['a'].tolist() == [False, True, False, True]
  assert keep['b'].tolist() == [True, False]
  with pytest.raises(ValueError, match='dist_type'):
    sc.select_units(scores, alive, 0.5, {}, dist_type='erk')


def test_incoming_l1_ranks_units_by_their_kernel_column():
  m = _mlp((4, 3), num_classes=2)
  v = init_vars(m)
  k = np.zeros((6, 4), np.float32)
  k[:, 0], k[:3, 1], k[0, 2], k[:, 3] = -1.0, 2.0, 0.5, 0.25
  params = jax.tree.map(lambda a: a, v['params'])
  params['dense_0']['kernel'] = jnp.asarray(k)
  t = m.topology
  s = sc.incoming_l1(t, params)
  np.testing.assert_allclose(s['dense_0'], [6., 6., 0.5, 1.5])
  np.testing.assert_allclose(sc.incoming_l1(t, params, normalize=True)['dense_0'],
                             [1., 1., 0.5 / 6, 0.25])
  # the updater at the end of its schedule keeps the two largest columns
  u = structured.StructuredMagnitude(topology=t, sparsity=0.5,
                                     update_start_step=0, update_end_step=10,
                                     update_freq=5)
  ctx = _ctx(m, {**v, 'params': params}, step=10)
  keep = u.decide(ctx).keep
  assert keep['dense_0'].tolist() == [True, True, False, False]
  assert int(keep['dense_1'].sum()) == 2  # round(0.5 * 3)


def _ctx(model, variables, step=0, opt_state=None, images=None, labels=None):
  if images is None:
    images, labels = _data()
  return base.PruneContext(step, model, model.topology, variables,
                           opt_state, images, labels)


def test_polynomial_schedule_and_update_steps_follow_jaxpruner():
  # s(t) = 0.8 * (1 - (1 - p)^3), p = (t + 1 - 10) / 20
  poly = schedules.polynomial_sparsity
  assert poly(9, 0.8, 10, 30) == 0.0
  np.testing.assert_allclose(poly(19, 0.8, 10, 30), 0.8 * (1 - 0.5 ** 3))
  assert poly(30, 0.8, 10, 30) == pytest.approx(0.8)
  assert poly(99, 0.8, 10, 30) == pytest.approx(0.8)
  assert poly(0, 0.8, 7, 7) == pytest.approx(0.8)

  def steps(schedule):
    return [t for t in range(40) if schedule.is_update_step(t)]

  # JaxPruner's keys: multiples of update_freq in [start, end]; one shot at
  # end when start == end; no start, no update
  assert steps(schedules.jaxpruner_schedule(5, 10, 30)) == [10, 15, 20, 25,
                                                            30]
  assert steps(schedules.jaxpruner_schedule(5, 7, 28)) == [10, 15, 20, 25]
  assert steps(schedules.jaxpruner_schedule(5, 7, 7)) == [7]
  assert steps(schedules.jaxpruner_schedule(5, 7, None)) == [7]
  assert steps(schedules.jaxpruner_schedule(5, None, None)) == []
  # DemP's and Synaptic Stripping's: every k steps counted from the start
  assert steps(schedules.PeriodicSchedule(10, 7)) == [7, 17, 27, 37]
  both = schedules.AnyOf((schedules.PeriodicSchedule(10, 0, 20),
                          schedules.OneShotSchedule(33, at_end=True)))
  assert steps(both) == [0, 10, 20, 33] and both.at_end
  with pytest.raises(ValueError, match='update_freq'):
    schedules.PeriodicSchedule(0)


def test_iterative_targets_match_the_reference_schedule():
  assert sc.iterative_targets(0.9, 1) == [0.9]
  assert sc.iterative_targets(0.4, 5) == [0.4]
  np.testing.assert_allclose(sc.iterative_targets(0.9, 2),
                             [0.5, 0.7, 0.8, 0.9])


def test_earlycrop_criterion_on_a_hand_made_norm_sequence():
  # d_t = ||theta_t - theta_0|| with ||theta_0|| = 10: relative changes
  # 0.05, 0.03, 0.01, 0.005
  d = [0.0, 0.5, 0.8, 0.9, 0.95]
  assert sc.first_earlycrop_check(d, 10.0, 0.02) == 3
  assert sc.first_earlycrop_check(d, 10.0, 0.1) == 1
  assert sc.first_earlycrop_check(d, 10.0, 0.004) is None
  # no movement is not "slow movement": 0 < change is required
  assert sc.first_earlycrop_check([0.0, 0.0, 0.0, 0.1], 10.0, 0.5) == 3
  assert not sc.earlycrop_fires(0.3, 0.3, 1.0, 0.5)
  assert sc.earlycrop_threshold(0.7) == pytest.approx(0.3)
  np.testing.assert_allclose(sc.modulated_threshold(0.5, 2.0, 10.0),
                             1 - 0.2 * 0.4, rtol=1e-6)


def test_early_snap_keeps_theta0_across_replace_and_prunes_once():
  m, v = _model_and_vars(use_bn=True, widths=(6, 4))
  t = m.topology
  u = create_updater_from_config(
      {'algorithm': 'early_snap', 'sparsity': 0.5, 'check_every': 3,
       'score_batches': 2, 'score_batch_size': 7}, topology=t)
  assert isinstance(u, structured.EarlySNAP)
  assert [t for t in range(5) if u.schedule.is_update_step(t)] == [0, 3]
  assert u.decide(_ctx(m, v, step=0)).keep is None  # records theta_0
  init_norm = sc.tree_norm(v['params'])
  u = u.with_topology(t)  # what the loop does after a surgery
  assert u.tracker.theta0 is not None

  def moved(scale):  # params at distance `scale * ||theta_0||` from theta_0
    return {**v, 'params': jax.tree.map(lambda a: a * (1 + scale),
                                        v['params'])}

  # th = 1 - 0.5: a relative change of 0.6 does not fire ...
  assert u.decide(_ctx(m, moved(0.6), step=3)).keep is None
  # ... then 0.6 -> 0.8 (change 0.2 < 0.5) fires and prunes half the units
  keep = u.decide(_ctx(m, moved(0.8), step=6)).keep
  assert keep is not None and sum(int(k.sum()) for k in keep.values()) == 5
  checks = u.tracker.checks
  assert [c[0] for c in checks] == [0, 3, 6]
  np.testing.assert_allclose([c[1] for c in checks],
                             [0.0, 0.6 * init_norm, 0.8 * init_norm],
                             rtol=1e-5)
  assert u.tracker.pruned_at == 6 and u.tracker.theta0 is None
  assert not u.schedule.is_update_step(9)  # pruned: no more checks


def test_early_crop_forced_at_max_prune_step():
  m, v = _model_and_vars(use_bn=True, widths=(6, 4))
  u = structured.EarlyCrop(topology=m.topology, sparsity=0.5,
                           check_every=100, max_prune_step=7)
  assert [t for t in range(9) if u.schedule.is_update_step(t)] == [0, 7]
  assert u.decide(_ctx(m, v, step=0)).keep is None
  assert u.decide(_ctx(m, v, step=7)).keep is not None  # no movement, forced
  assert u.tracker.pruned_at == 7


def test_snap_step0_with_iterative_steps_and_masked_units():
  """Units masked already (bucket padding) are not live and stay out."""
  m, v = _model_and_vars(use_bn=True, widths=(6, 4))
  t = m.topology
  live = {'dense_0': np.array([1, 1, 1, 1, 1, 0], bool),
          'dense_1': np.ones(4, bool)}
  state = base.SparseState(masks=topo.param_masks(t, v['params'], live))
  assert {k: a.tolist() for k, a in sc.live_units(t, state).items()} == {
      k: a.tolist() for k, a in live.items()}
  u = structured.SNAP(topology=t, sparsity=0.6, pruning_steps=3)
  assert u.schedule.is_update_step(0) and not u.schedule.is_update_step(1)
  keep = u.decide(_ctx(m, v, step=0, opt_state=state)).keep
  assert not keep['dense_0'][5]
  assert sum(int(k.sum()) for k in keep.values()) == 4  # round(0.4 * 10)
  assert len(u.tracker.events) == 1 and not u.schedule.is_update_step(0)


def test_network_slimming_penalty_stops_at_prune_step_and_ranks_gammas():
  m = _mlp((4, 3), num_classes=2)
  v = init_vars(m)
  t = m.topology
  u = create_updater_from_config(
      {'algorithm': 'network_slimming', 'sparsity': 0.5, 'reg_strength': 0.1,
       'prune_step': 2}, topology=t)
  tx = u.wrap_optax(optax.identity())
  params = jax.tree.map(lambda a: a, v['params'])
  params['bn_0']['scale'] = jnp.array([0.5, -2.0, 0.1, 1.0])
  params['bn_1']['scale'] = jnp.array([0.3, 0.05, -3.0])
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for step in range(3):
    upd, state = tx.update(zeros, state, params)
    want = 0.0 if step >= 2 else 0.1
    np.testing.assert_allclose(upd['bn_0']['scale'],
                               want * np.sign([0.5, -2.0, 0.1, 1.0]))
    assert float(jnp.abs(upd['dense_0']['kernel']).sum()) == 0
  assert u.schedule.is_update_step(2) and not u.schedule.is_update_step(1)
  assert not u.schedule.at_end
  keep = u.decide(_ctx(m, {**v, 'params': params}, step=2)).keep
  # one ranking of |gamma| over both layers keeps round(0.5 * 7) = 4 units
  assert keep['dense_0'].tolist() == [True, True, False, True]
  assert keep['dense_1'].tolist() == [False, False, True]
  assert not u.schedule.is_update_step(2)


def test_configs_are_validated():
  with pytest.raises(ValueError, match='update_start_step.*write them in '
                     "the config file's sparsity_config"):
    create_updater_from_config({'algorithm': 'structured_magnitude'})
  with pytest.raises(ValueError, match='sparsity'):
    create_updater_from_config({'algorithm': 'snap', 'sparsity': 1.0})
  with pytest.raises(ValueError, match='dist_type'):
    create_updater_from_config({'algorithm': 'crop_it', 'dist_type': 'erk'})
  with pytest.raises(ValueError, match='tracker'):
    create_updater_from_config({'algorithm': 'snap', 'tracker': None})
  u = create_updater_from_config({'algorithm': 'snap', 'reg_peak': 1.0})
  assert isinstance(u, structured.SNAP)  # DemP's keys are ignored
  # the tracker is shared by replaced copies, not by fresh updaters
  a = structured.SNAP()
  assert dataclasses.replace(a).tracker is a.tracker
  assert structured.SNAP().tracker is not a.tracker


def test_network_slimming_refuses_a_model_without_norm_scales():
  t = _mlp((4,), use_bn=False).topology
  with pytest.raises(ValueError, match='norm scale'):
    create_updater_from_config({'algorithm': 'network_slimming'}, topology=t)
