"""The report of a trade-off sweep: ``table.md``, ``comparison.json`` and
``tradeoff.png`` from the rows of ``results.jsonl``
(see :mod:`experiments.tradeoff`).

Measures, for every row:

* parameter sparsity: the fraction of the initial parameters removed or
  exactly zero, ``1 - (1 - removed) (1 - zeros among those kept)``, so that
  masked, physically pruned and mixed (DemP+RigL) rows share one axis;
* neuron sparsity: units removed over the initial units (``'units'``
  rows), units whose incoming kernel columns are all zero (``'unit_masks'``
  rows: masked, not removed), or none (``'weight_masks'``);
* the parameters the arrays still hold and the forward FLOPs the final
  network's dense kernels compute; the last-step and training seconds.

Speed at matched accuracy: for the dense run and each family (JaxPruner,
DemP, DemP+RigL), the sparsest (method, knob) point within
:data:`TOLERANCE` of the dense accuracy, with its seconds against the
dense run's.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

TABLE = 'table.md'
COMPARISON = 'comparison.json'
PLOT = 'tradeoff.png'
# Speed at matched accuracy: rows within this much of the dense accuracy.
TOLERANCE = 0.01
# What a method's sparsity is made of (a row's ``sparsity_kind``).
UNITS, UNIT_MASKS, WEIGHT_MASKS = 'units', 'unit_masks', 'weight_masks'
# The families compared at matched accuracy.
FAMILIES: dict[str, Callable[[str], bool]] = {
    'JaxPruner': lambda m: m.startswith('jaxpruner_'),
    'DemP': lambda m: m == 'demp',
    'DemP+RigL': lambda m: m == 'demp_rigl',
}


def write(rows: list[dict], out: str, plots: bool = True) -> list[str]:
  """Writes ``table.md``, ``comparison.json`` and (if ``plots``)
  ``tradeoff.png`` into ``out``; returns their paths."""
  paths = [os.path.join(out, TABLE), os.path.join(out, COMPARISON)]
  with open(paths[0], 'w') as f:
    f.write(markdown_table(rows))
  with open(paths[1], 'w') as f:
    json.dump(comparison(rows), f, indent=1)
  if plots:
    paths.append(plot(aggregate(rows), os.path.join(out, PLOT)))
  return paths


def _key(r: dict) -> tuple:
  knob = r.get('knob')
  return (r['method'], 'none' if knob is None else f'{float(knob):.6g}')


def _finite(x) -> bool:
  return x is not None and np.isfinite(x)


def structure(r: dict) -> str:
  """The row's ``sparsity_kind`` (rows written before the JaxPruner
  methods ran say ``'physical'``, i.e. ``'units'``)."""
  kind = r.get('sparsity_kind', UNITS)
  return UNITS if kind == 'physical' else kind


def param_sparsity(r: dict) -> float:
  """Fraction of the initial parameters removed or exactly zero:
  ``1 - (1 - param_sparsity) (1 - param_zero_fraction)`` (without a zero
  fraction, as in rows written before it was read: the removed ones)."""
  zeros = r.get('param_zero_fraction')
  if not _finite(zeros):
    return r['param_sparsity']
  return 1.0 - (1.0 - r['param_sparsity']) * (1.0 - zeros)


def neuron_sparsity(r: dict) -> Optional[float]:
  """Units removed (or, for whole-unit masks, masked) over the initial
  units; None for weight masks, where it means nothing."""
  kind = structure(r)
  if kind == UNITS:
    return r.get('neuron_sparsity')
  if kind == UNIT_MASKS:
    return r.get('masked_unit_fraction')
  return None


class Point(NamedTuple):
  """One (method, knob), averaged over its seeds."""
  method: str
  knob: Any
  seeds: int
  kind: str
  test_accuracy: float
  param_sparsity: float
  neuron_sparsity: Optional[float]
  params_kept: float     # parameters the dense kernels still hold / initial
  flops: float           # forward FLOPs per example the kernels compute
  flops_initial: float
  train_seconds: float
  step_seconds_last: float
  timing_env: Optional[dict]


def aggregate(rows: list[dict]) -> list[Point]:
  """Finished rows grouped by (method, knob), means over seeds, sorted by
  method and parameter sparsity."""
  groups: dict = {}
  for r in rows:
    if r.get('status') == 'ok' and _finite(r.get('test_accuracy')):
      groups.setdefault(_key(r), []).append(r)
  return sorted((_point(rs) for rs in groups.values()),
                key=lambda p: (p.method, p.param_sparsity))


def _point(rs: list[dict]) -> Point:
  """The mean of the runs ``rs`` of one (method, knob)."""
  def mean(f):
    return float(np.mean([f(r) for r in rs]))
  ns = [neuron_sparsity(r) for r in rs]
  envs = {json.dumps(r.get('timing_env'), sort_keys=True) for r in rs}
  return Point(
      rs[0]['method'], rs[0]['knob'], len(rs), structure(rs[0]),
      mean(lambda r: r['test_accuracy']), mean(param_sparsity),
      None if None in ns else float(np.mean(ns)),
      mean(lambda r: 1.0 - r['param_sparsity']),
      mean(lambda r: r['flops_final']), mean(lambda r: r['flops_initial']),
      mean(lambda r: r['train_seconds']),
      mean(lambda r: r['step_seconds_last']),
      json.loads(envs.pop()) if len(envs) == 1 else None)


def curves(points: Sequence[Point], x_of: Callable[[Point], Optional[float]]
           ) -> dict[str, tuple[list[float], list[Point]]]:
  """``{method: (xs, points)}`` sorted by x, points without an x left out."""
  out: dict = {}
  for p in points:
    x = x_of(p)
    if _finite(x):
      out.setdefault(p.method, []).append((float(x), p))
  return {m: ([x for x, _ in v], [p for _, p in v])
          for m, v in ((m, sorted(v, key=lambda t: t[0]))
                       for m, v in out.items())}


def value_at(xs: Sequence[float], ys: Sequence[float],
             x: float) -> Optional[float]:
  """``ys`` at ``x`` by linear interpolation between the points (``xs``
  sorted); None outside their range (no extrapolation)."""
  if not xs or x < xs[0] - 1e-9 or x > xs[-1] + 1e-9:
    return None
  return float(np.interp(x, xs, ys))


def matched_accuracy(points: Sequence[Point],
                     tolerance: float = TOLERANCE) -> dict:
  """The dense point and, per family, the sparsest point (by parameter
  sparsity, then accuracy) within ``tolerance`` of the dense accuracy
  (None if there is none; then ``closest`` is its most accurate point).

  Returns:
    ``{'dense': Point | None, 'threshold': float, 'best': {family: Point |
    None}, 'closest': {family: Point | None}}``.
  """
  dense = next((p for p in points if p.method == 'no_prune'), None)
  threshold = (dense.test_accuracy - tolerance) if dense else float('nan')
  best, closest = {}, {}
  for family, member in FAMILIES.items():
    mine = [p for p in points if member(p.method)]
    ok = [p for p in mine if dense and p.test_accuracy >= threshold - 1e-12]
    best[family] = max(ok, key=lambda p: (p.param_sparsity, p.test_accuracy),
                       default=None)
    closest[family] = None if best[family] else max(
        mine, key=lambda p: p.test_accuracy, default=None)
  return {'dense': dense, 'threshold': threshold, 'best': best,
          'closest': closest}


def _record(p: Point, dense: Optional[Point]) -> dict:
  rec = p._asdict()
  if dense is not None:
    rec['train_speedup_vs_dense'] = dense.train_seconds / p.train_seconds
    rec['last_step_speedup_vs_dense'] = (dense.step_seconds_last /
                                         p.step_seconds_last)
    rec['timing_env_as_dense'] = (p.timing_env is not None and
                                  p.timing_env == dense.timing_env)
  return rec


def comparison(rows: list[dict], tolerance: float = TOLERANCE) -> dict:
  """The JSON summary: every (method, knob) point and the speed at matched
  accuracy (see :func:`matched_accuracy`), with speedups over the dense
  run."""
  points = aggregate(rows)
  m = matched_accuracy(points, tolerance)
  dense = m['dense']
  return {
      'tolerance': tolerance,
      'accuracy_threshold': m['threshold'],
      'dense': _record(dense, dense) if dense else None,
      'matched_accuracy': {
          f: {'best': _record(p, dense) if p else None,
              'closest': (_record(m['closest'][f], dense)
                          if m['closest'][f] else None)}
          for f, p in m['best'].items()},
      'timing_envs': sorted({json.dumps(p.timing_env, sort_keys=True)
                             for p in points}),
      'points': [_record(p, dense) for p in points],
  }


# ------------------------------------------------------------------- table


def _fmt(x: Optional[float], spec: str = '.3f') -> str:
  return '-' if not _finite(x) else format(x, spec)


def _knob(r: dict) -> str:
  return '' if r.get('knob') is None else f"{r['knob_name']}={r['knob']:g}"


def _matched_table(title: str, cs: dict, at: Sequence[float],
                   cell: Callable[[float, list[float], list[Point]],
                                  Optional[str]]) -> list[str]:
  """Rows ``| method | accuracy (cell(x, xs, points)) ... |`` for methods
  with 2+ points; the best accuracy at each x in bold."""
  accs = {m: [value_at(xs, [p.test_accuracy for p in ps], x) for x in at]
          for m, (xs, ps) in cs.items() if len(xs) > 1}
  best = [max((v[i] for v in accs.values() if v[i] is not None),
              default=None) for i in range(len(at))]
  lines = [f'| method | {" | ".join(f"{title} {x:g}" for x in at)} |',
           '|---|' + '---|' * len(at)]
  for m, a in sorted(accs.items()):
    xs, ps = cs[m]
    cells = []
    for i, x in enumerate(at):
      if a[i] is None:
        cells.append('-')
        continue
      acc = f'**{a[i]:.4f}**' if a[i] == best[i] else f'{a[i]:.4f}'
      extra = cell(x, xs, ps)
      cells.append(acc + (f' ({extra})' if extra else ''))
    lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
  return lines


def markdown_table(rows: list[dict],
                   neuron_at: Sequence[float] = (0.5, 0.7, 0.8, 0.9),
                   param_at: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
                   tolerance: float = TOLERANCE) -> str:
  """The markdown of ``table.md``: every finished run; accuracy at matched
  neuron sparsities; accuracy and training seconds at matched parameter
  sparsities (both interpolated between a method's own points, '-'
  outside them, the best accuracy in bold); the speed at matched
  accuracy."""
  ok = sorted((r for r in rows if r.get('status') == 'ok'),
              key=lambda r: (r['method'], param_sparsity(r)))
  lines = [
      '| method | knob | test accuracy | neuron sparsity | param sparsity | '
      'params in the kernels | forward MFLOPs | last step s | train s |',
      '|---|---|---|---|---|---|---|---|---|']
  for r in ok:
    ns = neuron_sparsity(r)
    ns_txt = _fmt(ns) + (' (masked)' if structure(r) == UNIT_MASKS else '')
    lines.append(
        f"| {r['method']} | {_knob(r)} | {r['test_accuracy']:.4f} | "
        f'{ns_txt} | {param_sparsity(r):.3f} | '
        f"{1 - r['param_sparsity']:.3f} | {r['flops_final'] / 1e6:.2f} | "
        f"{r['step_seconds_last']:.4f} | {r['train_seconds']:.1f} |")
  points = aggregate(rows)
  lines += ['', 'Accuracy at matched neuron sparsity:', '']
  lines += _matched_table('acc. at', curves(points, lambda p:
                                            p.neuron_sparsity),
                          neuron_at, lambda x, xs, ps: None)
  train_at = lambda x, xs, ps: _fmt(value_at(  # noqa: E731
      xs, [p.train_seconds for p in ps], x), '.1f') + ' s'
  lines += ['', 'Accuracy (training seconds) at matched parameter '
            'sparsity:', '']
  lines += _matched_table('acc. at', curves(points, lambda p:
                                            p.param_sparsity),
                          param_at, train_at)
  lines += ['', *speed_table(points, tolerance)]
  return '\n'.join(lines) + '\n'


def speed_table(points: Sequence[Point],
                tolerance: float = TOLERANCE) -> list[str]:
  """Markdown lines: the dense run and each family's sparsest point within
  ``tolerance`` of the dense accuracy, seconds side by side."""
  m = matched_accuracy(points, tolerance)
  dense = m['dense']
  if dense is None:
    return ['Speed at matched accuracy: no dense (`no_prune`) run.']
  lines = [f'Speed at matched accuracy (test accuracy >= '
           f'{m["threshold"]:.4f}, {tolerance * 100:g} point below the '
           'dense run):', '',
           '| family | method | knob | test accuracy | param sparsity | '
           'forward MFLOPs | train s | last step s |',
           '|---|---|---|---|---|---|---|---|']
  def versus(dense_s, s):
    if s == dense_s:
      return 'dense'
    return (f'{dense_s / s:.2f}x faster' if s < dense_s else
            f'{s / dense_s:.2f}x slower')

  envs = {json.dumps(dense.timing_env, sort_keys=True)}
  for family, p in [('dense', dense), *m['best'].items()]:
    if p is None:
      c = m['closest'][family]
      lines.append(f'| {family} | ' + (
          f'none within {tolerance * 100:g} point; most accurate: '
          f'{c.method} at {c.test_accuracy:.4f}' if c else 'no run') +
                   ' | | | | | | |')
      continue
    envs.add(json.dumps(p.timing_env, sort_keys=True))
    knob = '' if p.knob is None else f'{p.knob:g}'
    lines.append(
        f'| {family} | {p.method} | {knob} | {p.test_accuracy:.4f} | '
        f'{p.param_sparsity:.3f} | {p.flops / 1e6:.2f} | '
        f'{p.train_seconds:.1f} ({versus(dense.train_seconds, p.train_seconds)}'
        f') | {p.step_seconds_last:.4f} '
        f'({versus(dense.step_seconds_last, p.step_seconds_last)}) |')
  if len(envs) > 1 or 'null' in envs:
    lines += ['', '**The seconds above were not all measured under the same '
              'conditions** (`timing_env` differs or is unknown): compare '
              'them with care.']
  return lines


# ------------------------------------------------------------------- plot

_STYLE = {UNITS: '-', UNIT_MASKS: '--', WEIGHT_MASKS: ':'}


def plot(points: Sequence[Point], path: str) -> str:
  """Draws ``path``: test accuracy against parameter sparsity, neuron
  sparsity and training seconds, and last-step seconds against forward
  FLOPs (solid: units removed; dashed: unit masks; dotted: weight masks;
  hollow markers: masks only; grey lines: the dense run and, dashed,
  1 point below its accuracy)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  methods = sorted({p.method for p in points})
  cmap = plt.get_cmap('tab20')
  color = {m: cmap(i % 20) for i, m in enumerate(methods)}
  accs = [p.test_accuracy for p in points]
  # the accuracy axes span 0.1 below the best run, so that collapsed runs
  # do not flatten the rest; those are drawn on the bottom edge as 'v'
  floor = max(accs) - 0.1 if accs else 0.0
  dense = next((p for p in points if p.method == 'no_prune'), None)
  fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
  panels = [
      (axes[0, 0], lambda p: p.param_sparsity, lambda p: p.test_accuracy,
       'parameter sparsity (removed or zero)'),
      (axes[0, 1], lambda p: p.neuron_sparsity, lambda p: p.test_accuracy,
       'neuron sparsity (removed; channel masks: masked)'),
      (axes[1, 0], lambda p: p.train_seconds, lambda p: p.test_accuracy,
       'training time (s, train loop without evaluation)'),
      (axes[1, 1], lambda p: p.flops / 1e6, lambda p: p.step_seconds_last,
       'forward MFLOPs per example the kernels compute'),
  ]
  for ax, x_of, y_of, xlabel in panels:
    is_acc = ax is not axes[1, 1]
    for m, (xs, ps) in sorted(curves(points, x_of).items()):
      kind = ps[0].kind
      ys = [y_of(p) for p in ps]
      shown = [max(y, floor) for y in ys] if is_acc else ys
      ax.plot(xs, shown, _STYLE.get(kind, '-'), marker='o', color=color[m],
              mfc='none' if kind != UNITS else None, label=m)
      low = [(x, floor) for x, y in zip(xs, ys) if is_acc and y < floor]
      if low:
        ax.plot(*zip(*low), 'v', color=color[m], ms=9)
    if dense is not None:  # the dense run, and 1 point below it
      ref = dense.test_accuracy if is_acc else dense.step_seconds_last
      ax.axhline(ref, color='0.5', lw=0.8)
      if is_acc:
        ax.axhline(ref - TOLERANCE, color='0.5', lw=0.8, ls='--')
    if is_acc:
      ax.set_ylim(floor - 0.005, (max(accs) if accs else 1.0) + 0.005)
      ax.set_ylabel('test accuracy')
    else:
      ax.set_ylabel('last-step seconds (median of the last 10%)')
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  if any(a < floor for a in accs):
    fig.suptitle(f'v: test accuracy below {floor:.2f} (collapsed run)',
                 fontsize=9)
  handles, labels = axes[0, 0].get_legend_handles_labels()
  if handles:
    fig.legend(handles, labels, loc='lower center', ncol=5, fontsize=8)
  fig.tight_layout(rect=(0, 0.1, 1, 0.97))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
