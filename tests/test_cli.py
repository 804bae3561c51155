"""The command line: every bad input is one ``error: ...`` line on stderr,
a non-zero exit within seconds, and nothing written to the workdir."""
import gzip
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 'configs/fashion_mnist_demp.py:tiny'
SECONDS = 30  # python + jax start-up on a loaded 2-core machine: ~2-5 s


def run(*args, config=TINY, module='experiments.train'):
  argv = [sys.executable, '-m', module] + (
      ['--config', config] if config else []) + list(args)
  t0 = time.perf_counter()
  r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                     timeout=120)
  return r, time.perf_counter() - t0


def one_error_line(r) -> str:
  """The only line of a run's stderr (``r``: a CompletedProcess or capsys's
  capture), which must be ``error: ...``; nothing on stdout."""
  err, out = (r.stderr, r.stdout) if hasattr(r, 'stderr') else (r.err, r.out)
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith('error: '), err
  assert 'Traceback' not in err and out == ''
  return lines[0]


@pytest.mark.parametrize('override,expected', [
    ('--config.batch_size=0', 'config.batch_size=0 is not an integer >= 1'),
    ('--config.sparsity_config.reg_peak=-0.1',
     'config.sparsity_config.reg_peak=-0.1 is not a finite number >= 0'),
    ('--config.sparsity_config.noise_peak=nan',
     'config.sparsity_config.noise_peak=nan is not a finite number >= 0'),
    ('--config.model.conv_widths=(8,0)',
     'config.model.conv_widths=(8, 0) is not a sequence of values, each an '
     'integer >= 1'),
    ('--config.model.name=vgq', "config.model.name='vgq' is not a known model"),
    ('--config.optimizer.name=adamm',
     "config.optimizer.name='adamm' is not a known optimizer"),
    # the algorithm's default probe split, not set in the config
    ('--config.sparsity_config.algorithm=synaptic_stripping',
     "probes the 'holdout' split by default, and config.dataset.holdout is "
     'not set'),
    ('--config.log_every=0', 'config.log_every=0 is not an integer >= 1'),
    ('--config.model.pool_after=(0,7)',
     'config.model.pool_after=(0, 7) names conv 7, and the model has 2 '
     'convs'),
])
def test_a_bad_config_value_stops_before_anything_runs(tmp_path, override,
                                                       expected):
  work = tmp_path / 'run'
  r, seconds = run('--workdir', str(work), override)
  assert r.returncode == 2
  assert expected in one_error_line(r)
  assert seconds < SECONDS
  assert not work.exists()  # nothing written, not even the directory


@pytest.mark.parametrize('factory, expected', [
    ('make_logits_and_features', 'returns a tuple of 2 arrays; the trainer '
     'needs the logits alone, one array [B, 10]'),
    ('make_five_classes', 'maps a batch of 2 to logits of shape (2, 5); the '
     'dataset needs (2, 10)'),
    ('make_class', 'returned the class LayerNormMLPFM; the factory must '
     'return a module (an instance, LayerNormMLPFM(...))'),
])
def test_a_user_model_that_does_not_return_the_logits_is_named(
    tmp_path, factory, expected):
  work = tmp_path / 'run'
  r, seconds = run('--workdir', str(work),
                   f'--config.model.name=tests.user_models:{factory}')
  assert r.returncode == 1  # found when the model is built, not validated
  # before it, the notice that the config's model settings are not used
  *notice, line = r.stderr.strip().splitlines()
  assert [n for n in notice if 'takes no settings' not in n] == []
  assert line.startswith('error: ') and r.stdout == ''
  assert f"config.model.name='tests.user_models:{factory}'" in line
  assert expected in line
  assert seconds < SECONDS
  assert not work.exists()


@pytest.mark.parametrize('module,target,config', [
    ('experiments.train', 'demp_jax.training.loop:train', TINY),
    ('experiments.ap', 'demp_jax.training.cycles:run_cycles',
     'configs/fashion_mnist_ap.py:tiny')])
def test_a_shrink_that_fails_its_probe_check_is_one_line(tmp_path, module,
                                                         target, config):
  """A SurgeryError (a shrunk network that does not match the masked one)
  ends the run with one line naming it, exit code 1 (it was a traceback,
  in both scripts)."""
  work = tmp_path / 'run'
  where, name = target.split(':')
  code = ('import runpy, sys; from demp_jax import surgery\n'
          f'import {where} as target\n'
          'def fails(config, workdir):\n'
          '  raise surgery.SurgeryError("shrunk logits differ from the masked '
          'logits")\n'
          f'target.{name} = fails\n'
          f'sys.argv = ["x", "--config", {config!r}, "--workdir", '
          f'{str(work)!r}]\n'
          f'runpy.run_module({module!r}, run_name="__main__")')
  r = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 1, r.stderr[-2000:]
  assert one_error_line(r) == ('error: shrunk logits differ from the masked '
                               'logits')


def test_config_files_that_do_not_load(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text('def get_config(:\n  pass\n')
  raises = tmp_path / 'raises.py'
  raises.write_text('def get_config():\n  return undefined_name\n')
  cases = [
      ('configs/x.py', 'error: config file configs/x.py: no such file'),
      (str(bad), f'error: config file {bad}: syntax error at line 1'),
      (str(raises), f"error: config file {raises}: NameError: name "
       "'undefined_name' is not defined"),
      ('configs/fashion_mnist_demp.py:weird',
       'error: config file configs/fashion_mnist_demp.py: ValueError: '
       "unknown config string 'weird'"),
  ]
  for config, expected in cases:
    r, seconds = run('--workdir', str(tmp_path / 'run'), config=config)
    assert r.returncode == 2, (config, r.stderr)
    assert one_error_line(r).startswith(expected), (config, r.stderr)
    assert seconds < SECONDS
  assert not (tmp_path / 'run').exists()


def test_a_missing_flag_is_one_line():
  r, _ = run()  # (unknown overrides: tests/test_loop.py)
  assert r.returncode == 2
  assert '--workdir' in one_error_line(r)


def test_a_workdir_that_is_a_file(tmp_path):
  a_file = tmp_path / 'taken'
  a_file.write_text('keep me')
  r, _ = run('--workdir', str(a_file))
  assert r.returncode == 2
  assert one_error_line(r) == (f'error: --workdir={a_file} is an existing '
                               'file, not a directory')
  assert a_file.read_text() == 'keep me'


def test_a_file_where_the_run_keeps_a_directory_is_named(tmp_path):
  # it used to train to the first checkpoint, then hang in orbax for
  # minutes; a directory named like the summary failed only at the end
  for name, expected in (('checkpoints', 'checkpoints is a file'),
                         ('summary.json', 'summary.json is a directory')):
    work = tmp_path / name.split('.')[0]
    work.mkdir()
    if name == 'checkpoints':
      (work / name).write_text('keep me')
    else:
      (work / name).mkdir()
    r, seconds = run('--workdir', str(work))
    assert r.returncode == 2 and seconds < SECONDS
    assert f'{work / name.split(".")[0]}' in one_error_line(r)
    assert expected in one_error_line(r)
  assert (tmp_path / 'checkpoints' / 'checkpoints').read_text() == 'keep me'


def test_ctrl_c_says_where_the_run_can_resume(tmp_path):
  if not os.path.isdir('/usr/share/datasets/fashion-mnist'):
    pytest.skip('Fashion-MNIST is not installed')
  import signal  # pylint: disable=g-import-not-at-top
  work = tmp_path / 'run'
  p = subprocess.Popen(
      [sys.executable, '-m', 'experiments.train', '--config', TINY,
       '--workdir', str(work), '--config.num_steps=100000',
       '--config.checkpoint_every=5', '--config.progress=False'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      # a shell's background job would inherit SIGINT ignored
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  try:
    t0 = time.perf_counter()
    while not any(d.isdigit() for d in (os.listdir(work / 'checkpoints') if (
        work / 'checkpoints').is_dir() else [])):
      assert p.poll() is None and time.perf_counter() - t0 < 120
      time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
  finally:
    p.kill()
  assert p.returncode == 130, err[-2000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith('error: interrupted; the last checkpoint is step ')
  step = int(last.split('step ')[1].split()[0])
  assert (work / 'checkpoints' / str(step)).is_dir()  # finished, resumable


def _exits(fn, *args, capsys):
  with pytest.raises(SystemExit) as e:
    fn(*args)
  return e.value.code, one_error_line(capsys.readouterr())


def test_a_workdir_that_cannot_be_made_and_a_directory_as_config(tmp_path,
                                                                 capsys):
  from experiments import train  # pylint: disable=g-import-not-at-top
  a_file = tmp_path / 'taken'
  a_file.write_text('keep me')
  code, line = _exits(train.prepare_workdir, str(a_file / 'run'),
                      capsys=capsys)
  assert code == 2
  assert line == f'error: --workdir={a_file / "run"} cannot be written: Not ' \
      'a directory'
  code, line = _exits(train.check_config_file, str(tmp_path), capsys=capsys)
  assert (code, line) == (2, f'error: config file {tmp_path}: not a file')
  assert train.prepare_workdir(str(tmp_path / 'new')) is True
  assert os.listdir(tmp_path / 'new') == []  # the write probe left nothing


def test_a_corrupt_data_file_is_named_and_leaves_no_workdir(tmp_path):
  data = tmp_path / 'data'
  data.mkdir()
  for split, n in (('train', 64), ('t10k', 16)):
    for kind, shape, magic in (('images', (n, 28, 28), 3),
                               ('labels', (n,), 1)):
      header = bytes([0, 0, 8, magic]) + b''.join(
          d.to_bytes(4, 'big') for d in shape)
      blob = gzip.compress(header + bytes(int(__import__('numpy').prod(
          shape))))
      (data / f'{split}-{kind}-idx{magic}-ubyte.gz').write_bytes(blob)
  broken = data / 'train-images-idx3-ubyte.gz'
  broken.write_bytes(broken.read_bytes()[:40])  # truncated download
  work = tmp_path / 'run'
  r, seconds = run('--workdir', str(work), f'--config.dataset.data_dir={data}',
                   '--config.dataset.source=idx')
  assert r.returncode == 1
  assert one_error_line(r) == (
      f'error: {broken} is truncated: its gzip stream ends early (Compressed '
      'file ended before the end-of-stream marker was reached)')
  assert seconds < SECONDS
  assert not work.exists()


def test_the_ap_script_shares_the_trainers_command_line(tmp_path):
  # experiments.ap takes experiments.train's --config and --workdir (and
  # their one-line errors); it once lost them when train's flags moved
  # under its __main__
  r, _ = run('--workdir', str(tmp_path / 'bad'), '--config.bogus=1',
             config='configs/fashion_mnist_ap.py:tiny', module='experiments.ap')
  assert r.returncode == 2
  assert one_error_line(r) == ("error: bad command line: unknown config "
                               "override 'bogus'")
  work = tmp_path / 'ap'
  r, _ = run('--workdir', str(work), config='configs/fashion_mnist_ap.py:tiny',
             module='experiments.ap')
  assert r.returncode == 0, r.stderr[-2000:]
  summary = json.load(open(work / 'summary.json'))
  assert summary['algorithm'] == 'ap' and len(summary['rounds']) >= 2
