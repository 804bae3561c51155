"""Pruning algorithms on JaxPruner's conventions, and their registry."""
from demp_jax.algorithms.ap import ActivateWhilePruning
from demp_jax.algorithms.api import (ALGORITHM_REGISTRY, all_algorithm_names,
                                     create_updater_from_config,
                                     register_algorithm)
from demp_jax.algorithms.base import (BaseUpdater, NoPruning, PruneContext,
                                      SparseState)
from demp_jax.algorithms.demp import DemonPruning
from demp_jax.algorithms.magnitude import GlobalMagnitudePruning
from demp_jax.algorithms.stripping import SynapticStripping
from demp_jax.algorithms.structured import (SNAP, CropIt, EarlyCrop, EarlySNAP,
                                            NetworkSlimming,
                                            StructuredMagnitude)

__all__ = ['ALGORITHM_REGISTRY', 'all_algorithm_names',
           'create_updater_from_config', 'register_algorithm', 'BaseUpdater',
           'NoPruning', 'PruneContext', 'SparseState', 'DemonPruning',
           'SynapticStripping', 'ActivateWhilePruning',
           'GlobalMagnitudePruning', 'SNAP', 'CropIt', 'EarlySNAP',
           'EarlyCrop', 'StructuredMagnitude', 'NetworkSlimming']
