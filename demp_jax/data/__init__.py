"""Input pipelines: datasets as arrays plus the preprocessing per dataset."""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import numpy as np

from demp_jax.data.arrays import (ArrayDataset, Source, eval_batches,
                                  held_batches, train_batches)

# Per-dataset channel mean/std of pixels in [0, 1].
NORMALIZATION = {
    'fashion_mnist': ((0.2860,), (0.3530,)),
    'mnist': ((0.1307,), (0.3081,)),
}


class Splits(NamedTuple):
  """A dataset's splits (random-access sources of uint8 images) and how to
  preprocess them: ``(x/255 - mean)/std`` on device, then the named
  ``augment`` (see :mod:`demp_jax.data.augment`) on training batches.
  ``holdout`` is a part of the training images kept out of training (for
  probes that must not see the training batches), or None."""
  train: Source
  test: Source
  num_classes: int
  mean: tuple
  std: tuple
  augment: Optional[str] = None
  holdout: Optional[Source] = None


def load_dataset(config: Mapping[str, Any]) -> Splits:
  """Loads the dataset named by ``config.name`` with its normalisation."""
  cfg = dict(config)
  name = cfg.get('name')
  if name in ('fashion_mnist', 'mnist'):
    from demp_jax.data import fashion_mnist
    kwargs = dict(data_dir=cfg.get('data_dir'), source=cfg.get('source', 'auto'),
                  name=name)
    train = fashion_mnist.load('train', **kwargs)
    test = fashion_mnist.load('test', **kwargs)
    if cfg.get('train_subset'):
      train = train.take(int(cfg['train_subset']))
    if cfg.get('test_subset'):
      test = test.take(int(cfg['test_subset']))
    holdout = None
    if cfg.get('holdout'):
      train, holdout = train.split(int(cfg['holdout']))
    mean, std = NORMALIZATION[name]
    return Splits(train, test, 10, mean, std, cfg.get('augment'), holdout)
  raise ValueError(f'config.dataset.name={name!r} is not a known dataset; '
                   f"known: ['fashion_mnist', 'mnist']")


def normalize(images, mean, std):
  """uint8 ``[..., C]`` -> float32 ``(x/255 - mean) / std`` (jnp or np)."""
  import jax.numpy as jnp  # keep module import light
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


__all__ = ['ArrayDataset', 'Source', 'Splits', 'eval_batches', 'held_batches',
           'train_batches', 'load_dataset', 'normalize', 'NORMALIZATION']
