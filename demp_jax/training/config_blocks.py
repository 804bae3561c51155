"""What every config shares, as big_vision's ``configs/common.py``: the
trainer's settings with their defaults (the only place they live; see
:class:`demp_jax.training.options.TrainOptions`), the multi-process block
and the dataset block.

It lives in the package, so a config file loaded by path from anywhere
(``--config /any/path/configs/x.py``) imports it like any module::

    from demp_jax.training import config_blocks as blocks

    c = blocks.base(num_steps=1_400, batch_size=128)
    c.dataset = blocks.dataset('fashion_mnist')
"""
import ml_collections


def base(**fields) -> ml_collections.ConfigDict:
  """A config with every trainer setting at its default, a
  :func:`distributed` block, and ``fields`` (at least ``num_steps`` and
  ``batch_size``) on top."""
  c = ml_collections.ConfigDict()
  c.seed = 0
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
  # >0: the death checks and evaluations see BatchNorm statistics recomputed
  # from this many held training batches (0: the moving averages, as in the
  # reference code)
  c.bn_recalibration_batches = 0
  c.distributed = distributed()
  c.update(fields)
  return c


def distributed() -> ml_collections.ConfigDict:
  """Multi-process: every process runs the same command with its
  ``process_id`` and the ``coordinator_address``; on a multi-host TPU pod
  or a cluster whose environment JAX reads, ``auto=True`` instead."""
  d = ml_collections.ConfigDict()
  d.num_processes = 1
  d.process_id = 0
  d.coordinator_address = ''
  d.auto = False
  return d


def dataset(name: str, **fields) -> ml_collections.ConfigDict:
  """The dataset block: ``name``, where to read it (``source``: ``'auto'``,
  ``'idx'``, ``'archive'`` or ``'tfds'``; ``data_dir``), all of both
  splits (``train_subset``, ``test_subset``: 0), and ``fields`` on top."""
  d = ml_collections.ConfigDict()
  d.name = name
  d.source = 'auto'
  d.data_dir = ml_collections.FieldReference(None, field_type=str)
  d.train_subset = 0  # 0 = all
  d.test_subset = 0
  d.update(fields)
  return d
