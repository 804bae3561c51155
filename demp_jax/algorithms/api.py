"""Registry and config-driven construction, as in JaxPruner's ``api.py``."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

from demp_jax.algorithms import ap
from demp_jax.algorithms import base
from demp_jax.algorithms import demp
from demp_jax.algorithms import jaxpruner_adapter
from demp_jax.algorithms import magnitude
from demp_jax.algorithms import stripping
from demp_jax.algorithms import structured

# JaxPruner's own config keys; consumed by the algorithms that define them.
JAXPRUNER_KEYS = ('sparsity', 'dist_type', 'update_freq', 'update_start_step',
                  'update_end_step', 'sparsity_type', 'filter_fn',
                  'custom_sparsity_map', 'drop_fraction')


def default_registry() -> dict[str, type]:
  """The built-in algorithms. The ``jaxpruner_*`` names and ``demp_rigl``
  are always listed; they import the optional jaxpruner package when built
  and raise an error with the install line when it is absent."""
  return {'no_prune': base.NoPruning, 'demp': demp.DemonPruning,
          **structured.ALGORITHMS, **jaxpruner_adapter.ALGORITHMS,
          **magnitude.ALGORITHMS, **stripping.ALGORITHMS, **ap.ALGORITHMS}


ALGORITHM_REGISTRY: dict[str, type] = default_registry()


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
                               **overrides: Any) -> base.BaseUpdater:
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
