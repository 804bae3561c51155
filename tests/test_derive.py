"""The unit topology derived from the computation.

The built-in MLP, VGG, VGG-16 and ViT used to describe their topology by
hand; those descriptions live on here as the references the derivation must
reproduce (same groups, same leaf axes, same tiles, same fold targets).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from demp_jax import derive, models, stats, surgery, topology as topo
from demp_jax.net import Net
import user_models as um


def _ref(path, axis, **kw):
  return topo.AxisRef('params', tuple(path), axis, **kw)


def _fold(path, sign=1.0, collection='params'):
  return topo.FoldRef(collection, tuple(path), sign)


def reference_mlp(widths, use_bn=True):
  groups = []
  for i, w in enumerate(widths):
    produces = [_ref((f'dense_{i}', 'kernel'), -1),
                _ref((f'dense_{i}', 'bias'), -1)]
    if use_bn:
      produces += topo.norm_refs(f'bn_{i}')
    nxt = f'dense_{i + 1}' if i + 1 < len(widths) else 'logits'
    groups.append(topo.UnitGroup(f'dense_{i}', w, tuple(produces), (
        _ref((nxt, 'kernel'), 0, fold=_fold((nxt, 'bias'))),)))
  return topo.UnitTopology(tuple(groups))


def reference_vgg(conv, dense, conv_bias, flat_tile):
  groups = []
  for i, c in enumerate(conv):
    produces = [_ref((f'conv_{i}', 'kernel'), -1)]
    if conv_bias:
      produces.append(_ref((f'conv_{i}', 'bias'), -1))
    produces += topo.norm_refs(f'conv_bn_{i}')
    if i + 1 < len(conv):
      nxt = f'conv_{i + 1}'
      fold = (_fold((nxt, 'bias')) if conv_bias else
              _fold((f'conv_bn_{i + 1}', 'mean'), -1.0, 'batch_stats'))
      consumer = _ref((nxt, 'kernel'), -2, fold=fold)
    else:
      nxt = 'dense_0' if dense else 'logits'
      consumer = _ref((nxt, 'kernel'), 0, tile=flat_tile,
                      fold=_fold((nxt, 'bias')))
    groups.append(topo.UnitGroup(f'conv_{i}', c, tuple(produces),
                                 (consumer,)))
  for j, d in enumerate(dense):
    nxt = f'dense_{j + 1}' if j + 1 < len(dense) else 'logits'
    groups.append(topo.UnitGroup(f'dense_{j}', d, (
        _ref((f'dense_{j}', 'kernel'), -1), _ref((f'dense_{j}', 'bias'), -1),
        *topo.norm_refs(f'dense_bn_{j}')), (
            _ref((nxt, 'kernel'), 0, fold=_fold((nxt, 'bias'))),)))
  return topo.UnitTopology(tuple(groups))


def reference_vit(depth, mlp_dim):
  groups = []
  for i in range(depth):
    fc1, fc2 = (f'block_{i}', 'mlp', 'fc1'), (f'block_{i}', 'mlp', 'fc2')
    groups.append(topo.UnitGroup(
        f'block_{i}/mlp/fc1', mlp_dim,
        (_ref(fc1 + ('kernel',), -1), _ref(fc1 + ('bias',), -1)),
        (_ref(fc2 + ('kernel',), 0, fold=_fold(fc2 + ('bias',))),)))
  return topo.UnitTopology(tuple(groups))


def canonical(t: topo.UnitTopology, variables) -> list:
  """Groups as sorted reference sets, axes made non-negative."""
  def refs(rs):
    out = []
    for r in rs:
      nd = np.ndim(topo.get_leaf(variables, r.key))
      out.append((r.collection, r.path, r.axis % nd, r.tile, r.start,
                  r.stride, r.inner, r.kind, r.fold))
    return sorted(out, key=str)
  return [(g.name, g.size, refs(g.produces), refs(g.consumes))
          for g in t.groups]


CASES = {
    'mlp': (lambda: models.MLP(widths=(12, 9), num_classes=4), (5,),
            lambda: reference_mlp((12, 9))),
    'mlp_no_bn': (lambda: models.MLP(widths=(7,), num_classes=3,
                                     use_bn=False, activation='gelu'),
                  (2, 3), lambda: reference_mlp((7,), use_bn=False)),
    'vgg': (lambda: models.VGG(conv_widths=(6, 8, 12), dense_widths=(16,),
                               pool_after=(0, 2), num_classes=5),
            (8, 8, 3), lambda: reference_vgg((6, 8, 12), (16,), False, 4)),
    'vgg_fmnist': (lambda: models.VGG(conv_widths=(4, 6, 8),
                                      dense_widths=(10,), num_classes=10),
                   (28, 28, 1), lambda: reference_vgg((4, 6, 8), (10,),
                                                      False, 9)),
    'vgg16': (lambda: models.VGG16(conv_widths=(3,) * 13, dense_widths=(4, 5),
                                   num_classes=4, last_conv_width=5),
              (32, 32, 3), lambda: reference_vgg((3,) * 12 + (5,), (4, 5),
                                                 True, 1)),
    'vit': (lambda: models.ViT(hidden_size=8, depth=2, num_heads=2,
                               mlp_dim=16, num_classes=3), (8, 8, 3),
            lambda: reference_vit(2, 16)),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_builtin_topology_is_derived_exactly(case):
  make, shape, reference = CASES[case]
  net, variables = Net.create(make(), shape)
  assert not net.handwritten
  assert canonical(net.topology, variables) == canonical(reference(),
                                                         variables)


def test_resnet_with_plain_adds_couples_each_stage():
  m = models.ResNet18(base_width=4, shortcut='add', num_classes=3)
  net, v = Net.create(m, (32, 32, 3))
  # stage s: one residual stream (stem or projection + each block's conv2),
  # plus every block's internal channels: 4 + 8 = 12 groups
  assert len(net.topology.groups) == 12
  stream = net.topology.group('stem_conv')
  produced = {r.path for r in stream.produces if r.collection == 'params'}
  assert {('stem_conv', 'kernel'), ('block0_0', 'conv2', 'kernel'),
          ('block0_1', 'conv2', 'kernel')} <= produced
  consumed = {r.path for r in stream.consumes}
  assert {('block0_0', 'conv1', 'kernel'), ('block0_1', 'conv1', 'kernel'),
          ('block1_0', 'conv1', 'kernel'),
          ('block1_0', 'proj_conv', 'kernel')} == consumed
  # the gather version keeps its hand-written per-block topology
  hand, _ = Net.create(models.ResNet18(base_width=4, num_classes=3),
                       (32, 32, 3))
  assert hand.handwritten and 'block0_0/out' in hand.topology.names


def test_layouts_of_concatenations_flattens_and_splits():
  net, _ = Net.create(um.ConcatNet(), um.IMAGE)
  a, b = net.topology.group('Conv_0'), net.topology.group('Conv_1')
  (ca,), (cb,) = a.consumes, b.consumes
  assert ca.path == cb.path == ('Conv_2', 'kernel')
  assert (ca.start, cb.start) == (0, 6)   # each part at its offset
  np.testing.assert_array_equal(cb.positions(4)[:, 0], [6, 7, 8, 9])
  # NCHW flatten: a channel owns a contiguous block of H*W positions
  net, _ = Net.create(um.ChannelsFirstCNN(), um.IMAGE)
  (c,) = net.topology.group('Conv_0').consumes
  assert (c.tile, c.inner) == (1, 16)
  np.testing.assert_array_equal(c.positions(10)[1], np.arange(16, 32))
  # a gated unit owns a value column and a gate column of one kernel
  net, _ = Net.create(um.GatedMLP(), (4, 4, 3))
  (g,) = net.topology.groups
  (kernel,) = [r for r in g.produces if r.path == ('Dense_0', 'kernel')]
  assert g.size == 12
  np.testing.assert_array_equal(kernel.positions(12)[5], [5, 17])


def test_norm_over_the_units_and_fixed_widths_are_skipped_with_reasons():
  net, _ = Net.create(um.TokenMLPBlock(), um.IMAGE)
  assert net.topology.names == ('Dense_0', 'Dense_2')
  reasons = dict(net.skipped)
  assert any('reduce_sum' in r for rs in reasons.values() for r in rs)
  net, _ = Net.create(um.ShapeDrivenBlock(), (6, 6, 3))
  assert 'Conv_0' not in net.topology.names
  (why,) = [r for k, rs in net.skipped if 'Conv_0' in k for r in rs]
  assert 'does not run with them narrower' in why and 'Conv_2' in why


def test_a_width_the_code_fixes_stays_left_out_across_shrinks(monkeypatch):
  """The group left out at creation stays out, with its reason, in the
  statistics and in every net a shrink returns (it used to come back after
  any shrink, whose next shrink then failed), without tracing the model
  narrower again."""
  net, v = Net.create(um.FixedWidthMLP(), (4, 4, 3))
  assert net.topology.names == ('Dense_0',)
  (entry,) = [e for e in net.skipped if 'params/w' in e[0]]
  assert 'its code fixes that width' in entry[1][0]
  monkeypatch.setattr(Net, '_drop_fixed_widths', lambda self: pytest.fail(
      'traced narrower again'))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4, 4, 3)),
                  jnp.float32)
  assert list(stats.saturation_stats(net, v, x[None], 0.0)) == ['Dense_0']
  assert list(net.activations(v, x)[1]) == ['Dense_0']
  res = surgery.shrink(net, v, {}, probe=x)  # removes nothing
  for n in (5, 2):
    assert res.model.topology.names == ('Dense_0',)
    assert entry in res.model.skipped, res.model.skipped
    assert res.model.fixed == net.fixed
    res = surgery.shrink(res.model, res.variables,
                         {'Dense_0': np.arange(res.model.widths[0]) < n},
                         probe=x)
    assert res.model.widths == (n,)
  assert entry in res.model.skipped
  assert list(stats.saturation_stats(res.model, res.variables, x[None],
                                     0.0)) == ['Dense_0']


class _OrthogonalKernel(nn.Module):
  """A parametrised kernel: what the layer multiplies by is qr(k)'s Q."""

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    k = self.param('k', nn.initializers.lecun_normal(), (x.shape[-1], 8))
    x = nn.relu(x @ jnp.linalg.qr(k)[0])
    x = nn.relu(nn.Dense(6)(x))
    return nn.Dense(5)(x)


class _SortedKernel(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    k = self.param('k', nn.initializers.lecun_normal(), (x.shape[-1], 8))
    x = nn.relu(x @ jnp.sort(k, axis=0))
    return nn.Dense(5)(x)


def test_a_parameter_only_an_unknown_op_reads_is_named_not_dropped():
  # qr is not followed: k's units cannot be a group, and net.skipped must
  # say so instead of leaving the layer out without a word
  net, _ = Net.create(_OrthogonalKernel(), (4, 4, 3))
  assert net.topology.names == ('Dense_0',)
  reasons = dict(net.skipped)
  assert 'the parameter params/k' in reasons, net.skipped
  assert all('not followed by demp_jax' in r
             for r in reasons['the parameter params/k'])
  # a sort of a parameter keeps its provenance (it used to crash the
  # derivation with a TypeError in the matmul after it)
  net, _ = Net.create(_SortedKernel(), (4, 4, 3))
  assert any('params/k' in what for what, _ in net.skipped), net.skipped


class _Grouped(nn.Module):
  """A grouped conv and a depthwise conv with a channel multiplier."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.relu(nn.Conv(8, (3, 3), feature_group_count=4)(x))
    x = nn.relu(nn.Conv(16, (3, 3), feature_group_count=8)(x))
    x = nn.relu(nn.Conv(6, (1, 1))(x))
    return nn.Dense(5)(x.mean(axis=(1, 2)))


def test_grouped_convs_keep_their_channels_and_the_rest_prunes():
  """The channels a grouped conv (or a depthwise conv with a multiplier)
  reads or writes are tied in groups: skipped with the conv named, while
  the layers around them still prune."""
  net, _ = Net.create(_Grouped(), (6, 6, 3))
  assert net.topology.names == ('Conv_3',)
  reasons = dict(net.skipped)
  for conv, groups in (('Conv_0', 4), ('Conv_1', 4), ('Conv_2', 8)):
    why = reasons[f'the units produced by params/{conv}/kernel']
    assert any(f'feature_group_count={groups}' in r and 'test_derive.py' in r
               for r in why), why


class _HalfPrecision(nn.Module):
  """Mixed precision as on a TPU: bfloat16 compute, float32 parameters."""
  dtype: object = jnp.bfloat16

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(32, dtype=self.dtype)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train,
                             dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(16, dtype=self.dtype)(x))
    return nn.Dense(5)(x).astype(jnp.float32)


def test_bfloat16_activations_are_unit_sites():
  """numpy does not count bfloat16 as a float: its sites used to be dropped
  and the layer left out without a word."""
  full, _ = Net.create(_HalfPrecision(dtype=jnp.float32), (4, 4, 3))
  half, _ = Net.create(_HalfPrecision(), (4, 4, 3))
  assert half.topology.names == full.topology.names == ('Dense_0', 'Dense_1')
  assert half.topology == full.topology


class _Tiled(nn.Module):
  """``jnp.tile`` of a parameter over the batch (a ViT's class token) and
  of the units themselves."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Dense(8)(x.reshape((x.shape[0], -1))))
    offset = self.param('offset', nn.initializers.zeros, (1, x.shape[-1]))
    x = nn.relu(nn.Dense(6)(x + jnp.tile(offset, (x.shape[0], 1))))
    return nn.Dense(5)(jnp.tile(x, (1, 2)))


def test_tile_broadcasts_and_repeated_units_are_left_out():
  net, _ = Net.create(_Tiled(), (4, 4, 3))
  assert net.topology.names == ('Dense_0',)
  assert [r.path for r in net.topology.group('Dense_0').produces if
          r.path[0] == 'offset'] == [('offset',)]
  assert any('tile at' in r and 'repeats it' in r
             for what, why in net.skipped if 'Dense_1' in what
             for r in why), net.skipped


def _tail(x):
  """A layer after the construct: its units stay a group."""
  return nn.Dense(5)(nn.relu(nn.Dense(6, name='tail')(x)))


class _Tied(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Dense(8)(x.reshape((x.shape[0], -1))))
    shared = nn.Dense(8)
    return _tail(nn.relu(shared(nn.relu(shared(x)))))


class _Symmetric(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Dense(8)(x.reshape((x.shape[0], -1))))
    k = self.param('k', nn.initializers.lecun_normal(), (8, 8))
    return _tail(nn.relu(x @ (k + k.T)))


class _Gather(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Dense(8)(x.reshape((x.shape[0], -1))))
    return _tail(x[:, jnp.array([3, 1, 0, 2, 4, 5, 7, 6])])


class _Scan(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Dense(8)(x.reshape((x.shape[0], -1))))
    x, _ = jax.lax.scan(lambda c, _: (c * 2, None), x, None, length=3)
    return _tail(x)


@pytest.mark.parametrize('model, words', [
    (_Tied(), ('weight tying', 'params/Dense_1/',
               'meets the data in 2 operations')),
    (_Symmetric(), ('params/k', 'on 2 of its axes', 'transpose')),
    (_Gather(), ('gather', 'params/Dense_0/kernel', 'test_derive.py')),
    (_Scan(), ('scan', 'params/Dense_0/kernel')),
])
def test_what_it_cannot_follow_is_left_out_by_name_and_the_rest_prunes(
    model, words):
  """A construct it cannot follow leaves out the units it reaches, with
  the operation named; the layers around it still shrink exactly (it used
  to refuse the whole model)."""
  net, variables = Net.create(model, (6, 6, 3))
  assert net.topology.names == ('tail',), net.skipped
  reasons = ' '.join(f'{what}: {r}' for what, why in net.skipped
                     for r in why)
  for w in words:
    assert w in reasons, net.skipped
  alive = {'tail': np.array([True, False, True, True, False, True])}
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6, 6, 3)),
                  jnp.float32)
  res = surgery.shrink(net, variables, alive, probe=x)
  masked = topo.silence_units(net.topology, variables, alive)
  np.testing.assert_allclose(res.model.apply(res.variables, x),
                             net.apply(masked, x), atol=1e-5)


@pytest.mark.parametrize('case', sorted(CASES) + ['concat', 'nchw',
                                                  'depthwise', 'gated'])
def test_a_group_narrowed_to_one_unit_stays_a_group(case):
  """At width 1 a unit axis looks like a broadcast; the topology before the
  shrink tells the derivation it is not (and a gated unit's value and gate,
  cut from one kernel axis, are one column each: they used to vanish)."""
  if case in CASES:
    make, shape, _ = CASES[case]
  else:
    make, shape = {'concat': um.ConcatNet, 'nchw': um.ChannelsFirstCNN,
                   'depthwise': um.InvertedResidual,
                   'gated': um.GatedMLP}[case], um.IMAGE
  net, variables = Net.create(make(), shape)
  for g in net.topology.groups:
    small = net.at_widths({g.name: 1})
    assert small.topology.names == net.topology.names, g.name
    one = small.topology.group(g.name)
    assert one.size == 1
    keys = lambda grp: sorted(str(r.key) for r in grp.produces + grp.consumes)
    assert keys(one) == keys(g), g.name
    for before, after in zip(sorted(g.produces + g.consumes, key=str),
                             sorted(one.produces + one.consumes, key=str)):
      # unit 0 kept: its positions, counted among the positions left once
      # units 1.. are cut out (a tile's columns, a concatenation's offset)
      pos = before.positions(g.size)
      left = np.setdiff1d(np.arange(np.shape(topo.get_leaf(
          variables, before.key))[before.axis]), pos[1:].reshape(-1))
      np.testing.assert_array_equal(after.positions(1)[0],
                                    np.searchsorted(left, pos[0]))
