"""End-to-end tests of the training system on 2 fake CPU devices with a tiny phantom dataset."""

import functools
import importlib
import json
import logging
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrecon_jax.data import phantom
from segrecon_jax import losses
from segrecon_jax.training import checkpoints
from segrecon_jax.training import config_checks
from segrecon_jax.training import inference
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import parallel
from segrecon_jax.training import steps
from segrecon_jax.training import train
from segrecon_jax.training import workdir as workdir_lib
from segrecon_jax.training import writer as writer_lib

EXPERIMENTS = ('unet', 'cascade', 'multidecoder_unet', 'unet_unet', 'cascade_manet')


def tiny_config(data_dir, experiment='unet_unet', preset='x4_stab', **overrides):
  config = importlib.import_module(f'configs.{experiment}').get_config(f'{preset},runlocal')
  config.dataset_config = 'phantom_tiny'
  config.data_dir = data_dir
  config.batch_size = 4
  config.eval_batch_size = 4
  config.num_epochs = 4
  config.patience = 3
  config.schedule_levels = 3
  config.eval_every_epochs = 4
  config.checkpoint_every_epochs = 2
  config.log_every_steps = 1
  config.compilation_cache_dir = ''
  config.num_acs = 2  # 32x32 images: x8 keeps 4 lines.
  config.progress_bar = False
  if config.model.name in ('unet_unet',):
    config.model.recon.features = (4, 8)
    config.model.seg.features = (4, 8)
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def two_epochs(data_dir):
  """2 epochs at 2 sampled fractions, a checkpoint after each: conftest's `two_epoch_run` (trained once per session),
  what tests/multihost_test.py trains with 2 processes and recovery_test interrupts."""
  return tiny_config(data_dir, num_epochs=2, schedule_levels=2, eval_every_epochs=2, checkpoint_every_epochs=1,
                     log_every_steps=1)


def one_epoch(data_dir):
  """One epoch of the UNet -> UNet without stabilization (one sampled fraction), evaluated and checkpointed:
  conftest's `one_epoch_run` (trained once per session)."""
  return tiny_config(data_dir, preset='x4', num_epochs=1, eval_every_epochs=1, checkpoint_every_epochs=1)


def latest_params(workdir, config):
  manager = checkpoints.checkpoint_manager(workdir, config)
  source = input_pipeline.load_split(config, config.train_split)
  model, tx = steps.create_model(config), steps.create_optimizer(config)
  template = steps.initial_state(config, model, tx, input_pipeline.image_shape(source))
  state, meta = checkpoints.restore_checkpoint(manager, template)
  return state, meta


def test_two_fake_devices():
  assert jax.local_device_count() == 2


@pytest.fixture(scope='module')
def four_epoch_run(data_dir, tmp_path_factory):
  """tiny_config's 4 epochs at 3 sampled fractions, evaluated and logged every 2 epochs / steps, without a bar:
  trained once for the tests that read its workdir, the traces it made and the lines it logged."""
  config = tiny_config(data_dir, eval_every_epochs=2, log_every_steps=2, progress_bar=False)
  workdir = str(tmp_path_factory.mktemp('four_epochs') / 'run')
  lines = []
  handler = logging.Handler(logging.INFO)
  handler.emit = lambda record: lines.append(record.getMessage())
  root = logging.getLogger()
  level = root.level
  root.addHandler(handler)
  root.setLevel(logging.INFO)
  steps.TRAIN_STEP_TRACES.clear()
  steps.TRAIN_UPDATE_TRACES.clear()
  try:
    results = train.train_and_evaluate(config, workdir)
  finally:
    root.removeHandler(handler)
    root.setLevel(level)
  return types.SimpleNamespace(config=config, workdir=workdir, results=results, lines=lines,
                               step_traces=dict(steps.TRAIN_STEP_TRACES),
                               update_traces=dict(steps.TRAIN_UPDATE_TRACES))


@pytest.fixture(scope='module')
def first_half_run(data_dir, tmp_path_factory):
  """The first 2 of four_epoch_run's epochs, logged every step and compiled as the loop asks for each level (no
  compiling ahead): never modified, tests copy it."""
  config = tiny_config(data_dir, num_epochs=2, compile_ahead=False)
  workdir = str(tmp_path_factory.mktemp('first_half') / 'run')
  train.train_and_evaluate(config, workdir)
  return types.SimpleNamespace(config=config, workdir=workdir)


def test_traces_once_per_distinct_fraction(four_epoch_run):
  config, workdir = four_epoch_run.config, four_epoch_run.workdir
  fractions = {steps.sampled_fraction_for_epoch(config, e) for e in range(1, config.num_epochs + 1)}
  assert len(fractions) == 3  # the schedule's static fraction changes during the run
  assert set(four_epoch_run.step_traces) == fractions  # One mask sampler per fraction ...
  assert all(count == 1 for count in four_epoch_run.step_traces.values())
  assert list(four_epoch_run.update_traces.values()) == [1]  # ... and one update for all of them.
  results = four_epoch_run.results
  assert np.isfinite(results['psnr']) and np.isfinite(results['dice_mean'])
  record = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert record['train_compiles'] == len(fractions) + 1
  assert 0 < record['train_compile_wait_seconds'] <= record['train_compile_seconds']
  table = open(os.path.join(workdir, 'results.md')).read()
  for column in ('MSE (x10^3)', 'PSNR', 'SSIM', 'F-MSE (x10^3)', 'F-PSNR', 'F-SSIM', 'Dice'):
    assert column in table
  assert 'UNet -> UNet (S)' in table
  assert any(name.startswith('events') for name in os.listdir(os.path.join(workdir, 'tensorboard')))


def _abort_rows(workdir, steps_):
  """Rows an aborted run (stopped without a checkpoint, e.g. by a second SIGINT) left in scalars.jsonl."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, writer_lib.SCALARS_FILE), 'a') as f:
    f.writelines(json.dumps({'step': s, 'train_loss': 999.0}) + '\n' for s in steps_)


def test_resume_matches_straight_run(data_dir, four_epoch_run, first_half_run, tmp_path):
  straight = four_epoch_run.config
  first_half = first_half_run.config  # Both compile paths train alike.
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(first_half_run.workdir, resumed)
  _, meta = latest_params(resumed, first_half)
  assert meta['epoch'] == 2
  _abort_rows(resumed, range(meta['step'] + 1, meta['step'] + 4))  # An aborted run's rows past the checkpoint.
  train.train_and_evaluate(tiny_config(data_dir, num_epochs=4), resumed)
  rows = [json.loads(line) for line in open(os.path.join(resumed, writer_lib.SCALARS_FILE))]
  pairs = [(row['step'], tag) for row in rows for tag in row if tag != 'step']
  assert len(pairs) == len(set(pairs))  # One row per step and tag: the aborted run's rows are gone.
  assert 999.0 not in [row.get('train_loss') for row in rows]
  a, meta_a = latest_params(four_epoch_run.workdir, straight)
  b, meta_b = latest_params(resumed, straight)
  assert meta_a['epoch'] == meta_b['epoch'] == 4 and int(a.step) == int(b.step)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), a.params, b.params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), a.opt_state, b.opt_state)


def test_eval_and_predict_write_table_and_figure(data_dir, tmp_path):
  config = tiny_config(data_dir, 'cascade', 'x8', num_epochs=1)
  config.model.num_cascades = 2
  config.model.features = 4
  workdir = str(tmp_path / 'cascade')
  train.train_and_evaluate(config, workdir)
  results = inference.evaluate(config, workdir)
  assert 'dice_mean' not in results and np.isfinite(results['f_psnr'])
  assert '| CascadeNet |' in open(os.path.join(workdir, 'eval', 'test_x8', 'results.md')).read()
  out_dir = inference.predict(config, workdir)
  assert out_dir == os.path.join(workdir, 'predict', 'test_x8')
  assert os.path.exists(os.path.join(out_dir, 'figure_0.png'))
  recon = np.load(os.path.join(out_dir, 'recon.npy'))
  image = np.load(os.path.join(out_dir, 'image.npy'))
  assert recon.shape == image.shape and np.iscomplexobj(recon)
  # An OCMR-format file, as a user would pass with --input, with and then without its label file.
  kspace_path, label_path = phantom.write_subject(str(tmp_path / 'ocmr'), 1, seed=5, recon_size=(40, 28),
                                                  num_coils=4, num_slices=1, num_frames=2)
  for labelled in (True, False):
    if not labelled:
      os.remove(label_path)
    file_dir = inference.predict(config, workdir, kspace_path)
    assert file_dir.endswith(os.path.join('predict', 'fs_0001_phantom_x8')) and os.path.exists(os.path.join(file_dir, 'figure_0.png'))
    recon = np.load(os.path.join(file_dir, 'recon.npy'))
    labels = np.load(os.path.join(file_dir, 'segmentation.npy'))
    assert recon.shape == (2, 32, 32) and np.all(np.isfinite(recon))
    assert (labels.max() > 0) == labelled


@pytest.mark.slow
def test_joint_training_beats_untrained_dice(data_dir, tmp_path):
  config = tiny_config(data_dir, 'unet_unet', 'x4', num_epochs=30, eval_every_epochs=30, checkpoint_every_epochs=30)
  config.learning_rate, config.b1 = 3e-3, 0.9  # 150 steps of a tiny model: a faster optimizer than the paper's.
  config.model.recon.features = config.model.seg.features = (8, 16)
  eval_source = input_pipeline.load_split(config, config.eval_split)
  model, tx = steps.create_model(config), steps.create_optimizer(config)
  untrained = steps.initial_state(config, model, tx, input_pipeline.image_shape(eval_source))
  p_eval_step = parallel.pmap(functools.partial(steps.eval_step, model=model, config=config))
  before, _ = inference.evaluate_state(p_eval_step, parallel.replicate(untrained), eval_source, config)
  after = train.train_and_evaluate(config, str(tmp_path / 'joint'))
  assert after['dice_mean'] > before['dice_mean'] + 0.1


def test_non_finite_loss_stops_and_keeps_last_checkpoint(data_dir, first_half_run, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'nan')
  shutil.copytree(first_half_run.workdir, workdir)  # 2 epochs of tiny_config.
  manager = checkpoints.checkpoint_manager(workdir, tiny_config(data_dir))
  good_step = manager.latest_step()
  monkeypatch.setattr(losses, 'l1_l2_loss', lambda recon, target, **_: jnp.full(recon.shape[:1], jnp.nan))
  # The first step after the resume is step good_step + 1; the error names it (the loop's own step count).
  with pytest.raises(train.NonFiniteError, match=f'non-finite loss or gradient at step {good_step + 1} '):
    train.train_and_evaluate(tiny_config(data_dir, num_epochs=4), workdir)
  assert checkpoints.checkpoint_manager(workdir, tiny_config(data_dir)).latest_step() == good_step


def test_batch_size_must_divide_over_devices(data_dir, tmp_path):
  with pytest.raises(parallel.BatchSizeError, match='batch_size=3'):
    train.train_and_evaluate(tiny_config(data_dir, batch_size=3), str(tmp_path / 'bad'))


def test_an_error_in_the_loop_closes_the_bar_and_the_writer(data_dir, tmp_path, monkeypatch):
  """A user error raised once the loop has started (here a batch larger than the split) ends the bar's line and
  closes scalars.jsonl, so main.py's paragraph starts on its own line, not after '0step [00:00, ?step/s]'."""
  opened = {}

  def recording(make, name):
    def make_and_record(*args, **kwargs):
      opened[name] = make(*args, **kwargs)
      return opened[name]
    return make_and_record

  monkeypatch.setattr(train.writer_lib, 'progress_bar', recording(train.writer_lib.progress_bar, 'bar'))
  monkeypatch.setattr(train.writer_lib, 'SummaryWriter', recording(train.writer_lib.SummaryWriter, 'writer'))
  with pytest.raises(config_checks.ConfigError, match=r"config.batch_size=64: the 'train' split has only"):
    train.train_and_evaluate(tiny_config(data_dir, batch_size=64, eval_batch_size=2, progress_bar=True),
                             str(tmp_path / 'big'))
  assert opened['bar'].disable  # tqdm's close() disables the bar; an open bar is still enabled.
  assert opened['writer']._jsonl.closed  # pylint: disable=protected-access


@pytest.mark.parametrize('experiment', EXPERIMENTS)
def test_every_config_and_preset_builds(experiment):
  module = importlib.import_module(f'configs.{experiment}')
  presets = ('x4', 'x8') if experiment in ('unet', 'cascade') else ('x4', 'x8', 'x4_stab', 'x8_stab')
  for preset in presets:
    for arg in (preset, f'{preset},runlocal', f'{preset},demo', f'{preset},cpu_study'):
      config = module.get_config(arg)
      assert config.acceleration == int(preset[1])
      assert config.stabilization == preset.endswith('_stab')
      steps.create_model(config)  # every model config is valid for get_model
      # 8 ACS lines wherever at least as many lines are left to draw at random (64 columns at x8: 4 + 4).
      assert config.num_acs == (8 if not arg.endswith(('runlocal', 'demo', 'cpu_study')) or preset[1] == '4' else 4)
  study_config = module.get_config(f'{presets[-1]},cpu_study')
  assert study_config.schedule_levels is None  # The study runs the exact eq. 1 schedule.
  if experiment == 'cascade_manet':  # MANet shrinks with CascadeNet (a quarter of the paper's widths each).
    assert study_config.model.recon.features == 64 // 4
    assert study_config.model.seg.encoder_widths == (16, 32, 64, 128)
    assert study_config.model.seg.decoder_channels == tuple(c // 4 for c in (256, 128, 64, 32))
  if experiment in ('unet', 'unet_unet', 'multidecoder_unet'):  # Half the paper's U-Nets, but on real anatomy all.
    for switch, widths in (('cpu_study', (16, 32, 64, 128)), ('acdc_study', (32, 64, 128, 256))):
      model = module.get_config(f'{presets[0]},{switch}').model
      assert {tuple(m.features) for m in (model, model.get('recon'), model.get('seg')) if m and 'features' in m} \
          == {widths}
    acdc_cascade = importlib.import_module('configs.cascade').get_config('x4,acdc_study')
    assert acdc_cascade.model.features == 16  # Table 2's models keep cpu_study's widths there.
  with pytest.raises(ValueError, match='exclude each other'):
    module.get_config(f'{presets[0]},runlocal,demo')
  with pytest.raises(ValueError, match='valid presets'):
    module.get_config('x16')
  with pytest.raises(ValueError, match='valid switches'):
    module.get_config('x4,runlokal')
  if experiment in ('unet', 'cascade'):
    with pytest.raises(ValueError, match='valid presets'):
      module.get_config('x4_stab')


# ---------------------------------------------------------------------------------------------------------------
# The training system: steps, logs, workdir lock, resume policy, config errors.


def read_scalars(workdir):
  """{tag: [(step, value), ...]} from the TensorBoard event files (TFRecord framing, tensorboardX's protos)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars = {}
  folder = os.path.join(workdir, 'tensorboard')
  for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      length = int.from_bytes(data[offset:offset + 8], 'little')
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        if value.HasField('simple_value'):
          scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_bar_off_writes_scalars_at_the_loops_own_steps(four_epoch_run):
  config, workdir = four_epoch_run.config, four_epoch_run.workdir
  assert (config.num_epochs, config.eval_every_epochs, config.log_every_steps) == (4, 2, 2)
  assert not config.progress_bar
  source = input_pipeline.load_split(config, config.train_split)
  per_epoch = input_pipeline.num_train_steps_per_epoch(source, config)
  total = 4 * per_epoch
  scalars = read_scalars(workdir)
  assert [s for s, _ in scalars['train_loss']] == list(range(2, total + 1, 2))
  assert [s for s, _ in scalars['eval_psnr']] == [2 * per_epoch, 4 * per_epoch]
  assert all(v > 0 for _, v in scalars['train_steps_per_second'])
  # One line per log step and per eval, without a terminal.
  lines = four_epoch_run.lines
  assert sum(line.startswith('step ') and 'slices/s, ETA' in line for line in lines) == total // 2
  assert any(line.startswith(f'step {total}/{total} epoch 4/4') for line in lines)
  assert sum(line.startswith('eval at step') for line in lines) == 2
  record = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert record['seed'] == config.seed and record['config']['learning_rate'] == config.learning_rate


def test_a_writer_drops_the_rows_it_will_write_again(tmp_path):
  """Resuming from step 2 drops an aborted run's rows past it (and a line cut short by a kill); from scratch, all."""
  path = tmp_path / writer_lib.SCALARS_FILE
  path.write_text(''.join(json.dumps({'step': s, 'train_loss': float(s)}) + '\n' for s in (1, 2, 3, 4))
                  + '{"step": 5, "train_lo')
  writer = writer_lib.SummaryWriter(str(tmp_path), resume_step=2)
  writer.write_scalars(3, {'train_loss': 30.0})
  writer.close()
  assert [json.loads(line) for line in path.read_text().splitlines()] == [
      {'step': 1, 'train_loss': 1.0}, {'step': 2, 'train_loss': 2.0}, {'step': 3, 'train_loss': 30.0}]
  writer = writer_lib.SummaryWriter(str(tmp_path))
  writer.write_scalars(1, {'train_loss': 10.0})
  writer.close()
  assert writer_lib.read_scalars(str(tmp_path)) == {'train_loss': {1: 10.0}}
  assert len(path.read_text().splitlines()) == 1


def test_train_scalars_are_the_mean_over_the_log_window(four_epoch_run, first_half_run):
  """The first half logs every step; the 4-epoch run, whose first 2 epochs train alike, every 2 steps."""
  every_step, every_two = read_scalars(first_half_run.workdir), read_scalars(four_epoch_run.workdir)
  one, two = dict(every_step['train_loss']), dict(every_two['train_loss'])
  shared = [step for step in two if step in one]
  assert len(shared) == len(one) // 2 > 0
  for step in shared:
    np.testing.assert_allclose(two[step], (one[step - 1] + one[step]) / 2, rtol=1e-5)


_HOLD_LOCK = """
import sys, time
sys.path.insert(0, {root!r})
from segrecon_jax.training import workdir
lock = workdir.WorkdirLock({workdir!r}).acquire()
print('locked', flush=True)
time.sleep(600)
"""


def test_a_second_run_into_a_held_workdir_stops_and_a_killed_holder_does_not_block(data_dir, tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'held')
  os.makedirs(workdir)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  holder = subprocess.Popen([sys.executable, '-c', _HOLD_LOCK.format(root=root, workdir=workdir)],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(workdir_lib.WorkdirLockedError, match=rf'{workdir} is in use by pid {holder.pid} on host'):
      train.train_and_evaluate(tiny_config(data_dir, num_epochs=1), workdir)
    assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
  finally:
    holder.kill()  # SIGKILL: the holder cannot clear its record.
    holder.wait()
  assert str(holder.pid) in open(os.path.join(workdir, '.lock')).read()
  train.train_and_evaluate(tiny_config(data_dir, num_epochs=1), workdir)  # The dead holder does not block.
  assert open(os.path.join(workdir, '.lock')).read() == ''  # Cleared on a clean exit.


def test_resume_refuses_changed_training_fields_and_allows_more_epochs(data_dir, first_half_run, tmp_path):
  workdir = str(tmp_path / 'resume')
  shutil.copytree(first_half_run.workdir, workdir)  # 2 epochs of tiny_config.
  before = json.load(open(os.path.join(workdir, 'metrics.json')))
  with pytest.raises(checkpoints.ResumeError, match=r"config.seed: 0 in the checkpoint, 1 now\n"
                                                    r"(.|\n)*Use a new --workdir"):
    train.train_and_evaluate(tiny_config(data_dir, num_epochs=2, seed=1), workdir)
  with pytest.raises(checkpoints.ResumeError, match=r'config.acceleration: 4 in the checkpoint, 8 now\n'
                                                    r'  config.learning_rate: 0.0001 in the checkpoint, 0.001 now'):
    train.train_and_evaluate(tiny_config(data_dir, num_epochs=2, acceleration=8, learning_rate=1e-3), workdir)
  with pytest.raises(checkpoints.ResumeError, match=r'config.model.recon.features: \[4, 8\] in the checkpoint'):
    config = tiny_config(data_dir, num_epochs=2)
    config.model.recon.features = (4, 4)
    train.train_and_evaluate(config, workdir)
  assert json.load(open(os.path.join(workdir, 'metrics.json'))) == before  # Nothing rewritten.
  # Cadence, the bar and more epochs may change.
  train.train_and_evaluate(tiny_config(data_dir, num_epochs=3, log_every_steps=2, eval_every_epochs=1,
                                       progress_bar=True), workdir)
  assert checkpoints.checkpoint_manager(workdir, tiny_config(data_dir)).latest_step() > before['step']


@pytest.mark.parametrize('field,value,match', [
    ('acceleration', 0, r'config.acceleration=0: the acceleration R must be >= 1'),
    ('num_epochs', 0, r'config.num_epochs=0: train for at least 1 epoch'),
    ('learning_rate', -1.0, r'config.learning_rate=-1.0: must be > 0'),
    ('eps', 1.5, r'config.eps=1.5: .*must lie in \(0, 1\)'),
])
def test_bad_config_values_get_one_paragraph(data_dir, tmp_path, field, value, match):
  workdir = tmp_path / 'bad'
  with pytest.raises(config_checks.ConfigError, match=match):
    train.train_and_evaluate(tiny_config(data_dir, **{field: value}), str(workdir))
  assert not workdir.exists()  # Checked before anything is written.


def test_workdir_that_is_a_file_and_config_typos_are_clear(data_dir, tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'a_file'
  path.write_text('keep me')
  with pytest.raises(NotADirectoryError, match=rf'{path} exists and is not a directory'):
    train.train_and_evaluate(tiny_config(data_dir), str(path))
  assert path.read_text() == 'keep me'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # (A bad value through main.py, e.g. --config.acceleration=0: main_test's exit-code-2 cases.)
  run = subprocess.run([sys.executable, 'main.py', '--config=configs/unet.py:x4,runlocal', '--config.sed=1',
                        f'--workdir={tmp_path / "typo"}'], cwd=root, capture_output=True, text=True, timeout=300)
  assert run.returncode == 2 and 'Did you mean "seed"' in run.stderr and 'Traceback' not in run.stderr, run.stderr
  assert len(run.stderr.strip().splitlines()) <= 3


@pytest.mark.parametrize('experiment', EXPERIMENTS)
def test_paper_regime_switch_is_cpu_study_scale_with_the_papers_optimizer(experiment):
  module = importlib.import_module(f'configs.{experiment}')
  preset = 'x4' if experiment in ('unet', 'cascade') else 'x4_stab'
  config, study = module.get_config(f'{preset},paper_regime'), module.get_config(f'{preset},cpu_study')
  config_checks.check_config(config)
  # The study's data, image size, ACS lines and widths; the paper's optimizer, epochs and batch.
  for field in ('dataset_config', 'image_size', 'num_acs', 'acceleration', 'stabilization', 'model'):
    assert config[field] == study[field], field
  assert (config.learning_rate, config.b1, config.b2, config.lr_schedule) == (1e-4, 0.99, 0.999, 'constant')
  assert (config.num_epochs, config.batch_size, config.patience, config.schedule_levels) == (100, 16, 20, None)
  assert config.eval_every_epochs <= 2  # Early training curves.
  for other in ('runlocal', 'demo', 'cpu_study'):
    with pytest.raises(ValueError, match='exclude each other'):
      module.get_config(f'{preset},paper_regime,{other}')
