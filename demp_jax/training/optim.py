"""Optimisers and learning-rate schedules from a config, all optax."""
from __future__ import annotations

from typing import Any, Mapping

import optax

SCHEDULES = ('constant', 'onecycle', 'cosine', 'warmup_cosine', 'piecewise')
OPTIMIZERS = ('adamw', 'adam', 'sgd', 'lion', 'lamb')


def learning_rate(config: Mapping[str, Any], num_steps: int) -> optax.Schedule:
  """``config.schedule`` over ``num_steps``:

  * ``constant``: ``learning_rate``;
  * ``onecycle``: ``optax.cosine_onecycle_schedule(num_steps, lr)``;
  * ``cosine``: cosine decay from ``lr`` to 0;
  * ``warmup_cosine``: linear warm-up over ``warmup_steps`` then cosine;
  * ``piecewise``: ``lr`` times ``decay_factor`` at each of
    ``decay_steps``, after a linear warm-up of ``warmup_steps`` from ~0.
  """
  lr = float(config['learning_rate'])
  name = config.get('schedule', 'constant')
  warmup = int(config.get('warmup_steps', 0) or 0)
  if name == 'constant':
    return optax.constant_schedule(lr)
  if name == 'onecycle':
    return optax.cosine_onecycle_schedule(num_steps, lr)
  if name == 'cosine':
    return optax.cosine_decay_schedule(lr, num_steps)
  if name == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1),
                                              num_steps)
  if name == 'piecewise':
    factor = float(config.get('decay_factor', 0.1))
    bounds = {int(s): factor for s in config.get('decay_steps', ())}
    decay = optax.piecewise_constant_schedule(lr, bounds)
    if not warmup:
      return decay
    return optax.join_schedules(
        [optax.linear_schedule(lr * 1e-5, lr, warmup),
         lambda t: decay(t + warmup)], [warmup])
  raise ValueError(f'config.optimizer.schedule={name!r} is unknown; known: '
                   f'{list(SCHEDULES)}')


def make_optimizer(config: Mapping[str, Any], num_steps: int
                   ) -> optax.GradientTransformation:
  """``config.name`` in :data:`OPTIMIZERS` with ``weight_decay`` (decoupled,
  times the learning rate, as in ``optax.adamw``), ``momentum`` for SGD and
  optional ``grad_clip`` (global norm)."""
  name = config.get('name', 'adamw')
  lr = learning_rate(config, num_steps)
  wd = float(config.get('weight_decay', 0.0) or 0.0)
  if name == 'adamw':
    tx = optax.adamw(lr, b1=config.get('b1', 0.9), b2=config.get('b2', 0.999),
                     eps=config.get('eps', 1e-8), weight_decay=wd)
  elif name == 'adam':
    tx = optax.adam(lr, b1=config.get('b1', 0.9), b2=config.get('b2', 0.999),
                    eps=config.get('eps', 1e-8))
  elif name == 'sgd':
    # The reference's SGDW: momentum on the gradient, then + wd * theta, all
    # times -lr (weight decay does not go through the momentum).
    tx = optax.chain(optax.trace(decay=float(config.get('momentum', 0.9)),
                                 nesterov=bool(config.get('nesterov', False))),
                     optax.add_decayed_weights(wd),
                     optax.scale_by_learning_rate(lr))
  elif name == 'lion':
    tx = optax.lion(lr, weight_decay=wd)
  elif name == 'lamb':
    tx = optax.lamb(lr, weight_decay=wd)
  else:
    raise ValueError(f'config.optimizer.name={name!r} is unknown; known: '
                     f'{list(OPTIMIZERS)}')
  clip = config.get('grad_clip')
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  return tx
