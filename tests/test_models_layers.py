"""Model building blocks."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from demp_jax.models import layers


@pytest.mark.parametrize('shape,size', [((3, 8, 8, 5), 2), ((2, 7, 9, 3), 2),
                                        ((2, 9, 9, 4), 3)])
def test_max_pool_tiles_matches_flax_max_pool(shape, size):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  want = nn.max_pool(x, (size, size), strides=(size, size))
  got = layers.max_pool_tiles(x, size)
  assert got.shape == want.shape
  np.testing.assert_array_equal(got, want)
  # without ties the gradient is select-and-scatter's: 1 at each tile max
  g = jax.grad(lambda x: jnp.sum(layers.max_pool_tiles(x, size) * 2.0))(x)
  gw = jax.grad(lambda x: jnp.sum(
      nn.max_pool(x, (size, size), strides=(size, size)) * 2.0))(x)
  np.testing.assert_allclose(g, gw)
  assert float(jnp.sum(g)) == pytest.approx(2.0 * got.size)


def test_max_pool_tiles_shares_the_gradient_between_ties():
  x = jnp.zeros((1, 2, 2, 1))  # one tile, four equal entries
  g = jax.grad(lambda x: jnp.sum(layers.max_pool_tiles(x, 2)))(x)
  np.testing.assert_allclose(g, np.full((1, 2, 2, 1), 0.25))
