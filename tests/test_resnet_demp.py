"""DemP on a ResNet-18 (narrow, synthetic CIFAR-shaped data): units go in
every stage, and the train step recompiles only when a bucket is crossed."""
import re

from configs import cifar10_resnet18_demp
from demp_jax.training import loop


def test_aggressive_demp_shrinks_every_stage_with_few_recompiles(tmp_path):
  c = cifar10_resnet18_demp.get_config('tiny')
  c.num_steps = 30
  c.batch_size = 32
  c.model.base_width = 4
  c.dataset.train_size = 2048
  c.optimizer.learning_rate = 0.05
  c.optimizer.decay_steps = (40,)
  c.round_widths_to = 4
  s = c.sparsity_config
  # one death check, at the last step: the fewest compiles that still shrink
  s.reg_peak = 2.0
  s.reg_span = 40
  s.prune_every = 30
  s.death_batches = 2
  s.death_batch_size = 256
  out = loop.train(c, str(tmp_path))
  stage_of = lambda name: re.match(r'block(\d)_', name)
  first = out['pruning_events'][0]
  assert first['step'] == 30
  lost = {}
  for name, live in out['live_units_final'].items():
    m = stage_of(name)
    if m:
      full = 4 * 2 ** int(m.group(1))
      lost[m.group(1)] = lost.get(m.group(1), 0) + (full - live)
  assert set(lost) == {'0', '1', '2', '3'}
  assert all(v > 0 for v in lost.values()), lost
  shrinks = sum('surgery_seconds' in e for e in out['pruning_events'])
  assert shrinks >= 1
  assert out['compiles'] == 1 + shrinks
  for e in out['pruning_events']:
    if 'surgery_seconds' in e:
      assert e['max_masked_diff'] <= 1e-5
