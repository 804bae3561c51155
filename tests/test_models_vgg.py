"""VGG-16 (CIFAR) on the shared VGG class: widths, pools, head, topology."""
import jax
import numpy as np
import pytest

from demp_jax import models, surgery
from demp_jax.net import Net


def _widths(model, shape=(32, 32, 3)):
  return Net.create(model, shape, init=False)[0].widths


def test_vgg16_defaults_and_reference_last_conv():
  m = models.build_model({'name': 'vgg16'})
  assert _widths(m) == (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512,
                        512, 512, 4096, 4096)
  assert m.conv_bias and m.head_pool == 2
  ref, _ = Net.create(models.build_model({'name': 'vgg16',
                                          'last_conv_width': 1024}),
                      (32, 32, 3), init=False)
  assert ref.widths[12] == 1024
  # the real neuron count of the reference VGG-16 (paper: 12,928 + 4,096)
  assert sum(ref.widths) == 12928
  # at_widths sets every width
  assert ref.at_widths([2] * 15).widths == (2,) * 15
  with pytest.raises(ValueError, match='15 unit groups'):
    ref.at_widths([2] * 14)


@pytest.fixture(scope='module')
def vgg16_small():
  return Net.create(models.VGG16(conv_widths=(3,) * 13, dense_widths=(3, 3),
                                 num_classes=4, last_conv_width=5),
                    (32, 32, 3))


def test_vgg16_shapes_topology_and_activation_sites(vgg16_small):
  net, v = vgg16_small
  shape = net.input_shape
  t = net.topology
  t.validate(v)
  assert v['params']['conv_0']['bias'].shape == (3,)
  # 4 max-pools and the 2x2 average pool: 32 -> 2 -> 1, so tile 1
  (head,) = t.group('conv_12').consumes
  assert head.path == ('dense_0', 'kernel') and head.tile == 1
  assert v['params']['dense_0']['kernel'].shape == (5, 3)
  x = jax.random.normal(jax.random.PRNGKey(1), (2,) + shape)
  logits, acts = net.activations(v, x)
  assert logits.shape == (2, 4)
  assert set(acts) == set(t.names)
  sizes = [acts[f'conv_{i}'][0].shape[1] for i in range(13)]
  # max-pool after the 2nd, 4th, 7th and 10th conv
  assert sizes == [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]
  assert acts['conv_12'][0].shape[-1] == 5
  # 64x64 inputs (the reference's resized CIFAR) flatten 2x2 positions
  big, _ = Net.create(net.module, (64, 64, 3), init=False)
  assert big.topology.group('conv_12').consumes[0].tile == 4


def test_vgg16_conv_bias_is_sliced_and_shrink_is_exact(vgg16_small):
  net, v = vgg16_small
  shape = net.input_shape
  rng = np.random.default_rng(0)
  keep = {f'conv_{i}': rng.random(net.widths[i]) < 0.6 for i in range(13)}
  for k in keep.values():
    k[0] = True
  x = jax.random.normal(jax.random.PRNGKey(2), (2,) + shape)
  res = surgery.shrink(net, v, keep, probe=x)
  assert res.max_masked_diff <= 1e-5
  for i in range(13):
    assert res.variables['params'][f'conv_{i}']['bias'].shape == (
        int(keep[f'conv_{i}'].sum()),)


def test_pools_the_model_cannot_hold_are_named():
  with pytest.raises(ValueError, match=r'pool_after=\(0, 5\) names conv 5, '
                     'and the model has 2 convs'):
    models.build_model({'name': 'vgg', 'conv_widths': (8, 16),
                        'pool_after': (0, 5)})
  # five 2x2 pools on 28x28: 14, 7, 3, 1, then nothing (it used to fail
  # later, blaming a width of 0)
  deep = models.build_model({'name': 'vgg', 'conv_widths': (8,) * 5,
                             'pool_after': (0, 1, 2, 3, 4)})
  with pytest.raises(ValueError, match='max-pool after conv 4 .* meets a 1x1 '
                     'feature map'):
    Net.create(deep, (28, 28, 1), init=False)
  head = models.build_model({'name': 'vgg', 'conv_widths': (8,),
                             'pool_after': (0,), 'head_pool': 16})
  with pytest.raises(ValueError, match='head_pool=16 meets a 14x14'):
    Net.create(head, (28, 28, 1), init=False)
