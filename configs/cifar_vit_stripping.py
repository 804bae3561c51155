"""Synaptic Stripping on the reference's small ViT with ReLU MLPs, CIFAR-10.

The Synaptic Stripping authors' ViT (from omihub777/ViT-CIFAR): 32x32
images in 4x4 patches (an 8x8 grid, 65 tokens with CLS), 7 pre-LN blocks,
hidden 384, 8 heads, MLP 1536, a ReLU after *both* MLP layers
(``mlp_out_activation``), no dropout; AdamW 1e-3 with weight decay 5e-5,
batch 128, 5 warm-up epochs then cosine, stripping every epoch with
``q = 0.05``. Both MLP sites are unit groups (``block_i/mlp/act``,
``block_i/mlp/out_act``), so ``fc1`` and ``fc2`` are stripped, as in the
reference; attention is never touched. Differences: the dead test probes
a held-out part of the training set by default (the reference probes the
test set: ``--config.sparsity_config.probe_split=test``); no AutoAugment
(crop and flip only); Flax's default inits and attention scaling::

    python -m experiments.train --config configs/cifar_vit_stripping.py \
        --workdir runs/vit_stripping --config.dataset.data_dir=DIR

Far beyond a CPU (200 epochs of a 12M-parameter ViT). Config string
``tiny``: a 1-block ViT for a few steps on synthetic CIFAR-shaped data
(``dataset.name='synthetic'``), for tests.
"""
import ml_collections

from demp_jax.training import config_blocks as blocks

TRAIN_EXAMPLES = 50_000



def get_config(config_string: str = '') -> ml_collections.ConfigDict:
  c = blocks.base(seed=1, epochs=200, batch_size=128, round_widths_to=1)
  c.dataset = blocks.dataset('cifar10', holdout=5_000, augment='crop_flip')

  c.steps_per_epoch = ((TRAIN_EXAMPLES - c.dataset.get_ref('holdout')) //
                       c.get_ref('batch_size'))
  c.num_steps = c.get_ref('epochs') * c.get_ref('steps_per_epoch')

  c.model = ml_collections.ConfigDict()
  c.model.name = 'vit'
  c.model.patch_size = 4
  c.model.hidden_size = 384
  c.model.depth = 7
  c.model.num_heads = 8
  c.model.mlp_dim = 1536
  c.model.activation = 'relu'
  c.model.mlp_out_activation = True

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'warmup_cosine'
  c.optimizer.warmup_steps = 5 * c.get_ref('steps_per_epoch')
  c.optimizer.weight_decay = 5e-5

  s = c.sparsity_config = ml_collections.ConfigDict()
  s.algorithm = 'synaptic_stripping'
  s.stripping_factor = 0.05
  s.strip_every = c.get_ref('steps_per_epoch')
  s.strip_at_end = True
  s.strip_groups = ('block_*/mlp/*',)
  s.probe_split = 'holdout'
  s.probe_batches = 10
  s.probe_batch_size = 500  # 10 x 500 = the whole holdout (or test set)
  s.epsilon = 0.0

  if config_string == 'tiny':
    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = 'synthetic'
    c.dataset.image_shape = (32, 32, 3)
    c.dataset.num_classes = 10
    c.dataset.train_size = 512 + 128
    c.dataset.test_size = 128
    c.dataset.holdout = 128
    c.dataset.augment = 'crop_flip'
    c.batch_size = 32
    c.steps_per_epoch = 8
    c.num_steps = 16
    c.optimizer.warmup_steps = 4
    c.model.patch_size = 8
    c.model.hidden_size = 32
    c.model.depth = 1
    c.model.num_heads = 2
    c.model.mlp_dim = 64
    s.probe_batches = 2
    s.probe_batch_size = 64
    c.progress = False
  elif config_string:
    raise ValueError(f'unknown config string {config_string!r}; use "" or '
                     '"tiny"')
  return c
