"""Jitted train and eval steps, shared by every algorithm, and their
ahead-of-time compilation.

The train step follows JaxPruner's contract: ``pre_forward_update`` before
the forward pass, ``tx.update`` with the updater's transformation, then
``post_gradient_update``. Images arrive as uint8 and are normalised on
device. The state is donated: no copy of params or optimiser state is kept.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from demp_jax.data import normalize


class TrainState(NamedTuple):
  step: jax.Array   # int32 scalar
  variables: dict   # 'params', and 'batch_stats' where the model has norms
  opt_state: Any


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, onehot))


def make_train_step(model, tx: optax.GradientTransformation, updater,
                    mean, std, label_smoothing: float = 0.0,
                    augment: Callable | None = None) -> Callable:
  """``step(state, images uint8, labels, key) -> (state, metrics)`` for a
  :class:`demp_jax.net.Net` ``model`` (its ``mutable`` collections, norm
  statistics and NNX state, are updated)."""
  def step(state: TrainState, images, labels, key):
    x = normalize(images, mean, std)
    if augment is not None:
      x = augment(key, x)
    params = state.variables['params']
    others = {k: v for k, v in state.variables.items() if k != 'params'}
    params_fwd = updater.pre_forward_update(params, state.opt_state)

    def loss_fn(p):
      # dropout (Linen) draws from its own stream of the step's key
      logits, new = model.apply({'params': p, **others}, x, train=True,
                                mutable=model.mutable,
                                rng=jax.random.fold_in(key, 1))
      return cross_entropy(logits, labels, label_smoothing), (logits, new)

    (loss, (logits, new)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params_fwd)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    params = updater.post_gradient_update(
        optax.apply_updates(params, updates), opt_state)
    variables = {**others, **dict(new), 'params': params}
    metrics = {'loss': loss,
               'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)}
    return TrainState(state.step + 1, variables, opt_state), metrics

  return step


def make_eval_step(model, mean, std) -> Callable:
  """``eval(variables, images uint8, labels, valid) -> (correct, loss_sum)``
  over the examples where ``valid`` is True (padding excluded)."""
  def evaluate(variables, images, labels, valid):
    x = normalize(images, mean, std)
    logits = model.apply(variables, x, train=False)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) & valid)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return correct, jnp.sum(jnp.where(valid, loss, 0.0))

  return evaluate


class CompiledStep(NamedTuple):
  """An ahead-of-time compiled train step."""
  fn: Any         # (state, images, labels, key) -> (state, metrics)
  seconds: float  # lowering plus XLA compilation
  flops: float    # XLA's cost analysis of one step (NaN when unknown)
  bytes_accessed: float  # the same analysis: bytes the step reads + writes


class Compiler:
  """AOT-compiles train steps (state donated) for one batch shape, and
  counts the compilations and their seconds (safe to call from a background
  thread).

  Args:
    make_step: ``model -> step function`` (e.g. :func:`make_train_step`
      with everything but the model bound).
    sample: the arguments after the state, ``(images, labels, key)``: their
      shapes, dtypes and shardings are those of every call.
  """

  def __init__(self, make_step: Callable[[Any], Callable], sample: tuple):
    self.make_step = make_step
    self.sample = sample
    self.count = 0
    self.seconds = 0.0
    self._lock = threading.Lock()

  def __call__(self, model: Any, state: Any) -> CompiledStep:
    """The step of ``model`` for ``state`` (arrays or ``ShapeDtypeStruct``s
    with shardings)."""
    t0 = time.perf_counter()
    fn = jax.jit(self.make_step(model), donate_argnums=0)
    compiled = fn.lower(state, *self.sample).compile()
    seconds = time.perf_counter() - t0
    with self._lock:
      self.seconds += seconds
      self.count += 1
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    cost = cost or {}
    return CompiledStep(compiled, seconds,
                        float(cost.get('flops', float('nan'))),
                        float(cost.get('bytes accessed', float('nan'))))
