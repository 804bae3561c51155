"""DemP on ImageNet (ILSVRC-2012) with ResNet-50 v1.5.

From the authors' launch lines (research/demp_paper.md sections 1.5, 3.3):
500,456 steps at batch 256 (100 epochs of 5,004.6 steps); SGDW momentum 0.9,
lr 0.1, weight decay 1e-4; linear warm-up from 1e-6 over the first 5% of the
steps, then lr x0.1 at epochs 30, 70 and 90; label smoothing 0.1; ImageNet
mean/std normalisation; train crops: resize the whole image to 256x256 or
480x480 (probability 1/2 each), random 224x224 crop, flip; eval: resize to
256x256, central 224x224. DemP: L1 penalty on BN scales with peak 3e-4,
one-cycle over 150,000 steps (the first LR decay); noise peak 5e-5; death
check every 5,000 steps on 5 batches of 256 training images with the eval
preprocessing.

The reference's only ResNet-50 DemP line combines DemP with RigL (80%
unstructured sparsity); this config is pure DemP with the same settings.

    python -m experiments.train --config configs/imagenet_resnet50_demp.py \
        --workdir gs://BUCKET/runs/in_r50 \
        --config.dataset.data_dir=/mnt/disks/data/tensorflow_datasets

The data is a prepared tfds ``imagenet2012`` directory (array_record;
docs/paper_setups.md says how to make it); images are decoded and cropped
on the host by ``num_threads`` threads per process.

Config strings (comma-separated): ``inception`` uses the standard
random-resized-crop instead of the reference's crops; ``tiny`` runs on
synthetic 224x224x3 images (1,000 classes) with a narrow one-block-per-stage
ResNet-50 in a few seconds of training (tests; the synthetic images stand
in for the host-side crops, so only an on-device flip is added).
"""
import ml_collections

from demp_jax.training import config_blocks as blocks

STEPS_PER_EPOCH = 1_281_167 / 256



def get_config(config_string: str = '') -> ml_collections.ConfigDict:
  options = {s for s in config_string.split(',') if s}
  unknown = options - {'inception', 'tiny'}
  if unknown:
    raise ValueError(f'unknown config string {config_string!r}; use a '
                     'comma-separated subset of inception, tiny')
  c = blocks.base(num_steps=500_456, batch_size=256, eval_batch_size=1_024,
                  label_smoothing=0.1, checkpoint_every=5_000, log_every=100)
  # steps trained with the removed units held at zero while the shrunk step
  # compiles on a host thread (the accelerator keeps training meanwhile)
  c.shrink_delay = 500
  # On a multi-host TPU pod set --config.distributed.auto=True.
  c.dataset = blocks.dataset(
      'imagenet2012', source='tfds',
      normalize=True,  # ImageNet mean/std
      image_size=224, resize_sizes=(256, 480), eval_resize=256,
      crop='inception' if 'inception' in options else 'reference',
      num_threads=0,  # decoding threads per process; 0 = all cores
      seed=c.get_ref('seed'))

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet50'  # v1.5, zero-initialised last BN of each block

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = 'piecewise'
  c.optimizer.warmup_steps = 25_022  # 5% of the steps, from lr * 1e-5
  c.optimizer.decay_steps = tuple(round(STEPS_PER_EPOCH * e)
                                  for e in (30, 70, 90))
  c.optimizer.decay_factor = 0.1

  s = c.sparsity_config = ml_collections.ConfigDict()
  s.algorithm = 'demp'
  s.reg_peak = 3e-4
  s.reg_span = 150_000
  s.regularizer = 'l1'
  s.noise_peak = 5e-5
  s.noise_seed = 0
  s.prune_every = 5_000
  s.death_batches = 5
  s.death_batch_size = 256
  s.epsilon = 0.0
  s.min_width = 1
  # The reference removes dead units only; True also removes units whose
  # output is constant on the probe data, folding it into the consumers.
  s.fold_constants = False
  s.constant_layer_tol = 1e-2

  if 'tiny' in options:
    c.num_steps = 6
    c.batch_size = 16
    c.eval_batch_size = 64
    c.checkpoint_every = 0
    c.log_every = 1
    c.progress = False
    c.dataset = ml_collections.ConfigDict(dict(
        name='synthetic', image_shape=(224, 224, 3), num_classes=1_000,
        train_size=128, test_size=64, normalize=True, augment='flip',
        seed=c.get_ref('seed')))
    c.model.base_width = 4  # stage widths (4, 4, 16) * 2^i
    c.model.stage_sizes = (1, 1, 1, 1)
    c.optimizer.warmup_steps = 2
    c.optimizer.decay_steps = (4, 5)
    s.reg_peak = 5e-2
    s.reg_span = 6
    s.prune_every = 3
    c.shrink_delay = 1
    s.death_batches = 1
    s.death_batch_size = 32
  return c
