"""Pruning algorithms on JaxPruner's conventions, and their registry."""
from demp_jax.algorithms.api import (ALGORITHM_REGISTRY, all_algorithm_names,
                                     create_updater_from_config,
                                     register_algorithm)
from demp_jax.algorithms.base import BaseUpdater, NoPruning, SparseState
from demp_jax.algorithms.demp import DemonPruning

__all__ = ['ALGORITHM_REGISTRY', 'all_algorithm_names',
           'create_updater_from_config', 'register_algorithm', 'BaseUpdater',
           'NoPruning', 'SparseState', 'DemonPruning']
