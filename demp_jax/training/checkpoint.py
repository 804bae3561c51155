"""Orbax checkpoints that survive shrinking, and damage.

Each checkpoint holds the arrays (variables and optimiser state) and a JSON
``meta`` with the model widths and the history of kept units, so a run
restores into its shrunk shapes from its workdir alone: read ``meta`` first,
rebuild the model at those widths, build the abstract target with
``jax.eval_shape``, then restore the arrays into it
(:meth:`Checkpointer.restore_latest` does all of it for the newest step
that restores).

Orbax writes each step to a temporary directory and renames it when
complete, so a save that is cut short leaves no step behind; a step that
was damaged afterwards (a file overwritten, truncated or deleted) still
fails to restore. Orbax checks the JSON files but not the array bytes, so
:meth:`Checkpointer.save` also stores the CRC-32 of every array in
``meta`` and the restore compares them. On resume a step that does not
restore is reported by path and moved aside to ``DIRECTORY.corrupt/STEP``
(never deleted), and the newest step that restores is used. Left in place,
the damaged newer steps would stay orbax's latest: it refuses to save any
older step (every save of the resumed run until it passes them) and counts
them towards ``max_to_keep``.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import sys
import zlib
from typing import Any, Callable, Iterator, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from demp_jax.errors import one_line

CHECKSUMS = '_array_crc32'  # meta key: {leaf path: CRC-32 of its bytes}
_ITEMS = ('state', 'meta')


class CheckpointError(RuntimeError):
  """No checkpoint restores; the message names each step's fault."""


class Restored(NamedTuple):
  """The newest checkpoint that restored: its ``step``, its ``meta`` (as
  saved) and its ``state`` (the arrays in the abstract target's shapes)."""
  step: int
  meta: dict
  state: Any


class Checkpointer:
  """A thin ``ocp.CheckpointManager`` with a JSON ``meta`` item."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True),
        item_names=_ITEMS)

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves and waits; an existing step is replaced."""
    if step in self._mngr.all_steps():
      self._mngr.delete(step)
    _require_savable(state)
    meta = {**meta, CHECKSUMS: checksums(state)}
    ok = self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    self._mngr.wait_until_finished()
    if not ok:
      raise RuntimeError(f'orbax did not save step {step} in {self.directory}')

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def read_meta(self, step: int) -> dict:
    return self._mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']

  def newest_meta(self) -> Optional[tuple[int, dict]]:
    """``(step, meta)`` of the newest step whose meta reads (None when
    none does; :meth:`restore_latest` names the damage)."""
    for step in sorted(self._mngr.all_steps(), reverse=True):
      try:
        with _quiet_orbax_cleanup():
          return step, self.read_meta(step)
      except Exception:  # pylint: disable=broad-except
        continue
    return None

  def restore(self, step: int, abstract_state: Any) -> Any:
    """Restores the arrays into ``abstract_state`` (shapes, dtypes and
    shardings from ``jax.eval_shape`` at the checkpoint's widths)."""
    return self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))['state']

  def restore_latest(self, build_abstract: Callable[[dict], Any]
                     ) -> Optional[Restored]:
    """The newest step that restores, or None when there is no step.

    Tries the steps newest first: reads the step's ``meta``, asks
    ``build_abstract(meta)`` for the abstract target at that step's widths,
    restores the arrays and checks their CRC-32s. When an older step
    restores, each newer one is reported on stderr with its damaged file
    (where it can be found), moved to ``DIRECTORY.corrupt/``, and the step
    resumed from is said.

    Raises:
      CheckpointError: no step restores (then nothing is moved or
        deleted); the message names each step and its fault.
    """
    failed: list[tuple[int, str]] = []
    for step in sorted(self._mngr.all_steps(), reverse=True):
      item = 'meta'
      try:
        with _quiet_orbax_cleanup():
          meta = self.read_meta(step)
          item = 'state'
          state = self.restore(step, build_abstract(meta))
          verify_checksums(state, meta.get(CHECKSUMS))
      except Exception as e:  # pylint: disable=broad-except
        # orbax, tensorstore and json raise many types, some bare Exception
        failed.append((step, describe_damage(self.step_dir(step), item, e)))
        continue
      for s, fault in failed:
        _say(f'checkpoint: step {s} does not restore: {fault}')
      if failed:
        moved = self.set_aside([s for s, _ in failed], 'corrupt')
        _say(f'checkpoint: resuming from step {step}, the newest checkpoint '
             f'that restores; the damaged newer step(s) were moved to '
             f'{", ".join(moved)}')
      meta = {k: v for k, v in meta.items() if k != CHECKSUMS}
      return Restored(step, meta, state)
    if failed:
      raise CheckpointError(
          f'no checkpoint in {self.directory} restores (nothing was moved or '
          'deleted): ' + '; '.join(f'step {s}: {f}' for s, f in failed))
    return None

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def set_aside(self, steps: list[int], why: str) -> list[str]:
    """Moves step directories to ``DIRECTORY.<why>/STEP[.N]`` (process 0
    only; never deletes) and makes orbax forget them, so that a resume
    does not pick them."""
    moved = []
    for step in steps:
      dest = os.path.join(f'{self.directory}.{why}', str(step))
      n = 0
      while os.path.exists(dest if not n else f'{dest}.{n}'):
        n += 1
      dest = dest if not n else f'{dest}.{n}'
      if jax.process_index() == 0:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.rename(self.step_dir(step), dest)
      moved.append(dest)
    if jax.process_count() > 1:  # every process lists the steps after it
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('demp_jax checkpoint set aside')
    self._mngr.reload()
    return moved

  def close(self) -> None:
    self._mngr.close()


def _require_savable(state: Any) -> None:
  """A ``ValueError`` naming the first array orbax cannot save (zero size),
  raised before orbax starts its threads: a save that fails inside orbax
  leaves a thread waiting for a signal that never comes, which blocks the
  interpreter's exit (orbax-checkpoint 0.12.8)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if hasattr(leaf, 'shape') and np.size(leaf) == 0:
      raise ValueError(f'checkpoint: array {jax.tree_util.keystr(path)} has '
                       f'shape {tuple(leaf.shape)}; orbax cannot save a '
                       'zero-size array (a layer of width 0?)')


def checksums(state: Any) -> dict[str, int]:
  """``{leaf path: CRC-32 of its bytes}`` for every array of ``state``
  that this process holds whole (on its own devices, or replicated over
  every process)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if jax.dtypes.issubdtype(getattr(leaf, 'dtype', None),
                             jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)  # NNX RNG streams: their key bits
    if getattr(leaf, 'is_fully_addressable', True):
      host = jax.device_get(leaf)
    elif getattr(leaf.sharding, 'is_fully_replicated', False):
      host = leaf.addressable_data(0)
    else:
      continue  # split over processes: no process has all of it
    out[jax.tree_util.keystr(path)] = zlib.crc32(
        np.ascontiguousarray(host).tobytes())
  return out


def verify_checksums(state: Any, expected: Optional[dict]) -> None:
  """``ValueError`` naming the first leaf whose bytes differ from those
  saved (checkpoints without checksums pass)."""
  if not expected:
    return
  for key, crc in checksums(state).items():
    if key in expected and expected[key] != crc:
      raise ValueError(f'array {key} differs from what was saved (CRC-32 '
                       f'{crc:#010x}, saved {expected[key]:#010x})')


def describe_damage(step_dir: str, item: str, error: BaseException) -> str:
  """``'PATH: what went wrong'`` for a step that failed while ``item``
  ('meta' or 'state') was read: the missing item directory, else the JSON
  file that does not parse, else the last file the error names, else the
  item's directory; then the error's first line."""
  reason = one_line(error, 10_000).split(' See full TensorStore details')[0]
  reason = reason[:300]
  for name in _ITEMS:
    if not os.path.isdir(os.path.join(step_dir, name)):
      return f'{os.path.join(step_dir, name)} is missing ({reason})'
  for path in _json_files(step_dir):
    try:
      with open(path, 'rb') as f:
        json.loads(f.read().decode('utf-8'))
    except (OSError, ValueError):
      return f'{path} is corrupt ({reason})'
  named = re.findall(r'local file "([^"]+)"', str(error))
  if named:
    return f'{named[-1]}: {reason}'
  arrays = [p for p in re.findall(r"'path': '([^']*)'", str(error))
            if not p.startswith('/')]  # tensorstore's key of the array
  array = f' (array {arrays[-1].rstrip("/")!r})' if arrays else ''
  return f'{os.path.join(step_dir, item)}{array}: {reason}'


def _json_files(step_dir: str) -> Iterator[str]:
  """The metadata files of a step that orbax writes as JSON."""
  for root, dirs, files in os.walk(step_dir):
    dirs[:] = [d for d in dirs if d != 'd' and not d.startswith('ocdbt.')]
    for f in sorted(files):
      if not f.endswith(('.txt', '.ocdbt')):
        yield os.path.join(root, f)


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet_orbax_cleanup():
  """Silences the "Exception ignored in <coroutine ...>" tracebacks that
  orbax's abandoned reads print when a restore fails (the failure itself
  is reported once, by :meth:`Checkpointer.restore_latest`)."""
  hook = sys.unraisablehook
  sys.unraisablehook = lambda _: None
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = hook
