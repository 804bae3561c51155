"""``examples/nnx_loop.py``: DemP in a user's own NNX loop, on the real
Fashion-MNIST (a short run that prunes)."""
import importlib.util
import json
import os

import pytest

from demp_jax.data import fashion_mnist

EXAMPLE = os.path.join(os.path.dirname(__file__), '..', 'examples',
                       'nnx_loop.py')


def test_the_example_loop_shrinks_its_module_and_optimizer(tmp_path, capsys):
  if not os.path.isdir(fashion_mnist.DEBIAN_DIR):
    pytest.skip('Fashion-MNIST is not installed')
  spec = importlib.util.spec_from_file_location('nnx_loop', EXAMPLE)
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  out = tmp_path / 'summary.json'
  summary = example.main(['--steps', '120', '--prune-every', '40',
                          '--train-examples', '4096', '--reg-peak', '0.1',
                          '--lr', '0.02', '--out', str(out)])
  assert json.loads(out.read_text()) == summary
  units = summary['units']
  assert len(units) == 4 and units[0] == 32 + 64 + 256
  assert units[-1] < units[0] * 0.95            # units were removed ...
  assert sum(summary['widths'].values()) == units[-1]
  assert summary['params'] < 825_066            # ... and the params shrank
  assert summary['test_accuracy'] > 0.6         # and it still classifies
  printed = capsys.readouterr().out
  assert printed.count('max |shrunk - masked|') == 3
