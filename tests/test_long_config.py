"""The long-horizon config: the demo's setup at the paper's proportions."""
import os

import pytest

from demp_jax.algorithms import create_updater_from_config
from demp_jax.data import fashion_mnist
from conftest import load_config as get_config


@pytest.mark.parametrize('arg', ['', 'tiny'])
def test_paper_proportions_on_the_demo_setup(arg):
  c, demo = get_config('fashion_mnist_demp_long', arg), get_config(
      'fashion_mnist_demp', arg)
  s = c.sparsity_config
  assert set(c.keys()) == set(demo.keys()) | {'bn_recalibration_batches'}
  assert c.model == demo.model and c.optimizer == demo.optimizer
  assert c.dataset == demo.dataset and c.batch_size == demo.batch_size
  assert s.reg_span == (9 * c.num_steps) // 10
  assert c.num_steps % s.prune_every == 0  # the last check is the end one
  assert c.num_steps // s.prune_every == 10
  assert s.noise_peak == 5e-5 and s.regularizer == 'l1'
  assert c.bn_recalibration_batches == 0
  create_updater_from_config(s)


def test_twenty_epochs_of_the_real_training_split():
  c = get_config('fashion_mnist_demp_long')
  per_epoch = 60_000 // c.batch_size  # the loader drops the partial batch
  assert c.num_steps == 20 * per_epoch == 9_360
  assert c.sparsity_config.prune_every == 2 * per_epoch
  with pytest.raises(ValueError, match='config string'):
    get_config('fashion_mnist_demp_long', 'huge')


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEBIAN_DIR),
                    reason='Debian package dataset-fashion-mnist not installed')
def test_tiny_runs_with_recalibration(tmp_path):
  from demp_jax.training import loop  # pylint: disable=g-import-not-at-top
  c = get_config('fashion_mnist_demp_long', 'tiny')
  c.bn_recalibration_batches = 2
  s = loop.train(c, str(tmp_path))
  assert [e['step'] for e in s['pruning_events']] == list(range(4, 41, 4))
  assert 0 <= s['test_accuracy_running_stats'] <= 1
