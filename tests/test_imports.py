"""The package's import graph: no cycle, and a trainer that knows no
specific algorithm (read from the source, every import statement)."""
import ast
import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what the training code may import of demp_jax.algorithms: the contract
CONTRACT = {'demp_jax.algorithms', 'demp_jax.algorithms.base',
            'demp_jax.algorithms.schedules', 'demp_jax.algorithms.scores',
            'demp_jax.algorithms.registry'}


def _modules() -> dict[str, str]:
  out = {}
  for d, _, files in os.walk(os.path.join(ROOT, 'demp_jax')):
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(d, f)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        out[name.removesuffix('.__init__')] = path
  return out


def import_graph() -> dict[str, set[str]]:
  """Module -> the package modules it imports; ``from pkg import name``
  imports ``pkg.name`` when that is a module, else ``pkg``."""
  mods = _modules()
  graph = {m: set() for m in mods}
  for m, path in mods.items():
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        targets = [f'{node.module}.{a.name}'
                   if f'{node.module}.{a.name}' in mods else node.module
                   for a in node.names]
      else:
        continue
      for t in targets:
        while t and t not in mods:
          t = t.rpartition('.')[0]
        if t and t != m:
          graph[m].add(t)
  return graph


def test_no_import_cycle():
  graph = import_graph()
  done, path = set(), []

  def visit(m):
    if m in path:
      raise AssertionError('import cycle: ' +
                           ' -> '.join(path[path.index(m):] + [m]))
    if m in done:
      return
    path.append(m)
    for t in sorted(graph[m]):
      visit(t)
    path.pop()
    done.add(m)

  assert len(graph) > 30
  for m in sorted(graph):
    visit(m)


def test_the_trainer_imports_no_specific_algorithm():
  graph = import_graph()
  training = [m for m in graph if m.startswith('demp_jax.training')]
  assert 'demp_jax.training.loop' in training
  for m in training:
    used = {t for t in graph[m] if t.startswith('demp_jax.algorithms')}
    assert used <= CONTRACT, (m, used - CONTRACT)


def test_the_experiment_scripts_import_together():
  """The scripts define their absl flags only when run, so importing
  several in one process (as the tests do) raises no DuplicateFlagError."""
  r = subprocess.run(
      [sys.executable, '-c', 'import experiments.bench_surgery, '
       'experiments.bench_train, experiments.bench_step, experiments.train, '
       'experiments.tradeoff'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
