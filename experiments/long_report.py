"""Tables of the long-horizon sweep (issue 16): mean and spread over seeds.

    python -m experiments.long_report --sweep runs/long16 \
        --out results/long_fmnist_cnn

``--sweep`` is the OUT of ``experiments/long_sweep.sh``: one
``experiments.tradeoff`` directory per part (``main``: every method on the
base config; ``abl_*``: DemP with one setting changed) and ``collapse/``
(single runs evaluated every 50 steps). Writes, under ``--out``, each
part's ``results.jsonl`` as ``<part>.jsonl``, the collapse runs' evaluation
records as ``collapse.json`` and ``report.md``:

* every (method, knob): the number of seeds ``n``, test accuracy and neuron
  sparsity as mean ± sample standard deviation (``ddof=1``; none for n=1);
* each method's accuracy at matched neuron sparsities: the per-knob means
  (and standard deviations) interpolated linearly between the method's own
  points, never extrapolated;
* the ablations: DemP with one setting changed against the base rows at the
  same ``reg_peak`` and seeds, and against the base DemP curve at the
  variant's own neuron sparsity;
* the collapse: test accuracy with the moving averages and with
  recalibrated BatchNorm statistics on the same run;
* time to accuracy: every ``bench_train*/bench_train.json`` of
  ``experiments.bench_train`` (copied as ``<dir>.json``, its load-average
  samples ``load_samples.txt`` as ``<dir>_loadavg.txt``), each run's times
  as fractions of the dense run's training time and what bounds the
  pruned run's (:func:`experiments.bench_train.phases`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from typing import Optional, Sequence

import numpy as np

from experiments.tradeoff import RESULTS, read_rows
from experiments.tradeoff_report import value_at

MATCHED = (0.7, 0.8, 0.85, 0.9)
ABLATIONS = {  # part -> what differs from the base config
    'abl_recal': 'BatchNorm statistics recalibrated (16 x 128 held batches) '
                 'before every death check and evaluation',
    'abl_l2': 'L2 penalty on the scales instead of L1',
    'abl_sgd': 'SGD with momentum 0.9 (lr 0.1, one-cycle) instead of AdamW',
    'abl_nonoise': 'no noise (noise_peak 0)',
    'abl_death_all': 'death check on the whole training split (468 x 128) '
                     'instead of 2,048 examples',
    'abl_nofold': 'constant folding off (only exactly dead units removed)',
}


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
  v = np.asarray(values, float)
  sd = float(np.std(v, ddof=1)) if len(v) > 1 else float('nan')
  return float(np.mean(v)), sd, len(v)


def _pm(mean: float, sd: float, digits: int = 4) -> str:
  if np.isnan(sd):
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} ± {sd:.{digits}f}'


def group(rows: list[dict]) -> dict[tuple, dict]:
  """``{(method, knob): {'acc': (mean, sd, n), 'units': ..., 'params': ...,
  'seeds': [...]}}`` over the finished rows (failed and collapsed-to-NaN
  rows are counted in ``bad``)."""
  out: dict = {}
  for r in rows:
    g = out.setdefault((r['method'], r.get('knob')),
                       {'rows': [], 'bad': 0})
    if r.get('status') == 'ok':
      g['rows'].append(r)
    else:
      g['bad'] += 1
  for g in out.values():
    rs = g.pop('rows')
    g['seeds'] = sorted(r['seed'] for r in rs)
    if rs:
      g['acc'] = _stats([r['test_accuracy'] for r in rs])
      g['units'] = _stats([r['neuron_sparsity'] for r in rs])
      g['params'] = _stats([r['param_sparsity'] for r in rs])
  return out


def _knob(method: str, knob) -> str:
  if knob is None:
    return ''
  return f'reg_peak={knob:g}' if method.startswith('demp') else \
      f'sparsity={knob:g}'


def points_table(groups: dict) -> list[str]:
  lines = ['| method | knob | n | test accuracy | neuron sparsity | '
           'param sparsity |', '|---|---|---|---|---|---|']
  key = lambda kv: (kv[0][0], kv[1].get('units', (0,))[0])
  for (method, knob), g in sorted(groups.items(), key=key):
    if 'acc' not in g:
      lines.append(f'| {method} | {_knob(method, knob)} | 0 | failed '
                   f'({g["bad"]}) | | |')
      continue
    lines.append(
        f'| {method} | {_knob(method, knob)} | {g["acc"][2]} | '
        f'{_pm(*g["acc"][:2])} | {_pm(*g["units"][:2], digits=3)} | '
        f'{g["params"][0]:.3f} |')
  return lines


def matched_table(groups: dict, matched: Sequence[float] = MATCHED
                  ) -> list[str]:
  """Accuracy at matched neuron sparsities, interpolated between each
  method's per-knob means (sd interpolated the same way)."""
  curves: dict = {}
  for (method, knob), g in groups.items():
    if 'acc' in g and knob is not None:
      curves.setdefault(method, []).append(
          (g['units'][0], g['acc'][0], g['acc'][1], g['acc'][2]))
  lines = ['| method | seeds per point | ' + ' | '.join(
      f'acc. at {x:g}' for x in matched) + ' |',
           '|---|---|' + '---|' * len(matched)]
  dense = groups.get(('no_prune', None))
  if dense and 'acc' in dense:
    lines.append(f'| dense (no_prune) | {dense["acc"][2]} | ' + ' | '.join(
        [_pm(*dense['acc'][:2])] * len(matched)) + ' |')
  for method, pts in sorted(curves.items()):
    pts.sort()
    xs = [p[0] for p in pts]
    cells = []
    for x in matched:
      m = value_at(xs, [p[1] for p in pts], x)
      if m is None:
        cells.append('-')
        continue
      # NaN (a single seed) at either neighbour: no spread shown
      cells.append(_pm(m, float(np.interp(x, xs, [p[2] for p in pts]))))
    ns = sorted({p[3] for p in pts})
    seeds = f'{ns[0]}-{ns[-1]}' if len(ns) > 1 else f'{ns[0]}'
    lines.append(f'| {method} | {seeds} | ' + ' | '.join(cells) + ' |')
  return lines


def _base_curve(base_rows: list[dict]) -> tuple[list[float], list[float]]:
  """The base DemP rows' per-``reg_peak`` means as (neuron sparsity,
  accuracy) points sorted by sparsity."""
  pts = sorted((g['units'][0], g['acc'][0]) for (method, _), g in
               group(base_rows).items() if method == 'demp' and 'acc' in g)
  return [p[0] for p in pts], [p[1] for p in pts]


def ablation_table(base_rows: list[dict], parts: dict[str, list[dict]]
                   ) -> list[str]:
  """Each ablation part against the base DemP rows at the same reg_peak
  and seeds (accuracy and sparsity deltas over the shared seeds), and
  against the base DemP curve at the variant's own mean neuron sparsity
  (interpolated between the base's per-``reg_peak`` means, never
  extrapolated): a variant that kills more or fewer units at the same
  ``reg_peak`` is compared where it landed, not only where it started."""
  base = {(r['knob'], r['seed']): r for r in base_rows
          if r['method'] == 'demp' and r.get('status') == 'ok'}
  curve_x, curve_y = _base_curve(base_rows)
  lines = ['| variant | reg_peak | n | test accuracy | neuron sparsity | '
           'base accuracy (same seeds) | base neuron sparsity | '
           'Δ accuracy | base curve at the same neuron sparsity | '
           'Δ at matched sparsity |',
           '|---|---|---|---|---|---|---|---|---|---|']
  knobs = sorted({r['knob'] for rows in parts.values() for r in rows
                  if r.get('status') == 'ok'})
  for knob in knobs:
    b = [r for (k, _), r in sorted(base.items()) if k == knob]
    if b:
      acc, units = _stats([r['test_accuracy'] for r in b]), _stats(
          [r['neuron_sparsity'] for r in b])
      lines.append(f'| base (L1, AdamW, noise 5e-5, 2,048-example check, '
                   f'folding on, moving averages) | {knob:g} | {acc[2]} | '
                   f'{_pm(*acc[:2])} | {_pm(*units[:2], digits=3)} | | | '
                   f'| | |')
  for part, rows in sorted(parts.items()):
    for knob in sorted({r['knob'] for r in rows}):
      ok = [r for r in rows if r['knob'] == knob and r.get('status') == 'ok']
      if not ok:
        continue
      acc = _stats([r['test_accuracy'] for r in ok])
      units = _stats([r['neuron_sparsity'] for r in ok])
      shared = [(r, base[(knob, r['seed'])]) for r in ok
                if (knob, r['seed']) in base]
      if shared:
        b_acc = _stats([b['test_accuracy'] for _, b in shared])
        b_units = _stats([b['neuron_sparsity'] for _, b in shared])
        delta = _stats([r['test_accuracy'] - b['test_accuracy']
                        for r, b in shared])
        base_cells = (f'{_pm(*b_acc[:2])} | {_pm(*b_units[:2], digits=3)} | '
                      f'{_pm(*delta[:2])}')
      else:
        base_cells = '- | - | -'
      on_curve = value_at(curve_x, curve_y, units[0])
      curve_cells = ('- | -' if on_curve is None else
                     f'{on_curve:.4f} | {acc[0] - on_curve:+.4f}')
      lines.append(f'| {ABLATIONS.get(part, part)} | {knob:g} | {acc[2]} | '
                   f'{_pm(*acc[:2])} | {_pm(*units[:2], digits=3)} | '
                   f'{base_cells} | {curve_cells} |')
  return lines


RESTORED = 'record.json'  # a collapse run's record, restored from --out


def collapse_records(sweep: str) -> dict[str, list[dict]]:
  """``{run name: [{'step', 'test_accuracy', ...}]}`` of the single runs
  under ``sweep/collapse`` that finished (or were restored)."""
  root = os.path.join(sweep, 'collapse')
  out = {}
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    path = os.path.join(root, name, 'summary.json')
    restored = os.path.join(root, name, RESTORED)
    if not os.path.exists(path):
      if os.path.exists(restored):
        with open(restored) as f:
          out[name] = json.load(f)
    else:
      with open(path) as f:
        s = json.load(f)
      out[name] = {'evals': s['evals'], 'test_accuracy': s['test_accuracy'],
                   'neuron_sparsity': s['neuron_sparsity'],
                   'test_accuracy_running_stats': s.get(
                       'test_accuracy_running_stats'),
                   'live_units': [
                       {'step': e['step'],
                        'live': sum(e.get('live_units', {}).values())}
                       for e in s['pruning_events'] if 'live_units' in e]}
  return out


def collapse_table(records: dict) -> list[str]:
  """One row per evaluation step; per run its test accuracy (recalibrated
  statistics when the run recalibrates) and, for those, the same network
  with its moving averages."""
  cols = []  # (header, run name, eval key)
  for n in sorted(records):
    evals = records[n]['evals']
    if any('test_accuracy_running_stats' in e for e in evals):
      cols += [(f'{n}: recalibrated', n, 'test_accuracy'),
               (f'{n}: moving averages', n, 'test_accuracy_running_stats')]
    else:
      cols.append((f'{n}: moving averages', n, 'test_accuracy'))
  if not cols:
    return []
  steps = sorted({e['step'] for r in records.values() for e in r['evals']})
  lines = ['| step | ' + ' | '.join(c[0] for c in cols) + ' |',
           '|---|' + '---|' * len(cols)]
  for step in steps:
    cells = []
    for _, n, key in cols:
      e = next((e for e in records[n]['evals'] if e['step'] == step), {})
      cells.append(f'{e[key]:.4f}' if key in e else '-')
    lines.append(f'| {step} | ' + ' | '.join(cells) + ' |')
  return lines


def _time_to(reached: Optional[dict], dense_seconds: float) -> str:
  if reached is None:
    return 'not reached'
  return (f'step {reached["step"]:,}, {reached["train_seconds"]:.1f} s '
          f'({reached["train_seconds"] / dense_seconds:.3f}x)')


def _clock_at(run: dict, step, default: float) -> float:
  """A bench run's training clock at the evaluation of ``step``."""
  return next((e['train_clock_seconds'] for e in run.get('evals', [])
               if e['step'] == step), default)


def bench_table(bench: dict) -> list[str]:
  """One row per run of an ``experiments.bench_train`` JSON, times as
  ``seconds (fraction of the dense run's training seconds)``, then the
  pruned run's phases."""
  runs = bench['runs']
  dense_seconds = runs['no_prune']['train_seconds']
  dense_acc = runs['no_prune']['test_accuracy']
  target = bench['dense_final_target']
  lines = ['| run | test accuracy | neuron sparsity | training s | '
           'compiles s (first + background) | to '
           f'{bench["target_accuracy"]:.4f} | '
           f'to {target:.4f} (dense final - {dense_acc - target:.2f}) |',
           '|---|---|---|---|---|---|---|']
  for name, r in runs.items():
    lines.append(
        f'| {name} | {r["test_accuracy"]:.4f} '
        f'({100 * (r["test_accuracy"] - dense_acc):+.2f} points) | '
        f'{r["neuron_sparsity"]:.3f} | {r["train_seconds"]:.1f} '
        f'({r["train_seconds"] / dense_seconds:.3f}x) | '
        f'{r["compile_seconds"]:.1f} | '
        f'{_time_to(r["time_to_target"], dense_seconds)} | '
        f'{_time_to(r.get("time_to_dense_final"), dense_seconds)} |')
  for name, r in runs.items():
    ph = r.get('phases')
    if not ph:
      continue
    dense_phase = ph['dense_phase'] or {}
    dip = ph['accuracy_dip'] or {}
    # The training clock at the first deaths: the evaluation's at that step
    # when there is one (commits up to 65b443b counted the evaluations in
    # a pruning event's clock, not in an evaluation's).
    step = dense_phase.get('step')
    dense_seconds_at = _clock_at(r, step, dense_phase.get(
        'train_seconds', float('nan')))
    dense_run_at = _clock_at(runs['no_prune'], step, float('nan'))
    lines += ['', f'{name}\'s phases: full width until step '
              f'{dense_phase.get("step", "-")} '
              f'({dense_seconds_at:.1f} s; the dense run there: '
              f'{dense_run_at:.1f} s), '
              f'death checks {ph["death_check_seconds"]:.1f} s, '
              f'recalibration {ph["recalibrate_seconds"]:.1f} s, shrinks '
              f'{ph["shrink_overhead_seconds"]:.1f} s added, median step '
              f'{ph["step_seconds_first"]:.4f} s in the first tenth and '
              f'{ph["step_seconds_last"]:.4f} s in the last, lowest test '
              f'accuracy {dip.get("test_accuracy", float("nan")):.4f} at '
              f'step {dip.get("step", "-")} (dense there: '
              f'{dip.get("dense_test_accuracy") or float("nan"):.4f}).']
  return lines


def bench_sections(sweep: str, out: str) -> list[str]:
  """A table per ``sweep/bench_train*/bench_train.json``, copied to
  ``out`` with its load samples."""
  lines = []
  for name in sorted(os.listdir(sweep)):
    path = os.path.join(sweep, name, 'bench_train.json')
    if not (name.startswith('bench_train') and os.path.exists(path)):
      continue
    with open(path) as f:
      bench = json.load(f)
    shutil.copyfile(path, os.path.join(out, f'{name}.json'))
    load = os.path.join(sweep, name, 'load_samples.txt')
    if os.path.exists(load):
      shutil.copyfile(load, os.path.join(out, f'{name}_loadavg.txt'))
    lines += [f'## Time to accuracy: `{name}`', '',
              f'{bench["machine"]}. Training seconds: the training clock, '
              'the evaluations and the first compile apart; the shrunk '
              'steps compile on a background thread and count only through '
              'the time the shrinks add.', '', *bench_table(bench), '']
  return lines


def write_report(sweep: str, out: str) -> str:
  """Copies the rows and writes ``out/report.md``; returns its path."""
  os.makedirs(out, exist_ok=True)
  parts = {}
  for name in sorted(os.listdir(sweep)):
    if os.path.exists(os.path.join(sweep, name, RESULTS)):
      parts[name] = read_rows(os.path.join(sweep, name))
      shutil.copyfile(os.path.join(sweep, name, RESULTS),
                      os.path.join(out, f'{name}.jsonl'))
  main = parts.pop('main', [])
  groups = group(main)
  lines = ['# Long-horizon sweep (issue 16): generated by '
           '`python -m experiments.long_report`', '',
           '## Every point (mean ± sd over n seeds)', '',
           *points_table(groups), '',
           '## Accuracy at matched neuron sparsity', '',
           *matched_table(groups), '', '## Ablations', '',
           *ablation_table(main, parts), '']
  # a run directory that is gone or unfinished (a run restarted from an
  # empty workdir) keeps the record already written
  kept = os.path.join(out, 'collapse.json')
  records = collapse_records(sweep)
  if os.path.exists(kept):
    with open(kept) as f:
      records = {**json.load(f), **records}
  if records:
    with open(kept, 'w') as f:
      json.dump(records, f, indent=1)
    lines += ['## Test accuracy during training (collapse runs)', '',
              *collapse_table(records), '']
    lines += [f'{n}: final test accuracy {r["test_accuracy"]:.4f}, neuron '
              f'sparsity {r["neuron_sparsity"]:.3f}' for n, r in
              sorted(records.items())] + ['']
  lines += bench_sections(sweep, out)
  path = os.path.join(out, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines))
  return path


def restore(results: str, sweep: str) -> list[str]:
  """Seeds ``sweep`` from a report's ``results`` directory, so that a queue
  started on a fresh checkout skips what the committed results hold:
  ``<part>.jsonl`` -> ``sweep/<part>/results.jsonl``, ``<dir>.json`` (and
  ``<dir>_loadavg.txt``) -> ``sweep/<dir>/bench_train.json`` (and
  ``load_samples.txt``), each collapse record -> ``sweep/collapse/<name>/``
  :data:`RESTORED`. Never overwrites what ``sweep`` already has; returns
  the paths written."""
  if not os.path.isdir(results):
    raise FileNotFoundError(f'--out {results!r} is not a directory')
  copies = []  # (source, destination)
  for name in sorted(os.listdir(results)):
    stem, src = os.path.splitext(name)[0], os.path.join(results, name)
    if name.endswith('.jsonl'):
      copies.append((src, os.path.join(sweep, stem, RESULTS)))
    elif name.startswith('bench_train') and name.endswith('.json'):
      copies.append((src, os.path.join(sweep, stem, 'bench_train.json')))
    elif name.startswith('bench_train') and name.endswith('_loadavg.txt'):
      copies.append((src, os.path.join(sweep, stem[:-len('_loadavg')],
                                       'load_samples.txt')))
  written = []
  for src, dst in copies:
    if not os.path.exists(dst):
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.copyfile(src, dst)
      written.append(dst)
  collapse = os.path.join(results, 'collapse.json')
  if os.path.exists(collapse):
    with open(collapse) as f:
      records = json.load(f)
    for name, record in sorted(records.items()):
      run = os.path.join(sweep, 'collapse', name)
      if not any(os.path.exists(os.path.join(run, n))
                 for n in ('summary.json', RESTORED)):
        os.makedirs(run, exist_ok=True)
        with open(os.path.join(run, RESTORED), 'w') as f:
          json.dump(record, f, indent=1)
        written.append(os.path.join(run, RESTORED))
  return written


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog='python -m experiments.long_report',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--sweep', required=True, help='the sweep OUT directory')
  p.add_argument('--out', required=True, help='where to write the report')
  p.add_argument('--restore', action='store_true',
                 help='instead: seed --sweep from the results in --out '
                      '(a fresh checkout continues the queue)')
  args = p.parse_args(argv)
  if args.restore:
    written = restore(args.out, args.sweep)
    print(f'restored {len(written)} file(s) into {args.sweep} from '
          f'{args.out}')
    return 0
  if not os.path.isdir(args.sweep):
    p.error(f'--sweep {args.sweep!r} is not a directory')
  print(write_report(args.sweep, args.out))
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
