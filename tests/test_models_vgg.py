"""VGG-16 (CIFAR) on the shared VGG class: widths, pools, head, topology."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from demp_jax import models, stats, surgery


def test_vgg16_defaults_and_reference_last_conv():
  m = models.build_model({'name': 'vgg16'})
  assert m.widths == (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512,
                      512, 512, 4096, 4096)
  assert m.conv_bias and m.head_pool == 2
  ref = models.build_model({'name': 'vgg16', 'last_conv_width': 1024})
  assert ref.widths[12] == 1024
  # the real neuron count of the reference VGG-16 (paper: 12,928 + 4,096)
  assert sum(ref.widths) == 12928
  # with_widths sets every width, the override goes
  small = ref.with_widths([2] * 15)
  assert small.widths == (2,) * 15 and small.last_conv_width is None
  with pytest.raises(ValueError, match='15 unit groups'):
    ref.with_widths([2] * 14)


@pytest.fixture(scope='module')
def vgg16_small():
  m = models.VGG16(conv_widths=(3,) * 13, dense_widths=(3, 3), num_classes=4,
                   last_conv_width=5)
  v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  return m, {k: x for k, x in v.items() if k != 'activations'}


def test_vgg16_shapes_topology_and_sown_names(vgg16_small):
  m, v = vgg16_small
  shape = (32, 32, 3)
  t = m.unit_topology(shape)
  t.validate(v)
  assert v['params']['conv_0']['bias'].shape == (3,)
  # 4 max-pools and the 2x2 average pool: 32 -> 2 -> 1, so tile 1
  (head,) = t.group('conv_act_12').consumes
  assert head.path == ('dense_0', 'kernel') and head.tile == 1
  assert v['params']['dense_0']['kernel'].shape == (5, 3)
  x = jax.random.normal(jax.random.PRNGKey(1), (2,) + shape)
  logits, acts = stats.sown_activations(m, v, x)
  assert logits.shape == (2, 4)
  assert set(acts) == set(t.names)
  sizes = [acts[f'conv_act_{i}'].shape[1] for i in range(13)]
  # max-pool after the 2nd, 4th, 7th and 10th conv
  assert sizes == [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]
  assert acts['conv_act_12'].shape[-1] == 5
  # 64x64 inputs (the reference's resized CIFAR) flatten 2x2 positions
  assert m.unit_topology((64, 64, 3)).group('conv_act_12').consumes[0].tile \
      == 4


def test_vgg16_conv_bias_is_sliced_and_shrink_is_exact(vgg16_small):
  m, v = vgg16_small
  shape = (32, 32, 3)
  rng = np.random.default_rng(0)
  keep = {f'conv_act_{i}': rng.random(m.widths[i]) < 0.6 for i in range(13)}
  for k in keep.values():
    k[0] = True
  x = jax.random.normal(jax.random.PRNGKey(2), (2,) + shape)
  res = surgery.shrink(m, v, keep, input_shape=shape, probe=x)
  assert res.max_masked_diff <= 1e-5
  for i in range(13):
    assert res.variables['params'][f'conv_{i}']['bias'].shape == (
        int(keep[f'conv_act_{i}'].sum()),)
