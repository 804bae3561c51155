"""DemP inside your own Flax NNX training loop, on Fashion-MNIST.

The loop is the one NNX teaches (``nnx.Optimizer``, ``nnx.jit``,
``optimizer.update(model, grads)``) around ``mymodels.NNXCNN``. demp-jax
adds three things: the DemP updater's optax transformation (the one-cycle
penalty on the BatchNorm scales before AdamW, the noise on live units after
it), a death check on held training batches every ``--prune-every`` steps
and at the end, and :func:`demp_jax.nnx_surgery.shrink`, which hands back a
narrower module and optimizer, checked on a probe batch::

    python examples/nnx_loop.py --out runs/nnx_loop.json

Fashion-MNIST comes from the Debian package (``make data``) or
``--data-dir`` with the four IDX files.
"""
import argparse
import json
import os
import sys
import time

import jax
import numpy as np
import optax
from flax import nnx

import demp_jax
from demp_jax import nnx_surgery, stats
from demp_jax.data import arrays, fashion_mnist
from demp_jax.net import Net

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mymodels import NNXCNN  # pylint: disable=wrong-import-position


@nnx.jit
def train_step(model, optimizer, x, y):
  def loss_fn(m):
    return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def correct(model, x, y, valid):
  return ((model(x).argmax(-1) == y) & valid).sum()


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--steps', type=int, default=1400)
  p.add_argument('--prune-every', type=int, default=200)
  p.add_argument('--reg-peak', type=float, default=5e-2)
  p.add_argument('--lr', type=float, default=5e-3, help='one-cycle peak')
  p.add_argument('--batch-size', type=int, default=128)
  p.add_argument('--data-dir', default=None)
  p.add_argument('--train-examples', type=int, default=None,
                 help='use the first N training examples (a quick check)')
  p.add_argument('--out', default=None, help='summary JSON')
  args = p.parse_args(argv)

  train = fashion_mnist.load('train', args.data_dir)
  test = fashion_mnist.load('test', args.data_dir)
  if args.train_examples:
    train = train.take(args.train_examples)
  mean, std = train.images.mean() / 255, train.images.std() / 255
  norm = lambda x: (np.asarray(x, np.float32) / 255 - mean) / std

  model = NNXCNN(nnx.Rngs(0))
  net, _ = Net.create(model, input_shape=train.example_shape)
  updater = demp_jax.create_updater_from_config(
      {'algorithm': 'demp', 'reg_peak': args.reg_peak,
       'reg_span': args.steps * 9 // 10}, topology=net.topology)
  lr = optax.cosine_onecycle_schedule(args.steps, args.lr)
  optimizer = nnx.Optimizer(
      model, updater.wrap_optax(optax.adamw(lr, weight_decay=5e-4)),
      wrt=nnx.Param)
  held = norm(arrays.held_batches(train, 16, 128, seed=1)[0])
  batches = arrays.train_batches(train, args.batch_size, seed=0)
  units = [sum(net.widths)]
  start = time.perf_counter()
  for step in range(1, args.steps + 1):
    x, y = next(batches)
    loss = train_step(model, optimizer, norm(x), y)
    if step % args.prune_every == 0 or step == args.steps:
      unit_stats = stats.saturation_stats(net, net.variables_of(model), held,
                                          updater.epsilon)
      res = nnx_surgery.shrink(
          net, model, updater.keep_from_stats(unit_stats),
          optimizer=optimizer, probe=held[0], fold_constants=True,
          constants=updater.constants(unit_stats))
      net, model, optimizer = res.net, res.model, res.optimizer
      units.append(sum(net.widths))
      print(f'step {step}: loss {float(loss):.3f}, removed {res.removed}, '
            f'widths {dict(zip(net.topology.names, net.widths))}, '
            f'max |shrunk - masked| {res.max_masked_diff:.2g}', flush=True)
  seconds = time.perf_counter() - start
  model.eval()
  hits = sum(int(correct(model, norm(x), y, valid))
             for x, y, valid in arrays.eval_batches(test, 500))
  summary = {
      'test_accuracy': hits / len(test), 'units': units,
      'neuron_sparsity': 1 - units[-1] / units[0],
      'widths': dict(zip(net.topology.names, net.widths)),
      'params': int(sum(np.size(l) for l in jax.tree.leaves(
          nnx.state(model, nnx.Param)))),
      'train_seconds': round(seconds, 1), 'steps': args.steps,
      'reg_peak': args.reg_peak, 'lr': args.lr, 'prune_every': args.prune_every,
      'jax': jax.__version__, 'device': jax.devices()[0].device_kind,
      'cpus': os.cpu_count(),
  }
  print(json.dumps(summary))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(summary, f, indent=1)
  return summary


if __name__ == '__main__':
  main()
