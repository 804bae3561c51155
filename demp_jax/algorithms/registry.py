"""The algorithm registry and config-driven construction, as in JaxPruner's
``api.py``: a leaf module, imported by :mod:`.api` (which registers the
built-in algorithms) and by algorithms that build others (AP's base)."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

# JaxPruner's own config keys; consumed by the algorithms that define them.
JAXPRUNER_KEYS = ('sparsity', 'dist_type', 'update_freq', 'update_start_step',
                  'update_end_step', 'sparsity_type', 'filter_fn',
                  'custom_sparsity_map', 'drop_fraction')

# name -> updater dataclass; demp_jax.algorithms.api fills in the built-ins.
ALGORITHM_REGISTRY: dict[str, type] = {}


def register_algorithm(name: str, cls: type) -> None:
  """Adds an updater dataclass under ``name`` (replacing any before it)."""
  if not dataclasses.is_dataclass(cls):
    raise TypeError(f'register_algorithm({name!r}): {cls} is not a dataclass')
  ALGORITHM_REGISTRY[name] = cls


def all_algorithm_names() -> list[str]:
  return sorted(ALGORITHM_REGISTRY)


def _fields(cls: type) -> set[str]:
  """Config keys of a dataclass: its init fields, except those marked
  ``metadata={'config': False}`` (Python-side state such as trackers)."""
  return {f.name for f in dataclasses.fields(cls)
          if f.init and f.metadata.get('config', True)}


def create_updater_from_config(sparsity_config: Mapping[str, Any],
                               **overrides: Any) -> Any:
  """Builds the updater named by ``sparsity_config.algorithm``.

  Every other key is a dataclass field of some registered algorithm or a
  JaxPruner key. Keys that belong to other algorithms are ignored, so the
  same config runs with ``algorithm='no_prune'`` as the dense reference; a
  key that no algorithm knows is an error naming it. ``overrides`` (e.g.
  ``topology=...``) are passed to the dataclass.
  """
  cfg = dict(sparsity_config.to_dict() if hasattr(sparsity_config, 'to_dict')
             else sparsity_config)
  name = cfg.pop('algorithm', None)
  if name not in ALGORITHM_REGISTRY:
    close = difflib.get_close_matches(str(name), all_algorithm_names(), 1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise ValueError(
        f'sparsity_config.algorithm={name!r} is not a registered algorithm'
        f'{hint}; registered: {all_algorithm_names()}')
  cls = ALGORITHM_REGISTRY[name]
  known = set(JAXPRUNER_KEYS).union(*(_fields(c) for c in
                                      ALGORITHM_REGISTRY.values()))
  for key in cfg:
    if key not in known:
      close = difflib.get_close_matches(key, sorted(known), 1)
      hint = f' (did you mean {close[0]!r}?)' if close else ''
      raise ValueError(
          f'sparsity_config.{key} is not a setting of any algorithm{hint}; '
          f'{name!r} takes {sorted(_fields(cls))}')
  mine = _fields(cls)
  kwargs = {k: v for k, v in cfg.items() if k in mine}
  kwargs.update({k: v for k, v in overrides.items() if k in mine})
  return cls(**kwargs)
