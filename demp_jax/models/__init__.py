"""Width-parametrised Flax models that sow activations and describe their
unit topology.

Every model here is a ``flax.linen.Module`` with:

* ``__call__(x, train=False)`` returning logits and sowing each prunable
  post-activation output into the ``'activations'`` collection;
* ``widths``: one width per unit group, in topology order;
* ``with_widths(widths)``: the same architecture at other widths;
* ``unit_topology(input_shape)``: the :class:`demp_jax.topology.UnitTopology`.

Non-trainable index maps (residual shortcut gathers, ViT MLP-output
scatters) live in the ``'shortcut'`` collection next to ``'params'`` and
``'batch_stats'``; pass it to ``apply`` like the other collections.
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
  """Builds a model from a config mapping with a ``name`` key."""
  cfg = dict(config)
  name = cfg.pop('name', None)
  if name not in MODELS:
    raise ValueError(
        f'config.model.name={name!r} is not a known model; known: '
        f'{sorted(MODELS)}')
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
