"""The trainer's settings, read once from the config into a typed record.

Their defaults live in one place, :func:`demp_jax.training.config_blocks.base`:
the trainer has none of its own, so a config without a setting is an error
that names it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence


def require(config: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
  """``{key: config[key]}``; a missing key is a ``ValueError`` naming it."""
  missing = [k for k in keys if k not in config]
  if missing:
    more = f' (and {", ".join(missing[1:])})' if missing[1:] else ''
    raise ValueError(f'config.{missing[0]} is missing{more}: build the config '
                     'on demp_jax.training.config_blocks.base(), which sets '
                     'every trainer setting')
  return {k: config[k] for k in keys}


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """What :func:`demp_jax.training.loop.train` reads besides the dataset,
  model, optimizer and sparsity sections.

  Attributes:
    seed: the seed of the initialisation, the data order and the held
      batches.
    num_steps: training steps (>= 1).
    batch_size: global batch size (divisible by the devices).
    eval_batch_size: global batch size of the evaluation.
    label_smoothing: of the cross-entropy.
    checkpoint_every: steps between checkpoints (0: only at surgeries and
      at the end).
    resume: continue from the latest checkpoint in the workdir.
    log_every: steps between metric rows (>= 1; the last step is logged).
    eval_every: steps between test evaluations (0: only at the end).
    round_widths_to: width bucket: widths are rounded up to a multiple
      (1: exact widths).
    shrink_delay: steps trained with the removed units held at zero while
      the shrunk step compiles in the background (0: compile at once).
    progress: show a progress bar.
    bn_recalibration_batches: ``N > 0``: the death checks and evaluations
      see BatchNorm statistics recomputed from ``N`` held training batches
      (:mod:`demp_jax.training.recalibrate`); 0: the moving averages, as in
      the reference code.
  """
  seed: int
  num_steps: int
  batch_size: int
  eval_batch_size: int
  label_smoothing: float
  checkpoint_every: int
  resume: bool
  log_every: int
  eval_every: int
  round_widths_to: int
  shrink_delay: int
  progress: bool
  bn_recalibration_batches: int

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> 'TrainOptions':
    fields = dataclasses.fields(cls)
    raw = require(config, [f.name for f in fields])
    out = cls(**{f.name: _convert(f.type, raw[f.name], f.name)
                 for f in fields})
    for name, low in (('num_steps', 1), ('log_every', 1),
                      ('round_widths_to', 1), ('batch_size', 1),
                      ('eval_batch_size', 1), ('checkpoint_every', 0),
                      ('eval_every', 0), ('shrink_delay', 0),
                      ('bn_recalibration_batches', 0)):
      if getattr(out, name) < low:
        raise ValueError(f'config.{name} must be >= {low}, got '
                         f'{getattr(out, name)}')
    return out


def _convert(kind: str, value: Any, name: str) -> Any:
  try:
    return {'int': int, 'float': float, 'bool': bool}[kind](value)
  except (TypeError, ValueError) as e:
    raise ValueError(f'config.{name}={value!r} is not an {kind}') from e
