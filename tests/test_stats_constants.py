"""Per-unit output ranges in the statistics and the constant-unit rule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from demp_jax import models, stats
from demp_jax.net import Net
from testlib_models import random_variables


def test_min_max_are_over_batches_examples_and_positions():
  net, _ = Net.create(models.VGG(conv_widths=(3,), dense_widths=(4,),
                                 pool_after=(0,), num_classes=2), (4, 4, 1),
                      init=False)
  v = random_variables(net, np.random.default_rng(0))
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 4, 4, 1))
  s = stats.saturation_stats(net, v, x, 0.0)
  acts = [net.activations(v, xb)[1] for xb in x]
  for name in ('conv_0', 'dense_0'):
    (a,) = zip(*[b[name] for b in acts])     # one site per group
    a = np.stack([np.asarray(y) for y in a])
    axes = tuple(range(a.ndim - 1))
    np.testing.assert_allclose(s[name].min, a.min(axis=axes), rtol=1e-6)
    np.testing.assert_allclose(s[name].max, a.max(axis=axes), rtol=1e-6)
  _, ranges = stats.activation_range(net, v, x[0])
  np.testing.assert_allclose(ranges['conv_0'].max,
                             np.asarray(acts[0]['conv_0'][0]).max((0, 1, 2)))


def test_constant_outputs_rule():
  r = stats.Range(min=jnp.array([0.0, 0.7, 0.7, -2.0, 1e4, 0.0]),
                  max=jnp.array([0.0, 0.7, 0.7 + 1e-3, -2.0 + 1e-7,
                                 1e4 + 5e-3, jnp.inf]))
  c = stats.constant_outputs({'g': r}, tol=1e-6)['g']
  assert c.dtype == np.float32
  assert c[0] == 0.0                      # dead: the constant 0
  assert c[1] == np.float32(0.7)
  assert np.isnan(c[2])                   # moves by 1e-3
  assert c[3] == pytest.approx(-2.0, abs=1e-6)  # within 1e-6 * max(1, 2)
  assert c[4] == pytest.approx(1e4, rel=1e-6)   # relative to |c| = 1e4
  assert np.isnan(c[5])                   # never saw a finite max
  assert np.all(np.isnan(stats.constant_outputs({'g': r}, tol=0.0)['g'][2:4]))


def test_layer_tol_is_relative_to_the_layers_mean_abs():
  """DemP's rule: ``max - min <= layer_tol * mean_j mean_abs_j``; the two
  tolerances add, and 0 turns one off."""
  s = stats.UnitStats(dead=jnp.zeros(4, bool), apoz=jnp.zeros(4),
                      mean_abs=jnp.array([1.0, 2.0, 0.5, 0.5]),  # mean 1.0
                      dormancy=jnp.zeros(4),
                      min=jnp.array([3.0, 3.0, 3.0, -jnp.inf]),
                      max=jnp.array([3.09, 3.11, 3.0, 0.0]))
  c = stats.constant_outputs({'g': s}, 0.0, layer_tol=0.1)['g']
  assert c[0] == pytest.approx(3.045) and c[2] == 3.0
  assert np.isnan(c[1]) and np.isnan(c[3])  # 0.11 > 0.1; never finite
  alone = stats.constant_outputs({'g': s}, 0.0)['g']
  assert np.isnan(alone[0]) and alone[2] == 3.0
  both = stats.constant_outputs({'g': s}, 0.01, layer_tol=0.1)['g']
  assert both[1] == pytest.approx(3.055)  # 0.11 <= 0.01 * 3.11 + 0.1
