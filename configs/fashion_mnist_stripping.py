"""Synaptic Stripping on the real Fashion-MNIST with a ReLU MLP.

After every epoch the units that are zero on every held-out probe example
(``dataset.holdout`` examples kept out of training) have the lowest 5 % of
their remaining incoming weights stripped (by signed value)::

    python -m experiments.train --config configs/fashion_mnist_stripping.py \
        --workdir runs/stripping
    # the same run with stripping off (dead units still measured):
    python -m experiments.train --config configs/fashion_mnist_stripping.py \
        --workdir runs/stripping_off \
        --config.sparsity_config.stripping_factor=0.0
    # the reference's dead test on the test split:
    ... --config.sparsity_config.probe_split=test

``summary.json``'s ``pruning_events`` hold, per epoch, the dead units per
layer before stripping (``dead_found``) and the weights still in use
(``active_params``). Config string ``tiny``: a few steps on a subset, for
tests (``configs/fashion_mnist_stripping.py:tiny``).
"""
import ml_collections

from demp_jax.training import config_blocks as blocks

TRAIN_EXAMPLES = 60_000



def get_config(config_string: str = '') -> ml_collections.ConfigDict:
  c = blocks.base(epochs=5, batch_size=128, round_widths_to=1)
  # the last 5,000 training examples probe the dead test, out of training
  c.dataset = blocks.dataset('fashion_mnist', holdout=5_000)

  # One epoch of the remaining training examples; follows batch_size and
  # holdout when they are overridden.
  c.steps_per_epoch = ((TRAIN_EXAMPLES - c.dataset.get_ref('holdout')) //
                       c.get_ref('batch_size'))
  c.num_steps = c.get_ref('epochs') * c.get_ref('steps_per_epoch')

  c.model = ml_collections.ConfigDict()
  c.model.name = 'mlp'
  c.model.widths = (512, 512, 512)
  c.model.use_bn = False  # as the reference's ViT MLP: no norm on the units
  c.model.activation = 'relu'

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 3e-3  # high enough that ReLU units die
  c.optimizer.schedule = 'warmup_cosine'
  c.optimizer.warmup_steps = c.get_ref('steps_per_epoch')
  c.optimizer.weight_decay = 5e-5

  s = c.sparsity_config = ml_collections.ConfigDict()
  s.algorithm = 'synaptic_stripping'
  s.stripping_factor = 0.05
  s.strip_every = c.get_ref('steps_per_epoch')
  s.strip_at_end = True
  s.probe_split = 'holdout'
  s.probe_batches = 5
  s.probe_batch_size = 1_000  # 5 x 1000 = the whole holdout
  s.epsilon = 0.0

  if config_string == 'tiny':
    c.epochs = 1
    c.batch_size = 32
    c.dataset.train_subset = 1_024 + 256
    c.dataset.test_subset = 256
    c.dataset.holdout = 256
    c.steps_per_epoch = 10
    c.num_steps = 30
    c.model.widths = (32, 16)
    s.probe_batches = 2
    s.probe_batch_size = 128
    c.progress = False
  elif config_string:
    raise ValueError(f'unknown config string {config_string!r}; use "" or '
                     '"tiny"')
  return c
