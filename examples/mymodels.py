"""Models written the way users write them, for the trainer's user-model
path (no demp_jax hooks: no ``sow``, no widths field, no ``with_widths``,
no ``unit_topology``)::

    PYTHONPATH=examples python -m experiments.train \
        --config configs/fashion_mnist_demp.py \
        --config.model.name=mymodels:make_linen --workdir runs/user_linen

``make_linen`` and ``make_nnx`` are zero-argument factories of the same
Fashion-MNIST CNN (28x28x1 in, 10 classes out) in Flax Linen and Flax NNX.
"""
import flax.linen as nn
from flax import nnx


class CNN(nn.Module):
  """Conv-BN-ReLU-pool twice, a dense layer with BN and dropout, logits."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    for features in (32, 64):
      x = nn.Conv(features, (3, 3), use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(256)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.Dropout(0.1, deterministic=not train)(x)
    return nn.Dense(10)(x)


class NNXCNN(nnx.Module):
  """The same network in NNX."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, (3, 3), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, (3, 3), use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(64, momentum=0.9, rngs=rngs)
    self.fc = nnx.Linear(64 * 7 * 7, 256, rngs=rngs)
    self.bn3 = nnx.BatchNorm(256, momentum=0.9, rngs=rngs)
    self.drop = nnx.Dropout(0.1, rngs=rngs)
    self.out = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(nnx.relu(self.bn1(self.conv1(x))), (2, 2), strides=(2, 2))
    x = nnx.max_pool(nnx.relu(self.bn2(self.conv2(x))), (2, 2), strides=(2, 2))
    x = nnx.relu(self.bn3(self.fc(x.reshape((x.shape[0], -1)))))
    return self.out(self.drop(x))


def make_linen() -> nn.Module:
  return CNN()


def make_nnx() -> nnx.Module:
  return NNXCNN(nnx.Rngs(0))
