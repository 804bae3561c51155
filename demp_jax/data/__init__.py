"""Input pipelines: random-access sources plus the preprocessing per dataset.

:func:`load_dataset` turns ``config.dataset`` into :class:`Splits`:
Fashion-MNIST / MNIST (IDX files or tfds), CIFAR-10 / CIFAR-100 (official
archives or tfds), ImageNet (tfds ``imagenet2012``, decoded and cropped on
the host per batch) and a synthetic dataset of any shape. Every source
implements :class:`~demp_jax.data.arrays.Source`, so the training loop reads
them all the same way, each process only its slice of every global batch.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import numpy as np

from demp_jax.data.arrays import (ArrayDataset, Source, Subset, eval_batches,
                                  held_batches, prefetch, split, take,
                                  train_batches)

# Per-dataset channel mean/std of pixels in [0, 1] (the DemP reference's
# values for CIFAR and ImageNet).
NORMALIZATION = {
    'fashion_mnist': ((0.2860,), (0.3530,)),
    'mnist': ((0.1307,), (0.3081,)),
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    'cifar100': ((0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
                 (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)),
    'imagenet2012': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # The synthetic generator's marginal: 127.5 + 62.5 N(0, 1), clipped.
    'synthetic': ((0.5,), (0.24,)),
}

# name -> (accepted config.dataset.source values, number of classes or None
# when the config says).
DATASETS = {
    'fashion_mnist': (('auto', 'idx', 'tfds'), 10),
    'mnist': (('auto', 'idx', 'tfds'), 10),
    'cifar10': (('auto', 'archive', 'tfds'), 10),
    'cifar100': (('auto', 'archive', 'tfds'), 100),
    'imagenet2012': (('auto', 'tfds'), 1000),
    'synthetic': (('auto',), None),
}

# Any other image classification dataset of tensorflow-datasets, by name:
# ``'tfds:svhn_cropped'``, ``'tfds:emnist/letters'`` (read whole into host
# memory; its classes from the dataset's info, its normalisation measured
# on its training images unless the config gives mean and std).
TFDS_PREFIX = 'tfds:'
_TFDS_SOURCES = ('auto', 'tfds')

_COMMON_KEYS = ('name', 'source', 'data_dir', 'train_subset', 'test_subset',
                'holdout', 'augment', 'normalize', 'mean', 'std')
_EXTRA_KEYS = {
    'cifar10': ('label_mode',),
    'cifar100': ('label_mode',),
    'imagenet2012': ('image_size', 'resize_sizes', 'eval_resize', 'crop',
                     'num_threads', 'seed', 'draft'),
    TFDS_PREFIX: ('train_split', 'test_split', 'label_key'),
    'synthetic': ('image_shape', 'num_classes', 'train_size', 'test_size',
                  'signal', 'grid', 'seed'),
}


class Splits(NamedTuple):
  """A dataset's splits (random-access sources of uint8 images) and how to
  preprocess them: ``(x/255 - mean)/std`` on device, then the named
  ``augment`` (see :mod:`demp_jax.data.augment`) on training batches.
  ``holdout`` is a part of the training images kept out of training (for
  probes that must not see the training batches), or None.
  ``train_eval`` is the training split with the eval preprocessing, where
  ``train`` augments on the host (ImageNet); death checks and pruning
  scores should read it (the reference checks un-augmented training
  images). None means ``train`` is already un-augmented."""
  train: Source
  test: Source
  num_classes: int
  mean: tuple
  std: tuple
  augment: Optional[str] = None
  holdout: Optional[Source] = None
  train_eval: Optional[Source] = None


def load_dataset(config: Mapping[str, Any]) -> Splits:
  """Loads the dataset named by ``config.name`` with its normalisation.

  Keys of ``config`` (``config.dataset`` of a training config):

  * ``name``: one of :data:`DATASETS`, or ``'tfds:NAME'`` for any image
    classification dataset prepared for tensorflow-datasets (records with
    an ``image`` and a class label).
  * ``train_split`` / ``test_split`` (``tfds:`` only): tfds split strings
    (``'train'``, ``'test'``; e.g. ``'train[:90%]'``, ``'train[90%:]'`` for
    a dataset without a test split); ``label_key``: the label feature
    (``'label'``).
  * ``source``: where to read it; ``'auto'`` (default) picks the first that
    exists. ``'idx'``: IDX files in ``data_dir`` ((Fashion-)MNIST; Debian's
    ``dataset-fashion-mnist`` by default); ``'archive'``: the official CIFAR
    archives in ``data_dir`` (:mod:`demp_jax.data.cifar`); ``'tfds'``: a
    prepared tensorflow-datasets ``data_dir`` (never downloads).
  * ``data_dir``: the directory (None: the default of the source).
  * ``train_subset`` / ``test_subset``: keep the first N (0 = all).
  * ``holdout``: keep the last N training examples out of training.
  * ``augment``: on-device augmentation name (:mod:`~demp_jax.data.augment`).
  * ``normalize``: True (default): the dataset's mean/std
    (:data:`NORMALIZATION`); False: inputs in [0, 1] (mean 0, std 1).
    ``mean`` / ``std`` (per channel) override both.
  * cifar: ``label_mode`` ``'fine'`` or (CIFAR-100) ``'coarse'``.
  * imagenet2012: ``image_size`` (224), ``resize_sizes`` ((256, 480)),
    ``eval_resize`` (256), ``crop`` (``'reference'`` / ``'inception'``),
    ``num_threads`` (0: all cores), ``seed`` (host-side augmentation),
    ``draft`` (reduced-size JPEG decoding; True).
  * synthetic: ``image_shape`` ((32, 32, 3)), ``num_classes`` (10),
    ``train_size`` (2048), ``test_size`` (512), ``signal`` (1.0), ``grid``
    (4), ``seed`` (0); see :mod:`demp_jax.data.synthetic`.
  """
  check_config(config)
  cfg = dict(config)
  name = cfg['name']
  num_classes = DATASETS[name][1] if name in DATASETS else None
  source = cfg.get('source') or 'auto'
  data_dir = cfg.get('data_dir') or None
  train_eval = measured = None
  if name in ('fashion_mnist', 'mnist'):
    from demp_jax.data import fashion_mnist
    kwargs = dict(data_dir=data_dir, source=source, name=name)
    train = fashion_mnist.load('train', **kwargs)
    test = fashion_mnist.load('test', **kwargs)
  elif name in ('cifar10', 'cifar100'):
    label_mode = cfg.get('label_mode') or 'fine'
    train, test = _load_cifar(name, source, data_dir, label_mode)
    if label_mode == 'coarse':
      num_classes = 20
  elif name == 'imagenet2012':
    train, test = _load_imagenet(cfg, data_dir)
    train_eval = train.eval_view()
  elif name.startswith(TFDS_PREFIX):
    from demp_jax.data import tfds_source
    train, test, num_classes = tfds_source.load_classification(
        name[len(TFDS_PREFIX):], data_dir,
        cfg.get('train_split') or 'train', cfg.get('test_split') or 'test',
        cfg.get('label_key') or 'label')
    if cfg.get('normalize', True) and not (cfg.get('mean') and
                                           cfg.get('std')):
      measured = pixel_statistics(train.images)
  else:
    from demp_jax.data import synthetic
    shape = tuple(int(s) for s in (cfg.get('image_shape') or (32, 32, 3)))
    num_classes = int(cfg.get('num_classes') or 10)
    kw = dict(image_shape=shape, num_classes=num_classes,
              seed=int(cfg.get('seed') or 0),
              signal=float(cfg.get('signal', 1.0)),
              grid=int(cfg.get('grid') or 4))
    train = synthetic.SyntheticSource(int(cfg.get('train_size') or 2048),
                                      split=0, **kw)
    test = synthetic.SyntheticSource(int(cfg.get('test_size') or 512),
                                     split=1, **kw)
  if cfg.get('test_subset'):
    test = take(test, int(cfg['test_subset']))
  holdout = None
  if cfg.get('train_subset'):
    n = int(cfg['train_subset'])
    train = take(train, n)
    train_eval = take(train_eval, n) if train_eval is not None else None
  if cfg.get('holdout'):
    n = int(cfg['holdout'])
    if n >= len(train):
      raise ValueError(f'config.dataset.holdout={n} leaves none of the '
                       f'{len(train)} training examples of {name}; it must '
                       'be smaller')
    train, holdout = split(train, n)
    if train_eval is not None:
      train_eval, holdout = split(train_eval, n)  # un-augmented held-out
  mean, std = _normalization(name, cfg, int(train.example_shape[-1]),
                             measured)
  return Splits(train, test, int(num_classes), mean, std, cfg.get('augment'),
                holdout, train_eval)


def check_config(config: Mapping[str, Any]) -> None:
  """Checks ``config.dataset`` without reading any file: a known name, its
  keys, a source it can be read from, and a holdout smaller than the
  training examples where their number is known. Raises ``ValueError``
  naming the key."""
  cfg = dict(config)
  name = cfg.get('name')
  generic = is_tfds_name(name)
  if name not in DATASETS and not generic:
    raise ValueError(f'config.dataset.name={name!r} is not a known dataset; '
                     f'known: {sorted(DATASETS)}, or {TFDS_PREFIX}NAME for '
                     'any tensorflow-datasets image classification dataset '
                     f"(e.g. '{TFDS_PREFIX}svhn_cropped')")
  kind = TFDS_PREFIX if generic else name
  allowed = set(_COMMON_KEYS) | set(_EXTRA_KEYS.get(kind, ()))
  if not generic:  # a config's tfds:NAME keys, left unset
    for key in _EXTRA_KEYS[TFDS_PREFIX]:
      if key in cfg and cfg[key] is not None:
        raise ValueError(f'config.dataset.{key}={cfg[key]!r} applies to '
                         f'{TFDS_PREFIX}NAME datasets only, not {name!r}')
      allowed.add(key)
  unknown = sorted(set(cfg) - allowed)
  if unknown:
    raise ValueError(f'config.dataset has unknown key(s) {unknown} for '
                     f'dataset {name!r}; valid keys: {sorted(allowed)}')
  sources = _TFDS_SOURCES if generic else DATASETS[name][0]
  source = cfg.get('source') or 'auto'
  if source not in sources:
    raise ValueError(f'config.dataset.source={source!r} is not valid for '
                     f'{name!r}; use one of {list(sources)}')
  holdout = int(cfg.get('holdout') or 0)
  left = train_examples(cfg)
  if holdout and left is not None and left <= 0:
    raise ValueError(f'config.dataset.holdout={holdout} leaves no training '
                     f'examples of {left + holdout}; it must be smaller')
  if name == 'imagenet2012':
    size = int(cfg.get('image_size') or 224)
    for key in ('resize_sizes', 'eval_resize'):
      value = cfg.get(key)
      if value and min(value if isinstance(value, (list, tuple))
                       else [value]) < size:
        raise ValueError(f'config.dataset.{key}={value!r} must be >= '
                         f'config.dataset.image_size={size}')


def train_examples(config: Mapping[str, Any]) -> Optional[int]:
  """The training examples ``config.dataset`` leaves, as far as it says
  without reading a file: ``train_subset`` (or a synthetic ``train_size``)
  less the ``holdout``; None when only the files know."""
  cfg = dict(config)
  known = [int(cfg['train_subset'])] if cfg.get('train_subset') else []
  if cfg.get('name') == 'synthetic':
    known.append(int(cfg.get('train_size') or 2048))
  return min(known) - int(cfg.get('holdout') or 0) if known else None


def is_tfds_name(name: Any) -> bool:
  """``name`` is ``'tfds:NAME'`` (a tensorflow-datasets dataset)."""
  return (isinstance(name, str) and name.startswith(TFDS_PREFIX) and
          len(name) > len(TFDS_PREFIX))


def _normalization(name: str, cfg: Mapping[str, Any], channels: int,
                   measured: Optional[tuple] = None):
  """``(mean, std)`` per channel: the config's, else the dataset's known
  ones or those ``measured`` on its training images, else 0 and 1."""
  mean, std = (0.0,), (1.0,)
  if cfg.get('normalize', True):
    mean, std = NORMALIZATION.get(name) or measured or (mean, std)
  mean = tuple(float(m) for m in (cfg.get('mean') or mean))
  std = tuple(float(s) for s in (cfg.get('std') or std))
  out = []
  for key, v in (('mean', mean), ('std', std)):
    if len(v) == 1:
      v = v * channels
    if len(v) != channels:
      raise ValueError(f'config.dataset.{key} has {len(v)} entries for '
                       f'{channels}-channel images')
    out.append(v)
  if min(out[1]) <= 0:
    raise ValueError(f'config.dataset.std must be positive, got {out[1]}')
  return out[0], out[1]


def pixel_statistics(images: np.ndarray, chunk: int = 4096
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and standard deviation of uint8 ``images [N, H, W,
  C]`` scaled to [0, 1], in float64 over chunks of ``chunk`` images."""
  c = images.shape[-1]
  total, squares, count = np.zeros(c), np.zeros(c), 0
  for i in range(0, len(images), chunk):
    x = images[i:i + chunk].reshape(-1, c).astype(np.float64) / 255.0
    total += x.sum(0)
    squares += (x * x).sum(0)
    count += x.shape[0]
  mean = total / max(count, 1)
  std = np.sqrt(np.maximum(squares / max(count, 1) - mean * mean, 0.0))
  return tuple(mean.tolist()), tuple(np.maximum(std, 1e-3).tolist())


def _load_cifar(name: str, source: str, data_dir: Optional[str],
                label_mode: str):
  from demp_jax.data import cifar
  if source == 'archive' or (source == 'auto' and data_dir and
                             cifar.find(name, data_dir) is not None):
    return (cifar.load(name, data_dir, 'train', label_mode),
            cifar.load(name, data_dir, 'test', label_mode))
  from demp_jax.data import tfds_source
  if (name, label_mode) not in cifar.NUM_CLASSES:
    raise ValueError(f'config.dataset.label_mode={label_mode!r} is not valid '
                     f'for {name}')
  key = 'label' if label_mode == 'fine' else 'coarse_label'
  try:
    return (tfds_source.load_arrays(name, data_dir, 'train', key),
            tfds_source.load_arrays(name, data_dir, 'test', key))
  except FileNotFoundError as e:
    if source == 'tfds':
      raise
    raise FileNotFoundError(
        f'{name}: no official archive in config.dataset.data_dir='
        f'{data_dir!r} and no prepared tfds dataset. ' +
        cifar.how_to_get(name, data_dir) + f' [tfds: {e}]') from None


def _load_imagenet(cfg: Mapping[str, Any], data_dir: Optional[str]):
  from demp_jax.data import imagenet
  from demp_jax.data import tfds_source
  kw = dict(image_size=int(cfg.get('image_size') or 224),
            resize_sizes=tuple(cfg.get('resize_sizes') or (256, 480)),
            eval_resize=int(cfg.get('eval_resize') or 256),
            crop=cfg.get('crop') or 'reference',
            seed=int(cfg.get('seed') or 0),
            num_threads=int(cfg.get('num_threads') or 0),
            draft=bool(cfg.get('draft', True)))
  records = {s: tfds_source.data_source('imagenet2012', data_dir, s,
                                        raw_images=True)
             for s in ('train', 'test')}
  return (imagenet.ImageNetSource(records['train'], True, **kw),
          imagenet.ImageNetSource(records['test'], False, **kw))


def normalize(images, mean, std):
  """uint8 ``[..., C]`` -> float32 ``(x/255 - mean) / std`` (jnp or np)."""
  import jax.numpy as jnp  # keep module import light
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


__all__ = ['ArrayDataset', 'DATASETS', 'NORMALIZATION', 'Source', 'Splits',
           'Subset', 'check_config', 'eval_batches', 'held_batches',
           'load_dataset', 'normalize', 'prefetch', 'split', 'take',
           'train_batches', 'train_examples']
