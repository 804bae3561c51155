"""The penalty and the noise against hand computations."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from demp_jax import transforms


def _params():
  return {'bn': {'scale': jnp.array([1.5, -0.5, 0.0, 2.0]),
                 'bias': jnp.array([0.3, -0.2, 0.1, 0.0])},
          'dense': {'kernel': jnp.array([[0.5, -1.0], [2.0, 0.25]])}}


@pytest.mark.parametrize('reg, grad', [
    ('l1', lambda p: np.sign(p)),
    ('l2', lambda p: p),
    ('l1_pos', lambda p: (p > 0).astype(np.float32)),
    ('l2_pos', lambda p: np.maximum(p, 0)),
])
def test_penalty_adds_lambda_times_gradient_on_scales_only(reg, grad):
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
  tx = transforms.scale_penalty(0.7, reg)
  out, _ = tx.update(grads, tx.init(params), params)
  scale = np.asarray(params['bn']['scale'])
  np.testing.assert_allclose(out['bn']['scale'], 0.1 + 0.7 * grad(scale),
                             rtol=1e-6)
  np.testing.assert_allclose(out['bn']['bias'], 0.1)
  np.testing.assert_allclose(out['dense']['kernel'], 0.1)


@pytest.mark.parametrize('reg', ['l1', 'l2', 'l1_pos', 'l2_pos'])
def test_penalty_equals_gradient_of_penalised_loss(reg):
  params = _params()
  # Away from the kink at 0 (where the penalty uses the subgradient 0, so a
  # scale at exactly 0 stays there, and autodiff picks another one).
  params['bn']['scale'] = jnp.array([1.5, -0.5, 0.7, 2.0])
  lam = 0.3
  loss = lambda p: jnp.sum(p['dense']['kernel'] ** 2) + jnp.sum(
      p['bn']['scale'] * p['bn']['bias'])
  total = lambda p: loss(p) + lam * transforms.penalty_value(p, reg)
  tx = transforms.scale_penalty(lam, reg)
  got, _ = tx.update(jax.grad(loss)(params), tx.init(params), params)
  want = jax.grad(total)(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               got, want)


def test_penalty_subgradient_is_zero_at_zero():
  params = _params()  # scale[2] == 0
  for reg in ('l1', 'l1_pos', 'l2', 'l2_pos'):
    tx = transforms.scale_penalty(5.0, reg)
    zero = jax.tree.map(jnp.zeros_like, params)
    out, _ = tx.update(zero, tx.init(params), params)
    assert float(out['bn']['scale'][2]) == 0.0


def test_penalty_follows_the_schedule_step_by_step():
  params = _params()
  sched = transforms.onecycle(peak=1.0, span=10)
  tx = transforms.scale_penalty(sched, 'l2')
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  for t in range(12):
    out, state = tx.update(zero, state, params)
    np.testing.assert_allclose(out['bn']['scale'],
                               sched(t) * params['bn']['scale'], rtol=1e-6)


def test_onecycle_shape():
  s = transforms.onecycle(peak=2.0, span=100)
  np.testing.assert_allclose(s(0), 2.0 / 25, rtol=1e-6)
  np.testing.assert_allclose(s(30), 2.0, rtol=1e-6)
  np.testing.assert_allclose(s(100), 2.0 / 25 / 1e4, rtol=1e-4)
  np.testing.assert_allclose(s(500), 2.0 / 25 / 1e4, rtol=1e-4)
  with pytest.raises(ValueError, match='span'):
    transforms.onecycle(1.0, 0)


def test_penalty_custom_mask_and_unknown_regularizer():
  params = _params()
  mask = jax.tree.map(lambda p: False, params)
  mask['dense']['kernel'] = True
  tx = transforms.scale_penalty(1.0, 'l2', mask=mask)
  zero = jax.tree.map(jnp.zeros_like, params)
  out, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(out['dense']['kernel'], params['dense']['kernel'])
  np.testing.assert_allclose(out['bn']['scale'], 0.0)
  with pytest.raises(ValueError, match='unknown regularizer'):
    transforms.scale_penalty(1.0, 'l3')


def test_noise_is_sigma_times_folded_normal_on_live_entries():
  params = _params()
  sigma = 0.25
  tx = transforms.live_unit_noise(sigma, seed=7)
  live = jax.tree.map(lambda p: jnp.ones_like(p, jnp.uint8), params)
  live['bn']['scale'] = jnp.array([1, 0, 1, 0], jnp.uint8)
  live['dense'] = {'kernel': None}  # None: all live
  zero = jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  out, state = tx.update(zero, state, params, live_mask=live)
  out2, _ = tx.update(zero, state, params, live_mask=live)
  leaves, _ = jax.tree.flatten(params)
  sizes = [p.size for p in leaves]
  xi = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(7), 0),
                         (sum(sizes),))
  splits = np.split(np.asarray(xi), np.cumsum(sizes)[:-1])
  want = [sigma * x.reshape(p.shape) for x, p in zip(splits, leaves)]
  got = jax.tree.leaves(out)
  # order of leaves: bn/bias, bn/scale, dense/kernel
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  np.testing.assert_allclose(got[1], want[1] * np.array([1, 0, 1, 0]),
                             rtol=1e-6)
  np.testing.assert_allclose(got[2], want[2], rtol=1e-6)
  assert np.all(np.asarray(out['bn']['scale'])[[1, 3]] == 0)
  assert not np.allclose(jax.tree.leaves(out2)[0], got[0])  # fresh each step


def test_noise_is_added_after_the_optimiser_not_scaled_by_lr():
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  plain = optax.sgd(1e-3, momentum=0.9)
  noisy = optax.chain(plain, transforms.live_unit_noise(0.5, seed=1))
  u_plain, _ = plain.update(grads, plain.init(params), params)
  u_noisy, _ = noisy.update(grads, noisy.init(params), params)
  diff = jax.tree.map(lambda a, b: a - b, u_noisy, u_plain)
  # The noise std is 0.5 whatever the learning rate (1e-3) is.
  flat = np.concatenate([np.ravel(d) for d in jax.tree.leaves(diff)])
  assert np.std(flat) > 0.1


@pytest.mark.parametrize('make_opt', [
    lambda: optax.adamw(1e-3, weight_decay=1e-4),
    lambda: optax.sgd(1e-2, momentum=0.9),
])
def test_chain_with_any_optimiser_is_jittable_and_deterministic(make_opt):
  params = _params()
  grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)

  def run(seed):
    tx = optax.chain(transforms.scale_penalty(transforms.onecycle(1e-2, 20)),
                     make_opt(),
                     transforms.live_unit_noise(transforms.onecycle(5e-5, 20),
                                                seed=seed))
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, live_mask=None))
    p = params
    for _ in range(3):
      u, state = step(grads, state, p)
      p = optax.apply_updates(p, u)
    return p

  a, b, c = run(0), run(0), run(1)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not all(np.array_equal(x, y) for x, y in
                 zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def test_noise_passes_over_the_entries_of_other_transformations():
  """Under optax.masked the other entries are MaskedNode leaves; the full
  live mask still reaches the noise (optax's default)."""
  params = {'k': jnp.ones((3, 2)), 'b': jnp.ones(2)}
  live = {'k': jnp.array([[1, 1], [0, 0], [1, 1]], jnp.uint8), 'b': None}
  tx = optax.masked(transforms.live_unit_noise(0.1),
                    {'k': True, 'b': False})
  out, _ = tx.update(jax.tree.map(jnp.zeros_like, params),
                     tx.init(params), params, live_mask=live)
  assert np.all(np.asarray(out['b']) == 0)  # passed through, no noise
  k = np.asarray(out['k'])
  assert np.all(k[1] == 0) and np.all(k[[0, 2]] != 0)  # live rows only


def test_a_wrapped_optimizer_gets_the_callers_extra_arguments():
  from demp_jax.algorithms import create_updater_from_config  # pylint: disable=g-import-not-at-top
  from demp_jax import topology as topo  # pylint: disable=g-import-not-at-top
  upd = create_updater_from_config({'algorithm': 'demp', 'reg_span': 10},
                                   topology=topo.UnitTopology(()))
  params = {'w': jnp.ones(3)}
  tx = upd.wrap_optax(optax.polyak_sgd())  # needs value=
  out, _ = tx.update({'w': jnp.ones(3)}, tx.init(params), params,
                     value=jnp.asarray(2.0))
  assert np.all(np.isfinite(np.asarray(out['w'])))
