"""One check of a whole training config, before anything runs.

:func:`validate_config` reads every leaf of a config under its dotted key
(``sparsity_config.reg_peak``), checks it against :data:`RULES`, a table of
keys and the values each allows, then the few facts that relate two keys
(a dataset's sources, a holdout that needs a dataset holdout, ...), then
builds the parts that are cheap to build and check themselves: the model's
module (not its weights), the updater and the optimiser. It reads no data,
initialises no device, compiles nothing and writes nothing, so a bad value
stops a run in well under a second with one :class:`ConfigError`::

    config.batch_size=0 is not an integer >= 1

A key that a config does not have is not checked (configs differ: cycles,
AP, stripping, ViT, ResNet); a key that no rule names is left to the part
that reads it. The function has no state: calling it twice is harmless.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import numbers
from typing import Any, Callable, Iterable, Mapping, Optional


class ConfigError(ValueError):
  """A config value is out of its range or not in its registry; the message
  names the key, the value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Allowed:
  """The values a key allows: ``ok(value)``, and ``what()`` describes them
  (a noun phrase: the message is ``config.KEY=VALUE is not WHAT``)."""
  ok: Callable[[Any], bool]
  what: Callable[[], str]
  names: Optional[Callable[[], Iterable[str]]] = None  # a registry's


def _is_int(v: Any) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
  return (isinstance(v, numbers.Real) and not isinstance(v, bool) and
          math.isfinite(float(v)))


def integer(lo: int, optional: bool = False) -> Allowed:
  """An integer ``>= lo`` (or None when ``optional``)."""
  return Allowed(lambda v: (optional and v is None) or (_is_int(v) and v >= lo),
                 lambda: f'an integer >= {lo}' + (' or None' * optional))


def number(lo: float = 0.0, hi: Optional[float] = None, hi_open: bool = False,
           lo_open: bool = False, optional: bool = False) -> Allowed:
  """A finite real in ``[lo, hi]`` (open ends where asked)."""
  def ok(v):
    if optional and v is None:
      return True
    if not _is_real(v):
      return False
    v = float(v)
    return ((v > lo if lo_open else v >= lo) and
            (hi is None or (v < hi if hi_open else v <= hi)))

  def what():
    if hi is None:
      return 'a finite number' + (
          f' {">" if lo_open else ">="} {lo:g}' * math.isfinite(lo))
    return (f'a number in {"(" if lo_open else "["}{lo:g}, {hi:g}'
            f'{")" if hi_open else "]"}') + (' or None' * optional)
  return Allowed(ok, what)


def one_of(names: Callable[[], Iterable[str]], noun: str,
           optional: bool = False) -> Allowed:
  """A name in the registry ``names()`` (read when checked, so algorithms
  registered later count); None or '' too when ``optional``."""
  return Allowed(
      lambda v: (optional and not v) or (isinstance(v, str) and v in set(
          names())),
      lambda: f'{noun} (one of {sorted(names())})', names)


def sequence(item: Allowed, length: Optional[int] = None,
             optional: bool = False) -> Allowed:
  """A list or tuple of ``item``s (of ``length`` items when given)."""
  def ok(v):
    if optional and v is None:
      return True
    return (isinstance(v, (list, tuple)) and
            (length is None or len(v) == length) and all(map(item.ok, v)))
  size = '' if length is None else f'{length} '
  return Allowed(ok, lambda: f'a sequence of {size}values, each '
                 f'{item.what()}' + (' (or None)' * optional))


FLAG = Allowed(lambda v: isinstance(v, bool), lambda: 'True or False')
TEXT = Allowed(lambda v: v is None or isinstance(v, str),
               lambda: 'a string or None')


def registry(module: str, name: str) -> Callable[[], Iterable[str]]:
  """The names in ``module.name`` (a dict or tuple), imported when first
  checked: importing this module stays light, and what is registered
  later counts."""
  return lambda: getattr(importlib.import_module(module), name)


_MODELS = registry('demp_jax.models', 'MODELS')
_ALGORITHMS = registry('demp_jax.algorithms', 'ALGORITHM_REGISTRY')


def _dataset_name() -> Allowed:
  """A known dataset, or ``tfds:NAME`` (any tfds image classification
  dataset)."""
  known = registry('demp_jax.data', 'DATASETS')
  generic = registry('demp_jax.data', 'is_tfds_name')
  return Allowed(
      lambda v: isinstance(v, str) and (v in known() or generic()(v)),
      lambda: (f'a known dataset (one of {sorted(known())}) or tfds:NAME '
               '(a prepared tensorflow-datasets image classification '
               'dataset)'), known)


def _model_name() -> Allowed:
  """A built-in model, or ``package.module:factory`` (a user's model)."""
  return Allowed(
      lambda v: isinstance(v, str) and (v in _MODELS() or ':' in v),
      lambda: (f'a known model (one of {sorted(_MODELS())}) or a '
               "'package.module:factory' of your own"))


_COUNT = integer(1)    # zero makes no sense
_COUNT0 = integer(0)   # zero means none / all / off
_STEP = integer(0, optional=True)  # a step, None for "the default"
_RATE = number(0.0)    # finite, >= 0
_FRACTION = number(0.0, 1.0)
_WIDTHS = sequence(_COUNT)

# Every checked key and the values it allows. Keys under
# ``sparsity_config.base_config.`` (AP's base) are checked as the same key
# under ``sparsity_config.``.
RULES: dict[str, Allowed] = {
    'seed': _COUNT0,
    'num_steps': _COUNT,
    'epochs': _COUNT,
    'steps_per_epoch': _COUNT,
    'batch_size': _COUNT,
    'eval_batch_size': _COUNT,
    'label_smoothing': number(0.0, 1.0, hi_open=True),
    'checkpoint_every': _COUNT0,
    'resume': FLAG,
    'log_every': _COUNT,
    'eval_every': _COUNT0,
    'round_widths_to': _COUNT,
    'shrink_delay': _COUNT0,
    'progress': FLAG,
    'bn_recalibration_batches': _COUNT0,
    'distributed.num_processes': _COUNT,
    'distributed.process_id': _COUNT0,
    'distributed.coordinator_address': TEXT,
    'distributed.auto': FLAG,
    # data (sources and dataset-specific keys: demp_jax.data.check_config)
    'dataset.name': _dataset_name(),
    'dataset.train_split': TEXT,
    'dataset.test_split': TEXT,
    'dataset.label_key': TEXT,
    'dataset.data_dir': TEXT,
    'dataset.train_subset': _COUNT0,
    'dataset.test_subset': _COUNT0,
    'dataset.holdout': _COUNT0,
    'dataset.augment': one_of(
        registry('demp_jax.data.augment', 'AUGMENTATIONS'),
        'an augmentation or None', optional=True),
    'dataset.normalize': FLAG,
    'dataset.mean': sequence(number(-math.inf), optional=True),
    'dataset.std': sequence(number(0.0, lo_open=True), optional=True),
    'dataset.label_mode': one_of(lambda: ('fine', 'coarse'), 'a label mode'),
    'dataset.image_size': _COUNT,
    'dataset.resize_sizes': sequence(_COUNT),
    'dataset.eval_resize': _COUNT,
    'dataset.crop': one_of(registry('demp_jax.data.imagenet', 'CROPS'),
                           'an ImageNet crop'),
    'dataset.num_threads': _COUNT0,
    'dataset.seed': _COUNT0,
    'dataset.draft': FLAG,
    'dataset.image_shape': sequence(_COUNT, length=3),
    'dataset.num_classes': integer(2),
    'dataset.train_size': _COUNT,
    'dataset.test_size': _COUNT,
    'dataset.signal': _RATE,
    'dataset.grid': _COUNT,
    # model
    'model.name': _model_name(),
    'model.num_classes': integer(2),
    'model.widths': _WIDTHS,
    'model.conv_widths': _WIDTHS,
    'model.dense_widths': _WIDTHS,
    'model.unit_widths': sequence(_COUNT, optional=True),
    'model.last_conv_width': integer(1, optional=True),
    'model.pool_after': sequence(_COUNT0),
    'model.head_pool': _COUNT0,
    'model.activation': one_of(
        registry('demp_jax.models.layers', 'ACTIVATIONS'), 'an activation'),
    'model.use_bn': FLAG,
    'model.conv_bias': FLAG,
    'model.stage_sizes': sequence(_COUNT),
    'model.block': one_of(lambda: ('basic', 'bottleneck'), 'a ResNet block'),
    'model.base_width': _COUNT,
    'model.stem': one_of(lambda: ('cifar', 'imagenet'), 'a ResNet stem'),
    'model.pool_size': integer(1, optional=True),
    'model.zero_init_last_bn': FLAG,
    'model.patch_size': _COUNT,
    'model.hidden_size': _COUNT,
    'model.depth': _COUNT,
    'model.num_heads': _COUNT,
    'model.mlp_dim': _COUNT,
    'model.mlp_out_activation': FLAG,
    'model.prune_heads': FLAG,
    # optimiser
    'optimizer.name': one_of(
        registry('demp_jax.training.optim', 'OPTIMIZERS'), 'a known optimizer'),
    'optimizer.learning_rate': _RATE,
    'optimizer.schedule': one_of(
        registry('demp_jax.training.optim', 'SCHEDULES'), 'a known schedule'),
    'optimizer.weight_decay': _RATE,
    'optimizer.momentum': _FRACTION,
    'optimizer.nesterov': FLAG,
    'optimizer.b1': number(0.0, 1.0, hi_open=True),
    'optimizer.b2': number(0.0, 1.0, hi_open=True),
    'optimizer.eps': _RATE,
    'optimizer.warmup_steps': _COUNT0,
    'optimizer.decay_steps': sequence(_COUNT0),
    'optimizer.decay_factor': _RATE,
    'optimizer.grad_clip': number(0.0, optional=True),
    # the updater (every registered algorithm's keys)
    'sparsity_config.algorithm': one_of(_ALGORITHMS, 'a registered algorithm'),
    'sparsity_config.base': one_of(_ALGORITHMS, 'a registered algorithm'),
    'sparsity_config.reg_peak': _RATE,
    'sparsity_config.reg_span': _COUNT,
    'sparsity_config.regularizer': one_of(
        registry('demp_jax.transforms', 'REGULARIZERS'), 'a regularizer'),
    'sparsity_config.reg_strength': _RATE,
    'sparsity_config.noise_peak': _RATE,
    'sparsity_config.noise_seed': _COUNT0,
    'sparsity_config.prune_every': _COUNT,
    'sparsity_config.prune_start': _STEP,
    'sparsity_config.prune_step': _STEP,
    'sparsity_config.death_batches': _COUNT,
    'sparsity_config.death_batch_size': _COUNT,
    'sparsity_config.epsilon': _RATE,
    'sparsity_config.min_width': _COUNT,
    'sparsity_config.fold_constants': FLAG,
    'sparsity_config.constant_layer_tol': _RATE,
    'sparsity_config.sparsity': _FRACTION,
    'sparsity_config.dist_type': one_of(lambda: ('global', 'uniform', 'erk'),
                                        'a sparsity distribution'),
    'sparsity_config.update_freq': _COUNT,
    'sparsity_config.update_start_step': _STEP,
    'sparsity_config.update_end_step': _STEP,
    'sparsity_config.drop_fraction': _FRACTION,
    'sparsity_config.power': _COUNT,
    'sparsity_config.use_normalization': FLAG,
    'sparsity_config.score_batches': _COUNT,
    'sparsity_config.score_batch_size': _COUNT,
    'sparsity_config.score_train_mode': FLAG,
    'sparsity_config.pruning_steps': _COUNT,
    'sparsity_config.check_every': _COUNT,
    'sparsity_config.modulate_threshold': FLAG,
    'sparsity_config.max_prune_step': _STEP,
    'sparsity_config.stripping_factor': _FRACTION,
    'sparsity_config.strip_every': _COUNT,
    'sparsity_config.strip_start': _STEP,
    'sparsity_config.strip_at_end': FLAG,
    'sparsity_config.strip_groups': sequence(TEXT, optional=True),
    'sparsity_config.probe_split': one_of(lambda: ('train', 'holdout', 'test'),
                                          'a split'),
    'sparsity_config.probe_batches': _COUNT,
    'sparsity_config.probe_batch_size': _COUNT,
    'sparsity_config.ap_rate': number(0.0, 1.0, hi_open=True),
    'sparsity_config.jaxpruner_tree_map_alias': FLAG,
    # iterative pruning with rewinding (experiments.ap)
    'cycles.rounds': _COUNT0,
    'cycles.epochs_per_round': _COUNT,
    'cycles.steps_per_round': _COUNT,
    'cycles.prune_rate': number(0.0, 1.0, hi_open=True),
    'cycles.rewind': one_of(registry('demp_jax.training.cycles', 'REWIND'),
                             'a rewind'),
    'cycles.probe_batches': _COUNT,
    'cycles.probe_batch_size': _COUNT,
    'cycles.score_split': one_of(lambda: ('train', 'holdout'), 'a split'),
    'cycles.dnr_split': one_of(lambda: ('test', 'holdout', 'train'), 'a split'),
}


def flatten(config: Any, prefix: str = '') -> dict[str, Any]:
  """``{dotted key: value}`` of every leaf (a mapping's items are
  descended into; lists and tuples are leaves)."""
  if hasattr(config, 'to_dict'):
    config = config.to_dict()  # resolves FieldReferences
  out: dict[str, Any] = {}
  for k, v in config.items():
    if hasattr(v, 'to_dict') or isinstance(v, Mapping):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _fail(key: str, value: Any, what: str) -> ConfigError:
  return ConfigError(f'config.{key}={value!r} is not {what}')


def _rule(key: str) -> Optional[Allowed]:
  return RULES.get(key.replace('sparsity_config.base_config.',
                               'sparsity_config.'))


def _check_rules(flat: Mapping[str, Any]) -> None:
  for key, value in flat.items():
    allowed = _rule(key)
    if allowed is not None and not allowed.ok(value):
      what = allowed.what()
      if isinstance(value, str) and allowed.names is not None:
        close = difflib.get_close_matches(value, list(allowed.names()), 1)
        if close:
          what += f'; did you mean {close[0]!r}?'
      raise _fail(key, value, what)


def _check_relations(flat: Mapping[str, Any], config: Any,
                     num_devices: Optional[int]) -> None:
  """The facts that relate two keys."""
  n = flat.get('distributed.num_processes', 1)
  if flat.get('distributed.process_id', 0) >= n:
    raise _fail('distributed.process_id', flat['distributed.process_id'],
                f'an integer in [0, distributed.num_processes={n})')
  if n > 1 and not flat.get('distributed.coordinator_address'):
    raise _fail('distributed.coordinator_address',
                flat.get('distributed.coordinator_address'),
                f"a 'host:port' (needed by num_processes={n})")
  if 'dataset' in config:
    from demp_jax import data  # pylint: disable=g-import-not-at-top
    try:
      data.check_config(config['dataset'])
    except ValueError as e:
      raise ConfigError(str(e)) from None
    left = data.train_examples(config['dataset'])
    if left is not None and flat.get('batch_size', 0) > left:
      raise _fail('batch_size', flat['batch_size'], f'at most the {left} '
                  'training examples config.dataset leaves (train_subset '
                  'or train_size, less holdout)')
  for key in ('sparsity_config.probe_split', 'cycles.score_split',
              'cycles.dnr_split'):
    _require_holdout(flat, key, flat.get(key))
  if num_devices:
    for key in ('batch_size', 'eval_batch_size'):
      if key in flat and flat[key] % num_devices:
        raise _fail(key, flat[key], f'a multiple of the {num_devices} '
                    'devices of the data axis')


def _check_parts(config: Any) -> None:
  """Builds what is cheap to build (no weights, no data) so that each
  part checks its own invariants: unknown keys, a base AP cannot wrap, a
  schedule without the keys it needs."""
  name = str(config['model'].get('name')) if 'model' in config else ''
  if ':' in name:  # a user model: its factory must import (not run here)
    from demp_jax import net  # pylint: disable=g-import-not-at-top
    _as_config_error(net.load_factory, name)
  elif 'model' in config:
    from demp_jax import models  # pylint: disable=g-import-not-at-top
    cfg = dict(config['model'])
    cfg.setdefault('num_classes', 10)
    _as_config_error(models.build_model, cfg)
  if 'sparsity_config' in config:
    from demp_jax.algorithms import create_updater_from_config  # pylint: disable=g-import-not-at-top
    updater = _as_config_error(create_updater_from_config,
                               config['sparsity_config'])
    # the algorithm's own default, when the config does not set it
    _require_holdout(flatten(config), 'sparsity_config.probe_split',
                     getattr(updater, 'probe_split', None),
                     default_of=config['sparsity_config'].get('algorithm'))
  if 'optimizer' in config:
    from demp_jax.training import optim  # pylint: disable=g-import-not-at-top
    _as_config_error(optim.make_optimizer, config['optimizer'],
                     int(config.get('num_steps', 1) or 1))


def _require_holdout(flat: Mapping[str, Any], key: str, split: Any,
                     default_of: Optional[str] = None) -> None:
  """A ``ConfigError`` when ``split`` (the value of ``key``, or the
  default of algorithm ``default_of``) is ``'holdout'`` and the dataset
  keeps no holdout."""
  if split != 'holdout' or flat.get('dataset.holdout'):
    return
  fix = ('set it to a number of training examples to keep out of '
         'training, or probe another split')
  if default_of is None:
    raise _fail(key, 'holdout', "'holdout' without config.dataset.holdout "
                f'({fix})')
  raise ConfigError(
      f"sparsity_config.algorithm={default_of!r} probes the 'holdout' split "
      'by default, and config.dataset.holdout is not set: '
      f'{fix} (config.{key})')


def _as_config_error(fn, *args) -> Any:
  """Runs ``fn`` and returns its result; its errors become a ConfigError
  (their messages name the key; ImportError / RuntimeError: an optional
  package that is missing or does not work here, e.g. JaxPruner)."""
  try:
    return fn(*args)
  except (ValueError, TypeError, KeyError, ImportError, RuntimeError) as e:
    raise ConfigError(str(e.args[0] if isinstance(e, KeyError) and e.args
                          else e)) from None


def validate_config(config: Any, num_devices: Optional[int] = None) -> None:
  """Checks every value of a training config before anything runs.

  Args:
    config: an ``ml_collections.ConfigDict`` (or a nested mapping) as
      ``experiments/train.py`` loads it.
    num_devices: the devices of the data axis, when known (the batch sizes
      must be multiples of it); None skips that check, so no backend is
      initialised here (``jax.distributed`` must come first).

  Raises:
    ConfigError: the first bad value, as one line naming the key, the
      value and what is allowed.
  """
  flat = flatten(config)
  _check_rules(flat)
  _check_relations(flat, config, num_devices)
  _check_parts(config)
