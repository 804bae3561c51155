"""On-device augmentations of normalised ``[B, H, W, C]`` float batches."""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp


def crop_flip(key: jax.Array, x: jax.Array, pad: int = 4,
              mode: str = 'constant') -> jax.Array:
  """Pads by ``pad`` (zeros or ``'reflect'``), takes a random ``H x W`` crop
  per example and flips it left-right with probability 1/2."""
  b, h, w, _ = x.shape
  k1, k2, k3 = jax.random.split(key, 3)
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
  dy = jax.random.randint(k1, (b,), 0, 2 * pad + 1)
  dx = jax.random.randint(k2, (b,), 0, 2 * pad + 1)
  crop = jax.vmap(lambda im, y, z: jax.lax.dynamic_slice(
      im, (y, z, 0), (h, w, im.shape[-1])))(padded, dy, dx)
  flip = jax.random.bernoulli(k3, 0.5, (b,))
  return jnp.where(flip[:, None, None, None], crop[:, :, ::-1], crop)


def flip(key: jax.Array, x: jax.Array) -> jax.Array:
  """Left-right flip with probability 1/2."""
  f = jax.random.bernoulli(key, 0.5, (x.shape[0],))
  return jnp.where(f[:, None, None, None], x[:, :, ::-1], x)


AUGMENTATIONS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    'crop_flip': crop_flip,
    'crop_flip_reflect': lambda k, x: crop_flip(k, x, mode='reflect'),
    'flip': flip,
}


def get(name: Optional[str]) -> Optional[Callable]:
  if not name:
    return None
  if name not in AUGMENTATIONS:
    raise ValueError(f'config.dataset.augment={name!r} is unknown; known: '
                     f'{sorted(AUGMENTATIONS)}')
  return AUGMENTATIONS[name]
