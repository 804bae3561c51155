"""bench_step end to end at tiny settings: every ratio the speed goals name."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from demp_jax.data import fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEBIAN_DIR),
                    reason='Debian package dataset-fashion-mnist not installed')
def test_bench_step_writes_every_ratio(tmp_path):
  out = tmp_path / 'bench.json'
  r = subprocess.run(
      [sys.executable, '-m', 'experiments.bench_step', '--config',
       'configs/fashion_mnist_demp.py:tiny', '--out', str(out),
       '--rounds', '2', '--steps', '2'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  rec = json.load(open(out))
  for key in ('overhead_ratio', 'death_check_ratio'):
    assert np.isfinite(rec[key]) and rec[key] > 0, key
  for key in ('plain_step_page_faults', 'demp_step_page_faults'):
    assert rec[key] >= 0, key
  assert set(rec['env']) == {'GLIBC_TUNABLES', 'LD_PRELOAD', 'XLA_FLAGS'}
  assert set(rec['keep']) == {'0.5', '0.25'}
  for frac, k in rec['keep'].items():
    assert k['flop_speedup'] > 1, frac  # fewer units, fewer FLOPs
    # ... and fewer bytes, but only about linearly in width (activations)
    assert 1 < k['bytes_speedup'] < k['flop_speedup'], frac
    for key in ('shrunk_speedup', 'masked_speedup', 'surgery_seconds',
                'recompile_seconds'):
      assert np.isfinite(k[key]) and k[key] > 0, (frac, key)
    assert k['shrunk_step_page_faults'] >= 0, frac
  assert (rec['keep']['0.25']['flop_speedup'] >
          rec['keep']['0.5']['flop_speedup'])
