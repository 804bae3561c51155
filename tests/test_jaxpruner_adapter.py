"""The optional JaxPruner adapter, against the real package. Tests that
need jaxpruner skip without it (`.ci/run` installs it from the shared wheel
when there is one); the error paths run everywhere."""
import sys
import warnings

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from demp_jax import models
from demp_jax import surgery
from demp_jax.algorithms import create_updater_from_config
from demp_jax.algorithms import jaxpruner_adapter as jpa
from demp_jax.net import Net
from demp_jax.training.steps import TrainState, make_train_step

needs_jaxpruner = pytest.mark.skipif(
    not jpa.available(),
    reason=f'jaxpruner is not installed (optional, not on PyPI: '
           f'{jpa.INSTALL_LINE})')

MASKED = ('jaxpruner_magnitude', 'jaxpruner_global_magnitude',
          'jaxpruner_saliency', 'jaxpruner_random', 'jaxpruner_set',
          'jaxpruner_rigl', 'jaxpruner_channel')


def test_every_name_is_registered_and_fails_clearly_without_jaxpruner(
    monkeypatch):
  monkeypatch.setitem(sys.modules, 'jaxpruner', None)  # import fails
  from demp_jax.algorithms import all_algorithm_names
  assert set(MASKED) | {'demp_rigl'} <= set(all_algorithm_names())
  for name in MASKED + ('demp_rigl',):
    with pytest.raises(jpa.JaxPrunerUnavailable) as e:
      create_updater_from_config({'algorithm': name, 'update_end_step': 9})
    assert jpa.JAXPRUNER_COMMIT in str(e.value) and 'pip install' in str(
        e.value)


def test_tree_map_alias_is_refused_unless_opted_in(monkeypatch):
  sentinel = object()
  monkeypatch.setattr(jax, 'tree_map', sentinel, raising=False)
  monkeypatch.delattr(jax, 'tree_map')  # as on JAX >= 0.6; undone after
  with pytest.raises(jpa.JaxPrunerIncompatible, match='jaxpruner_tree_map'):
    jpa.ensure_tree_map(False)
  assert not hasattr(jax, 'tree_map')
  with pytest.warns(RuntimeWarning, match='jax.tree_map'):
    jpa.ensure_tree_map(True)
  assert jax.tree_map is jax.tree_util.tree_map
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    jpa.ensure_tree_map(False)  # present now: nothing to do, no warning


@pytest.fixture
def tree_map(monkeypatch):
  """``jax.tree_map`` for the duration of one test only."""
  if not hasattr(jax, 'tree_map'):
    monkeypatch.setattr(jax, 'tree_map', jax.tree_util.tree_map,
                        raising=False)


def _mlp_params(seed=0):
  rng = np.random.default_rng(seed)
  return {'dense_0': {'kernel': jnp.asarray(rng.normal(size=(6, 8)),
                                            jnp.float32),
                      'bias': jnp.zeros(8)},
          'logits': {'kernel': jnp.asarray(rng.normal(size=(8, 3)),
                                           jnp.float32),
                     'bias': jnp.zeros(3)}}


def _loss(p, x, y):
  h = jax.nn.relu(x @ p['dense_0']['kernel'] + p['dense_0']['bias'])
  logits = h @ p['logits']['kernel'] + p['logits']['bias']
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@needs_jaxpruner
@pytest.mark.parametrize('name', MASKED)
def test_jaxpruner_algorithms_train_and_mask(name, tree_map):
  del tree_map
  u = create_updater_from_config({
      'algorithm': name, 'sparsity': 0.5, 'update_start_step': 1,
      'update_end_step': 3, 'update_freq': 1})
  tx = u.wrap_optax(optax.adam(1e-2))
  params = _mlp_params()
  state = tx.init(params)

  @jax.jit
  def step(params, state, x, y):
    p = u.pre_forward_update(params, state)
    g = jax.grad(_loss)(p, x, y)
    upd, state = tx.update(g, state, params)
    return u.post_gradient_update(optax.apply_updates(params, upd),
                                  state), state

  rng = np.random.default_rng(1)
  for _ in range(5):
    x = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 16))
    params, state = step(params, state, x, y)
  masks = state.masks
  k = np.asarray(params['dense_0']['kernel'])
  m = np.asarray(masks['dense_0']['kernel'])
  assert m.dtype == np.uint8
  np.testing.assert_array_equal(k[m == 0], 0)  # masked weights are zero
  if name == 'jaxpruner_global_magnitude':  # one ranking over both kernels
    total = m.size + masks['logits']['kernel'].size
    assert (m.sum() + masks['logits']['kernel'].sum()) == total // 2
  else:
    assert m.mean() == pytest.approx(0.5)
  if name == 'jaxpruner_channel':  # whole output columns
    cols = m.min(axis=0)
    np.testing.assert_array_equal(m.max(axis=0), cols)
    assert cols.sum() == 4
  if name in ('jaxpruner_set', 'jaxpruner_rigl'):
    # every leaf has a mask (None would break their drop/grow on new JAX);
    # the leaves outside filter_fn keep all-ones masks
    assert all(x is not None for x in jax.tree.leaves(
        masks, is_leaf=lambda x: x is None))
    assert np.asarray(masks['dense_0']['bias']).all()
  elif name != 'jaxpruner_global_magnitude':
    assert masks['dense_0']['bias'] is None


@needs_jaxpruner
def test_demp_rigl_masks_are_sliced_by_demp_surgery(tree_map):
  del tree_map
  shape = (2, 3, 1)
  model, _ = Net.create(models.MLP(widths=(6, 4), num_classes=3), shape,
                        init=False)
  variables = jax.tree_util.tree_map_with_path(
      lambda p, s: jnp.asarray(np.random.default_rng(0).uniform(
          0.5, 1.5, s.shape), s.dtype), model.abstract_variables())
  t = model.topology
  u = create_updater_from_config({
      'algorithm': 'demp_rigl', 'sparsity': 0.5, 'dist_type': 'uniform',
      'update_start_step': 0, 'update_end_step': 4, 'update_freq': 2,
      'reg_span': 10, 'reg_peak': 1e-2}, topology=t)
  assert isinstance(u, jpa.DempRigL)
  tx = u.wrap_optax(optax.adam(1e-2))
  state = TrainState(jnp.zeros([], jnp.int32), variables,
                     tx.init(variables['params']))
  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.integers(0, 255, (8,) + shape), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 3, 8))
  step = jax.jit(make_train_step(model, tx, u, (0.5,), (0.3,)))
  key = jax.random.PRNGKey(0)
  for _ in range(3):
    state, _ = step(state, images, labels, key)
  rigl = u.rigl_state(state.opt_state).masks
  assert np.asarray(rigl['dense_0']['kernel']).mean() == pytest.approx(0.5)
  keep = {'dense_0': np.array([1, 0, 1, 1, 0, 1], bool)}
  res = surgery.shrink(model, state.variables, keep,
                       opt_state=state.opt_state, tx=tx,
                       probe=images.astype(jnp.float32))
  new_rigl = u.rigl_state(res.opt_state).masks
  np.testing.assert_array_equal(
      new_rigl['dense_0']['kernel'],
      np.asarray(rigl['dense_0']['kernel'])[:, keep['dense_0']])
  np.testing.assert_array_equal(
      new_rigl['dense_1']['kernel'],
      np.asarray(rigl['dense_1']['kernel'])[keep['dense_0']])
  # training goes on at the new widths, RigL's zeros stay zero
  u2 = u.with_topology(res.model.topology)
  state = TrainState(state.step, res.variables, res.opt_state)
  state, _ = jax.jit(make_train_step(res.model, tx, u2, (0.5,), (0.3,)))(
      state, images, labels, key)
  k = np.asarray(state.variables['params']['dense_0']['kernel'])
  m = np.asarray(u2.rigl_state(state.opt_state).masks['dense_0']['kernel'])
  assert k.shape == (6, 4)
  np.testing.assert_array_equal(k[m == 0], 0)


@needs_jaxpruner
def test_channel_masks_the_unit_kernels_not_the_classes(tree_map):
  del tree_map
  net, variables = Net.create(models.MLP(widths=(8, 6), num_classes=3),
                              (2, 3, 1))
  params = variables['params']
  cfg = {'algorithm': 'jaxpruner_channel', 'sparsity': 0.5,
         'update_start_step': 0, 'update_end_step': 0, 'update_freq': 1}
  u = create_updater_from_config(cfg, topology=net.topology)
  _, masks = u.instant_sparsify(params)
  flat = flax.traverse_util.flatten_dict(masks)
  kernels = {k: v for k, v in flat.items() if k[-1] == 'kernel'}
  assert len(kernels) == 3
  unit_kernels = [m for m in kernels.values() if m is not None]
  assert len(unit_kernels) == 2
  for m in map(np.asarray, unit_kernels):  # half of the output columns
    np.testing.assert_array_equal(m.min(axis=0), m.max(axis=0))
    assert m.min(axis=0).sum() == m.shape[-1] // 2
  # the classifier's columns are classes, not channels to prune
  assert sum(m is None for m in kernels.values()) == 1
  # without a topology JaxPruner's own filter masks the classifier too
  u = create_updater_from_config(cfg)
  _, masks = u.instant_sparsify(params)
  assert all(m is not None for m in jax.tree.leaves(masks) if m.ndim > 1)
