"""Pruning algorithms on JaxPruner's conventions, and their registry."""
from demp_jax.algorithms.ap import ActivateWhilePruning
from demp_jax.algorithms.api import (ALGORITHM_REGISTRY, all_algorithm_names,
                                     create_updater_from_config,
                                     register_algorithm)
from demp_jax.algorithms.base import (BaseUpdater, Decision, NoPruning,
                                      ProbeSpec, PruneContext, RoundResult,
                                      SparseState, Updater)
from demp_jax.algorithms.demp import DemonPruning
from demp_jax.algorithms.magnitude import GlobalMagnitudePruning
from demp_jax.algorithms.schedules import (AnyOf, NoUpdateSchedule,
                                           OneShotSchedule, PeriodicSchedule,
                                           Schedule)
from demp_jax.algorithms.stripping import SynapticStripping
from demp_jax.algorithms.structured import (SNAP, CropIt, EarlyCrop, EarlySNAP,
                                            NetworkSlimming,
                                            StructuredMagnitude)

__all__ = ['ALGORITHM_REGISTRY', 'all_algorithm_names',
           'create_updater_from_config', 'register_algorithm', 'BaseUpdater',
           'Decision', 'NoPruning', 'ProbeSpec', 'PruneContext',
           'RoundResult', 'SparseState', 'Updater', 'AnyOf',
           'NoUpdateSchedule', 'OneShotSchedule', 'PeriodicSchedule',
           'Schedule', 'DemonPruning', 'SynapticStripping',
           'ActivateWhilePruning', 'GlobalMagnitudePruning', 'SNAP', 'CropIt',
           'EarlySNAP', 'EarlyCrop', 'StructuredMagnitude', 'NetworkSlimming']
