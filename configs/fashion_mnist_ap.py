"""Activate-while-Pruning (AP) against its base method, on the real
Fashion-MNIST with a ReLU MLP: iterative pruning with rewinding.

Every round trains ``cycles.steps_per_round`` steps from the round's start
``theta_0 = theta_init ⊙ m``, then the base method prunes ``p - p_ap`` and
AP ``p_ap`` of the remaining weights (``p = cycles.prune_rate = 0.2``,
``p_ap = sparsity_config.ap_rate = 0.02``), the weights rewind and the
optimiser state starts afresh::

    python -m experiments.ap --config configs/fashion_mnist_ap.py \
        --workdir runs/ap
    # the base method alone, at the same sparsity every round:
    python -m experiments.ap --config configs/fashion_mnist_ap.py \
        --workdir runs/ap_base --config.sparsity_config.ap_rate=0.0
    # a structured base (per-unit L1 of the incoming weights):
    python -m experiments.ap --config configs/fashion_mnist_ap.py:structured \
        --workdir runs/ap_structured

Config strings: ``structured`` (base ``structured_magnitude``), ``tiny``
(a few steps on a subset, for tests), combinable as ``tiny,structured``.
"""
import ml_collections

from demp_jax.training import config_blocks as blocks

TRAIN_EXAMPLES = 60_000



def get_config(config_string: str = '') -> ml_collections.ConfigDict:
  c = blocks.base(batch_size=128)  # the rounds' settings are in c.cycles
  c.dataset = blocks.dataset('fashion_mnist')

  c.model = ml_collections.ConfigDict()
  c.model.name = 'mlp'
  c.model.widths = (300, 100)  # LeNet-300-100
  c.model.use_bn = False
  c.model.activation = 'relu'

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'cosine'  # over one round
  c.optimizer.weight_decay = 0.0

  c.cycles = ml_collections.ConfigDict()
  c.cycles.rounds = 8  # 1 - 0.8^8 = 83 % of the weights pruned
  c.cycles.epochs_per_round = 2
  c.cycles.steps_per_round = (c.cycles.get_ref('epochs_per_round') *
                              (TRAIN_EXAMPLES // c.get_ref('batch_size')))
  c.cycles.prune_rate = 0.2
  c.cycles.rewind = 'init'
  c.cycles.probe_batches = 5
  c.cycles.probe_batch_size = 1_000
  c.cycles.score_split = 'train'
  c.cycles.dnr_split = 'test'

  s = c.sparsity_config = ml_collections.ConfigDict()
  s.algorithm = 'ap'
  s.base = 'global_magnitude'
  s.ap_rate = 0.02

  options = set(filter(None, config_string.split(',')))
  unknown = options - {'tiny', 'structured'}
  if unknown:
    raise ValueError(f'unknown config string(s) {sorted(unknown)}; use '
                     '"tiny", "structured" or both')
  if 'structured' in options:
    s.base = 'structured_magnitude'
    # structured_magnitude requires its loop schedule; unused by the cycles.
    s.base_config = {'dist_type': 'uniform', 'update_start_step': 0,
                     'update_end_step': 0, 'min_width': 1}
  if 'tiny' in options:
    c.batch_size = 32
    c.dataset.train_subset = 1_024
    c.dataset.test_subset = 256
    c.model.widths = (32, 16)
    c.cycles.rounds = 2
    c.cycles.steps_per_round = 15
    c.cycles.probe_batches = 2
    c.cycles.probe_batch_size = 128
    c.progress = False
  return c
