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


def get_config(config_string: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_steps = 1_400
  c.batch_size = 128
  c.eval_batch_size = 1_000
  c.label_smoothing = 0.0
  c.checkpoint_every = 0  # 0: at surgeries and at the end only
  c.resume = False  # continue from the latest checkpoint in --workdir
  c.log_every = 50
  c.eval_every = 0  # >0: test accuracy every k steps (time to accuracy)
  c.round_widths_to = 8  # width bucket: fewer recompiles (128 on TPU)
  # steps trained with the removed units held at zero while the shrunk step
  # compiles on a background thread (0: stop and compile at once); about
  # compile seconds / step seconds (2 s / 0.04 s on a 2-core CPU)
  c.shrink_delay = 50
  c.progress = True

  # Multi-process: every process runs the same command with its process_id
  # (TPU pods and clusters: auto=True lets JAX read the environment).
  c.distributed = ml_collections.ConfigDict()
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  c.distributed.coordinator_address = ''
  c.distributed.auto = False

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'fashion_mnist'
  c.dataset.source = 'auto'  # 'idx' (Debian package), 'tfds' or 'auto'
  c.dataset.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.dataset.train_subset = 0  # 0 = all 60k
  c.dataset.test_subset = 0   # 0 = all 10k

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
  s.constant_tol = 0.1

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
