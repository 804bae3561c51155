"""Shared fixtures: tiny models and their variables, on one CPU device;
the config files."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from demp_jax import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, arg=''):
  """``configs/<name>.py``'s ``get_config(arg)``, loaded by path."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, 'configs', name + '.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def init_vars(model, input_shape, seed=0, batch=2):
  x = jnp.zeros((batch,) + tuple(input_shape), jnp.float32)
  v = model.init(jax.random.PRNGKey(seed), x, train=False)
  return {k: val for k, val in v.items() if k != 'activations'}


def randomize_batch_stats(variables, seed=0):
  """Random running means and positive variances, so eval mode is not
  trivially the identity normalisation."""
  rng = np.random.default_rng(seed)
  if 'batch_stats' not in variables:
    return variables
  bs = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.asarray(
          rng.uniform(0.5, 2.0, x.shape) if p[-1].key == 'var'
          else rng.normal(0, 0.5, x.shape), x.dtype), variables['batch_stats'])
  return {**variables, 'batch_stats': bs}


@pytest.fixture
def small_cnn():
  return models.VGG(conv_widths=(6, 8, 12), dense_widths=(16,),
                    pool_after=(0, 2), num_classes=5)


@pytest.fixture
def small_mlp():
  return models.MLP(widths=(12, 9), num_classes=4)
