"""Jitted train and eval steps, shared by every algorithm.

The train step follows JaxPruner's contract: ``pre_forward_update`` before
the forward pass, ``tx.update`` with the updater's transformation, then
``post_gradient_update``. Images arrive as uint8 and are normalised on
device. The state is donated: no copy of params or optimiser state is kept.
"""
from __future__ import annotations

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
  """``step(state, images uint8, labels, key) -> (state, metrics)``."""
  def step(state: TrainState, images, labels, key):
    x = normalize(images, mean, std)
    if augment is not None:
      x = augment(key, x)
    params = state.variables['params']
    others = {k: v for k, v in state.variables.items() if k != 'params'}
    mutable = [k for k in ('batch_stats',) if k in others]
    params_fwd = updater.pre_forward_update(params, state.opt_state)

    def loss_fn(p):
      logits, new = model.apply({'params': p, **others}, x, train=True,
                                mutable=mutable)
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
