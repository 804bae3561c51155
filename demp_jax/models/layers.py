"""Small building blocks shared by the width-parametrised models."""
from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': nn.relu,
    'gelu': lambda x: nn.gelu(x, approximate=False),
    'leaky_relu': nn.leaky_relu,
    'tanh': jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(
        f'unknown activation {name!r}; known: {sorted(ACTIVATIONS)}')
  return ACTIVATIONS[name]


def nonempty(init: Callable) -> Callable:
  """``init``, but zeros for a zero-size shape (a unit group pruned to width
  0, e.g. every internal unit of a residual block), where variance-scaling
  initialisers would divide by a zero fan."""
  def wrapped(key, shape, dtype=jnp.float32):
    if math.prod(shape) == 0:
      return jnp.zeros(shape, dtype)
    return init(key, shape, dtype)
  return wrapped


def he_normal() -> Callable:
  """Kaiming normal, ``VarianceScaling(2, 'fan_in', truncated normal)``."""
  return nonempty(nn.initializers.he_normal())


def lecun_normal() -> Callable:
  """Flax's default kernel initialiser (``Dense``, ``Conv``)."""
  return nonempty(nn.initializers.lecun_normal())


def batch_norm(train: bool, name: str, scale_init=nn.initializers.ones):
  """BatchNorm with the reference's settings (decay 0.9, eps 1e-5)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, scale_init=scale_init, name=name)


def identity_index(n_out: int, n_in: int) -> jax.Array:
  """Initial shortcut gather map ``idx[j] = j`` for ``j < n_in``, else -1."""
  j = jnp.arange(n_out, dtype=jnp.int32)
  return jnp.where(j < n_in, j, -1)


def gather_channels(x: jax.Array, index: jax.Array) -> jax.Array:
  """``y[..., j] = x[..., index[j]]``, and 0 where ``index[j] = -1``.

  Shapes: ``x [..., n_in]``, ``index int [n_out]`` -> ``y [..., n_out]``.
  The identity shortcut of a residual block whose input and output channel
  sets were pruned independently.
  """
  valid = index >= 0
  y = jnp.take(x, jnp.where(valid, index, 0), axis=-1)
  return jnp.where(valid, y, jnp.zeros((), x.dtype))


def scatter_channels(y: jax.Array, index: jax.Array, n: int) -> jax.Array:
  """``z[..., index[j]] = y[..., j]``, zero elsewhere; ``index[j] = -1``
  drops ``y[..., j]``. Shapes: ``y [..., m]``, ``index int [m]`` (distinct
  values in ``[0, n)``, or -1) -> ``z [..., n]``.

  Written as a gather through the inverse map, so the activations only see
  a ``take``.
  """
  m = index.shape[0]
  slot = jnp.where(index >= 0, index, n)
  inverse = jnp.full((n + 1,), -1, jnp.int32).at[slot].set(
      jnp.arange(m, dtype=jnp.int32))[:n]
  return gather_channels(y, inverse)


def max_pool_tiles(x: jax.Array, size: int) -> jax.Array:
  """Max over non-overlapping ``size x size`` tiles, 'VALID' padding.

  ``x [B, H, W, C]`` -> ``[B, H // size, W // size, C]`` (trailing rows and
  columns that fill no tile are dropped), the same values as
  ``nn.max_pool(x, (size, size), strides=(size, size))``. Written as a
  reshape and a max so that its gradient is elementwise
  (``d/dx = [x == max] / #ties``) instead of XLA's select-and-scatter,
  which on CPU took 61 of the 113 ms of the demo CNN's backward pass.
  """
  b, h, w, c = x.shape
  h2, w2 = h // size, w // size
  x = x[:, :h2 * size, :w2 * size]
  return jnp.max(x.reshape(b, h2, size, w2, size, c), axis=(2, 4))
