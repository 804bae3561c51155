"""Function-preserving removal: constant units folded into their consumers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from demp_jax import models, stats, surgery
from demp_jax import topology as topo
from demp_jax.net import Net
from testlib_models import random_variables


def _set(variables, collection, path, index, value):
  leaf = np.asarray(topo.get_leaf(variables, (collection, path))).copy()
  leaf[index] = value
  return topo.set_leaf(variables, (collection, path), jnp.asarray(leaf))


def _logits(model, variables, x):
  return np.asarray(surgery.eval_logits(model, variables, x))


@pytest.fixture(scope='module')
def mlp():
  net, _ = Net.create(models.MLP(widths=(6, 5), num_classes=3), (4,),
                      init=False)
  v = random_variables(net, np.random.default_rng(0), zero_scale_p=0)
  # dense_0 unit 2: ReLU(0 * xhat + 0.7) = 0.7; unit 4: ReLU(-0.3) = 0 (dead)
  v = _set(v, 'params', ('bn_0', 'scale'), [2, 4], 0.0)
  v = _set(v, 'params', ('bn_0', 'bias'), [2, 4], [0.7, -0.3])
  return net, v


def test_constant_dense_unit_is_folded_exactly(mlp):
  model, v = mlp
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
  keep = {'dense_0': np.array([1, 1, 0, 1, 0, 1], bool)}
  plain = surgery.shrink(model, v, keep, probe=x)
  folded = surgery.shrink(model, v, keep, probe=x,
                          fold_constants=True)
  assert plain.max_output_change > 1e-2    # 0.7 * W[2, :] went missing
  assert folded.max_output_change <= 1e-5
  assert folded.max_masked_diff <= 1e-5
  assert folded.folded == {'dense_0': 1, 'dense_1': 0}
  np.testing.assert_allclose(_logits(folded.model, folded.variables, x),
                             _logits(model, v, x), rtol=1e-5, atol=1e-5)
  # the consumer's bias took 0.7 * W[2, :]
  want = (np.asarray(v['params']['dense_1']['bias']) +
          0.7 * np.asarray(v['params']['dense_1']['kernel'])[2])
  np.testing.assert_allclose(folded.variables['params']['dense_1']['bias'],
                             want, rtol=1e-6)


def test_constants_from_the_death_check_statistics(mlp):
  model, v = mlp
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 4))
  s = stats.saturation_stats(model, v, x, 0.0)
  np.testing.assert_allclose(s['dense_0'].min[2], 0.7, rtol=1e-6)
  np.testing.assert_allclose(s['dense_0'].max[2], 0.7, rtol=1e-6)
  constants = stats.constant_outputs(s)
  assert np.isnan(constants['dense_0'][0])        # a moving unit
  assert constants['dense_0'][2] == pytest.approx(0.7)
  assert constants['dense_0'][4] == 0.0           # dead: the constant 0
  keep = {'dense_0': np.isnan(constants['dense_0'])}
  res = surgery.shrink(model, v, keep,
                       fold_constants=True, constants=constants)
  assert res.folded['dense_0'] == 1
  assert np.isnan(res.max_output_change)        # no probe, no check
  np.testing.assert_allclose(_logits(res.model, res.variables, x[0]),
                             _logits(model, v, x[0]), rtol=1e-5, atol=1e-5)


def test_fold_needs_constants_or_a_probe(mlp):
  model, v = mlp
  with pytest.raises(ValueError, match='constants or a probe'):
    surgery.shrink(model, v, {}, fold_constants=True)
  with pytest.raises(ValueError, match='shape'):
    surgery.shrink(model, v, {}, fold_constants=True,
                   constants={'dense_0': np.zeros(3)})


@pytest.fixture(scope='module')
def bottleneck_net():
  net, _ = Net.create(models.ResNet(
      stage_sizes=(2, 1), block='bottleneck', base_width=2, stem='cifar',
      pool_size=None, num_classes=3), (6, 6, 3), init=False)
  # random shortcut maps (repeats, -1) exercise the index fold
  v = random_variables(net, np.random.default_rng(1), zero_scale_p=0)
  return net, v


def test_residual_stream_constant_folds_through_shortcuts_and_1x1(
    bottleneck_net):
  """Constant post-add channels of block0_0 (read by block0_1's 1x1 conv and
  identity gather) and of block0_1 (read by block1_0's 1x1 conv and 1x1
  projection), and a constant internal unit (read by a 1x1 conv): every
  consumer is exact, so the function is kept."""
  model, v = bottleneck_net
  # block0_0 projects: out_j = ReLU(bn3_j + proj_bn_j) with both scales 0
  v = _set(v, 'params', ('block0_0', 'bn3', 'scale'), 1, 0.0)
  v = _set(v, 'params', ('block0_0', 'proj_bn', 'scale'), 1, 0.0)
  v = _set(v, 'params', ('block0_0', 'bn3', 'bias'), 1, 0.5)
  v = _set(v, 'params', ('block0_0', 'proj_bn', 'bias'), 1, 0.3)
  # block0_1 is an identity block: its output channel 0 reads block0_0's
  # constant channel 1; its output channel 2 reads nothing and has scale 0
  idx = np.asarray(v['shortcut']['block0_1']['index']).copy()
  idx[0], idx[2] = 1, -1
  v = topo.set_leaf(v, ('shortcut', ('block0_1', 'index')), jnp.asarray(idx))
  v = _set(v, 'params', ('block0_1', 'bn3', 'scale'), [0, 2], [0.1, 0.0])
  v = _set(v, 'params', ('block0_1', 'bn3', 'bias'), [0, 2], [2.0, 1.25])
  # internal act2 unit 0 of block0_1 (bn2 after the 3x3 conv)
  v = _set(v, 'params', ('block0_1', 'bn2', 'scale'), 0, 0.0)
  v = _set(v, 'params', ('block0_1', 'bn2', 'bias'), 0, 0.4)
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 6, 6, 3))
  _, acts = model.activations(v, x)
  (out,) = acts['block0_1/out']
  assert np.min(np.asarray(out)[..., 0]) > 0  # reads 0.8
  t = model.topology
  keep = {'block0_0/out': np.arange(8) != 1,
          'block0_1/out': np.arange(8) != 2,
          'block0_1/act2': np.arange(2) != 0}
  plain = surgery.shrink(model, v, keep, probe=x)
  res = surgery.shrink(model, v, keep, probe=x,
                       fold_constants=True)
  assert res.folded['block0_0/out'] == 1
  assert res.folded['block0_1/out'] == 1
  assert res.folded['block0_1/act2'] == 1
  assert plain.max_output_change > 1e-3
  assert res.max_output_change <= 1e-5 * max(1.0, float(np.max(np.abs(
      _logits(model, v, x)))))
  assert res.max_masked_diff <= 1e-5
  t.validate(v)


def test_padded_3x3_consumer_is_exact_away_from_the_border():
  """conv_0 unit 1 is constant; conv_1 (3x3, zero padding) reads it: after
  folding, conv_1's output is unchanged in the interior only."""
  model, _ = Net.create(models.VGG(conv_widths=(3, 4), dense_widths=(),
                                   pool_after=(), num_classes=2), (6, 6, 2),
                        init=False)
  v = random_variables(model, np.random.default_rng(3), zero_scale_p=0)
  v = _set(v, 'params', ('conv_bn_0', 'scale'), 1, 0.0)
  v = _set(v, 'params', ('conv_bn_0', 'bias'), 1, 0.9)
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 6, 2))
  keep = {'conv_0': np.array([True, False, True])}
  res = surgery.shrink(model, v, keep, probe=x,
                       fold_constants=True)
  assert res.max_masked_diff <= 1e-5
  # no conv bias: the fold went into the running mean of conv_bn_1
  assert not np.allclose(res.variables['batch_stats']['conv_bn_1']['mean'],
                         v['batch_stats']['conv_bn_1']['mean'])
  _, before = model.activations(v, x)
  _, after = res.model.activations(res.variables, x)
  (a,), (b,) = before['conv_1'], after['conv_1']
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(b[:, 1:-1, 1:-1], a[:, 1:-1, 1:-1], rtol=1e-5,
                             atol=1e-5)
  assert np.max(np.abs(b - a)) > 1e-4   # the border saw fewer taps


def test_validate_checks_fold_targets(mlp):
  model, v = mlp
  t = model.topology
  g = t.groups[0]
  (c,) = g.consumes
  bad = topo.UnitTopology((topo.UnitGroup(g.name, g.size, g.produces, (
      topo.AxisRef(c.collection, c.path, c.axis,
                   fold=topo.FoldRef('params', ('dense_1', 'nope'))),)),))
  with pytest.raises(ValueError, match='folds into params/dense_1/nope'):
    bad.validate(v)
  wrong = topo.UnitTopology((topo.UnitGroup(g.name, g.size, g.produces, (
      topo.AxisRef(c.collection, c.path, c.axis,
                   fold=topo.FoldRef('params', ('bn_0', 'bias'))),)),))
  with pytest.raises(ValueError, match=r'expected \(5,\)'):
    wrong.validate(v)
