r"""Accuracy, sparsity and real time: a resumable sweep over methods.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python -m experiments.tradeoff \
        --config configs/fashion_mnist_demp.py --methods no_prune,demp,snap \
        --points 5 --out runs/tradeoff [--config.num_steps=2000 ...]

``--config path[:arg]`` and ``--config.a.b=value`` are ml_collections'
config flags, read exactly as ``experiments.train`` reads them (a key the
config file lacks is an error; put method keys you want to set into a
config file). ``sparsity_config.*`` overrides reach every method and win
over the method's defaults below. The harness's own flags: ``--methods``,
``--points`` (knob values per method), ``--grid METHOD=v1,v2,...``
(repeatable, replaces a method's grid), ``--seeds 0,1``, ``--out``,
``--jaxpruner_tree_map_alias`` (lets the JaxPruner methods set
``jax.tree_map``, removed in JAX 0.6; see
:mod:`demp_jax.algorithms.jaxpruner_adapter`) and ``--noplots``.

Each method runs over its knob (:data:`METHODS`), one
``demp_jax.training.loop.train`` call per (method, knob, seed), and every
finished run appends one JSON row to ``OUT/results.jsonl``; a second
invocation skips the rows already there, so an interrupted sweep resumes
(an unfinished run starts again from an empty workdir). All rows in one OUT
must come from one config (its hash after the overrides); another is
refused. Then it writes (:mod:`experiments.tradeoff_report`)

* ``OUT/table.md``: every run (test accuracy, neuron and parameter
  sparsity, the parameters and forward FLOPs the dense kernels still
  compute, last-step and training seconds), each method's accuracy at
  matched neuron and parameter sparsities (interpolated between its own
  points, never extrapolated), and the speed at matched accuracy: for the
  dense run and the sparsest JaxPruner, DemP and DemP+RigL row within
  1 point of the dense accuracy, training and last-step seconds side by
  side;
* ``OUT/comparison.json``: the same numbers, per (method, knob) averaged
  over seeds;
* ``OUT/tradeoff.png``: test accuracy against parameter sparsity, neuron
  sparsity and training time, and last-step time against forward FLOPs.

The methods and what they are swept over:

=============================  =============================================
``no_prune``                   the dense reference (one point)
``demp``                       ``reg_peak``, the penalty's one-cycle peak,
                               log-spaced 1e-2..1.6e-1
``snap``, ``crop_it``,         target neuron sparsity 0.3..0.9, units
``early_snap``, ``early_crop``, removed physically
``structured_magnitude``,
``network_slimming``
``demp_rigl``                  ``reg_peak`` as DemP, with RigL's masks as
                               the DemP authors ran them: 80% of the
                               kernels' weights, ERK, drop fraction 0.1,
                               mask updates until 75% of training
``jaxpruner_magnitude``,       JaxPruner's algorithm at weight sparsity
``jaxpruner_saliency``,        0.5..0.95 (log-spaced densities), its
``jaxpruner_random``,          ``uniform`` distribution over every leaf with
``jaxpruner_set``,             ``ndim > 1`` (its default filter, the
``jaxpruner_rigl``             classifier included)
``jaxpruner_*_erk``            the same with its ``erk`` distribution
                               (magnitude, saliency, set, rigl)
``jaxpruner_global_magnitude`` one ranking over all those leaves (no
                               distribution)
``jaxpruner_channel``          JaxPruner's ``channel_-1`` type on magnitude
                               scores, ``uniform``, at neuron sparsity
                               0.3..0.9 over the kernels that produce units
                               (masks only: nothing is removed)
=============================  =============================================

Every JaxPruner method runs JaxPruner's own schedule, that of its ImageNet
ResNet-50 baseline (scenic config: masks updated every 1,000 of 31,250
steps from step 10,000 to 25,000, i.e. every 3.2% of training from 32% to
80%, drop fraction 0.1 for SET and RigL), scaled to ``num_steps``: on the
demo's 1,400 steps every 45 steps from 450 to 1,125. Magnitude, saliency,
random and channel prune gradually over it (JaxPruner's cubic
``PolynomialSchedule``); SET and RigL are sparse from step 0 and drop and
regrow over it.

Row fields: ``method, algorithm, knob_name, knob, seed, status,
test_accuracy, neuron_sparsity, param_sparsity, param_zero_fraction,
masked_unit_fraction, sparsity_kind, flops_initial, flops_final,
train_seconds, step_seconds_first, step_seconds_last, compile_seconds,
units_final, params_final, prune_steps, timing_env, load_before,
config_hash, workdir``. ``param_sparsity`` is ``1 - params_final /
params_initial`` (physically removed) and ``param_zero_fraction`` the
exact zeros among the params kept; the table and plots use their
combination, the fraction of the initial parameters removed or zero.
``sparsity_kind`` is ``'units'`` (removed physically), ``'unit_masks'``
(whole units masked, not removed: their neuron sparsity is
``masked_unit_fraction``, the units whose incoming kernel columns are all
zero) or ``'weight_masks'`` (no neuron sparsity). ``timing_env`` (JAX
version, allocator and XLA settings, host) says under which conditions the
seconds were measured; the speed comparison says when they differ.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
import traceback
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

import numpy as np

from experiments import tradeoff_report as report
from experiments.tradeoff_report import UNIT_MASKS, UNITS, WEIGHT_MASKS

RESULTS = 'results.jsonl'
ERRORS = 'errors.jsonl'


def _lin(lo: float, hi: float) -> Callable[[int], list[float]]:
  """``n`` evenly spaced values in ``[lo, hi]`` (the middle when n=1)."""
  def grid(n):
    if n <= 1:
      return [round((lo + hi) / 2, 4)]
    return [round(float(v), 4) for v in np.linspace(lo, hi, n)]
  return grid


def _geom(lo: float, hi: float) -> Callable[[int], list[float]]:
  """``n`` log-spaced values in ``[lo, hi]`` (the geometric middle when
  n=1)."""
  def grid(n):
    if n <= 1:
      return [float(f'{math.sqrt(lo * hi):.3g}')]
    return [float(f'{v:.3g}') for v in np.geomspace(lo, hi, n)]
  return grid


def _sparsity_geom(lo: float, hi: float) -> Callable[[int], list[float]]:
  """``n`` sparsities in ``[lo, hi]`` whose densities ``1 - s`` are
  log-spaced (denser near ``hi``: 0.5, 0.768, 0.892, 0.95 for n=4)."""
  dens = _geom(1.0 - hi, 1.0 - lo)
  return lambda n: sorted(round(1.0 - d, 3) for d in dens(n))


def _none(n):
  del n
  return [None]


def _no_defaults(num_steps: int, steps_per_epoch: int) -> dict:
  del num_steps, steps_per_epoch
  return {}


def _gradual(num_steps: int, _) -> dict:
  start, end = num_steps // 10, num_steps // 2
  return {'update_start_step': start, 'update_end_step': end,
          'update_freq': max(1, (end - start) // 4)}


def _early(num_steps: int, steps_per_epoch: int) -> dict:
  return {'check_every': max(1, steps_per_epoch),
          'max_prune_step': num_steps // 2}


def jaxpruner_schedule(num_steps: int) -> dict:
  """JaxPruner's ResNet-50 baseline schedule scaled to ``num_steps``: masks
  updated every 3.2% of training (1,000 of its 31,250 steps) from 10 to 25
  update periods (its steps 10,000 and 25,000)."""
  freq = max(1, round(0.032 * num_steps))
  return {'update_freq': freq, 'update_start_step': 10 * freq,
          'update_end_step': min(25 * freq, num_steps)}


def _jaxpruner(dist_type: str, regrows: bool = False
               ) -> Callable[[int, int], dict]:
  def defaults(num_steps, _):
    d = {**jaxpruner_schedule(num_steps), 'dist_type': dist_type}
    if regrows:
      d['drop_fraction'] = 0.1
    return d
  return defaults


def _demp_rigl(num_steps: int, _) -> dict:
  freq = jaxpruner_schedule(num_steps)['update_freq']
  return {'sparsity': 0.8, 'dist_type': 'erk', 'drop_fraction': 0.1,
          'update_freq': freq, 'update_start_step': freq,
          'update_end_step': (3 * num_steps) // 4}


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A sweepable method.

  Attributes:
    algorithm: the registered algorithm name.
    knob: the ``sparsity_config`` key swept (None: one point).
    grid: ``points -> knob values``.
    defaults: ``(num_steps, steps_per_epoch) -> sparsity_config keys``,
      applied over the config's and under the user's overrides.
    structure: ``'units'`` (removed physically), ``'unit_masks'`` (whole
      units masked, not removed) or ``'weight_masks'`` (single weights
      masked).
  """
  algorithm: str
  knob: Optional[str]
  grid: Callable[[int], list]
  defaults: Callable[[int, int], dict] = _no_defaults
  structure: str = UNITS


# DemP's penalty peak: on the demo CNN (1,400 steps) 1e-2 leaves most units
# alive and 1.6e-1 removes about 90% of them.
_DEMP_GRID = _geom(1e-2, 1.6e-1)
_UNIT_GRID = _lin(0.3, 0.9)
_WEIGHT_GRID = _sparsity_geom(0.5, 0.95)

METHODS: dict[str, MethodSpec] = {
    'no_prune': MethodSpec('no_prune', None, _none),
    'demp': MethodSpec('demp', 'reg_peak', _DEMP_GRID),
    'snap': MethodSpec('snap', 'sparsity', _UNIT_GRID),
    'crop_it': MethodSpec('crop_it', 'sparsity', _UNIT_GRID),
    'early_snap': MethodSpec('early_snap', 'sparsity', _UNIT_GRID, _early),
    'early_crop': MethodSpec('early_crop', 'sparsity', _UNIT_GRID, _early),
    'structured_magnitude': MethodSpec('structured_magnitude', 'sparsity',
                                       _UNIT_GRID, _gradual),
    'network_slimming': MethodSpec(
        'network_slimming', 'sparsity', _UNIT_GRID,
        lambda n, e: {'prune_step': n // 2, 'reg_strength': 1e-4}),
    'demp_rigl': MethodSpec('demp_rigl', 'reg_peak', _DEMP_GRID, _demp_rigl),
    'jaxpruner_channel': MethodSpec('jaxpruner_channel', 'sparsity',
                                    _UNIT_GRID, _jaxpruner('uniform'),
                                    UNIT_MASKS),
    # its dist_type is unused (one global ranking) but JaxPruner wants one
    'jaxpruner_global_magnitude': MethodSpec(
        'jaxpruner_global_magnitude', 'sparsity', _WEIGHT_GRID,
        _jaxpruner('uniform'), WEIGHT_MASKS),
    **{f'jaxpruner_{a}{suffix}': MethodSpec(
        f'jaxpruner_{a}', 'sparsity', _WEIGHT_GRID,
        _jaxpruner(dist, a in ('set', 'rigl')), WEIGHT_MASKS)
       for a in ('magnitude', 'saliency', 'random', 'set', 'rigl')
       for dist, suffix in (('uniform', ''), ('erk', '_erk'))
       if not (a == 'random' and dist == 'erk')},
}

# ------------------------------------------------------------------ config


def config_hash(config) -> str:
  """A short fingerprint of the base config (after overrides)."""
  text = json.dumps(config.to_dict(), sort_keys=True, default=str)
  return hashlib.sha1(text.encode()).hexdigest()[:12]


def method_config(base, method: str, knob: Any, seed: int,
                  steps_per_epoch: int, user_sparsity: dict,
                  extra: Optional[dict] = None):
  """The config of one run: ``base`` with the method's ``sparsity_config``
  (base keys < method defaults < user overrides < algorithm and knob)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  spec = METHODS[method]
  config = copy.deepcopy(base)
  sc = dict(base.sparsity_config.to_dict())
  sc.update(spec.defaults(int(base.num_steps), int(steps_per_epoch)))
  sc.update(extra or {})
  sc.update(user_sparsity)
  sc['algorithm'] = spec.algorithm
  if spec.knob is not None:
    sc[spec.knob] = knob
  with config.ignore_type():
    config.sparsity_config = ml_collections.ConfigDict(sc)
  config.seed = int(seed)
  return config


def run_key(method: str, knob: Any, seed: int) -> tuple:
  k = 'none' if knob is None else f'{float(knob):.6g}'
  return (method, k, int(seed))


def read_rows(out: str) -> list[dict]:
  path = os.path.join(out, RESULTS)
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        rows.append(json.loads(line))
  return rows


def _append(path: str, row: dict) -> None:
  with open(path, 'a') as f:
    f.write(json.dumps(row, default=_jsonable) + '\n')
    f.flush()
    os.fsync(f.fileno())


def _jsonable(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  return str(x)


def timing_env() -> dict:
  """What the seconds of a run depend on besides the code: JAX, the
  allocator and XLA settings, the host and its cores."""
  import jax  # pylint: disable=g-import-not-at-top
  return {'jax': jax.__version__,
          'GLIBC_TUNABLES': os.environ.get('GLIBC_TUNABLES', ''),
          'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''),
          'host': platform.node(), 'cpus': os.cpu_count()}


def final_params(workdir: str) -> dict:
  """The params of the latest checkpoint of a run."""
  from demp_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'))
  try:
    return ckpt.restore(ckpt.latest_step(), None)['variables']['params']
  finally:
    ckpt.close()


def masked_unit_fraction(topology, params: dict) -> float:
  """Fraction of the units whose incoming kernel columns (every ``params``
  leaf with ``ndim > 1`` the unit group produces) are all exactly zero: the
  units a mask silenced without removing them (each still outputs a
  constant, ``act`` of its bias or norm offset).

  Args:
    topology: the model's unit topology at the params' widths.
    params: the ``'params'`` collection.
  """
  from demp_jax import topology as topo  # pylint: disable=g-import-not-at-top
  masked = total = 0
  for g in topology.groups:
    live = np.zeros(g.size, bool)
    for ref in g.produces:
      leaf = topo.get_leaf({'params': params}, ref.key)
      if ref.collection != 'params' or ref.kind != 'axis' or leaf is None \
          or np.ndim(leaf) < 2:
        continue
      col = np.moveaxis(np.asarray(leaf) != 0, ref.axis, -1)
      live |= col.reshape(-1, g.size).any(axis=0)
    masked += int(g.size - live.sum())
    total += g.size
  return masked / max(total, 1)


def _row(method, knob, seed, summary, workdir, chash, topology,
         env: dict, load: float) -> dict:
  spec = METHODS[method]
  events = summary.get('pruning_events', [])
  masked_units = None
  if spec.structure != UNITS:  # masks only: the widths never change
    masked_units = masked_unit_fraction(topology, final_params(workdir))
  return {
      'method': method,
      'algorithm': spec.algorithm,
      'knob_name': spec.knob,
      'knob': knob,
      'seed': int(seed),
      'status': summary.get('status', 'ok'),
      'test_accuracy': summary['test_accuracy'],
      'neuron_sparsity': summary['neuron_sparsity'],
      'param_sparsity': summary['param_sparsity'],
      'param_zero_fraction': summary['param_zero_fraction'],
      'masked_unit_fraction': masked_units,
      'sparsity_kind': spec.structure,
      'flops_initial': summary['flops_initial'],
      'flops_final': summary['flops_final'],
      'train_seconds': summary['train_seconds'],
      'step_seconds_first': summary['step_seconds_first'],
      'step_seconds_last': summary['step_seconds_last'],
      'compile_seconds': summary['compile_seconds'],
      'units_final': summary['units_final'],
      'params_final': summary['params_final'],
      'prune_steps': sorted({int(e['step']) for e in events
                             if 'widths' in e}),
      'timing_env': env,
      'load_before': load,
      'config_hash': chash,
      'workdir': workdir,
  }


def plan_runs(methods: Sequence[str], points: int,
              grids: Optional[dict] = None,
              seeds: Iterable[int] = (0,)) -> list[tuple]:
  """``[(method, knob, seed)]`` in sweep order: breadth first over methods
  (every method's first point, then every method's second, ...)."""
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f'unknown method(s) {unknown}; known: {sorted(METHODS)}')
  # a grid for a known method the sweep does not run is fine (one command
  # line reused with fewer --methods); an unknown name is a typo that would
  # leave its method on the default grid
  stray = sorted(set(grids or {}) - set(METHODS))
  if stray:
    raise ValueError(f'--grid names unknown method(s) {stray}; known: '
                     f'{sorted(METHODS)}')
  per_method = []
  for m in methods:
    knobs = (grids or {}).get(m) or METHODS[m].grid(int(points))
    if METHODS[m].knob is None:
      knobs = [None]
    per_method.append([(m, k, int(s)) for k in knobs for s in seeds])
  # Breadth first: the i-th point of every method before any (i+1)-th, so
  # an interrupted sweep still covers every method.
  runs = []
  for i in range(max((len(r) for r in per_method), default=0)):
    runs.extend(r[i] for r in per_method if i < len(r))
  return runs


def run_sweep(config, methods: Sequence[str], points: int, out: str, *,
              grids: Optional[dict] = None, seeds: Iterable[int] = (0,),
              user_sparsity: Optional[dict] = None,
              jaxpruner_alias: bool = False, plots: bool = True,
              log: Callable[[str], None] = print) -> dict:
  """Runs the missing rows of the sweep, then writes the table, the
  comparison and the plot (:func:`tradeoff_report.write`).

  Args:
    config: the base ``ml_collections`` config (overrides applied).
    methods: names in :data:`METHODS`.
    points: knob values per method (unless ``grids`` names them).
    out: output directory.
    grids: ``{method: [knob values]}`` replacing the default grids.
    seeds: seeds per point.
    user_sparsity: ``sparsity_config`` keys set by the user, applied to every
      method over its defaults.
    jaxpruner_alias: pass ``jaxpruner_tree_map_alias=True`` to the
      JaxPruner methods and ``demp_rigl``.
    plots: draw the PNG.
    log: progress printer.

  Returns:
    ``{'ran': n, 'skipped': n, 'failed': n, 'rows': [...], 'written':
    [paths]}``.
  """
  from demp_jax.data import load_dataset  # pylint: disable=g-import-not-at-top
  from demp_jax.training import loop  # pylint: disable=g-import-not-at-top
  os.makedirs(out, exist_ok=True)
  chash = config_hash(config)
  rows = read_rows(out)
  other = {r.get('config_hash') for r in rows} - {chash}
  if other:
    raise ValueError(
        f'{out}/{RESULTS} holds results of another config (hash '
        f'{sorted(other)}, this one {chash}); use another --out')
  done = {run_key(r['method'], r['knob'], r['seed']) for r in rows}
  runs = plan_runs(methods, points, grids, seeds)
  splits = load_dataset(config.dataset)
  steps_per_epoch = max(1, len(splits.train) // int(config.batch_size))
  # the units at full width (for the masked methods' unit counts)
  topology = loop.build(config, int(config.num_steps)).topology
  env = timing_env()
  ran = skipped = failed = 0
  for i, (method, knob, seed) in enumerate(runs):
    tag = f'[{i + 1}/{len(runs)}] {method} {METHODS[method].knob}={knob} ' \
          f'seed={seed}'
    if run_key(method, knob, seed) in done:
      skipped += 1
      log(f'{tag}: already in {RESULTS}, skipped')
      continue
    extra = ({'jaxpruner_tree_map_alias': True} if jaxpruner_alias and
             ('jaxpruner' in method or method == 'demp_rigl') else None)
    cfg = method_config(config, method, knob, seed, steps_per_epoch,
                        dict(user_sparsity or {}), extra)
    knob_txt = 'none' if knob is None else f'{knob:g}'
    workdir = os.path.join(out, 'runs', method, f'{knob_txt}_s{seed}')
    # no row: the run never finished; start it again from nothing
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    try:
      summary = loop.train(cfg, workdir)
      row = _row(method, knob, seed, summary, workdir, chash, topology, env,
                 load)
    except loop.NonFiniteLossError as e:
      row = {'method': method, 'algorithm': METHODS[method].algorithm,
             'knob_name': METHODS[method].knob, 'knob': knob, 'seed': seed,
             'status': 'non_finite_loss', 'error': str(e),
             'config_hash': chash, 'workdir': workdir}
    except Exception as e:  # pylint: disable=broad-except
      failed += 1
      _append(os.path.join(out, ERRORS), {
          'method': method, 'knob': knob, 'seed': seed, 'error': repr(e),
          'traceback': traceback.format_exc(), 'time': time.time()})
      log(f'{tag}: FAILED ({type(e).__name__}: {e}); see {out}/{ERRORS}')
      continue
    _append(os.path.join(out, RESULTS), row)
    rows.append(row)
    done.add(run_key(method, knob, seed))
    ran += 1
    acc = row.get('test_accuracy', float('nan'))
    log(f'{tag}: acc {acc:.4f} params -{report.param_sparsity(row):.0%} '
        f'({time.perf_counter() - t0:.0f} s)')
  written = report.write(rows, out, plots)
  return {'ran': ran, 'skipped': skipped, 'failed': failed, 'rows': rows,
          'written': written}


# --------------------------------------------------------------------- CLI


class Args(NamedTuple):
  """The parsed command line."""
  config: Any
  methods: list[str]
  points: int
  out: str
  seeds: list[int]
  grids: dict
  user_sparsity: dict
  jaxpruner_alias: bool
  plots: bool


def parse_grid(items: Sequence[str]) -> dict:
  """``['snap=0.1,0.2', ...]`` -> ``{'snap': [0.1, 0.2]}``."""
  grids = {}
  for item in items:
    method, sep, values = item.partition('=')
    if not sep:
      raise ValueError(f'--grid {item!r} is not METHOD=v1,v2,...')
    method = method.strip()
    knobs = []
    for v in values.split(','):
      try:
        knobs.append(float(v))
      except ValueError:
        raise ValueError(f'--grid {item!r}: {v!r} is not a number') from None
    grids[method] = knobs
  return grids


def _ints(flag: str, values: Sequence[str], low: int) -> list[int]:
  """``values`` as integers ``>= low``, or a ``ValueError`` naming ``flag``."""
  out = []
  for v in values:
    try:
      out.append(int(v))
    except ValueError:
      raise ValueError(f'--{flag}: {v!r} is not an integer') from None
    if out[-1] < low:
      raise ValueError(f'--{flag}: {v} is below {low}')
  return out


def _flag_values(argv: Sequence[str]):
  """The harness's flags on a fresh ``FlagValues`` (nothing global)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'Config file, path[:arg].',
                                  flag_values=fv, lock_config=True,
                                  sys_argv=list(argv))
  flags.DEFINE_list('methods', None, f'From {",".join(sorted(METHODS))}.',
                    flag_values=fv)
  flags.DEFINE_integer('points', 4, 'Knob values per method.',
                       flag_values=fv)
  flags.DEFINE_string('out', None, 'Output directory.', flag_values=fv)
  flags.DEFINE_list('seeds', ['0'], 'Seeds of every point.', flag_values=fv)
  flags.DEFINE_multi_string('grid', [], 'METHOD=v1,v2,... replaces the '
                            "method's knob grid.", flag_values=fv)
  flags.DEFINE_boolean('jaxpruner_tree_map_alias', False,
                       'Let the JaxPruner methods set jax.tree_map.',
                       flag_values=fv)
  flags.DEFINE_boolean('plots', True, 'Draw the plot.', flag_values=fv)
  flags.mark_flags_as_required(['config', 'methods', 'out'], flag_values=fv)
  return fv


def parse_args(argv: Sequence[str]) -> Args:
  """Parses ``argv`` (without the program name).

  Raises:
    ValueError: a bad flag, override, config file or grid, in one line.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  full = ['experiments.tradeoff', *argv]
  fv = _flag_values(full)
  try:
    rest = fv(full)
    config = fv.config
    config.to_dict()  # a config file that failed to load raises here
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError,
          OSError) as e:
    msg = e
    while isinstance(msg, BaseException) and msg.args:
      msg = msg.args[0]
    what = ('unknown or invalid config override '
            if isinstance(e, (AttributeError, KeyError)) else '')
    raise ValueError(what + ' '.join(str(msg).split())) from e
  if len(rest) > 1:
    raise ValueError(f'unexpected arguments {rest[1:]}')
  overrides = config_flags.get_override_values(fv['config'])
  return Args(config, list(fv.methods),
              _ints('points', [fv.points], 1)[0], fv.out,
              _ints('seeds', fv.seeds, 0), parse_grid(fv.grid),
              {k.split('.', 1)[1]: v for k, v in overrides.items()
               if k.startswith('sparsity_config.')},
              bool(fv.jaxpruner_tree_map_alias), bool(fv.plots))


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the sweep; returns 0, 1 if some run failed, 2 on a bad command
  line."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if {'-h', '--help', '--helpfull'} & set(argv):
    print(__doc__)
    return 0
  try:
    args = parse_args(argv)
    plan_runs(args.methods, args.points, args.grids, args.seeds)
  except ValueError as e:
    print(f'error: bad command line: {e}', file=sys.stderr)
    return 2
  res = run_sweep(args.config, args.methods, args.points, args.out,
                  grids=args.grids, seeds=args.seeds,
                  user_sparsity=args.user_sparsity,
                  jaxpruner_alias=args.jaxpruner_alias, plots=args.plots)
  print(f'{res["ran"]} run(s), {res["skipped"]} skipped, {res["failed"]} '
        f'failed; rows in {os.path.join(args.out, RESULTS)}')
  for path in res['written']:
    print(f'  {path}')
  return 1 if res['failed'] else 0


if __name__ == '__main__':
  sys.exit(main())
