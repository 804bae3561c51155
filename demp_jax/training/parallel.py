"""Data parallelism over every device of every process, with jax.sharding.

One mesh axis, ``'data'``: batches are split along it, params and optimiser
state are replicated. Each process reads only its slice of every global
batch (``process_index`` / ``process_count``) and the global array is
assembled with ``jax.make_array_from_process_local_data``. Reductions inside
jitted functions (the loss, the death-check sums) are then global, so every
process takes the same pruning decision and performs the same surgery.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def maybe_initialize_distributed(config) -> None:
  """Calls ``jax.distributed.initialize`` for multi-process runs.

  Triggered by ``config.distributed.num_processes > 1`` (explicit
  coordinator address and process id, e.g. for two CPU processes on
  localhost) or by ``config.distributed.auto`` (TPU pods and clusters whose
  environment JAX reads). CPU processes use gloo collectives.
  """
  d = config.get('distributed') if hasattr(config, 'get') else None
  if not d:
    return
  if int(d.get('num_processes', 1) or 1) > 1:
    # Only read by the CPU backend; must not query the backend here (that
    # would initialise it before jax.distributed).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=d.coordinator_address,
        num_processes=int(d.num_processes), process_id=int(d.process_id))
  elif d.get('auto'):
    jax.distributed.initialize()


class DataParallel:
  """Places batches (sharded over ``'data'``) and state (replicated)."""

  def __init__(self):
    self.mesh = Mesh(np.asarray(jax.devices()), ('data',))
    self.process_index = jax.process_index()
    self.process_count = jax.process_count()
    self.batch = NamedSharding(self.mesh, P('data'))
    self.held = NamedSharding(self.mesh, P(None, 'data'))
    self.replicated = NamedSharding(self.mesh, P())

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  def check_batch(self, global_batch: int, what: str) -> None:
    if global_batch % self.num_devices:
      raise ValueError(f'{what}={global_batch} is not divisible by the '
                       f'{self.num_devices} devices of the data axis')

  def shard_batch(self, local: Any) -> Any:
    """Process-local ``[b, ...]`` arrays -> global arrays sharded on axis 0."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch,
                                                         np.asarray(x)), local)

  def shard_held(self, local: Any) -> Any:
    """Process-local ``[N, b, ...]`` -> global, sharded on axis 1."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.held,
                                                         np.asarray(x)), local)

  def replicate(self, tree: Any) -> Any:
    """Every array replicated on every device (None leaves kept)."""
    def put(x):
      if self.process_count == 1:
        return jax.device_put(x, self.replicated)
      return jax.make_array_from_callback(
          np.shape(x), self.replicated, lambda idx: np.asarray(x)[idx])
    return jax.tree.map(put, tree)


def fetch(x: Any) -> Any:
  """Host copy of (fully replicated) global arrays, on every process."""
  return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), x)


def on_main(fn, *args, **kwargs):
  """Runs ``fn`` on process 0 only (file writes shared by all processes)."""
  if jax.process_index() == 0:
    return fn(*args, **kwargs)
  return None
