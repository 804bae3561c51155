"""The small pre-LN ViT: MLP hidden units (and MLP outputs) as unit groups."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from demp_jax import models, stats, surgery
from demp_jax import topology as topo
from demp_jax.models import layers
from demp_jax.net import Net

SHAPE = (8, 8, 3)


@pytest.fixture(scope='module')
def vit_out():
  return Net.create(models.ViT(patch_size=4, hidden_size=8, depth=2,
                               num_heads=2, mlp_dim=6, num_classes=4,
                               activation='relu', mlp_out_activation=True),
                    SHAPE)


@pytest.mark.parametrize('act', ['relu', 'gelu'])
def test_topology_validates_and_names_match_the_activations(act):
  net, v = Net.create(models.ViT(patch_size=4, hidden_size=8, depth=3,
                                 num_heads=2, mlp_dim=6, num_classes=4,
                                 activation=act), SHAPE)
  t = net.topology
  t.validate(v)
  assert t.names == ('block_0/mlp/fc1', 'block_1/mlp/fc1', 'block_2/mlp/fc1')
  assert net.widths == (6, 6, 6)
  x = jax.random.normal(jax.random.PRNGKey(1), (2,) + SHAPE)
  logits, acts = net.activations(v, x)
  assert logits.shape == (2, 4)
  assert set(acts) == set(t.names)
  (a0,), (a1,) = acts['block_0/mlp/fc1'], acts['block_1/mlp/fc1']
  assert a0.shape == (2, 5, 6)  # CLS + 2x2 patches
  if act == 'relu':
    assert float(jnp.min(a1)) >= 0
  else:
    assert float(jnp.min(a1)) < 0


def test_mlp_out_activation_adds_an_independent_group(vit_out):
  net, v = vit_out
  t = net.topology
  t.validate(v)
  assert t.names == ('block_0/mlp/act', 'block_0/mlp/out_act',
                     'block_1/mlp/act', 'block_1/mlp/out_act')
  assert net.widths == (6, 8, 6, 8)
  np.testing.assert_array_equal(v['shortcut']['block_0']['mlp']['out_index'],
                                np.arange(8))
  # an out group only produces: fc2 columns, bias and the scatter map
  g = t.group('block_1/mlp/out_act')
  assert g.consumes == ()
  assert {r.path[-1] for r in g.produces} == {'kernel', 'bias', 'out_index'}


def test_removing_mlp_units_and_outputs_is_exact_on_the_masked_net(vit_out):
  net, v = vit_out
  rng = np.random.default_rng(0)
  t = net.topology
  keep = {g.name: rng.random(g.size) < 0.5 for g in t.groups}
  for k in keep.values():
    k[rng.integers(k.size)] = True
  x = jax.random.normal(jax.random.PRNGKey(2), (3,) + SHAPE)
  res = surgery.shrink(net, v, keep, probe=x)
  assert res.max_masked_diff <= 1e-5
  assert res.model.widths == tuple(int(keep[n].sum()) for n in t.names)
  kept = np.flatnonzero(keep['block_0/mlp/out_act'])
  # the MLP writes its kept outputs to the same stream features as before
  np.testing.assert_array_equal(
      res.variables['shortcut']['block_0']['mlp']['out_index'], kept)
  assert res.variables['params']['block_0']['mlp']['fc2']['kernel'].shape == (
      int(keep['block_0/mlp/act'].sum()), kept.size)


def test_dead_mlp_output_removal_keeps_the_function(vit_out):
  """An MLP output that is 0 on every token writes nothing to the stream."""
  net, v = vit_out
  fc2 = v['params']['block_1']['mlp']['fc2']
  kernel = np.asarray(fc2['kernel']).copy()
  bias = np.asarray(fc2['bias']).copy()
  kernel[:, 3], bias[3] = 0.0, -1.0   # ReLU(-1) = 0 for every input
  p = topo.set_leaf(v, ('params', ('block_1', 'mlp', 'fc2', 'kernel')),
                    jnp.asarray(kernel))
  p = topo.set_leaf(p, ('params', ('block_1', 'mlp', 'fc2', 'bias')),
                    jnp.asarray(bias))
  x = jax.random.normal(jax.random.PRNGKey(3), (2,) + SHAPE)
  keep = {'block_1/mlp/out_act': np.arange(8) != 3}
  res = surgery.shrink(net, p, keep, probe=x)
  assert res.max_output_change <= 1e-5
  np.testing.assert_array_equal(
      res.variables['shortcut']['block_1']['mlp']['out_index'],
      [0, 1, 2, 4, 5, 6, 7])


def test_scatter_channels_places_outputs_and_drops_minus_one():
  y = jnp.array([[1.0, 2.0, 3.0]])
  z = layers.scatter_channels(y, jnp.array([4, -1, 0]), 5)
  np.testing.assert_array_equal(z, [[3.0, 0.0, 0.0, 0.0, 1.0]])


def test_with_widths_checks_the_count():
  m = models.ViT(depth=2, mlp_out_activation=True)
  assert len(m.widths) == 4
  with pytest.raises(ValueError, match='4 unit groups'):
    m.with_widths([3, 3])


def test_heads_as_units():
  net, v = Net.create(models.ViT(patch_size=4, hidden_size=6, depth=2,
                                 num_heads=3, mlp_dim=4, num_classes=4,
                                 prune_heads=True), SHAPE)
  t = net.topology
  t.validate(v)
  assert t.names == ('block_0/attn/heads', 'block_0/mlp/act',
                     'block_1/attn/heads', 'block_1/mlp/act')
  assert net.widths == (3, 4, 3, 4)
  assert v['params']['block_0']['attn']['query']['kernel'].shape == (6, 3, 2)
  x = jax.random.normal(jax.random.PRNGKey(4), (2,) + SHAPE)
  _, acts = net.activations(v, x)
  assert set(acts) == set(t.names)
  (heads,) = acts['block_1/attn/heads']
  assert heads.shape == (2, 5, 2, 3)  # [B, T, d_h, H]
  # a head whose values are 0 outputs 0: dead, and removing it is exact
  p = v
  for leaf in ('kernel', 'bias'):
    key = ('params', ('block_1', 'attn', 'value', leaf))
    a = np.asarray(topo.get_leaf(p, key)).copy()
    a[..., 1, :] = 0.0
    p = topo.set_leaf(p, key, jnp.asarray(a))
  s = stats.saturation_stats(net, p, x[None], 0.0)
  np.testing.assert_array_equal(s['block_1/attn/heads'].dead,
                                [False, True, False])
  res = surgery.shrink(net, p,
                       {'block_1/attn/heads': np.array([1, 0, 1], bool),
                        'block_0/attn/heads': np.array([0, 0, 0], bool)},
                       probe=x, min_width=0)
  assert res.model.widths == (0, 4, 2, 4)
  assert res.max_masked_diff <= 1e-5
  assert res.variables['params']['block_1']['attn']['out']['kernel'].shape \
      == (2, 2, 6)
  # block 1 lost only its dead head: the change is block 0's heads
  res1 = surgery.shrink(net, p, {'block_1/attn/heads': np.array([1, 0, 1],
                                                                bool)},
                        probe=x)
  assert res1.max_output_change <= 1e-5


def test_a_patch_size_that_does_not_divide_the_input_is_named():
  m = models.build_model({'name': 'vit', 'patch_size': 7, 'hidden_size': 8,
                          'depth': 1, 'num_heads': 2, 'mlp_dim': 16})
  with pytest.raises(ValueError, match='patch_size=7 does not divide the '
                     '32x32 input'):
    Net.create(m, (32, 32, 3), init=False)
  Net.create(m, (28, 28, 3), init=False)  # 4 x 4 patches
