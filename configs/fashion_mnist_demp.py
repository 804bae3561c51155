"""DemP on the real Fashion-MNIST with a small VGG-style CNN (the demo).

    python -m experiments.train --config configs/fashion_mnist_demp.py \
        --workdir runs/demo
    # the dense reference:
    python -m experiments.train --config configs/fashion_mnist_demp.py \
        --workdir runs/dense --config.sparsity_config.algorithm=no_prune

Config string ``tiny`` shrinks everything for tests:
``--config configs/fashion_mnist_demp.py:tiny``.
"""
import ml_collections

from demp_jax.training import config_blocks as blocks


def get_config(config_string: str = '') -> ml_collections.ConfigDict:
  c = blocks.base(num_steps=1_400, batch_size=128)
  c.dataset = blocks.dataset('fashion_mnist')  # the Debian package or tfds

  c.model = ml_collections.ConfigDict()
  c.model.name = 'vgg'
  c.model.conv_widths = (32, 64, 128)
  c.model.pool_after = (0, 1, 2)
  c.model.dense_widths = (256,)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 5e-3
  c.optimizer.schedule = 'onecycle'
  c.optimizer.weight_decay = 5e-4

  s = c.sparsity_config = ml_collections.ConfigDict()
  s.algorithm = 'demp'
  s.reg_peak = 5e-2
  s.reg_span = (c.get_ref('num_steps') * 9) // 10
  s.regularizer = 'l1'
  s.noise_peak = 5e-5
  s.noise_seed = 0
  s.prune_every = 200
  # 2,048 held examples in batches of 128: the same dead set as 4 x 512
  # (with epsilon = 0), and a faster pass on CPU
  s.death_batches = 16
  s.death_batch_size = 128
  s.epsilon = 0.0
  s.min_width = 1
  s.fold_constants = True
  s.constant_layer_tol = 0.1

  if config_string == 'tiny':
    c.num_steps = 30
    c.batch_size = 32
    c.dataset.train_subset = 2_048
    c.dataset.test_subset = 512
    c.model.conv_widths = (8, 16)
    c.model.pool_after = (0, 1)
    c.model.dense_widths = (32,)
    s.prune_every = 10
    c.shrink_delay = 3
    s.death_batches = 2
    s.death_batch_size = 128
    s.reg_peak = 5e-2
    c.progress = False
  elif config_string:
    raise ValueError(f'unknown config string {config_string!r}; use "" or '
                     '"tiny"')
  return c
