"""ResNet-18 (CIFAR) and ResNet-50 (v1.5): structure, topology, shortcuts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from demp_jax import models, surgery
from demp_jax import topology as topo
from demp_jax.models import layers
from demp_jax.net import Net


@pytest.fixture(scope='module')
def r18():
  return Net.create(models.ResNet18(base_width=2, num_classes=5), (32, 32, 3))


@pytest.fixture(scope='module')
def r50():
  return Net.create(models.ResNet50(base_width=1, num_classes=5), (32, 32, 3))


def test_full_size_unit_counts_match_the_paper():
  # DemP paper: 3,904 prunable neurons (ResNet-18), 22,720 (ResNet-50)
  r18, r50 = models.build_model({'name': 'resnet18'}), models.build_model(
      {'name': 'resnet50'})
  assert sum(r18.widths) == 3904 and len(r18.widths) == 1 + 8 * 2
  assert sum(r50.widths) == 22720 and len(r50.widths) == 1 + 16 * 3
  assert r50.num_classes == 1000 and r50.zero_init_last_bn
  assert r18.widths[:5] == (64, 64, 64, 64, 64)
  assert r50.widths[:4] == (64, 64, 64, 256)
  assert r50.widths[-3:] == (512, 512, 2048)


def test_projection_only_where_the_default_shape_changes():
  r18 = models.ResNet18()
  assert [s.projection for s in r18.block_specs()] == [
      False, False, True, False, True, False, True, False]
  assert [s.stride for s in r18.block_specs()] == [1, 1, 2, 1, 2, 1, 2, 1]
  r50 = models.ResNet50()
  first = [s.projection for s in r50.block_specs()]
  assert first == [True, False, False, True, False, False, False,
                   True] + [False] * 5 + [True, False, False]
  # pruned widths do not change which blocks project
  small = r18.with_widths([3] * 17)
  assert [s.projection for s in small.block_specs()] == [
      s.projection for s in r18.block_specs()]


def test_resnet18_topology_validates_and_sows_its_groups(r18):
  net, v = r18
  assert net.handwritten
  t = net.topology
  t.validate(v)
  assert t.names[:3] == ('stem_act', 'block0_0/act1', 'block0_0/out')
  x = jax.random.normal(jax.random.PRNGKey(0), (3,) + net.input_shape)
  logits, acts = net.activations(v, x)
  assert logits.shape == (3, 5)
  assert set(acts) == set(t.names)
  acts = {k: a for k, (a,) in acts.items()}   # one site per group
  for g in t.groups:
    assert acts[g.name].shape[-1] == g.size
  # CIFAR stem keeps 32x32; strides 1/2/2/2
  assert acts['stem_act'].shape[1:3] == (32, 32)
  assert acts['block1_0/act1'].shape[1:3] == (16, 16)
  assert acts['block3_1/out'].shape[1:3] == (4, 4)
  # identity blocks store their gather map, projection blocks a conv
  assert 'block1_0' not in v['shortcut']
  np.testing.assert_array_equal(v['shortcut']['block0_1']['index'], [0, 1])
  assert v['params']['block1_0']['proj_conv']['kernel'].shape == (1, 1, 2, 4)


def test_resnet18_head_tile_after_the_4x4_pool():
  model = models.ResNet18(base_width=1, num_classes=3)
  t = model.unit_topology((64, 64, 3))   # final map 8x8 -> pooled 2x2
  (head,) = t.group('block3_1/out').consumes
  assert head.path == ('head', 'kernel') and head.tile == 4
  v = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x),
                     jnp.zeros((1, 64, 64, 3)))
  assert v['params']['head']['kernel'].shape == (4 * 8, 3)
  with pytest.raises(ValueError, match='pool_size'):
    model.unit_topology((16, 16, 3))


def test_resnet50_structure(r50):
  net, v = r50
  model, shape = net.module, net.input_shape
  t = net.topology
  t.validate(v)
  p = v['params']
  # zero-initialised scale on each block's last BN only
  for spec in model.block_specs():
    assert np.all(np.asarray(p[spec.name]['bn3']['scale']) == 0)
    assert np.all(np.asarray(p[spec.name]['bn1']['scale']) == 1)
    assert np.all(np.asarray(p[spec.name]['bn2']['scale']) == 1)
  assert np.all(np.asarray(p['stem_bn']['scale']) == 1)
  # v1.5: the stride is on the 3x3 conv; 7x7/2 stem, 3x3/2 max-pool
  assert p['stem_conv']['kernel'].shape == (7, 7, 3, 1)
  x = jax.random.normal(jax.random.PRNGKey(1), (2,) + shape)
  logits, acts = net.activations(v, x)
  assert logits.shape == (2, 5)
  assert set(acts) == set(t.names)
  acts = {k: a for k, (a,) in acts.items()}   # one site per group
  assert acts['stem_act'].shape[1:3] == (16, 16)
  assert acts['block0_0/act1'].shape[1:3] == (8, 8)
  assert acts['block1_0/act1'].shape[1:3] == (8, 8)   # 1x1 conv: no stride
  assert acts['block1_0/act2'].shape[1:3] == (4, 4)   # 3x3 conv: stride 2
  assert acts['block0_0/out'].shape[-1] == 4
  assert set(v['shortcut']) == {s.name for s in model.block_specs()
                                if not s.projection}


def test_gather_channels_is_a_selection_with_zero_for_minus_one():
  x = jnp.arange(2 * 4, dtype=jnp.float32).reshape(2, 4) + 1
  y = layers.gather_channels(x, jnp.array([3, -1, 0, 3]))
  np.testing.assert_array_equal(y, [[4, 0, 1, 4], [8, 0, 5, 8]])
  np.testing.assert_array_equal(layers.identity_index(5, 3), [0, 1, 2, -1, -1])


def test_residual_channel_removal_slices_and_renumbers_the_index(r18):
  net, v = r18
  keep = {'block0_0/out': np.array([False, True])}
  res = surgery.shrink(net, v, keep)
  sc = res.variables['shortcut']
  # block0_0 produces its output from the stem: entry 0 goes, entry 1 stays
  np.testing.assert_array_equal(sc['block0_0']['index'], [1])
  # block0_1 reads block0_0's outputs: unit 0 is gone (-1), unit 1 is now 0
  np.testing.assert_array_equal(sc['block0_1']['index'], [-1, 0])
  assert res.model.widths[2] == 1
  assert res.variables['params']['block0_1']['conv1']['kernel'].shape == (
      3, 3, 1, 2)


def test_silenced_residual_units_output_zero(r18):
  net, v = r18
  t = net.topology
  rng = np.random.default_rng(0)
  alive = {g.name: rng.random(g.size) < 0.5 for g in t.groups}
  masked = topo.silence_units(t, v, alive)
  x = jax.random.normal(jax.random.PRNGKey(2), (2,) + net.input_shape)
  _, acts = net.activations(masked, x)
  assert set(acts) == set(alive)
  for name, a in alive.items():
    for site in acts[name]:
      assert np.all(np.asarray(site)[..., ~a] == 0), name


def test_all_internal_units_of_a_block_can_go(r18):
  net, v = r18
  x = jax.random.normal(jax.random.PRNGKey(3), (2,) + net.input_shape)
  keep = {'block1_1/act1': np.zeros(4, bool)}
  res = surgery.shrink(net, v, keep, probe=x, min_width=0)
  assert res.model.widths[net.topology.names.index('block1_1/act1')] == 0
  assert res.max_masked_diff <= 1e-5
  with pytest.raises(ValueError, match='every unit'):
    surgery.shrink(net, v, keep)


def test_with_widths_and_build_model_errors():
  model = models.ResNet18(base_width=2)
  with pytest.raises(ValueError, match='17 unit groups'):
    model.with_widths([1, 2, 3])
  with pytest.raises(ValueError, match='unknown key'):
    models.build_model({'name': 'resnet50', 'widthz': 3})
  assert models.build_model({'name': 'resnet', 'block': 'bottleneck',
                             'stage_sizes': [1, 1]}).stage_sizes == (1, 1)
