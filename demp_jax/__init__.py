"""demp-jax: Demon Pruning and its companion methods in JAX, Flax and Optax.

Import-light: importing the package builds nothing and touches no device.
"""
from demp_jax.algorithms import (ALGORITHM_REGISTRY, BaseUpdater, DemonPruning,
                                 NoPruning, SparseState, all_algorithm_names,
                                 create_updater_from_config,
                                 register_algorithm)

__version__ = '0.1.0'

__all__ = ['ALGORITHM_REGISTRY', 'BaseUpdater', 'DemonPruning', 'NoPruning',
           'SparseState', 'all_algorithm_names', 'create_updater_from_config',
           'register_algorithm', '__version__']
