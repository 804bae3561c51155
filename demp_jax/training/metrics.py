"""Metrics as files: TensorBoard events, CSV and JSON lines, JSON summaries.

One ``write(step, scalars)`` call appends a row to ``metrics.jsonl`` and
``metrics.csv`` (columns fixed by the first row, new keys go to the JSON
only) and writes the scalars as TensorBoard summaries with tensorboardX when
it is installed. Only process 0 writes. :func:`write_json` writes a summary
atomically.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Mapping

import numpy as np


class MetricWriter:
  """Appends scalar metrics under ``workdir``."""

  def __init__(self, workdir: str, enabled: bool = True,
               tensorboard: bool = True):
    self.enabled = enabled
    self.workdir = workdir
    self._tb = None
    self._columns = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except ImportError:
        self._tb = None
    csv_path = os.path.join(workdir, 'metrics.csv')
    if os.path.exists(csv_path):
      with open(csv_path) as f:
        header = f.readline().strip()
      self._columns = header.split(',') if header else None

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(os.path.join(self.workdir, 'metrics.jsonl'), 'a') as f:
      f.write(json.dumps({k: (v if math.isfinite(v) else str(v))
                          for k, v in row.items()}) + '\n')
    csv_path = os.path.join(self.workdir, 'metrics.csv')
    new = self._columns is None
    if new:
      self._columns = list(row)
    with open(csv_path, 'a', newline='') as f:
      w = csv.DictWriter(f, self._columns, extrasaction='ignore')
      if new:
        w.writeheader()
      w.writerow(row)
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def jsonable(x: Any) -> Any:
  """``json.dump``'s ``default=``: numpy scalars and arrays (and jax arrays)
  as numbers and lists, anything else as its ``str``."""
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.floating):
    return float(x)
  if hasattr(x, '__array__'):
    return np.asarray(x).tolist()
  return str(x)


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented JSON, atomically: a temporary file renamed
  over the target."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, default=jsonable)
  os.replace(tmp, path)
