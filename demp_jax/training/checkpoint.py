"""Orbax checkpoints that survive shrinking.

Each checkpoint holds the arrays (variables and optimiser state) and a JSON
``meta`` with the model widths and the history of kept units, so a run
restores into its shrunk shapes from its workdir alone: read ``meta`` first,
rebuild the model at those widths, build the abstract target with
``jax.eval_shape``, then restore the arrays into it. Orbax writes each step
to a temporary directory and renames it when complete, so a checkpoint is
never left half-written.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import orbax.checkpoint as ocp


class Checkpointer:
  """A thin ``ocp.CheckpointManager`` with a JSON ``meta`` item."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True),
        item_names=('state', 'meta'))

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves and waits; an existing step is replaced."""
    if step in self._mngr.all_steps():
      self._mngr.delete(step)
    ok = self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    self._mngr.wait_until_finished()
    if not ok:
      raise RuntimeError(f'orbax did not save step {step} in {self.directory}')

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def read_meta(self, step: int) -> dict:
    return self._mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']

  def restore(self, step: int, abstract_state: Any) -> Any:
    """Restores the arrays into ``abstract_state`` (shapes, dtypes and
    shardings from ``jax.eval_shape`` at the checkpoint's widths)."""
    return self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))['state']

  def close(self) -> None:
    self._mngr.close()
