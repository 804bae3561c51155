"""User-style models (Linen and NNX, no demp_jax hooks) shrink exactly.

For every family of :mod:`user_models` and a random dead set: on fresh
inputs (not the probe) the shrunk network's logits equal the masked
network's in eval mode and in train mode, and the gradients of the kept
entries agree; in float64, so agreement is exact up to rounding.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from demp_jax import stats, surgery, topology as topo
from demp_jax.net import Net
from conftest import randomize_batch_stats
import user_models as um

CASES = [(name, kind) for name, (lin, nnx_f, _) in sorted(um.FAMILIES.items())
         for kind, f in (('linen', lin), ('nnx', nnx_f)) if f is not None]


def _f64(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                      if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
                      else a, tree)


def _outputs(net, variables, x, y):
  """Eval logits, train logits and the loss gradients, one compile."""
  def loss(params):
    logits, _ = net.apply({**variables, 'params': params}, x, train=True,
                          mutable=net.mutable)
    return (jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, y)), logits)

  def run(params):
    (_, train_logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return net.apply({**variables, 'params': params}, x), train_logits, grads
  return jax.jit(run)(variables['params'])


@pytest.mark.parametrize('name, kind', CASES)
def test_shrunk_equals_masked_in_eval_train_and_gradients(name, kind):
  lin, nnx_factory, shape = um.FAMILIES[name]
  with jax.enable_x64(True):
    net, variables = Net.create(lin() if kind == 'linen' else nnx_factory(),
                                shape)
    want = um.EXPECTED_GROUPS.get(f'{name}_{kind}', um.EXPECTED_GROUPS[name])
    assert len(net.topology.groups) == want, net.topology.names
    variables = _f64(randomize_batch_stats(variables, seed=3))
    rng = np.random.default_rng(hash(name) % 1000)
    alive = {}
    for g in net.topology.groups:
      a = rng.random(g.size) < 0.6
      a[rng.integers(g.size)] = True   # at least one unit stays
      alive[g.name] = a
    probe = jnp.asarray(rng.normal(size=(4,) + shape))
    res = surgery.shrink(net, variables, alive, probe=probe)
    masked = topo.silence_units(net.topology, variables, alive)
    x = jnp.asarray(rng.normal(size=(6,) + shape))       # fresh inputs
    y = jnp.asarray(rng.integers(0, 5, size=6))
    s_eval, s_logits, g_small = _outputs(res.model, res.variables, x, y)
    b_eval, b_logits, g_big = _outputs(net, masked, x, y)
    np.testing.assert_allclose(s_eval, b_eval, atol=1e-10, rtol=1e-9)
    np.testing.assert_allclose(s_logits, b_logits, atol=1e-9, rtol=1e-8)
    kept = surgery.shrink_variables(
        net.topology, {**masked, 'params': g_big},
        surgery.keep_indices(net.topology, alive))['params']
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g_small)[0],
                            jax.tree.leaves(kept)):
      np.testing.assert_allclose(a, b, atol=1e-9, rtol=1e-7,
                                 err_msg=jax.tree_util.keystr(path))


def test_nnx_module_after_surgery_has_its_new_sizes():
  net, variables = Net.create(um.NFlattenCNN(um.nnx.Rngs(0)), um.IMAGE)
  keep = {g.name: np.arange(g.size) < g.size // 2 for g in
          net.topology.groups}
  res = surgery.shrink(net, variables, keep)
  module = res.model.module_at(res.variables)
  assert module.convs[0].out_features == 4
  assert module.convs[1].in_features == 4 and module.bns[0].num_features == 4
  assert module.fc.out_features == 8 and module.out.in_features == 8
  module.eval()
  x = jnp.ones((2,) + um.IMAGE)
  np.testing.assert_allclose(module(x), res.model.apply(res.variables, x),
                             rtol=1e-6)


LIST_MODELS = {
    'linen_sequential_list': um.list_sequential,
    'linen_list_field': lambda: um.ListFieldMLP(features=[12, 10, 5]),
    'nnx_list_attribute': lambda: um.NListWidths([12, 10, 5],
                                                 um.nnx.Rngs(0)),
}


@pytest.mark.parametrize('name', sorted(LIST_MODELS))
def test_a_model_holding_a_list_is_a_static_argument(name):
  """A module holding a list cannot be hashed; its net is still a static
  argument of jit (the module by identity): the statistics, the probe
  check and the optimiser state go through (they used to stop with 'Non-
  hashable static arguments'), and a jitted function compiles once per
  widths, the net at its own widths again included."""
  net, v = Net.create(LIST_MODELS[name](), (4, 4, 3))
  assert net.widths == (12, 10), net.topology.names
  held = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 4, 3)),
                     jnp.float32)
  st = stats.saturation_stats(net, v, held, 0.0)
  assert [s.dead.shape for s in st.values()] == [(12,), (10,)]
  tx = optax.adam(1e-3)
  keep = {g.name: np.arange(g.size) % 2 == 0 for g in net.topology.groups}
  res = surgery.shrink(net, v, keep, opt_state=tx.init(v['params']), tx=tx,
                       probe=held[0])
  small, params = res.model, res.variables['params']
  assert small.widths == (6, 5)
  st = stats.saturation_stats(small, res.variables, held, 0.0)
  assert [s.dead.shape for s in st.values()] == [(6,), (5,)]
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), res.opt_state,
                         params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  traces = []

  @functools.partial(jax.jit, static_argnums=0)
  def forward(model, variables, x):
    traces.append(model.widths)
    return model.apply(variables, x)

  again = small.at_widths(small.widths)
  assert again == small and hash(again) == hash(small)
  for model in (small, small, again, small):
    forward(model, res.variables, held[0])
  assert traces == [(6, 5)]


# ----------------------------------------------------------- the trainer


def _tiny(**overrides):
  from test_loop import tiny  # pylint: disable=g-import-not-at-top
  return tiny(**overrides)


class _Killed(Exception):
  pass


@pytest.mark.parametrize('factory, resume', [('make_net_linen', False),
                                              ('make_net_nnx', True)])
def test_trainer_shrinks_a_user_model_and_resumes_after_the_shrink(
    tmp_path, monkeypatch, capsys, factory, resume):
  """DemP on a user model by factory name; the NNX one (whose dropout RNG
  stream the checkpoint carries) is also killed after its shrink and
  resumed, ending bitwise where the straight run did."""
  from test_loop import needs_fmnist  # pylint: disable=g-import-not-at-top
  from demp_jax.training import loop  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if needs_fmnist.args[0]:
    pytest.skip(needs_fmnist.kwargs['reason'])
  settings = {'model.name': f'user_models:{factory}',
              'sparsity_config.epsilon': 1e12,   # every unit "dead"
              'sparsity_config.min_width': 3, 'round_widths_to': 1,
              'num_steps': 20, 'shrink_delay': 4, 'checkpoint_every': 2}
  s = loop.train(_tiny(**settings), str(tmp_path / 'straight'))
  report = [l for l in capsys.readouterr().err.splitlines()
            if l.startswith('model: ')]
  assert report[0].startswith(f'model: {len(s["widths_final"])} unit '
                              'groups'), report
  assert s['params_final'] < s['params_initial']
  assert set(s['widths_final'].values()) == {3}
  shrinks = [e for e in s['pruning_events'] if 'swap_step' in e]
  assert shrinks and all(e['max_masked_diff'] <= 1e-5 for e in shrinks)
  assert s['flops_final'] < s['flops_initial']
  if not resume:
    return
  # killed after the checkpoint that follows the swap at step 14
  save = loop.ckpt_lib.Checkpointer.save

  def save_then_die(self, step, state, meta):
    save(self, step, state, meta)
    if step == 16:
      raise _Killed()

  work = str(tmp_path / 'killed')
  monkeypatch.setattr(loop.ckpt_lib.Checkpointer, 'save', save_then_die)
  with pytest.raises(_Killed):
    loop.train(_tiny(**settings), work)
  monkeypatch.setattr(loop.ckpt_lib.Checkpointer, 'save', save)
  r = loop.train(_tiny(**settings, resume=True), work)
  assert r['resumed_from'] == 16 and r['widths_final'] == s['widths_final']
  restore = lambda w: ocp.StandardCheckpointer().restore(
      f'{w}/checkpoints/20/state')['variables']
  for x, y in zip(jax.tree.leaves(restore(str(tmp_path / 'straight'))),
                  jax.tree.leaves(restore(work))):
    np.testing.assert_array_equal(x, y)


def test_a_structured_baseline_prunes_a_user_model(tmp_path):
  from test_loop import needs_fmnist  # pylint: disable=g-import-not-at-top
  from demp_jax.training import loop  # pylint: disable=g-import-not-at-top
  if needs_fmnist.args[0]:
    pytest.skip(needs_fmnist.kwargs['reason'])
  s = loop.train(_tiny(**{'model.name': 'user_models:make_net_linen',
                          'sparsity_config.algorithm': 'snap',
                          'num_steps': 6, 'shrink_delay': 0}),
                 str(tmp_path))
  # SNAP removes half of the units at step 0 (the default sparsity 0.5)
  assert s['units_final'] <= s['units_initial'] // 2 + 8
  assert s['params_final'] < s['params_initial']


def test_a_bfloat16_model_shrinks_within_its_own_rounding(tmp_path):
  """A model computing in bfloat16 shrinks in the trainer: the surgery's
  probe check allows bfloat16 rounding (it stopped the run with a
  SurgeryError, a float32 tolerance against a 0.01 difference)."""
  from test_loop import needs_fmnist  # pylint: disable=g-import-not-at-top
  from demp_jax.training import loop  # pylint: disable=g-import-not-at-top
  if needs_fmnist.args[0]:
    pytest.skip(needs_fmnist.kwargs['reason'])
  net, _ = Net.create(um.make_bf16_linen(), (28, 28, 1))
  assert surgery.probe_rtol(net) == 4 * 2.0 ** -7
  f32, _ = Net.create(um.make_net_linen(), (28, 28, 1))
  assert surgery.probe_rtol(f32) == 1e-4
  s = loop.train(_tiny(**{'model.name': 'user_models:make_bf16_linen',
                          'sparsity_config.epsilon': 1e12,
                          'sparsity_config.min_width': 3,
                          'round_widths_to': 1, 'num_steps': 8,
                          'shrink_delay': 2, 'sparsity_config.prune_every': 4}),
                 str(tmp_path))
  assert set(s['widths_final'].values()) == {3}


def test_the_unit_report_names_the_groups_and_what_is_left_out():
  from demp_jax.training import loop  # pylint: disable=g-import-not-at-top
  net, _ = Net.create(um.GroupNormCNN(), um.IMAGE)
  lines = loop.unit_report(net)
  assert lines[0] == 'model: 1 unit group, 8 units (Conv_1 8)'
  assert any(l.startswith('model: the units produced by Conv_0 left out: '
                          'narrowed from 4 to 3 units') for l in lines), lines


def test_a_whole_group_removed_runs_or_is_named():
  """min_width=0: NNX layers run at zero width and stay exact; a Linen
  initialiser divides by the width, which is one SurgeryError naming the
  group and the setting (it was a ZeroDivisionError from flax)."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 4, 3)),
                  jnp.float32)
  net, v = Net.create(um.NSeqMLP(um.nnx.Rngs(0)), (4, 4, 3))
  dead = {'fc2': np.zeros(20, bool)}
  res = surgery.shrink(net, v, dead, probe=x, min_width=0)
  assert res.model.topology.names == ('fc1', 'fc3')
  np.testing.assert_allclose(
      res.model.apply(res.variables, x),
      net.apply(topo.silence_units(net.topology, v, dead), x), atol=1e-5)
  net, v = Net.create(um.SeqMLP(), (4, 4, 3))
  with pytest.raises(surgery.SurgeryError, match=r"SeqMLP does not run with "
                     r"the widths \{'Dense_1': 0\} \(ZeroDivisionError.*"
                     r"min_width >= 1"):
    surgery.shrink(net, v, {'Dense_1': np.zeros(20, bool)}, probe=x,
                   min_width=0)


class _SyncBN(um.nn.Module):
  """A CNN written for pmap: its BatchNorms reduce over ``axis_name``."""
  axis_name: object = 'batch'

  @um.nn.compact
  def __call__(self, x, train: bool = False):
    nn = um.nn
    bn = lambda: nn.BatchNorm(use_running_average=not train,
                              axis_name=self.axis_name)
    x = nn.relu(bn()(nn.Conv(8, (3, 3))(x)))
    return nn.Dense(5)(nn.relu(bn()(nn.Dense(6)(x.reshape((x.shape[0],
                                                           -1))))))


class _NSyncBN(um.nnx.Module):

  def __init__(self, axis_name, rngs):
    nnx = um.nnx
    self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, axis_name=axis_name, rngs=rngs)
    self.out = nnx.Linear(8, 5, rngs=rngs)

  def __call__(self, x):
    x = um.nnx.relu(self.bn(self.conv(x)))
    return self.out(x.mean(axis=(1, 2)))


@pytest.mark.parametrize('kind', ['linen', 'nnx'])
def test_a_batchnorm_written_for_pmap_trains_as_one_program(kind):
  """``BatchNorm(axis_name='batch')`` used to stop the trainer with an
  unbound axis name; one program over the global batch computes the same
  statistics as the model without the name."""
  make = ((lambda name: _SyncBN(name)) if kind == 'linen' else
          (lambda name: _NSyncBN(name, um.nnx.Rngs(0))))
  synced, v = Net.create(make('batch'), um.IMAGE)
  plain, _ = Net.create(make(None), um.IMAGE)
  assert synced.axis_names == ('batch',) and plain.axis_names == ()
  assert synced.topology == plain.topology
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6,) + um.IMAGE),
                  jnp.float32)
  run = lambda net: jax.jit(lambda v, x: net.apply(
      v, x, train=True, mutable=net.mutable))(v, x)
  (y1, s1), (y2, s2) = run(synced), run(plain)
  np.testing.assert_allclose(y1, y2, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               s1, s2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               synced.batch_statistics(v, x), plain.batch_statistics(v, x))


def test_a_model_with_nothing_to_prune(tmp_path):
  """DemP on it is one ValueError before any step (it trained, then failed
  on a division by zero in the summary); the dense run reports neuron
  sparsity 0, not 1."""
  from test_loop import needs_fmnist  # pylint: disable=g-import-not-at-top
  from demp_jax.training import loop  # pylint: disable=g-import-not-at-top
  if needs_fmnist.args[0]:
    pytest.skip(needs_fmnist.kwargs['reason'])
  settings = {'model.name': 'user_models:make_unprunable', 'num_steps': 4}
  with pytest.raises(ValueError, match='has no unit group for demp to '
                     'prune.*algorithm=no_prune'):
    loop.train(_tiny(**settings), str(tmp_path / 'demp'))
  assert not os.path.exists(tmp_path / 'demp' / 'metrics.jsonl')
  s = loop.train(_tiny(**settings, **{
      'sparsity_config.algorithm': 'no_prune'}), str(tmp_path / 'dense'))
  assert s['units_initial'] == 0 and s['neuron_sparsity'] == 0.0
