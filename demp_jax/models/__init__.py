"""The built-in Flax models of the paper's setups.

Every model here is a ``flax.linen.Module`` whose ``__call__(x,
train=False)`` returns logits. Their unit topology is derived from their
computation (:mod:`demp_jax.derive`, through :class:`demp_jax.net.Net`), as
for any user model, except where a model describes it by hand: the ResNets
with per-block shortcut gathers (``shortcut='gather'``, the default) and the
ViT variants that prune heads or MLP outputs. Those define
``unit_topology(input_shape)``, ``widths`` and ``with_widths(widths)``, sow
each group's post-activation output into ``'activations'``, and keep their
non-trainable index maps in the ``'shortcut'`` collection next to
``'params'`` and ``'batch_stats'``.
"""
from __future__ import annotations

from typing import Any, Mapping

from demp_jax.models.mlp import MLP
from demp_jax.models.resnet import ResNet, ResNet18, ResNet50
from demp_jax.models.vgg import VGG, VGG16
from demp_jax.models.vit import ViT

MODELS = {'mlp': MLP, 'vgg': VGG, 'vgg16': VGG16, 'resnet': ResNet,
          'resnet18': ResNet18, 'resnet50': ResNet50, 'vit': ViT}


def build_model(config: Mapping[str, Any]):
  """Builds a model from a config mapping with a ``name`` key: a built-in
  model (a key of :data:`MODELS`, the other keys its fields) or a user
  model ``'package.module:factory'`` (a zero-argument callable returning a
  Linen or NNX module; it fixes its own sizes and classes, and the other
  keys, the built-in model's fields, do not apply to it)."""
  cfg = dict(config)
  name = cfg.pop('name', None)
  if isinstance(name, str) and ':' in name:
    from demp_jax import net  # pylint: disable=g-import-not-at-top
    return net.make_model(name)
  if name not in MODELS:
    raise ValueError(
        f'config.model.name={name!r} is not a known model; known: '
        f'{sorted(MODELS)}, or a user model "package.module:factory"')
  cls = MODELS[name]
  fields = {f for f in cls.__dataclass_fields__ if f not in ('parent', 'name')}
  unknown = sorted(set(cfg) - fields)
  if unknown:
    raise ValueError(
        f'config.model has unknown key(s) {unknown} for model {name!r}; '
        f'valid keys: {sorted(fields)}')
  for k, v in cfg.items():
    if isinstance(v, list):
      cfg[k] = tuple(v)
  return cls(**cfg)


__all__ = ['MLP', 'VGG', 'VGG16', 'ResNet', 'ResNet18', 'ResNet50', 'ViT',
           'MODELS', 'build_model']
