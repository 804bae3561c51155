"""The paper-setup configs: their numbers, their parts, and a tiny run each."""
import json
import os

import numpy as np
import pytest

from conftest import load_config
from demp_jax import models
from demp_jax.algorithms import create_updater_from_config
from demp_jax.data import load_dataset
from demp_jax.net import Net
from demp_jax.training import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = ('cifar10_resnet18_demp', 'cifar10_vgg16_demp',
         'imagenet_resnet50_demp')


def _lr(config, step):
  return float(optim.learning_rate(config.optimizer, config.num_steps)(step))


def _units(config):
  """Prunable units of the config's model at its input size (shapes only)."""
  cfg = dict(config.model)
  cfg.setdefault('num_classes', 1000 if 'imagenet' in config.dataset.name
                 else 10)
  size = config.dataset.get('image_size', 32)
  net, _ = Net.create(models.build_model(cfg), (size, size, 3), init=False)
  return sum(net.widths)


def _needs_model(config):
  if config.model.name not in models.MODELS:
    pytest.skip(f'model {config.model.name!r} is not in '
                'demp_jax.models.MODELS yet')


@pytest.mark.parametrize('name', PAPER)
@pytest.mark.parametrize('arg', ['', 'tiny'])
def test_same_keys_as_the_demo_config(name, arg):
  demo, c = load_config('fashion_mnist_demp'), load_config(name, arg)
  assert set(c.keys()) == set(demo.keys())
  assert set(c.sparsity_config.keys()) == set(demo.sparsity_config.keys())
  assert set(c.distributed.keys()) == set(demo.distributed.keys())
  assert c.sparsity_config.algorithm == 'demp'


def test_cifar10_resnet18_is_the_srigl_setup():
  c = load_config('cifar10_resnet18_demp')
  assert (c.num_steps, c.batch_size) == (97_656, 128)
  assert c.dataset.name == 'cifar10' and c.dataset.normalize is False
  assert c.dataset.augment == 'crop_flip_reflect'
  assert c.optimizer.name == 'adamw' and c.optimizer.learning_rate == 5e-3
  assert c.optimizer.weight_decay == 5e-4
  assert c.optimizer.decay_steps == (30_030, 60_060, 90_090)
  np.testing.assert_allclose([_lr(c, t) for t in (0, 30_029, 30_030, 60_060,
                                                  90_090)],
                             [5e-3, 5e-3, 1e-3, 2e-4, 4e-5], rtol=1e-5)
  s = c.sparsity_config
  assert (s.reg_span, s.noise_peak, s.prune_every) == (85_000, 5e-5, 5_000)
  assert (s.death_batches, s.death_batch_size, s.regularizer) == (3, 512,
                                                                  'l1')
  sgd = load_config('cifar10_resnet18_demp', 'sgd')
  assert (sgd.optimizer.name, sgd.optimizer.learning_rate,
          sgd.optimizer.momentum) == ('sgd', 0.1, 0.9)
  assert _lr(sgd, 90_090) == pytest.approx(0.1 * 0.2**3)
  _needs_model(c)
  assert _units(c) == 3_904


def test_cifar10_vgg16_setup():
  c = load_config('cifar10_vgg16_demp')
  assert (c.num_steps, c.batch_size) == (15_626, 256)
  assert c.dataset.normalize is True and c.dataset.augment == 'crop_flip'
  assert c.optimizer.schedule == 'onecycle'
  peak = max(_lr(c, t) for t in range(0, 15_626, 50))
  assert peak == pytest.approx(5e-3, rel=1e-3)
  assert _lr(c, 0) == pytest.approx(5e-3 / 25)
  s = c.sparsity_config
  assert (s.reg_span, s.prune_every, s.noise_peak) == (15_625, 1_000, 5e-5)
  assert load_config('cifar10_vgg16_demp', 'sgd').optimizer.name == 'sgd'
  _needs_model(c)
  assert _units(c) == 12_928  # 13 convs (last 1,024) + 2 x 4,096


def test_imagenet_resnet50_setup():
  c = load_config('imagenet_resnet50_demp')
  assert (c.num_steps, c.batch_size, c.label_smoothing) == (500_456, 256,
                                                            0.1)
  assert c.dataset.name == 'imagenet2012' and c.dataset.crop == 'reference'
  assert tuple(c.dataset.resize_sizes) == (256, 480)
  assert (c.dataset.image_size, c.dataset.eval_resize) == (224, 256)
  assert c.dataset.seed == c.seed
  o = c.optimizer
  assert (o.name, o.learning_rate, o.momentum, o.weight_decay) == (
      'sgd', 0.1, 0.9, 1e-4)
  assert o.warmup_steps == 25_022  # 5% of the run
  assert o.decay_steps == (150_137, 350_319, 450_410)  # epochs 30, 70, 90
  assert _lr(c, 0) == pytest.approx(1e-6, rel=1e-2)  # f32 cancellation
  np.testing.assert_allclose(
      [_lr(c, t) for t in (12_511, 25_022, 150_136, 150_137, 350_319,
                           450_410)],
      [0.05, 0.1, 0.1, 0.01, 1e-3, 1e-4], rtol=1e-4)
  s = c.sparsity_config
  assert (s.reg_peak, s.reg_span, s.prune_every) == (3e-4, 150_000, 5_000)
  assert (s.death_batches, s.death_batch_size) == (5, 256)
  assert load_config('imagenet_resnet50_demp',
                    'inception').dataset.crop == 'inception'
  _needs_model(c)
  assert _units(c) == 22_720


@pytest.mark.parametrize('name', PAPER)
def test_paper_configs_build_their_parts(name, tmp_path):
  c = load_config(name)
  create_updater_from_config(c.sparsity_config)
  optim.make_optimizer(c.optimizer, c.num_steps)
  # the data section is valid and, without data, says where and how
  c.dataset.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError) as e:
    load_dataset(c.dataset)
  assert str(tmp_path) in str(e.value)
  assert 'tfds build' in str(e.value)
  with pytest.raises(ValueError, match='config string'):
    load_config(name, 'huge')


@pytest.mark.parametrize('name', PAPER)
def test_tiny_variants_match_their_paper_config(name):
  big, tiny = load_config(name), load_config(name, 'tiny')
  assert tiny.dataset.name == 'synthetic'
  assert tiny.model.name == big.model.name
  assert tiny.optimizer.name == big.optimizer.name
  assert tiny.optimizer.schedule == big.optimizer.schedule
  assert tiny.label_smoothing == big.label_smoothing
  assert tiny.dataset.normalize == big.dataset.normalize
  splits = load_dataset(tiny.dataset)
  want = {'cifar10_resnet18_demp': (32, 32, 3), 'cifar10_vgg16_demp':
          (32, 32, 3), 'imagenet_resnet50_demp': (224, 224, 3)}[name]
  assert splits.train.example_shape == want


@pytest.mark.parametrize('name', PAPER)
def test_tiny_runs_end_to_end(name, tmp_path):
  from demp_jax.training import loop  # pylint: disable=g-import-not-at-top
  c = load_config(name, 'tiny')
  _needs_model(c)
  # One width bucket for everything: dead units are masked, never cut, so
  # the train step compiles once (a cut costs a second ~25 s compile of
  # ResNet-50 here; surgery has its own tests).
  c.round_widths_to = 1 << 20
  summary = loop.train(c, str(tmp_path))
  with open(tmp_path / 'summary.json') as f:
    on_disk = json.load(f)
  assert on_disk['status'] == 'ok'
  assert on_disk['steps'] == c.num_steps
  assert 0.0 <= summary['test_accuracy'] <= 1.0
  assert np.isfinite(summary['final_train_loss'])
  assert summary['units_final'] <= summary['units_initial']


def test_configs_load_by_path_without_the_repo_root_on_sys_path(tmp_path):
  """Each config loads by path from any working directory (as ``--config
  /path/to/configs/x.py`` loads it), the repository root off ``sys.path``."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  names = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs'))
                 if f.endswith('.py'))
  code = (
      'import importlib.util, sys\n'
      'assert not any(p and __import__("os").path.samefile(p, sys.argv[1])\n'
      '               for p in sys.path if __import__("os").path.isdir(p))\n'
      'for name in sys.argv[2:]:\n'
      '  spec = importlib.util.spec_from_file_location(\n'
      '      name, f"{sys.argv[1]}/configs/{name}.py")\n'
      '  mod = importlib.util.module_from_spec(spec)\n'
      '  spec.loader.exec_module(mod)\n'
      '  c = mod.get_config()\n'
      '  assert c.shrink_delay >= 0 and "distributed" in c, name\n'
      'print("ok", len(sys.argv) - 2)\n')
  r = subprocess.run([sys.executable, '-c', code, ROOT, *names], cwd=tmp_path,
                     capture_output=True, text=True, timeout=120,
                     env={k: v for k, v in os.environ.items()
                          if k != 'PYTHONPATH'})
  assert r.returncode == 0, r.stderr
  assert r.stdout.split() == ['ok', str(len(names))]


@pytest.mark.parametrize('name', PAPER + ('fashion_mnist_demp',
                                          'fashion_mnist_stripping',
                                          'cifar_vit_stripping'))
def test_every_trainer_setting_comes_from_config_blocks(name):
  from demp_jax.training import options  # pylint: disable=g-import-not-at-top
  c = load_config(name)
  opts = options.TrainOptions.from_config(c)
  assert opts.num_steps == c.num_steps
  del c.shrink_delay
  with pytest.raises(ValueError, match='config.shrink_delay is missing'):
    options.TrainOptions.from_config(c)
