"""Accuracy vs sparsity vs training time: a resumable sweep over methods.

    python -m experiments.tradeoff --config configs/fashion_mnist_demp.py \
        --methods demp,snap,crop_it,early_snap,early_crop,\
structured_magnitude,network_slimming,no_prune --points 5 --out runs/tradeoff

Each method runs over its knob (``reg_peak``, the one-cycle penalty peak,
for DemP; the target sparsity ``sparsity`` for the others; see
:data:`METHODS` for the grids), one ``demp_jax.training.loop.train`` call
per (method, knob, seed). Every finished run appends one JSON row to
``OUT/results.jsonl``; a second invocation skips the rows already there, so
an interrupted sweep resumes. Then three plots are drawn:
``OUT/accuracy_vs_neuron_sparsity.png``, ``accuracy_vs_param_sparsity.png``
and ``accuracy_vs_train_time.png``, and ``OUT/table.md`` holds every run
and each method's accuracy at matched neuron sparsities (interpolated
between its own points, never extrapolated).

Options:

* ``--grid METHOD=v1,v2,...`` replaces a method's knob grid (repeatable).
* ``--set KEY=VALUE`` or ``--config.KEY=VALUE`` (repeatable) overrides the
  config (dotted keys, values parsed as Python literals, else strings),
  e.g. ``--set num_steps=200 --set sparsity_config.score_batches=2``.
  ``sparsity_config.*`` keys reach every method (each algorithm takes the
  keys it knows). All results in one OUT must come from one config: a
  different one is refused.
* ``--seeds 0,1,2`` repeats every point.
* ``--jaxpruner-tree-map-alias`` lets the ``jaxpruner_*`` methods set
  ``jax.tree_map = jax.tree_util.tree_map`` (removed in JAX 0.6; see
  :mod:`demp_jax.algorithms.jaxpruner_adapter`).

Row fields: ``method, algorithm, knob_name, knob, seed, status,
test_accuracy, neuron_sparsity, param_sparsity, param_zero_fraction,
sparsity_kind, flops_initial, flops_final, train_seconds,
step_seconds_first, step_seconds_last, compile_seconds, units_final,
params_final, prune_steps, config_hash, workdir``. ``param_sparsity`` is
``1 - params_final / params_initial`` (physically removed); for the
mask-only ``jaxpruner_*`` methods (``sparsity_kind='masked'``) the plots use
``param_zero_fraction``, the fraction of exactly-zero parameters in the
final checkpoint (JaxPruner's ``_total_sparsity``).
"""
from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

RESULTS = 'results.jsonl'
ERRORS = 'errors.jsonl'
TABLE = 'table.md'
PLOTS = ('accuracy_vs_neuron_sparsity.png', 'accuracy_vs_param_sparsity.png',
         'accuracy_vs_train_time.png')


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


def _none(n):
  del n
  return [None]


def _gradual(num_steps: int, _) -> dict:
  start, end = num_steps // 10, num_steps // 2
  return {'update_start_step': start, 'update_end_step': end,
          'update_freq': max(1, (end - start) // 4)}


def _jaxpruner(num_steps: int, _) -> dict:
  start, end = num_steps // 10, num_steps // 2
  return {'update_start_step': start, 'update_end_step': end,
          'update_freq': max(1, (end - start) // 10), 'dist_type': 'uniform'}


def _early(num_steps: int, steps_per_epoch: int) -> dict:
  return {'check_every': max(1, steps_per_epoch),
          'max_prune_step': num_steps // 2}


def _demp_rigl(num_steps: int, _) -> dict:
  return {'sparsity': 0.8, 'dist_type': 'erk', 'drop_fraction': 0.1,
          'update_start_step': num_steps // 10,
          'update_end_step': (3 * num_steps) // 4,
          'update_freq': max(1, num_steps // 20)}


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A sweepable method.

  Attributes:
    algorithm: the registered algorithm name.
    knob: the ``sparsity_config`` key swept (None: one point).
    grid: ``points -> knob values``.
    defaults: ``(num_steps, steps_per_epoch) -> sparsity_config keys``,
      applied under the user's ``sparsity_config`` overrides.
    masked: sparsity from zeroed weights, no unit removal.
  """
  algorithm: str
  knob: Optional[str]
  grid: Callable[[int], list]
  defaults: Callable[[int, int], dict] = lambda n, e: {}
  masked: bool = False


# DemP's penalty peak: on the demo CNN (1,400 steps) 1e-2 leaves most units
# alive and 1.6e-1 removes about 90% of them.
_DEMP_GRID = _geom(1e-2, 1.6e-1)
_UNIT_GRID = _lin(0.3, 0.9)
_WEIGHT_GRID = _lin(0.5, 0.95)

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
                                    _UNIT_GRID, _jaxpruner, masked=True),
    **{f'jaxpruner_{a}': MethodSpec(
        f'jaxpruner_{a}', 'sparsity', _WEIGHT_GRID,
        (lambda n, e: {**_jaxpruner(n, e), 'update_end_step': (3 * n) // 4})
        if a in ('set', 'rigl') else _jaxpruner, masked=True)
       for a in ('magnitude', 'global_magnitude', 'saliency', 'random', 'set',
                 'rigl')},
}


# ------------------------------------------------------------------ config


def load_config(spec: str):
  """``'path/to/config.py[:arg]'`` -> ``get_config(arg)``."""
  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    raise FileNotFoundError(f'config file {path!r} not found')
  mod_spec = importlib.util.spec_from_file_location('_tradeoff_config', path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def parse_value(text: str) -> Any:
  """A Python literal (``3``, ``1e-3``, ``(8, 16)``, ``True``, ``None``,
  ``{'a': 1}``), else the string itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_override(config, assignment: str) -> None:
  """Sets ``config.a.b = value`` from ``'a.b=value'`` (in place).

  A dict value replaces a sub-config whole (e.g. ``model={'name': 'mlp',
  'widths': (32, 16)}``).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  key, sep, text = assignment.partition('=')
  if not sep or not key:
    raise ValueError(f'override {assignment!r} is not KEY=VALUE')
  value = parse_value(text)
  *parents, leaf = key.strip().split('.')
  node = config
  for p in parents:
    if p not in node:
      raise ValueError(f'override {assignment!r}: config has no {p!r}')
    node = node[p]
  if isinstance(value, dict):
    value = ml_collections.ConfigDict(value)
  if leaf in node and isinstance(node[leaf], float) and isinstance(
      value, int) and not isinstance(value, bool):
    value = float(value)
  with node.ignore_type():
    node[leaf] = value


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


def zero_fraction(workdir: str) -> float:
  """Fraction of exactly-zero entries over all params in the latest
  checkpoint of a run (NaN if it cannot be read)."""
  try:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    mngr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                                 item_names=('state', 'meta'))
    step = mngr.latest_step()
    state = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))['state']
    mngr.close()
    leaves = jax.tree.leaves(state['variables']['params'])
    zeros = sum(int(np.sum(np.asarray(x) == 0)) for x in leaves)
    return zeros / max(1, sum(int(np.size(x)) for x in leaves))
  except Exception as e:  # pylint: disable=broad-except
    print(f'warning: cannot read the final params of {workdir}: {e}',
          file=sys.stderr)
    return float('nan')


def _row(method, knob, seed, summary, workdir, chash) -> dict:
  spec = METHODS[method]
  events = summary.get('pruning_events', [])
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
      'param_zero_fraction': zero_fraction(workdir),
      'sparsity_kind': 'masked' if spec.masked else 'physical',
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
  """Runs the missing rows of the sweep and draws the plots.

  Args:
    config: the base ``ml_collections`` config (overrides applied).
    methods: names in :data:`METHODS`.
    points: knob values per method (unless ``grids`` names them).
    out: output directory.
    grids: ``{method: [knob values]}`` replacing the default grids.
    seeds: seeds per point.
    user_sparsity: ``sparsity_config`` keys set by the user, applied to every
      method over its defaults.
    jaxpruner_alias: pass ``jaxpruner_tree_map_alias=True`` to jaxpruner
      methods.
    plots: draw the PNGs.
    log: progress printer.

  Returns:
    ``{'ran': n, 'skipped': n, 'failed': n, 'rows': [...], 'plots': [...]}``.
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
  steps_per_epoch = max(1, len(load_dataset(config.dataset).train)
                        // int(config.batch_size))
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
    try:
      summary = loop.train(cfg, workdir)
      row = _row(method, knob, seed, summary, workdir, chash)
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
    log(f'{tag}: acc {acc:.4f} units -{row.get("neuron_sparsity", 0):.0%} '
        f'({time.perf_counter() - t0:.0f} s)')
  drawn = plot(rows, out) if plots else []
  with open(os.path.join(out, TABLE), 'w') as f:
    f.write(markdown_table(rows))
  return {'ran': ran, 'skipped': skipped, 'failed': failed, 'rows': rows,
          'plots': drawn}


# ------------------------------------------------------------------- plots


def _points(rows: list[dict], x_of: Callable[[dict], float]):
  """``{method: (xs, ys, masked)}`` with means over seeds per knob,
  sorted by x."""
  groups: dict = {}
  for r in rows:
    if r.get('status') != 'ok':
      continue
    x, y = x_of(r), r.get('test_accuracy')
    if x is None or y is None or not np.isfinite(x) or not np.isfinite(y):
      continue
    groups.setdefault(r['method'], {}).setdefault(
        run_key(r['method'], r['knob'], 0), []).append((x, y))
  out = {}
  for m, by_knob in groups.items():
    pts = sorted((float(np.mean([p[0] for p in v])),
                  float(np.mean([p[1] for p in v]))) for v in by_knob.values())
    masked = METHODS[m].masked if m in METHODS else False
    out[m] = ([p[0] for p in pts], [p[1] for p in pts], masked)
  return out


def _param_x(r: dict) -> float:
  return r.get('param_zero_fraction') if r.get(
      'sparsity_kind') == 'masked' else r.get('param_sparsity')


def plot(rows: list[dict], out: str) -> list[str]:
  """Draws the three PNGs; returns their paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  specs = [
      (PLOTS[0], lambda r: r.get('neuron_sparsity'),
       'neuron sparsity (units removed / initial units)'),
      (PLOTS[1], _param_x,
       'parameter sparsity (removed; masked methods: zero weights)'),
      (PLOTS[2], lambda r: r.get('train_seconds'),
       'training time (s, train loop without evaluation)'),
  ]
  accs = [r['test_accuracy'] for r in rows if r.get('status') == 'ok' and
          np.isfinite(r.get('test_accuracy', np.nan))]
  # the accuracy axis spans 0.1 below the best run, so that collapsed runs
  # do not flatten the rest; those are drawn on the bottom edge as 'v'
  floor = max(accs) - 0.1 if accs else 0.0
  paths = []
  for name, x_of, xlabel in specs:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, (xs, ys, masked) in sorted(_points(rows, x_of).items()):
      label = f'{method} (masks only)' if masked else method
      shown = [max(y, floor) for y in ys]
      line, = ax.plot(xs, shown, '--' if masked else '-', marker='o',
                      mfc='none' if masked else None, label=label)
      low = [(x, floor) for x, y in zip(xs, ys) if y < floor]
      if low:
        ax.plot(*zip(*low), 'v', color=line.get_color(), ms=9)
    if any(a < floor for a in accs):
      ax.set_title(f'v: test accuracy below {floor:.2f} (collapsed run)',
                   fontsize=9)
    ax.set_ylim(floor - 0.005, (max(accs) if accs else 1.0) + 0.005)
    ax.set_xlabel(xlabel)
    ax.set_ylabel('test accuracy')
    ax.grid(alpha=0.3)
    if ax.has_data():
      ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
  return paths


def accuracy_at(xs: Sequence[float], ys: Sequence[float],
                x: float) -> Optional[float]:
  """Accuracy at sparsity ``x`` by linear interpolation between a method's
  points (sorted by ``xs``); None outside their range (no extrapolation)."""
  if not xs or x < xs[0] - 1e-9 or x > xs[-1] + 1e-9:
    return None
  return float(np.interp(x, xs, ys))


def markdown_table(rows: list[dict],
                   matched: Sequence[float] = (0.5, 0.7, 0.8, 0.9)) -> str:
  """Two markdown tables: every finished run, and each method's accuracy at
  the same neuron sparsities (interpolated between its own points, '-'
  outside them). The best at each sparsity is in bold."""
  ok = sorted((r for r in rows if r.get('status') == 'ok'),
              key=lambda r: (r['method'], r.get('neuron_sparsity', 0)))
  lines = ['| method | knob | test accuracy | neuron sparsity | '
           'param sparsity | forward FLOPs kept | train s | last step s |',
           '|---|---|---|---|---|---|---|---|']
  for r in ok:
    knob = '' if r.get('knob') is None else f"{r['knob_name']}={r['knob']:g}"
    flops = r['flops_final'] / r['flops_initial']
    lines.append(
        f"| {r['method']} | {knob} | {r['test_accuracy']:.4f} | "
        f"{r['neuron_sparsity']:.3f} | {_param_x(r):.3f} | {flops:.3f} | "
        f"{r['train_seconds']:.1f} | {r['step_seconds_last']:.4f} |")
  curves = _points(ok, lambda r: r.get('neuron_sparsity'))
  lines += ['', '| method | ' + ' | '.join(
      f'acc. at {x:g}' for x in matched) + ' |',
            '|---|' + '---|' * len(matched)]
  table = {m: [accuracy_at(xs, ys, x) for x in matched]
           for m, (xs, ys, _) in curves.items() if len(xs) > 1}
  best = [max((v[i] for v in table.values() if v[i] is not None),
              default=None) for i in range(len(matched))]
  for m, accs in sorted(table.items()):
    cells = ['-' if a is None else
             (f'**{a:.4f}**' if a == best[i] else f'{a:.4f}')
             for i, a in enumerate(accs)]
    lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


# --------------------------------------------------------------------- CLI


def _parse_grid(items: Sequence[str]) -> dict:
  grids = {}
  for item in items:
    method, sep, values = item.partition('=')
    if not sep:
      raise ValueError(f'--grid {item!r} is not METHOD=v1,v2,...')
    grids[method.strip()] = [float(v) for v in values.split(',') if v]
  return grids


def parse_args(argv: Optional[Sequence[str]] = None):
  p = argparse.ArgumentParser(
      prog='python -m experiments.tradeoff',
      description=__doc__.split('\n\n')[0])
  p.add_argument('--config', required=True,
                 help='config file, optionally with :arg')
  p.add_argument('--methods', required=True,
                 help=f'comma-separated, from {",".join(sorted(METHODS))}')
  p.add_argument('--points', type=int, default=4,
                 help='knob values per method')
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--seeds', default='0', help='comma-separated seeds')
  p.add_argument('--grid', action='append', default=[],
                 help='METHOD=v1,v2,... (repeatable)')
  p.add_argument('--set', action='append', default=[], dest='sets',
                 help='KEY=VALUE config override (repeatable)')
  p.add_argument('--jaxpruner-tree-map-alias', action='store_true',
                 help='allow jaxpruner methods to alias jax.tree_map')
  p.add_argument('--no-plots', action='store_true')
  args, rest = p.parse_known_args(argv)
  overrides = list(args.sets)
  i = 0
  while i < len(rest):
    a = rest[i]
    if a.startswith('--config.'):
      body = a[len('--config.'):]
      if '=' not in body:
        if i + 1 >= len(rest):
          p.error(f'{a} needs a value')
        body = f'{body}={rest[i + 1]}'
        i += 1
      overrides.append(body)
    else:
      p.error(f'unrecognised argument {a!r}')
    i += 1
  args.overrides = overrides
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the sweep; returns 0, or 1 if some run failed."""
  args = parse_args(argv)
  config = load_config(args.config)
  user_sparsity = {}
  for o in args.overrides:
    apply_override(config, o)
    key = o.partition('=')[0].strip()
    if key.startswith('sparsity_config.'):
      user_sparsity[key.split('.', 1)[1]] = parse_value(o.partition('=')[2])
  methods = [m.strip() for m in args.methods.split(',') if m.strip()]
  seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  res = run_sweep(config, methods, args.points, args.out,
                  grids=_parse_grid(args.grid), seeds=seeds,
                  user_sparsity=user_sparsity,
                  jaxpruner_alias=args.jaxpruner_tree_map_alias,
                  plots=not args.no_plots)
  print(f'{res["ran"]} run(s), {res["skipped"]} skipped, {res["failed"]} '
        f'failed; rows in {os.path.join(args.out, RESULTS)}')
  for path in res['plots']:
    print(f'  {path}')
  return 1 if res['failed'] else 0


if __name__ == '__main__':
  sys.exit(main())
