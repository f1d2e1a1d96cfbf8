"""Nothing silent on a tiny run: a corrupted checkpoint, a non-finite batch statistic, eval beside a training
record, and SIGTERM / SIGINT mid-training (tests/train_test.py's tiny config on 2 fake CPU devices)."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from segrecon_jax.training import checkpoints
from segrecon_jax.training import inference
from segrecon_jax.training import steps
from segrecon_jax.training import train
from segrecon_jax.training import workdir as workdir_lib

from train_test import tiny_config, two_epochs  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = ('metrics.json', 'per_slice.json', 'results.md')  # The training's record at the workdir root.


@pytest.fixture
def trained(two_epoch_run):
  """A finished workdir of `two_epochs` (2 epochs with a checkpoint after each), the straight run every test here
  compares with; never modified: tests copy it."""
  return two_epoch_run.workdir


def read_record(workdir):
  return {name: open(os.path.join(workdir, name), 'rb').read() for name in RECORD}


def checkpoint_steps(workdir, config):
  return checkpoints.checkpoint_manager(workdir, config).all_steps()


def corrupt(workdir, step):
  """Flips 16 bytes at a quarter, a half and three quarters of every data file of the checkpoint of `step` (a single
  spot can fall on bytes no array is read from, which no integrity record can or need notice)."""
  folder = os.path.join(workdir, 'checkpoints', str(step), 'state', 'ocdbt.process_0', 'd')
  for name in os.listdir(folder):
    path = os.path.join(folder, name)
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
      for offset in sorted({size // 4, size // 2, 3 * size // 4}):
        f.seek(offset)
        flipped = bytes(b ^ 0xFF for b in f.read(16))
        f.seek(offset)
        f.write(flipped)


def test_corrupted_checkpoint_is_named_and_the_previous_step_used(data_dir, trained, tmp_path, caplog):
  config = two_epochs(data_dir)
  workdir = str(tmp_path / 'corrupt')
  shutil.copytree(trained, workdir)
  first, last = sorted(checkpoint_steps(workdir, config))
  record = read_record(workdir)
  corrupt(workdir, last)
  # Eval skips the bad step (named in the log), evaluates the previous one, and leaves the training record alone.
  results = inference.evaluate(config, workdir)
  assert f'checkpoint step {last} in' in caplog.text
  stored = json.load(open(os.path.join(inference.eval_dir(workdir, config), 'metrics.json')))
  assert stored['checkpoint_step'] == first and np.isfinite(results['psnr'])
  assert read_record(workdir) == record
  # Training resumes from the previous step, sets the bad one aside, and ends as the uninterrupted run did.
  train.train_and_evaluate(config, workdir)
  assert os.path.isdir(os.path.join(workdir, 'corrupt_checkpoints', str(last)))
  assert sorted(checkpoint_steps(workdir, config)) == [first, last]
  assert json.load(open(os.path.join(workdir, 'metrics.json')))['metrics'] == \
      json.load(open(os.path.join(trained, 'metrics.json')))['metrics']
  # With every step corrupted there is nothing to use: a clear error naming each step, nothing evaluated. (A fresh
  # copy: tensorstore may serve the steps this process read or wrote above from its cache.)
  workdir = str(tmp_path / 'all_corrupt')
  shutil.copytree(trained, workdir)
  for step in (first, last):
    corrupt(workdir, step)
  with pytest.raises(checkpoints.CorruptCheckpointError,
                     match=rf'no intact checkpoint in .*\n  step {last}: .*\n  step {first}: '):
    inference.evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'eval'))


def test_non_finite_batch_statistic_is_not_checkpointed_or_evaluated(data_dir, tmp_path, monkeypatch):
  initial_state = steps.initial_state

  def with_inf_variance(*args, **kwargs):
    state = initial_state(*args, **kwargs)
    leaves, treedef = jax.tree.flatten(state.batch_stats)
    leaves[0] = np.full_like(leaves[0], np.inf)  # A running mean or variance: the loss stays finite.
    return state.replace(batch_stats=jax.tree.unflatten(treedef, leaves))

  monkeypatch.setattr(steps, 'initial_state', with_inf_variance)
  config = tiny_config(data_dir, num_epochs=1)
  workdir = str(tmp_path / 'inf')
  with pytest.raises(train.NonFiniteError, match=r'non-finite values in the train state after step \d+ \(epoch 1\): '
                                                 r"\.batch_stats\[.*No checkpoint was written before it"):
    train.train_and_evaluate(config, workdir)
  assert not checkpoint_steps(workdir, config)
  assert not os.path.exists(os.path.join(workdir, 'metrics.json'))


def test_eval_at_another_acceleration_and_during_training(data_dir, trained, tmp_path):
  workdir = str(tmp_path / 'eval')
  shutil.copytree(trained, workdir)
  record = read_record(workdir)
  config = two_epochs(data_dir)
  config.acceleration = 8
  with workdir_lib.WorkdirLock(workdir):  # As a training run holds it.
    with pytest.raises(workdir_lib.WorkdirLockedError, match=rf'{workdir} is being trained by pid {os.getpid()}'):
      inference.evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'eval'))
  results = inference.evaluate(config, workdir)
  out_dir = os.path.join(workdir, 'eval', 'test_x8')
  stored = json.load(open(os.path.join(out_dir, 'metrics.json')))
  assert stored['acceleration'] == 8 and stored['metrics']['psnr'] == results['psnr']
  assert os.path.exists(os.path.join(out_dir, 'per_slice.json'))
  assert 'x8 acceleration' in open(os.path.join(out_dir, 'results.md')).read()
  assert read_record(workdir) == record  # The training's files, byte for byte.
  assert inference.predict(config, workdir) == os.path.join(workdir, 'predict', 'test_x8')
  assert not [name for name in os.listdir(workdir) if name.endswith('.tmp')]


_INTERRUPTED_RUN = """
import os, signal, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, os.path.join({root!r}, 'tests'))
from segrecon_jax.training import input_pipeline, train
from recovery_test import two_epochs

batches = input_pipeline.train_batches


def signalling_batches(source, config, epoch):
  for index, batch in enumerate(batches(source, config, epoch)):
    if (epoch, index) == {at}:
      for _ in range({signals}):
        os.kill(os.getpid(), signal.{name})
    yield batch


input_pipeline.train_batches = signalling_batches
try:
  train.train_and_evaluate(two_epochs({data_dir!r}), {workdir!r})
except train.TrainingInterrupted as e:  # As main.py does.
  sys.stderr.write(f'main.py: {{e}}\\n')
  sys.exit(e.exit_code)
"""


def interrupted_run(data_dir, workdir, name, signals, at):
  """Trains `two_epochs` in a subprocess that sends itself `signals` times signal `name` before the step `at`
  (epoch, index in the epoch)."""
  script = _INTERRUPTED_RUN.format(root=ROOT, data_dir=data_dir, workdir=workdir, name=name, signals=signals,
                                   at=repr(at))
  return subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sigterm_stops_at_a_step_with_a_checkpoint_and_resumes_bit_identically(data_dir, trained, tmp_path):
  config = two_epochs(data_dir)
  workdir = str(tmp_path / 'sigterm')
  run = interrupted_run(data_dir, workdir, 'SIGTERM', signals=1, at=(2, 1))  # Before epoch 2's second step.
  assert run.returncode == 128 + signal.SIGTERM, run.stderr
  assert 'Traceback' not in run.stderr, run.stderr
  message = run.stderr.strip().splitlines()[-1]
  first = min(checkpoint_steps(workdir, config))
  assert message.startswith(f'main.py: SIGTERM: training stopped after step {first + 2} (epoch 2, step 2 of it) '
                            'and wrote its checkpoint') and 'To resume, run the same command again' in message
  assert max(checkpoint_steps(workdir, config)) == first + 2
  assert open(os.path.join(workdir, '.lock')).read() == ''  # Released.
  assert not os.path.exists(os.path.join(workdir, 'metrics.json'))
  train.train_and_evaluate(config, workdir)  # The resume.
  for name in ('metrics.json', 'per_slice.json'):
    resumed, straight = (json.load(open(os.path.join(w, name))) for w in (workdir, trained))
    assert resumed.get('metrics') == straight.get('metrics'), name
  assert max(checkpoint_steps(workdir, config)) == max(checkpoint_steps(trained, config))


def test_second_sigint_stops_at_once_without_a_checkpoint(data_dir, tmp_path):
  config = two_epochs(data_dir)
  workdir = str(tmp_path / 'sigint')
  run = interrupted_run(data_dir, workdir, 'SIGINT', signals=2, at=(1, 0))  # Before the first step.
  assert run.returncode == 128 + signal.SIGINT, run.stderr
  assert 'SIGINT received: training stops after the current step' in run.stderr
  assert 'SIGINT again: stopping at once, without a checkpoint' in run.stderr and 'Traceback' not in run.stderr
  assert not checkpoint_steps(workdir, config)


_READ_ONLY_CHECKPOINTS = """
import errno, os, sys
sys.path.insert(0, {root!r})
from absl import app
import main

makedirs = os.makedirs


def read_only(path, *args, **kwargs):  # checkpoints/ on a read-only mount: no step folder can be made there.
  if 'orbax-checkpoint-tmp' in os.fspath(path):
    raise OSError(errno.EROFS, 'Read-only file system', os.fspath(path))
  return makedirs(path, *args, **kwargs)


os.makedirs = read_only
sys.argv = ['main.py'] + {flags!r}
app.run(main.main, flags_parser=main.parse_flags)
"""


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_ends_the_process(data_dir, trained, tmp_path):
  """A resume whose checkpoints/ cannot be written (a read-only mount; a fake here, as chmod does not stop root):
  main.py prints the paragraph and the process ends, exit code 2. The step folder was made by orbax's background
  threads, whose writers then waited 300 s for it, and the process with them."""
  workdir = str(tmp_path / 'read_only')
  shutil.copytree(trained, workdir)
  flags = ['--config=configs/unet_unet.py:x4_stab,runlocal', '--config.dataset_config=phantom_tiny',
           f'--config.data_dir={data_dir}', '--config.batch_size=4', '--config.eval_batch_size=4',
           '--config.num_epochs=3', '--config.patience=3', '--config.schedule_levels=2', '--config.eval_every_epochs=2',
           '--config.checkpoint_every_epochs=1', '--config.log_every_steps=1', '--config.compilation_cache_dir=',
           '--config.num_acs=2', '--config.progress_bar=False', '--config.model.recon.features=(4,8)',
           '--config.model.seg.features=(4,8)', f'--workdir={workdir}']
  assert two_epochs(data_dir).model.recon.features == (4, 8)  # The flags are two_epochs with a third epoch.
  try:
    run = subprocess.run([sys.executable, '-c', _READ_ONLY_CHECKPOINTS.format(root=ROOT, flags=flags)], cwd=ROOT,
                         capture_output=True, text=True, timeout=200)
  except subprocess.TimeoutExpired as e:
    pytest.fail(f'the process did not end after the failed checkpoint write:\n{(e.stderr or b"")[-3000:]!r}')
  last = run.stderr.strip().splitlines()[-1]
  assert run.returncode == 2 and last.startswith(f'main.py: {workdir}/checkpoints/'), run.stderr[-3000:]
  assert last.endswith('.orbax-checkpoint-tmp: Read-only file system; a read-only file system: choose a writable '
                       '--workdir / config.data_dir.'), last
  assert max(checkpoint_steps(workdir, two_epochs(data_dir))) == max(checkpoint_steps(trained, two_epochs(data_dir)))
