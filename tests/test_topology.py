"""The unit topology: masks, NHWC tiling and validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from demp_jax import topology as topo


def test_vgg_topology_validates_and_touches_expected_leaves(small_cnn):
  net, v = small_cnn
  t = net.topology
  t.validate(v)
  assert t.names == ('conv_0', 'conv_1', 'conv_2', 'dense_0')
  assert [g.size for g in t.groups] == [6, 8, 12, 16]
  # last conv feeds the dense layer after two pools: 8x8 -> 4x4 -> 2x2
  (consumer,) = t.group('conv_2').consumes
  assert consumer.path == ('dense_0', 'kernel') and consumer.tile == 4


def test_param_masks_none_for_untouched_and_zero_for_dead(small_mlp):
  net, v = small_mlp
  t = net.topology
  alive = {'dense_0': np.arange(12) % 3 != 0}
  m = topo.param_masks(t, v['params'], alive)
  assert m['logits']['bias'] is None
  assert m['dense_0']['kernel'].dtype == jnp.uint8
  np.testing.assert_array_equal(m['dense_0']['kernel'][0], alive['dense_0'])
  np.testing.assert_array_equal(m['bn_0']['scale'], alive['dense_0'])
  np.testing.assert_array_equal(m['dense_1']['kernel'][:, 0],
                                alive['dense_0'])
  assert int(m['dense_1']['bias'].sum()) == 9  # dense_1 all alive


def test_nhwc_flatten_tiling_matches_a_real_flatten():
  """Unit c of an [H, W, C] map owns flat positions p*C + c."""
  h, w, c = 3, 2, 5
  x = jnp.arange(h * w * c).reshape(1, h, w, c)
  flat = x.reshape(1, -1)[0]
  ref = topo.AxisRef('params', ('d', 'kernel'), 0, tile=h * w)
  keep = np.array([1, 3])
  idx = np.sort(ref.positions(c)[keep].reshape(-1))
  np.testing.assert_array_equal(np.asarray(flat)[idx],
                                np.asarray(x[0])[..., keep].reshape(-1))
  mask = topo.unit_axis_mask(ref, np.isin(np.arange(c), keep),
                             (h * w * c, 4))[:, 0]
  np.testing.assert_array_equal(np.flatnonzero(mask), np.sort(idx))


def test_validate_names_the_wrong_leaf(small_mlp):
  net, v = small_mlp
  t = net.topology
  (kernel,) = [r for r in t.groups[0].produces
                if r.path == ('dense_0', 'kernel')]
  bad = topo.UnitTopology((topo.UnitGroup(
      'dense_0', 13, (kernel,), t.groups[0].consumes),))
  with pytest.raises(ValueError, match='dense_0/kernel.*length 13'):
    bad.validate(v)
  missing = topo.UnitTopology((topo.UnitGroup(
      'dense_0', 12, (topo.AxisRef('params', ('nope', 'kernel'), -1),)),))
  with pytest.raises(ValueError, match='no leaf params/nope/kernel'):
    missing.validate(v)


def test_silence_units_makes_dead_units_output_zero(small_cnn):
  net, v = small_cnn
  t = net.topology
  alive = {g.name: np.random.default_rng(1).random(g.size) > 0.5
           for g in t.groups}
  masked = topo.silence_units(t, v, alive)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
  _, acts = net.activations(masked, x)
  assert set(acts) == set(alive)
  for name, a in alive.items():
    for out in acts[name]:
      assert np.all(np.asarray(out)[..., ~a] == 0)
