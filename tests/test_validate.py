"""validate_config: every shipped config passes; each bad value is one
ConfigError naming the key, the value and what is allowed."""
import os
import time

import pytest

from demp_jax.training.validate import ConfigError, validate_config
from conftest import load_config as get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# config strings beyond '' (every file in configs/ with a get_config runs
# with '' at least)
STRINGS = {
    'fashion_mnist_demp': ('tiny',),
    'fashion_mnist_stripping': ('tiny',),
    'fashion_mnist_ap': ('tiny', 'structured', 'tiny,structured'),
    'cifar10_resnet18_demp': ('tiny', 'sgd'),
    'cifar10_vgg16_demp': ('tiny', 'sgd'),
    'cifar_vit_stripping': ('tiny',),
    'imagenet_resnet50_demp': ('tiny', 'inception'),
}


def config_files():
  out = []
  for f in sorted(os.listdir(os.path.join(ROOT, 'configs'))):
    with open(os.path.join(ROOT, 'configs', f)) as fh:
      if f.endswith('.py') and 'def get_config(' in fh.read():
        out.append(f[:-3])
  return out


def with_value(config, key, value):
  node = config
  *path, last = key.split('.')
  for p in path:
    node = node[p]
  node[last] = value
  return config


@pytest.mark.parametrize('name,arg', [(n, a) for n in config_files()
                                      for a in ('',) + STRINGS.get(n, ())])
def test_shipped_configs_pass(name, arg):
  config = get_config(name, arg)
  validate_config(config)  # imports the registries
  t0 = time.perf_counter()
  validate_config(config)  # twice is harmless
  assert time.perf_counter() - t0 < 1.0  # ~1 ms: no data, no device


# (key, bad value, words the message must hold besides the key and value)
BAD = [
    ('batch_size', 0, 'an integer >= 1'),
    ('eval_batch_size', -8, 'an integer >= 1'),
    ('num_steps', 0, 'an integer >= 1'),
    ('checkpoint_every', -1, 'an integer >= 0'),
    ('shrink_delay', -1, 'an integer >= 0'),
    ('round_widths_to', 0, 'an integer >= 1'),
    ('label_smoothing', 1.0, 'a number in [0, 1)'),
    ('seed', -1, 'an integer >= 0'),
    ('sparsity_config.reg_peak', -0.1, 'a finite number >= 0'),
    ('sparsity_config.noise_peak', float('nan'), 'a finite number >= 0'),
    ('sparsity_config.epsilon', float('inf'), 'a finite number >= 0'),
    ('sparsity_config.reg_span', 0, 'an integer >= 1'),
    ('sparsity_config.prune_every', 0, 'an integer >= 1'),
    ('sparsity_config.death_batches', 0, 'an integer >= 1'),
    ('sparsity_config.death_batch_size', 0, 'an integer >= 1'),
    ('sparsity_config.min_width', 0, 'an integer >= 1'),
    ('sparsity_config.constant_layer_tol', -1e-3, 'a finite number >= 0'),
    ('sparsity_config.regularizer', 'l3', 'a regularizer'),
    ('sparsity_config.algorithm', 'demq', 'a registered algorithm'),
    ('model.conv_widths', (8, 0), 'each an integer >= 1'),
    ('model.dense_widths', (-4,), 'each an integer >= 1'),
    ('model.name', 'vgq', 'a known model'),
    ('model.activation', 'rely', "did you mean 'relu'"),
    ('optimizer.name', 'adamm', 'a known optimizer'),
    ('optimizer.learning_rate', -1e-3, 'a finite number >= 0'),
    ('optimizer.weight_decay', float('nan'), 'a finite number >= 0'),
    ('optimizer.schedule', 'cos', 'a known schedule'),
    ('dataset.name', 'cifar11', 'a known dataset'),
    ('dataset.train_subset', -1, 'an integer >= 0'),
    ('dataset.augment', 'flipp', 'an augmentation'),
    ('resume', 1, 'True or False'),
    ('batch_size', 32.0, 'an integer >= 1'),
    ('model.conv_widths', 8, 'a sequence of values'),
]


@pytest.mark.parametrize('key,value,allowed', BAD)
def test_a_bad_value_names_key_value_and_what_is_allowed(key, value, allowed):
  config = get_config('fashion_mnist_demp', 'tiny').to_dict()  # untyped
  with pytest.raises(ConfigError) as e:
    validate_config(with_value(config, key, value))
  msg = str(e.value)
  assert '\n' not in msg
  assert f'config.{key}={value!r} is not ' in msg
  assert allowed in msg


@pytest.mark.parametrize('name,key,value,allowed', [
    ('fashion_mnist_stripping', 'sparsity_config.stripping_factor', 1.5,
     'a number in [0, 1]'),
    ('fashion_mnist_stripping', 'sparsity_config.probe_split', 'val',
     'a split'),
    ('fashion_mnist_ap', 'cycles.prune_rate', 1.0, 'a number in [0, 1)'),
    ('fashion_mnist_ap', 'cycles.rewind', 'never', 'a rewind'),
    ('fashion_mnist_ap', 'sparsity_config.ap_rate', -0.02,
     'a number in [0, 1)'),
    ('cifar10_resnet18_demp', 'model.base_width', 0, 'an integer >= 1'),
    ('cifar10_resnet18_demp', 'optimizer.momentum', 1.5,
     'a number in [0, 1]'),
    ('cifar10_resnet18_demp', 'optimizer.decay_steps', (100, -1),
     'each an integer >= 0'),
    ('cifar10_resnet18_demp', 'dataset.label_mode', 'medium',
     'a label mode'),
    ('cifar_vit_stripping', 'model.num_heads', 0, 'an integer >= 1'),
    ('imagenet_resnet50_demp', 'dataset.crop', 'random', 'an ImageNet crop'),
    ('imagenet_resnet50_demp', 'model.stage_sizes', (3, 0, 6, 3),
     'each an integer >= 1'),
])
def test_bad_values_in_the_other_setups(name, key, value, allowed):
  with pytest.raises(ConfigError) as e:
    validate_config(with_value(get_config(name), key, value))
  assert f'config.{key}={value!r} is not ' in str(e.value)
  assert allowed in str(e.value)


def test_ap_base_config_is_checked_as_sparsity_config():
  c = get_config('fashion_mnist_ap', 'structured')
  c.sparsity_config.base_config = {**c.sparsity_config.base_config,
                                   'min_width': 0}
  with pytest.raises(ConfigError,
                     match=r'sparsity_config\.base_config\.min_width=0'):
    validate_config(c)


def test_relations_between_keys():
  c = get_config('fashion_mnist_demp', 'tiny')
  c.dataset.source = 'archive'
  with pytest.raises(ConfigError, match="source='archive'.*'idx'"):
    validate_config(c)
  c = get_config('fashion_mnist_stripping', 'tiny')
  c.dataset.holdout = 0
  with pytest.raises(ConfigError, match='probe_split.*dataset.holdout'):
    validate_config(c)
  c = get_config('fashion_mnist_stripping', 'tiny')
  c.dataset.holdout = c.dataset.train_subset
  with pytest.raises(ConfigError, match='holdout=1280.*smaller'):
    validate_config(c)
  c = get_config('fashion_mnist_demp', 'tiny')
  c.distributed.process_id = 1
  with pytest.raises(ConfigError, match=r'process_id=1 .*\[0, .*=1\)'):
    validate_config(c)
  c.distributed.num_processes = 2  # without a coordinator: would wait
  with pytest.raises(ConfigError, match="coordinator_address='' is not a "
                     "'host:port'"):
    validate_config(c)
  c = get_config('fashion_mnist_demp', 'tiny')
  c.batch_size = 4096
  with pytest.raises(ConfigError, match='batch_size=4096 is not at most the '
                     '2048 training examples'):
    validate_config(c)
  c = get_config('imagenet_resnet50_demp')
  c.dataset.eval_resize = 200
  with pytest.raises(ConfigError, match='eval_resize=200 must be >= .*224'):
    validate_config(c)
  c = get_config('fashion_mnist_demp', 'tiny')
  validate_config(c, num_devices=4)
  with pytest.raises(ConfigError, match='batch_size=32 is not a multiple of '
                     'the 3 devices'):
    validate_config(c, num_devices=3)


def test_parts_check_their_own_keys():
  c = get_config('fashion_mnist_demp', 'tiny')
  c.model.unlock()
  c.model.conv_widths_typo = (8,)
  with pytest.raises(ConfigError, match='conv_widths_typo'):
    validate_config(c)
  c = get_config('fashion_mnist_demp', 'tiny')
  c.sparsity_config.algorithm = 'structured_magnitude'  # needs its schedule
  with pytest.raises(ConfigError, match='update_start_step'):
    validate_config(c)
  c.sparsity_config.algorithm = 'jaxpruner_magnitude'  # absent or too old
  with pytest.raises(ConfigError, match='jaxpruner'):
    validate_config(c)


def test_a_user_model_factory_is_imported_and_named_when_missing():
  c = get_config('fashion_mnist_demp', 'tiny')
  c.model.name = 'user_models:make_net_nnx'  # tests/ is on sys.path
  validate_config(c)
  c.model.name = 'my_package.models:make_net'
  with pytest.raises(ConfigError, match=r"'my_package.models'.*PYTHONPATH"):
    validate_config(c)
  c.model.name = 'user_models:no_such_factory'
  with pytest.raises(ConfigError, match='no_such_factory'):
    validate_config(c)
