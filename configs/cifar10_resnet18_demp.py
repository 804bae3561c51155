"""DemP on CIFAR-10 with ResNet-18, the paper's "Structured-RigL setup".

From the authors' launch lines (research/demp_paper.md sections 1.5, 3.1):
97,656 steps at batch 128 (250 epochs of 390 steps); inputs in [0, 1] with
no mean/std normalisation; reflect-pad 4, random 32x32 crop, flip; learning
rate x0.2 at steps 30,030, 60,060 and 90,090 (every 77 epochs); AdamW lr
5e-3 or SGDW (momentum 0.9) lr 0.1, weight decay 5e-4 (times the lr, not
through the momentum); L1 penalty on BN scales, one-cycle over 85,000
steps; noise peak 5e-5; death check every 5,000 steps on 3 batches of 512
un-augmented training images.

    python -m experiments.train --config configs/cifar10_resnet18_demp.py \
        --workdir runs/c10_r18 --config.dataset.data_dir=/data/cifar10
    # SGDW instead of AdamW:
    ... --config configs/cifar10_resnet18_demp.py:sgd
    # the dense reference:
    ... --config.sparsity_config.algorithm=no_prune

``reg_peak`` is one point of the paper's sweep (it traces the accuracy vs
sparsity curve; higher = sparser): AdamW used 5e-8 ... 0.35, see
research/demp_paper.md section 1.5.

Config strings (comma-separated): ``adam`` (default) or ``sgd``; ``tiny``
runs the same pipeline on synthetic 32x32x3 data with a narrow ResNet-18 in
a few seconds (tests).
"""
import ml_collections

from demp_jax.training import config_blocks as blocks

STEPS_PER_EPOCH = 390  # 50,000 // 128



def get_config(config_string: str = '') -> ml_collections.ConfigDict:
  options = {s for s in config_string.split(',') if s}
  unknown = options - {'adam', 'sgd', 'tiny'}
  if unknown or {'adam', 'sgd'} <= options:
    raise ValueError(f'unknown or conflicting config string {config_string!r}'
                     '; use a comma-separated subset of adam|sgd, tiny')
  c = blocks.base(num_steps=97_656, batch_size=128, checkpoint_every=5_000,
                  log_every=100)
  # steps trained with the removed units held at zero while the shrunk step
  # compiles on a host thread (the accelerator keeps training meanwhile)
  c.shrink_delay = 500
  # On a multi-host TPU pod set --config.distributed.auto=True.
  c.dataset = blocks.dataset(
      'cifar10',  # source 'archive' (official tar.gz), 'tfds' or 'auto'
      normalize=False,  # the SRigL setup feeds [0, 1] inputs
      augment='crop_flip_reflect')

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet18'  # 3x3 stem, no max-pool, 4x4 avg pool head

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 5e-3
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = 'piecewise'
  c.optimizer.decay_steps = tuple(77 * STEPS_PER_EPOCH * k for k in (1, 2, 3))
  c.optimizer.decay_factor = 0.2
  c.optimizer.warmup_steps = 0
  if 'sgd' in options:
    c.optimizer.name = 'sgd'
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9

  s = c.sparsity_config = ml_collections.ConfigDict()
  s.algorithm = 'demp'
  s.reg_peak = 1e-3
  s.reg_span = 85_000
  s.regularizer = 'l1'
  s.noise_peak = 5e-5
  s.noise_seed = 0
  s.prune_every = 5_000
  s.death_batches = 3
  s.death_batch_size = 512
  s.epsilon = 0.0
  s.min_width = 1
  # The reference removes dead units only; True also removes units whose
  # output is constant on the probe data, folding it into the consumers.
  s.fold_constants = False
  s.constant_layer_tol = 1e-2

  if 'tiny' in options:
    c.num_steps = 6
    c.batch_size = 32
    c.eval_batch_size = 128
    c.checkpoint_every = 0
    c.log_every = 1
    c.progress = False
    c.dataset = ml_collections.ConfigDict(dict(
        name='synthetic', image_shape=(32, 32, 3), num_classes=10,
        train_size=256, test_size=128, normalize=False,
        augment='crop_flip_reflect'))
    c.model.base_width = 4  # stage widths 4/8/16/32
    c.optimizer.decay_steps = (3, 5)
    s.reg_peak = 5e-2
    s.reg_span = 6
    s.prune_every = 3
    c.shrink_delay = 1
    s.death_batches = 1
    s.death_batch_size = 64
  return c
