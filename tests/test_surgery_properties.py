"""Property tests of surgery on every built-in architecture.

For random widths, random variables (random BatchNorm statistics, norm
scales with exact zeros, random shortcut index maps with repeats and -1) and
random dead sets, including the hard ones

* a whole layer but one unit,
* one residual-stream channel dead in every block (ResNets; the shortcuts
  at their identity maps, so it is the same channel throughout),
* every internal unit of one residual block (the block collapses to its
  shortcut; ``min_width=0``),

``surgery.shrink`` must give logits equal to the masked network's within
``1e-5`` in float32 (its own probe check, which raises on failure), the
widths and removal counts asked for, and an optimiser state whose every
params-shaped tree is the shrunk params (the state is built with each
moment equal to the params, so a wrongly sliced moment shows as a value
mismatch, not only a shape mismatch), with the step counters kept.

Speed: variables are drawn with numpy at 3 units per group (shapes from one
:class:`demp_jax.net.Net` per architecture) and cut to the case's widths, drawn
from {1, 2, 3}; the eagerly dispatched ops of the forward passes then hit
the compilation cache after a few examples.
Examples are derandomised: the same cases run every time.
"""
from __future__ import annotations

from typing import NamedTuple

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from demp_jax import surgery
from demp_jax import topology as topo
from testlib_models import random_model, tiny_archs, tiny_net

ARCHS = tiny_archs()

OPTIMIZERS = {
    'adamw': lambda: optax.adamw(1e-3, weight_decay=1e-4),
    'sgd_momentum': lambda: optax.sgd(1e-2, momentum=0.9),
    'clip_adamw': lambda: optax.chain(optax.clip_by_global_norm(1.0),
                                      optax.adamw(1e-3)),
}

# Hard dead sets each architecture can have.
HARD = {
    'mlp': ('none', 'layer_but_one'),
    'vgg': ('none', 'layer_but_one'),
    'vgg16': ('none', 'layer_but_one'),
    'resnet18': ('none', 'layer_but_one', 'stream', 'block'),
    'resnet50': ('none', 'layer_but_one', 'stream', 'block'),
    'vit': ('none', 'layer_but_one'),
}

# Examples per architecture: 240 in all, weighted to the cheap ones (a
# case costs about 0.1 s on the MLP, 0.2 s on the VGG, 2 s on VGG-16 and
# the ViT, 3 s on ResNet-18 and 5 s on ResNet-50 on a 2-core CPU).
EXAMPLES = {'mlp': 145, 'vgg': 71, 'vgg16': 6, 'resnet18': 6,
            'resnet50': 4, 'vit': 8}


class Case(NamedTuple):
  widths: tuple[int, ...]
  modes: tuple[str, ...]  # per group: 'random', 'one', 'all'
  hard: str
  optimizer: str
  seed: int


@st.composite
def cases(draw, arch: str) -> Case:
  n = len(tiny_net(arch).widths)
  widths = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
  modes = draw(st.lists(st.sampled_from(('random', 'random', 'one', 'all')),
                        min_size=n, max_size=n))
  hard = draw(st.sampled_from(HARD[arch]))
  optimizer = draw(st.sampled_from(sorted(OPTIMIZERS)))
  seed = draw(st.integers(0, 2**31 - 1))
  return Case(tuple(widths), tuple(modes), hard, optimizer, seed)


def _keep(topology, case: Case, rng: np.random.Generator) -> dict:
  keep = {}
  for g, mode in zip(topology.groups, case.modes):
    if mode == 'all':
      k = np.ones(g.size, bool)
    elif mode == 'one':
      k = np.zeros(g.size, bool)
      k[rng.integers(g.size)] = True
    else:
      k = rng.random(g.size) < 0.5
      k[rng.integers(g.size)] = True
    keep[g.name] = k
  names = list(topology.names)
  if case.hard == 'layer_but_one':
    name = names[rng.integers(len(names))]
    k = np.zeros(topology.group(name).size, bool)
    k[rng.integers(k.size)] = True
    keep[name] = k
  elif case.hard == 'stream':
    # channel 0 of the stem and of every block output goes; each keeps
    # another (these groups get width >= 2 in `_widths`)
    for name in names:
      if name == 'stem_act' or name.endswith('/out'):
        keep[name][0] = False
        keep[name][1:] = True
  elif case.hard == 'block':
    blocks = sorted({n.split('/')[0] for n in names if '/' in n})
    block = blocks[rng.integers(len(blocks))]
    for name in names:
      if name.startswith(block + '/') and not name.endswith('/out'):
        keep[name][:] = False
  return keep


def _widths(arch: str, case: Case) -> tuple[int, ...]:
  if case.hard != 'stream':
    return case.widths
  names = tiny_net(arch).topology.names
  return tuple(max(w, 2) if (n == 'stem_act' or n.endswith('/out')) else w
               for n, w in zip(names, case.widths))


def _identity_shortcuts(topology, variables):
  """Every identity shortcut at its initial map (``idx[j] = j``), so stream
  channel 0 is the same channel in every block."""
  for g in topology.groups:
    for ref in g.consumes:
      if ref.kind == 'index':
        n = topo.get_leaf(variables, ref.key).shape[0]
        j = np.arange(n)
        variables = topo.set_leaf(variables, ref.key, jnp.asarray(
            np.where(j < g.size, j, -1), jnp.int32))
  return variables


def _opt_state(tx, params):
  """A state whose params-shaped trees all equal ``params`` and whose
  counters are 7, made without compiling (``eval_shape``)."""
  shapes = jax.eval_shape(tx.init, params)
  return optax.tree_map_params(
      tx, lambda _, p: p, shapes, params,
      transform_non_params=lambda s: np.full(s.shape, 7, s.dtype))


def check(arch: str, case: Case) -> None:
  spec = ARCHS[arch]
  rng = np.random.default_rng(case.seed)
  net, v = random_model(arch, _widths(arch, case), rng)
  topology = net.topology
  if case.hard == 'stream':
    v = _identity_shortcuts(topology, v)
  keep = _keep(topology, case, rng)
  tx = OPTIMIZERS[case.optimizer]()
  opt_state = _opt_state(tx, v['params'])
  x = jnp.asarray(rng.normal(size=(2,) + spec.input_shape), jnp.float32)

  res = surgery.shrink(net, v, keep, opt_state=opt_state, tx=tx, probe=x,
                       min_width=0)

  # shrink raised SurgeryError unless max |shrunk - masked| <= 1e-5 +
  # 1e-4 max |masked|
  assert np.isfinite(res.max_masked_diff) and np.isfinite(
      res.max_output_change)
  assert tuple(res.model.widths) == tuple(int(keep[n].sum())
                                          for n in topology.names)
  assert res.removed == {n: int((~keep[n]).sum()) for n in topology.names}
  new_params = res.variables['params']
  n_trees = [0]

  def same(leaf, p):
    n_trees[0] += 1
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(p))

  optax.tree_map_params(tx, same, res.opt_state, new_params)
  assert n_trees[0] > 0
  for leaf in jax.tree.leaves(optax.tree_map_params(
      tx, lambda _: None, res.opt_state,
      transform_non_params=lambda s: s)):
    assert np.all(np.asarray(leaf) == 7)


def _property_test(arch: str, *marks):
  @hypothesis.settings(max_examples=EXAMPLES[arch], deadline=None,
                       derandomize=True, database=None,
                       suppress_health_check=list(hypothesis.HealthCheck))
  @hypothesis.given(case=cases(arch))
  def test(case):
    hypothesis.event(f'hard dead set: {case.hard}')
    check(arch, case)

  test.__name__ = f'test_shrunk_equals_masked_{arch}'
  test.__doc__ = f'{EXAMPLES[arch]} random cases on the tiny {arch}.'
  for mark in marks:
    test = mark(test)
  return test


test_shrunk_equals_masked_mlp = _property_test('mlp')
test_shrunk_equals_masked_vgg = _property_test('vgg')
test_shrunk_equals_masked_vgg16 = _property_test('vgg16')
test_shrunk_equals_masked_resnet18 = _property_test('resnet18')
test_shrunk_equals_masked_resnet50 = _property_test('resnet50')
test_shrunk_equals_masked_vit = _property_test('vit')


def test_case_count_is_at_least_200():
  assert sum(EXAMPLES.values()) >= 200
  assert set(EXAMPLES) == set(ARCHS)
