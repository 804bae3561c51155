"""Any optax state goes through surgery: every params-shaped tree is sliced
like the params (``optax.tree_map_params``), scalars are kept, and the
optimiser runs on with the smaller params. On a tiny ResNet, so residual
index maps and projection shortcuts are part of the params' topology."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from demp_jax import models, surgery
from demp_jax import topology as topo
from demp_jax.algorithms import create_updater_from_config
from demp_jax.net import Net
from testlib_models import random_variables

SHAPE = (4, 4, 3)


@pytest.fixture(scope='module')
def net():
  """A tiny ResNet's Net, shared by every optimiser (shapes only)."""
  return Net.create(models.ResNet(stage_sizes=(1, 1), block='basic',
                                  base_width=3, stem='cifar', pool_size=None,
                                  num_classes=2), SHAPE, init=False)[0]


def _demp(tx_inner, topology):
  upd = create_updater_from_config({'algorithm': 'demp', 'reg_span': 10},
                                   topology=topology)
  return upd.wrap_optax(tx_inner)


def _kernels_only(params):
  return jax.tree.map(lambda x: x.ndim > 1, params)


OPTIMIZERS = {
    'adam': lambda t: optax.adam(1e-3),
    'adamw': lambda t: optax.adamw(1e-3, weight_decay=1e-4),
    'sgd_momentum': lambda t: optax.sgd(1e-2, momentum=0.9, nesterov=True),
    'lion': lambda t: optax.lion(1e-4, weight_decay=1e-4),
    'lamb': lambda t: optax.lamb(1e-3, weight_decay=1e-4),
    # a scalar per parameter in the state: kept as it is
    'novograd': lambda t: optax.novograd(1e-3),
    'zero_nans_adam': lambda t: optax.chain(optax.zero_nans(),
                                            optax.adam(1e-3)),
    'clip_adamw': lambda t: optax.chain(optax.clip_by_global_norm(1.0),
                                        optax.adamw(1e-3)),
    'multi_steps_adamw': lambda t: optax.MultiSteps(optax.adamw(1e-3),
                                                    every_k_schedule=3),
    'inject_hyperparams_adam': lambda t: optax.inject_hyperparams(
        optax.adam)(learning_rate=1e-3),
    'demp_adamw': lambda t: _demp(optax.adamw(1e-3), t),
    'masked_adam': lambda t: optax.masked(optax.adam(1e-3), _kernels_only),
    'multi_transform': lambda t: optax.multi_transform(
        {'k': optax.adam(1e-3), 'o': optax.sgd(1e-2, momentum=0.9)},
        lambda p: jax.tree.map(lambda m: 'k' if m else 'o',
                               _kernels_only(p))),
}


def _leaf(x):
  return x is None or isinstance(x, optax.MaskedNode)


def _grads(params, scale):
  return jax.tree.map(lambda p: scale * p + 0.01, params)


def _params_trees(tx, state, params):
  """Every params-shaped tree inside ``state``, in order (None leaves
  included)."""
  paths = jax.tree_util.tree_map_with_path(lambda p, _: topo.key_path(p),
                                           params)
  n = len(jax.tree.leaves(params))
  seen = []
  optax.tree_map_params(tx, lambda x, path: seen.append((path, x)), state,
                        paths, is_leaf=_leaf)
  assert len(seen) % n == 0
  return [flax.traverse_util.unflatten_dict(dict(seen[i:i + n]))
          for i in range(0, len(seen), n)]


def _scalars(tx, state):
  rest = optax.tree_map_params(tx, lambda _: None, state,
                               transform_non_params=lambda x: x,
                               is_leaf=_leaf)
  return [np.asarray(x) for x in jax.tree.leaves(rest)]


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_optimizer_state_is_sliced_like_the_params(name, net):
  rng = np.random.default_rng(0)
  v = random_variables(net, rng)
  t = net.topology
  tx = OPTIMIZERS[name](t)
  params = v['params']
  state = tx.init(params)
  for k in range(2):  # moments, traces and accumulators become non-zero
    _, state = tx.update(_grads(params, 0.1 * (k + 1)), state, params)
  keep = {g.name: rng.random(g.size) < 0.6 for g in t.groups}
  for k in keep.values():
    k[0] = True
  res = surgery.shrink(net, v, keep, opt_state=state, tx=tx)
  keeps = surgery.keep_indices(t, keep)

  before = _params_trees(tx, state, params)
  after = _params_trees(tx, res.opt_state, res.variables['params'])
  assert len(before) == len(after) > 0
  for old, new in zip(before, after):
    # the same cut as the params, value for value
    want = surgery.shrink_variables(t, {**v, 'params': old}, keeps)['params']
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(
        np.asarray(a), np.asarray(b)) if a is not None else None,
                 want, new, is_leaf=_leaf)
    # and the new tree has the new params' structure and shapes
    def same_shape(x, p, o):
      if not _leaf(x):  # a scalar per parameter stays one
        assert jnp.shape(x) == (jnp.shape(p) if jnp.shape(o) else ())

    jax.tree.map(same_shape, new, res.variables['params'], old,
                 is_leaf=_leaf)
  # counters, keys and hyper-parameters are kept as they were
  for a, b in zip(_scalars(tx, state), _scalars(tx, res.opt_state)):
    np.testing.assert_array_equal(a, b)
  # the optimiser takes a step with the smaller params
  new_params = res.variables['params']
  updates, _ = tx.update(_grads(new_params, 0.3), res.opt_state, new_params)
  jax.tree.map(lambda u, p: np.testing.assert_equal(u.shape, p.shape),
               updates, new_params)


def test_demp_masks_follow_the_surgery(net):
  """Masked (alive=False) units kept by a bucket stay masked after it."""
  rng = np.random.default_rng(1)
  v = random_variables(net, rng)
  t = net.topology
  upd = create_updater_from_config({'algorithm': 'demp', 'reg_span': 10},
                                   topology=t)
  tx = upd.wrap_optax(optax.adamw(1e-3))
  state = tx.init(v['params'])
  alive = {g.name: rng.random(g.size) < 0.7 for g in t.groups}
  state = upd.mask_units(state, v['params'], alive)
  keep = {n: a | (rng.random(a.size) < 0.5) for n, a in alive.items()}
  for k in keep.values():
    k[0] = True
  res = surgery.shrink(net, v, keep, opt_state=state, tx=tx)
  new_t = res.model.topology
  new_alive = {n: alive[n][keep[n]] for n in alive}
  want = topo.param_masks(new_t, res.variables['params'], new_alive)
  jax.tree.map(lambda w, g: (w is None and g is None) or
               np.testing.assert_array_equal(np.asarray(w), np.asarray(g)),
               want, res.opt_state.masks, is_leaf=lambda x: x is None)
  assert res.opt_state.masks['head']['bias'] is None
  assert int(res.opt_state.count) == int(state.count)
