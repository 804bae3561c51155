"""A multi-layer perceptron; its unit topology is derived (:mod:`demp_jax.derive`)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from demp_jax.models import layers


class MLP(nn.Module):
  """``flatten -> [Dense(w_i) -> (BatchNorm) -> act]_i -> Dense(classes)``.

  Unit group ``dense_i`` holds the ``w_i`` outputs of hidden layer ``i``
  (post-activation, shape ``[batch, w_i]``). Logits are never pruned.
  """
  widths: Sequence[int] = (300, 100)
  num_classes: int = 10
  use_bn: bool = True
  activation: str = 'relu'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = layers.activation(self.activation)
    x = x.reshape((x.shape[0], -1))
    for i, w in enumerate(self.widths):
      x = nn.Dense(w, kernel_init=layers.he_normal(),
                   name=f'dense_{i}')(x)
      if self.use_bn:
        x = layers.batch_norm(train, f'bn_{i}')(x)
      x = act(x)
    return nn.Dense(self.num_classes, kernel_init=layers.lecun_normal(),
                    name='logits')(x)
