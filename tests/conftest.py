"""Shared fixtures: tiny models as ``(Net, variables)``, on one CPU device;
the config files."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from demp_jax import models
from demp_jax.net import Net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, arg=''):
  """``configs/<name>.py``'s ``get_config(arg)``, loaded by path."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, 'configs', name + '.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


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


CNN_SHAPE = (8, 8, 3)
MLP_SHAPE = (7,)


@pytest.fixture(scope='session')
def _small_cnn():
  return Net.create(models.VGG(conv_widths=(6, 8, 12), dense_widths=(16,),
                               pool_after=(0, 2), num_classes=5), CNN_SHAPE)


@pytest.fixture(scope='session')
def _small_mlp():
  return Net.create(models.MLP(widths=(12, 9), num_classes=4), MLP_SHAPE)


def _fresh(created):
  """``(net, variables)`` with the variables' dicts copied, so a test that
  edits them in place cannot leak into the next one."""
  net, variables = created
  return net, jax.tree.map(lambda x: x, variables)


@pytest.fixture
def small_cnn(_small_cnn):
  """``(net, variables)``: a VGG (conv 6-8-12 with two pools, dense 16, 5
  classes) on ``CNN_SHAPE`` inputs; groups ``conv_0..2``, ``dense_0``."""
  return _fresh(_small_cnn)


@pytest.fixture
def small_mlp(_small_mlp):
  """``(net, variables)``: an MLP (12, 9 units, BN, 4 classes) on
  ``MLP_SHAPE`` inputs; groups ``dense_0``, ``dense_1``."""
  return _fresh(_small_mlp)
