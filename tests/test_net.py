"""Net's construction: the variables it initialises are exactly what a plain
``jax.jit(model.init)`` makes, although it compiles the initialiser cheaply
on CPU (``net.run_once``)."""
import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from demp_jax import models
from demp_jax import topology as topo
from demp_jax import net as netlib
from tests import user_models


def _plain_init(model, input_shape, seed):
  mode = netlib._mode_arg(model.__call__)  # pylint: disable=protected-access
  return jax.jit(lambda key: netlib._init_linen(  # pylint: disable=protected-access
      model, input_shape, mode, key))(jax.random.PRNGKey(seed))


CASES = {
    'demo_cnn': (models.VGG(conv_widths=(8, 16), pool_after=(0, 1),
                            dense_widths=(32,), num_classes=10), (28, 28, 1)),
    'vit': (models.ViT(patch_size=8, hidden_size=16, depth=1, num_heads=2,
                       mlp_dim=16, num_classes=10), (16, 16, 3)),
    'user_cnn': (user_models.FlattenCNN(), (16, 16, 3)),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_create_and_init_make_the_bits_a_plain_jitted_init_makes(name):
  model, shape = CASES[name]
  net, variables = netlib.Net.create(model, shape, seed=3)
  ref = _plain_init(model, shape, 3)
  assert jax.tree.structure(variables) == jax.tree.structure(ref)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  again = net.init(3)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_run_once_is_jit():
  f = lambda x: nn.gelu(x) * 3.0 + x.sum()
  x = jax.random.normal(jax.random.PRNGKey(0), (7, 5))
  np.testing.assert_array_equal(np.asarray(netlib.run_once(f, x)),
                                np.asarray(jax.jit(f)(x)))


def test_bad_models_and_shapes_are_one_named_error():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  for make, words in [
      (lambda: netlib.Net.create(user_models.FlattenCNN(), (28, 28)),
       ('FlattenCNN does not run on a batch of shape (2, 28, 28)',)),
      (lambda: netlib.Net.create(user_models.NSeqMLP(nnx.Rngs(0)),
                                 (28, 28, 1)),
       ('NSeqMLP does not run on a batch of shape (2, 28, 28, 1)',
        'dot_general')),
      (lambda: netlib.Net.create(user_models.SeqMLP(), 784),
       ('input_shape=784 is not the shape of one example',)),
      (lambda: netlib.Net.create(user_models.SeqMLP(), (4, 0, 3)),
       ('input_shape=(4, 0, 3)',)),
      (lambda: netlib.Net.create(user_models.NSeqMLP, (4, 4, 3)),
       ('got the class NSeqMLP; pass a module',)),
  ]:
    with pytest.raises(netlib.ModelError) as e:
      make()
    assert '\n' not in str(e.value)
    for w in words:
      assert w in str(e.value), str(e.value)


class _AlwaysDropout(nn.Module):
  """Dropout that is never deterministic: its init falls back on the params
  key, its eval-mode forward pass has no "dropout" stream."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(8)(x.reshape((x.shape[0], -1))))
    return nn.Dense(3)(nn.Dropout(0.1, deterministic=False)(x))


def test_a_linen_model_that_fails_in_eval_mode_is_one_named_error():
  """It was a traceback from inside the unit derivation."""
  with pytest.raises(netlib.ModelError) as e:
    netlib.Net.create(_AlwaysDropout(), (4, 4, 1))
  assert '\n' not in str(e.value)
  for w in ('_AlwaysDropout does not run on a batch of shape (2, 4, 4, 1)',
            'InvalidRngError', 'Dropout_0', 'dropout'):
    assert w in str(e.value), str(e.value)


def test_a_group_that_no_longer_derives_is_named_not_dropped():
  """A group of the topology before a resize that the new derivation
  neither finds nor names is named in ``skipped``, never lost silently."""
  net, _ = netlib.Net.create(user_models.SeqMLP(), (4, 4, 3))
  ghost = topo.UnitGroup('ghost', 5, (topo.AxisRef(
      'params', ('Dense_3', 'kernel'), -1),), ())
  net = dataclasses.replace(net, topology=topo.UnitTopology(
      net.topology.groups + (ghost,)))
  again = net.at_widths({})
  assert again.topology.names == net.topology.names[:-1]
  (why,) = [r for what, rs in again.skipped
            if what == 'the units produced by ghost' for r in rs]
  assert 'resized from 5 units' in why and 'params/Dense_3/kernel' in why
