"""Smoke test of experiments/bench_surgery.py on tiny models."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # experiments/ is not an installed package
  sys.path.insert(0, ROOT)

from experiments import bench_surgery  # pylint: disable=g-import-not-at-top


def test_bench_records_surgery_and_recompile_times(tmp_path):
  rec = bench_surgery.run('resnet50', {'base_width': 1, 'num_classes': 7},
                          (32, 32, 3), dead=0.5, repeats=2, seed=0,
                          compile_what='none', compile_batch=1)
  assert rec['units_before'] == 355 and rec['groups'] == 49
  assert 0 < rec['units_after'] < rec['units_before']
  assert rec['params_after'] < rec['params_before']
  assert rec['surgery_seconds'] > 0 and len(rec['surgery_seconds_all']) == 2
  assert rec['recompile_seconds'] is None and rec['machine']
  json.dumps(rec)  # JSON-able as written
  rec = bench_surgery.run('mlp', {'widths': (8, 6)}, (4, 4, 1), dead=0.5,
                          repeats=1, seed=1, compile_what='train_step',
                          compile_batch=2)
  assert rec['recompile_seconds'] > 0
  assert rec['units_after'] < 14
