"""The death check on hand-built nets whose dead units are known."""
import jax
import jax.numpy as jnp
import numpy as np

from demp_jax import models, stats
from demp_jax.net import Net
import user_models as um


def _kill(variables, bn, units):
  """BN scale 0 and offset -1 in eval mode: ReLU output exactly 0."""
  p = jax.tree.map(lambda x: x, variables['params'])
  p[bn]["scale"] = p[bn]["scale"].at[np.array(units)].set(0.0)
  p[bn]["bias"] = p[bn]["bias"].at[np.array(units)].set(-1.0)
  return {**variables, 'params': p}


def test_finds_exactly_the_units_killed_in_a_hand_built_cnn(small_cnn):
  net, v = small_cnn
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 16, 8, 8, 3))
  before = stats.saturation_stats(net, v, x, 0.0)
  killed = {'conv_1': ('conv_bn_1', [0, 5]),
            'dense_0': ('dense_bn_0', [3, 4, 15])}
  for name, (bn, units) in killed.items():
    after = stats.saturation_stats(net, _kill(v, bn, units), x, 0.0)
    assert set(after) == set(before)
    # groups before the killed one are unchanged
    np.testing.assert_array_equal(after['conv_0'].dead,
                                  before['conv_0'].dead)
    want = np.asarray(before[name].dead).copy()
    want[units] = True
    np.testing.assert_array_equal(after[name].dead, want)
    np.testing.assert_allclose(np.asarray(after[name].apoz)[units], 1.0)
    assert np.all(np.asarray(after[name].mean_abs)[units] == 0)
  assert not np.all(before['conv_1'].dead)


def test_dead_means_dead_on_every_batch():
  """A unit that fires on one batch only is not dead (logical AND)."""
  m = models.MLP(widths=(3,), use_bn=False, num_classes=2)
  net, v = Net.create(m, (2,))
  p = v['params']
  # unit j: relu(x0 * k_j); unit 0 fires only for positive x0
  p['dense_0']['kernel'] = jnp.array([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  p['dense_0']['bias'] = jnp.zeros(3)
  neg = -jnp.ones((4, 2))
  batches = jnp.stack([neg, neg.at[0, 0].set(1.0)])
  s = stats.saturation_stats(net, {'params': p}, batches, 0.0)
  np.testing.assert_array_equal(s['dense_0'].dead, [False, True, False])
  s1 = stats.saturation_stats(net, {'params': p}, batches[:1], 0.0)
  np.testing.assert_array_equal(s1['dense_0'].dead, [True, True, False])
  # apoz of unit 0: one non-zero entry out of 8
  np.testing.assert_allclose(s['dense_0'].apoz[0], 7 / 8)
  # mean |a|: unit 2 outputs relu(-x0) = 1 everywhere but one entry
  np.testing.assert_allclose(s['dense_0'].mean_abs, [1 / 8, 0, 7 / 8])
  np.testing.assert_allclose(s['dense_0'].dormancy,
                             np.array([1 / 8, 0, 7 / 8]) / (1 / 3))


def test_epsilon_relaxes_the_test():
  m = models.MLP(widths=(2,), use_bn=False, num_classes=2)
  net, v = Net.create(m, (1,))
  p = v['params']
  p['dense_0']['kernel'] = jnp.array([[1e-4, 1.0]])
  p['dense_0']['bias'] = jnp.zeros(2)
  x = jnp.ones((1, 5, 1))
  assert not np.any(stats.saturation_stats(net, {'params': p}, x, 0.0)
                    ['dense_0'].dead)
  np.testing.assert_array_equal(
      stats.saturation_stats(net, {'params': p}, x, 1e-3)['dense_0'].dead,
      [True, False])


def test_dynamic_dead_rate_counts_zero_outputs_per_example():
  m = models.MLP(widths=(4,), use_bn=False, num_classes=2)
  net, v = Net.create(m, (1,))
  p = v['params']
  p['dense_0']['kernel'] = jnp.array([[1.0, -1.0, 0.0, 2.0]])
  p['dense_0']['bias'] = jnp.zeros(4)
  x = jnp.array([[[1.0], [-1.0]]])  # one batch of two examples
  # x=1: outputs (1,0,0,2): 2 zeros of 4; x=-1: (0,1,0,0): 3 zeros of 4
  rates = stats.dead_rates(net, {'params': p}, x)
  np.testing.assert_allclose(rates.dynamic_dead_rate, (2 / 4 + 3 / 4) / 2)
  assert (rates.dead_units, rates.units) == (1, 4)  # unit 2 is always 0


def test_statistics_of_a_model_returning_a_tuple_or_a_dict():
  """The outputs may be any pytree (here a dict holding a tuple); the
  statistics are those of the hidden layers (they used to stop with 'too
  many values to unpack')."""
  net, v = Net.create(um.TwoHeads(), (4, 4, 3))
  assert net.topology.names == ('Dense_0', 'Dense_1')
  p = v['params']
  p['Dense_0']['bias'] = p['Dense_0']['bias'].at[np.array([1, 4])].set(-1e3)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 4, 3))
  logits, acts = net.activations(v, x[0])
  want = net.apply(v, x[0])
  assert jax.tree.structure(logits) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_allclose, logits, want)
  h = jax.nn.relu(x.reshape((2, 5, -1)) @ p['Dense_0']['kernel'] +
                  p['Dense_0']['bias'])
  np.testing.assert_allclose(acts['Dense_0'][0], h[0], rtol=1e-5, atol=1e-6)
  s = stats.saturation_stats(net, v, x, 0.0)
  np.testing.assert_array_equal(s['Dense_0'].dead,
                                np.all(np.asarray(h) == 0, axis=(0, 1)))
  assert np.asarray(s['Dense_0'].dead)[[1, 4]].all()
  np.testing.assert_allclose(s['Dense_0'].max, h.max(axis=(0, 1)),
                             rtol=1e-5)
  assert s['Dense_1'].dead.shape == (7,)
  logits, ranges = stats.activation_range(net, v, x[0])
  assert set(logits) == {'cls', 'aux'} and set(ranges) == set(s)
  assert stats.dead_rates(net, v, x).dead_units >= 2
