"""Orbax checkpoints of a user's own loop after a shrink: the widths are
saved beside the state, and ``Net.at_widths`` gives the restore targets.
"""
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from flax.training import train_state

from demp_jax import linen_surgery, nnx_surgery
from demp_jax.net import Net

X = jax.random.normal(jax.random.PRNGKey(1), (8, 6))


class NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.fc = nnx.Linear(6, 16, rngs=rngs)
    self.bn = nnx.BatchNorm(16, rngs=rngs)
    self.drop = nnx.Dropout(0.2, rngs=rngs)  # its RNG stream is state too
    self.out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(self.drop(nnx.relu(self.bn(self.fc(x)))))


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train)(nn.Dense(16)(x))
    return nn.Dense(3)(nn.relu(x))


class TrainState(train_state.TrainState):
  batch_stats: Any


def widths_of(net):
  return dict(zip(net.topology.names, net.widths))


def test_nnx_model_and_optimizer_restore_at_their_new_widths(tmp_path):
  model = NnxMLP(nnx.Rngs(0))
  net, _ = Net.create(model, input_shape=(6,))
  tx = optax.adam(1e-2)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  optimizer.update(model, nnx.grad(lambda m: m(X).sum())(model))
  res = nnx_surgery.shrink(net, model, {'fc': np.arange(16) % 3 == 0},
                           optimizer=optimizer)
  # save: the widths, and the module's and optimizer's states
  (tmp_path / 'widths.json').write_text(json.dumps(widths_of(res.net)))
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / 'model', nnx.state(res.model))
    ckpt.save(tmp_path / 'optimizer', nnx.state(res.optimizer))

  # restore, as a new run would: the model at full width, then at the saved
  # widths, then the states into abstract objects of those shapes
  fresh = NnxMLP(nnx.Rngs(1))
  net2, _ = Net.create(fresh, input_shape=(6,))
  net2 = net2.at_widths(json.loads((tmp_path / 'widths.json').read_text()))
  graphdef, target = nnx.split(net2.module_at(net2.abstract_variables()))
  with ocp.StandardCheckpointer() as ckpt:
    model2 = nnx.merge(graphdef, ckpt.restore(tmp_path / 'model', target))
    graphdef, target = nnx.split(nnx.eval_shape(
        lambda: nnx.Optimizer(model2, tx, wrt=nnx.Param)))
    optimizer2 = nnx.merge(graphdef, ckpt.restore(tmp_path / 'optimizer',
                                                  target))
  np.testing.assert_array_equal(model2(X), res.model(X))  # dropout draws too
  assert int(optimizer2.step[...]) == 1
  jax.tree.map(np.testing.assert_array_equal,
               nnx.as_pure(optimizer2.opt_state),
               nnx.as_pure(res.optimizer.opt_state))


def test_linen_train_state_restores_at_its_new_widths(tmp_path):
  model = LinenMLP()
  net, variables = Net.create(model, input_shape=(6,))
  tx = optax.adam(1e-2)
  state = TrainState.create(apply_fn=model.apply, params=variables['params'],
                            batch_stats=variables['batch_stats'], tx=tx)
  res = linen_surgery.shrink(net, state, {'Dense_0': np.arange(16) < 5})
  (tmp_path / 'widths.json').write_text(json.dumps(widths_of(res.net)))
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / 'state', res.state)

  net2, _ = Net.create(model, input_shape=(6,), init=False)
  net2 = net2.at_widths(json.loads((tmp_path / 'widths.json').read_text()))
  target = net2.abstract_variables()
  abstract = TrainState(
      step=0, apply_fn=linen_surgery.SizedApply(model.apply),
      params=target['params'], batch_stats=target['batch_stats'], tx=tx,
      opt_state=jax.eval_shape(tx.init, target['params']))
  with ocp.StandardCheckpointer() as ckpt:
    state2 = ckpt.restore(tmp_path / 'state', abstract)
  assert state2.apply_fn == res.state.apply_fn
  v = {'params': state2.params, 'batch_stats': state2.batch_stats}
  np.testing.assert_array_equal(state2.apply_fn(v, X), res.state.apply_fn(
      {'params': res.state.params, 'batch_stats': res.state.batch_stats}, X))
