"""A run's working directory belongs to one run.

* :func:`check_outputs`: nothing stands where the run will write (a
  directory named like one of its files, a file named like one of its
  directories), checked before any work: otherwise the run would fail only
  when it first writes there, at the first checkpoint or at the end.
* :func:`exclusive`: one process trains in a workdir at a time. It holds a
  ``flock`` on the directory itself for the run; the kernel drops it when
  the process ends, so a killed run leaves no stale lock behind and no file
  is added to the workdir. (Two runs in one workdir would interleave their
  metrics rows and checkpoints.)
* :func:`run_identity` / :func:`check_same_run`: a resume continues the run
  its checkpoints are of. A resume under another dataset, model, optimizer
  or sparsity method would restore silently at the checkpoint's widths (a
  model config that only changes the widths) or fail with orbax's
  tree-structure message; it is refused with the keys that differ. The
  other settings may change on a resume (a lower learning rate after a
  non-finite loss, more steps, another seed).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Any, Iterator, Mapping, Optional

from demp_jax.training.metrics import jsonable
from demp_jax.training.validate import flatten

FILES = {'summary.json': 'summary', 'metrics.csv': 'metrics',
         'metrics.jsonl': 'metrics'}
DIRECTORIES = {'checkpoints': 'checkpoints', 'tensorboard': 'TensorBoard logs'}

# The config keys (and sections) that decide what a checkpoint's arrays
# are: it resumes only under the same values.
IDENTITY = ('dataset.name', 'model', 'optimizer.name',
            'sparsity_config.algorithm')


def check_outputs(workdir: str) -> None:
  """An ``OSError`` naming the first path of ``workdir`` that stands where
  the run writes (no error for a workdir that does not exist yet)."""
  for name, what in FILES.items():
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      raise IsADirectoryError(f'{path} is a directory; the run writes its '
                              f'{what} to that path as a file: move it away')
  for name, what in DIRECTORIES.items():
    path = os.path.join(workdir, name)
    if os.path.exists(path) and not os.path.isdir(path):
      raise NotADirectoryError(f'{path} is a file; the run keeps its {what} '
                               'in a directory of that name: move it away')


@contextlib.contextmanager
def exclusive(workdir: str, enabled: bool = True) -> Iterator[None]:
  """Holds ``workdir`` (an existing directory) for this process.

  Raises:
    BlockingIOError: another process holds it (another run is training
      there), at once.
  """
  if not enabled:  # the other processes of a multi-host run share it
    yield
    return
  fd = os.open(workdir, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise BlockingIOError(
          f'--workdir {workdir} is in use: another run is training there '
          '(it holds the directory\'s lock until it ends); wait for it or '
          'use another workdir') from None
    yield
  finally:
    os.close(fd)  # drops the lock


def run_identity(config: Any) -> dict[str, Any]:
  """``{dotted key: value}`` of the :data:`IDENTITY` keys of ``config``,
  as JSON reads them back (tuples as lists)."""
  flat = flatten(config)
  picked = {k: v for k, v in flat.items()
            if any(k == key or k.startswith(key + '.') for key in IDENTITY)}
  return json.loads(json.dumps(picked, default=jsonable))


def check_same_run(identity: Mapping[str, Any], meta: Mapping[str, Any],
                   step: int, directory: str) -> None:
  """A ``ValueError`` unless the checkpoint ``meta`` (of ``step`` in
  ``directory``) was written by a run with the same identity.

  Keys present on one side only pass (a setting added by a later version
  of the library); so do checkpoints written before identities were saved.
  """
  saved: Optional[Mapping[str, Any]] = meta.get('run_config')
  if saved is None:
    return
  differ = sorted(k for k in set(identity) & set(saved)
                  if identity[k] != saved[k])
  if not differ:
    return
  k = differ[0]
  more = (f' (and {len(differ) - 1} more: {", ".join(differ[1:4])}'
          f'{", ..." if len(differ) > 4 else ""})' if differ[1:] else '')
  raise ValueError(
      f'config.resume: {directory} holds checkpoints of another run: '
      f'config.{k} is {identity[k]!r} here and {saved[k]!r} in the run of '
      f'step {step}{more}; resume with that run\'s settings or use a new '
      'workdir')
