"""The built-in algorithms, registered in :mod:`.registry`, and the public
construction API (JaxPruner's ``api.py``)."""
from __future__ import annotations

from demp_jax.algorithms import ap
from demp_jax.algorithms import base
from demp_jax.algorithms import demp
from demp_jax.algorithms import jaxpruner_adapter
from demp_jax.algorithms import magnitude
from demp_jax.algorithms import registry
from demp_jax.algorithms import stripping
from demp_jax.algorithms import structured
from demp_jax.algorithms.registry import (ALGORITHM_REGISTRY, JAXPRUNER_KEYS,
                                          all_algorithm_names,
                                          create_updater_from_config,
                                          register_algorithm)

__all__ = ['ALGORITHM_REGISTRY', 'JAXPRUNER_KEYS', 'all_algorithm_names',
           'create_updater_from_config', 'default_registry',
           'register_algorithm']


def default_registry() -> dict[str, type]:
  """The built-in algorithms. The ``jaxpruner_*`` names and ``demp_rigl``
  are always listed; they import the optional jaxpruner package when built
  and raise an error with the install line when it is absent."""
  return {'no_prune': base.NoPruning, 'demp': demp.DemonPruning,
          **structured.ALGORITHMS, **jaxpruner_adapter.ALGORITHMS,
          **magnitude.ALGORITHMS, **stripping.ALGORITHMS, **ap.ALGORITHMS}


registry.ALGORITHM_REGISTRY.update(default_registry())
