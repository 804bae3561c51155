"""Test helpers: tiny built-in models and random variables without compiling.

``model.init`` runs the model eagerly and compiles every initialiser and op
for every new set of widths, which costs seconds per ResNet. The helpers
here take the variable shapes of a :class:`demp_jax.net.Net`
(``net.abstract_variables()``, tracing only) and fill them with numpy: kernels ``N(0, 1/fan_in)``, norm scales with some
exact zeros, offsets, running means and variances at random, and the index
maps of the ``'shortcut'`` collection at random valid values (repeats and
-1 included), so surgery meets the hard cases.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from demp_jax import models
from demp_jax import topology as topo
from demp_jax.net import Net


class Arch(NamedTuple):
  name: str
  make: Callable[[], Any]        # the model at its base widths
  input_shape: tuple[int, ...]   # one example, (H, W, C)


def tiny_archs() -> dict[str, Arch]:
  """Every built-in architecture at tiny widths (at least 3 units per group:
  a derived Net only narrows, see :func:`random_model`) and inputs."""
  return {
      'mlp': Arch('mlp', lambda: models.MLP(widths=(5, 4), num_classes=3),
                  (3, 3, 1)),
      'vgg': Arch('vgg', lambda: models.VGG(
          conv_widths=(3, 4), dense_widths=(5,), pool_after=(0,),
          num_classes=3, conv_bias=True), (4, 4, 2)),
      'vgg16': Arch('vgg16', lambda: models.VGG16(
          conv_widths=(3,) * 13, dense_widths=(3, 3), num_classes=3,
          last_conv_width=4), (32, 32, 3)),
      'resnet18': Arch('resnet18', lambda: models.ResNet18(
          base_width=2, num_classes=3, pool_size=None), (8, 8, 3)),
      'resnet50': Arch('resnet50', lambda: models.ResNet50(
          base_width=1, num_classes=3), (16, 16, 3)),
      'vit': Arch('vit', lambda: models.ViT(
          patch_size=4, hidden_size=4, depth=2, num_heads=2, mlp_dim=4,
          num_classes=3, activation='relu', mlp_out_activation=True,
          prune_heads=True),
                  (8, 8, 3)),
  }


@functools.lru_cache(maxsize=None)
def tiny_net(arch: str) -> Net:
  """The :class:`Net` of ``tiny_archs()[arch]`` at its base widths (shapes
  only: no variables are initialised)."""
  spec = tiny_archs()[arch]
  return Net.create(spec.make(), spec.input_shape, init=False)[0]


def random_variables(net: Net, rng: np.random.Generator,
                     zero_scale_p: float = 0.2,
                     index_bound: Callable[[topo.LeafKey], int] | None = None
                     ) -> dict:
  """Random variables of ``net`` (see the module docstring).

  Index leaves consumed by a group get values in ``[-1, size)`` with
  repeats; produce-only index leaves (the ViT's MLP-output scatter) get
  distinct values in ``[0, index_bound(key))`` (default: the model's
  ``hidden_size``) with some -1.
  """
  consumed = {}
  for g in net.topology.groups:
    for ref in g.consumes:
      if ref.kind == 'index':
        consumed[ref.key] = g.size

  def fill(path, s):
    key_path = topo.key_path(path)
    collection, leaf_path = key_path[0], key_path[1:]
    name = leaf_path[-1]
    shape = tuple(s.shape)
    if collection == 'shortcut':
      n = shape[0]
      key = (collection, leaf_path)
      if key in consumed:
        return jnp.asarray(rng.integers(-1, consumed[key], n), jnp.int32)
      bound = (index_bound(key) if index_bound is not None else
               int(net.module.hidden_size))
      values = rng.permutation(bound)[:n]
      values = np.concatenate([values, -np.ones(n - values.size, np.int64)])
      values[rng.random(n) < 0.2] = -1
      return jnp.asarray(values, jnp.int32)
    if collection == 'batch_stats':
      if name == 'var':
        return jnp.asarray(rng.uniform(0.2, 2.0, shape), jnp.float32)
      return jnp.asarray(rng.normal(0, 1, shape), jnp.float32)
    if name == 'kernel':
      fan_in = max(1, math.prod(shape[:-1]))
      return jnp.asarray(rng.normal(0, 1 / math.sqrt(fan_in), shape),
                         jnp.float32)
    if name == 'scale':
      v = rng.normal(1.0, 0.5, shape)
      v[rng.random(shape) < zero_scale_p] = 0.0
      return jnp.asarray(v, jnp.float32)
    return jnp.asarray(rng.normal(0, 0.5, shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, net.abstract_variables())


@functools.lru_cache(maxsize=None)
def _template(arch: str, width: int) -> Net:
  """The arch at ``width`` units per group."""
  net = tiny_net(arch)
  return net.at_widths([width] * len(net.widths))


def random_model(arch: str, widths: Sequence[int], rng: np.random.Generator,
                 max_width: int = 3, **kwargs) -> tuple[Net, dict]:
  """``(net at widths, random variables)`` without tracing ``init``.

  Random variables are drawn at ``max_width`` units per group (shapes traced
  once per architecture) and a random subset of ``widths[i]`` units of each
  group is taken with :func:`demp_jax.surgery.shrink_variables`, so index
  maps come out renumbered (more -1 entries) as after a real pruning event.
  """
  from demp_jax import surgery  # pylint: disable=g-import-not-at-top
  big = _template(arch, max_width)
  variables = random_variables(big, rng, **kwargs)
  keeps = {}
  for g, w in zip(big.topology.groups, widths):
    if not 0 <= w <= g.size:
      raise ValueError(f'width {w} of {g.name} is outside [0, {g.size}]')
    keeps[g.name] = np.sort(rng.permutation(g.size)[:w])
  variables = surgery.shrink_variables(big.topology, variables, keeps)
  return big.at_widths(widths), variables
