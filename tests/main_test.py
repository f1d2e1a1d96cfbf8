"""Tests of main.py's error handling: user errors are one paragraph that names the file or field, exit code 2."""

import errno
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

import main
from segrecon_jax.data import phantom_nifti
from segrecon_jax.training import checkpoints
from segrecon_jax.training import config_checks
from segrecon_jax.training import errors
from segrecon_jax.training import inference
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import parallel
from segrecon_jax.training import train

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raised(make):
  """The exception `make` raises, with the chain Python gives it."""
  try:
    make()
  except Exception as e:  # pylint: disable=broad-except
    return e
  raise AssertionError('nothing raised')


def _chained_oserror(inner):
  def make():
    try:
      raise inner
    except OSError as e:
      raise OSError('Failed to save the checkpoint.') from e
  return make


def _raise(error):
  def make():
    raise error
  return make


# What orbax raises (from wait_until_finished) when TensorStore cannot write a checkpoint file: the disk is full.
_TENSORSTORE_FULL = ('RESOURCE_EXHAUSTED: Error writing "opt_state.0.mu.cnn0.conv2.kernel/0.0.0.0" in OCDBT database at '
                     'local file "/wd/checkpoints/6.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": '
                     'Failed writing: "/wd/checkpoints/6.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0'
                     '/d/1f26": Failed to write 7205 bytes to file 12: No space left on device [os_error_code=\'28\']')


def _tensorstore_write(text):
  """TensorStore's report of a failed write, as orbax raises it from a save or a wait, through `checkpoints`."""
  def make():
    with checkpoints._writing('/wd/checkpoints/6'):  # pylint: disable=protected-access
      raise ValueError(text)
  return make


@pytest.mark.parametrize('make,expected', [
    (_raise(config_checks.ConfigError('config.acceleration=100 keeps 0 of the 32 phase-encode lines')),
     ['config.acceleration=100']),
    (_raise(ValueError('config.balance_ratio=-1: must be > 0')), ['config.balance_ratio=-1']),
    (_raise(parallel.BatchSizeError('config.batch_size=3 must be a positive multiple of the number of devices')),
     ['config.batch_size=3']),
    (_raise(train.NonFiniteError('non-finite loss or gradient at step 82')), ['step 82']),
    (_chained_oserror(OSError(errno.ENOSPC, 'No space left on device', '/wd/checkpoints/5/meta')),
     ['Failed to save the checkpoint', '/wd/checkpoints/5/meta: No space left on device', 'the disk is full']),
    (_raise(OSError(errno.EROFS, 'Read-only file system', '/ro/wd/.lock')),
     ['/ro/wd/.lock: Read-only file system', 'read-only file system: choose a writable --workdir']),
    (_raise(FileExistsError('Cannot rename /d/ocmr/real/incomplete.AB12_1.0.0. Destination /d/ocmr/real/1.0.0 '
                            'already exists.')), ['Destination /d/ocmr/real/1.0.0', 'run again to reuse it']),
    (_tensorstore_write(_TENSORSTORE_FULL),
     ['/wd/checkpoints/6.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/d/1f26: No space left on '
      'device', 'the disk is full']),
    (_raise(input_pipeline.CorruptDatasetError('/d/ocmr/real/1.0.0: example 3 cannot be read back, the prepared file '
                                               'is damaged (Corrupted Riegeli/records file)')), ['example 3']),
    (_raise(inference.EmptyReferenceError('the test split of ocmr/nifti holds 1 example(s) whose fully sampled image '
                                          'is all zero (patient002/0/0)')), ['patient002/0/0']),
])
def test_user_errors_are_one_paragraph(make, expected):
  message = errors.user_message(_raised(make))
  assert message is not None and 'Traceback' not in message and 'tensorstore_spec' not in message
  for part in expected:
    assert part in message


@pytest.mark.parametrize('error', [KeyError('params'), ValueError('operands could not be broadcast'),
                                   RuntimeError('XLA compilation failed'), TypeError('unhashable')])
def test_bugs_keep_their_traceback(error):
  assert errors.user_message(error) is None


@pytest.mark.parametrize('flags_,match', [
    (['--config=configs/unet_unet.py:x4,runlocal', '--config.seed=-1'], 'main.py: config.seed=-1: seeds must be'),
    (['--config=configs/unet_unet.py:x4,runlocal', '--config.model.seg.features=(4,8)',
      '--config.model.seg.features=(8,16)'],
     "main.py: --config.model.seg.features is given 2 times ('(4,8)', '(8,16)'), which ml_collections would join"),
    (['--config=configs/unet_unet.py:x4,runlocal', '--config.dataset_config=phantom_tiny', '--config.num_acs=0',
      '--config.acceleration=100'], 'main.py: config.acceleration=100 keeps round(32 / 100) = 0'),
    (['--config=configs/no_such_experiment.py:x4'], "no such config file 'configs/no_such_experiment.py'"),
    # A workdir that cannot be created (OSError, raised from the makedirs error): one line, not a chain.
    (['--config=configs/unet_unet.py:x4,runlocal', '--workdir=/dev/null/wd'],
     'main.py: --workdir=/dev/null/wd: cannot create /dev/null/wd (Not a directory)'),
])
def test_main_stops_before_any_data_with_exit_code_2(tmp_path, flags_, match):
  data_dir = tmp_path / 'tfds'
  args = [sys.executable, 'main.py', *flags_]
  if not any(f.startswith('--workdir=') for f in flags_):
    args.append(f'--workdir={tmp_path / "wd"}')
  if len(flags_) > 1:
    args.append(f'--config.data_dir={data_dir}')
  run = subprocess.run(args, cwd=_ROOT, capture_output=True, text=True, timeout=300)
  stderr = '\n'.join(l for l in run.stderr.splitlines() if 'DeprecationWarning' not in l)
  assert run.returncode == 2 and match in stderr and 'Traceback' not in stderr, stderr
  assert len(stderr.strip().splitlines()) == 1
  assert not data_dir.exists() and not (tmp_path / 'wd').exists()  # nothing built, nothing written


def _label_value_outside_the_mapping(folder):
  """An ACDC-like folder in which one _gt file holds a 5 (ACDC's mapping has entries for 0..3 only)."""
  pairs = phantom_nifti.write_folder(folder, num_patients=4, seed=0, recon_size=(40, 32))
  label = nib.load(pairs[0][1])
  values = np.asarray(label.dataobj).copy()
  values[0, 0, 0] = 5
  nib.save(nib.Nifti1Image(values, label.affine), pairs[0][1])
  return [pairs[0][1], 'label values must be in 0..3 (the label mapping (0, 3, 2, 1)), got range [0, 5]',
          'config.label_mapping gives our class for each label value']


def _no_labelled_frame(folder):
  """A folder whose only file is a 4-D cine whose label maps are all background: no frame is labelled."""
  os.makedirs(folder)
  image = os.path.join(folder, 'A0S9V9_sa.nii.gz')
  nib.save(nib.Nifti1Image(np.ones((32, 32, 2, 3), np.float32), np.eye(4)), image)
  nib.save(nib.Nifti1Image(np.zeros((32, 32, 2, 3), np.uint8), np.eye(4)), image.replace('_sa', '_sa_gt'))
  return [f'no frame of {image.replace("_sa", "_sa_gt")} is labelled', 'at least 2 subjects with examples']


@pytest.mark.parametrize('write', [_label_value_outside_the_mapping, _no_labelled_frame])
def test_bad_labels_in_a_nifti_folder_end_with_one_paragraph(tmp_path, write):
  folder = str(tmp_path / 'data')
  expected = write(folder)
  run = subprocess.run([sys.executable, 'main.py', '--config=configs/unet_unet.py:x4,runlocal',
                        f'--workdir={tmp_path / "wd"}', '--config.dataset_config=nifti',
                        f'--config.manual_dir={folder}', '--config.image_size=32',
                        f'--config.data_dir={tmp_path / "tfds"}'],
                       cwd=_ROOT, capture_output=True, text=True, timeout=300)
  last = run.stderr.strip().splitlines()[-1]
  assert run.returncode == 2 and 'Traceback' not in run.stderr, run.stderr
  assert last.split('\r')[-1].startswith('main.py: ') and all(part in last for part in expected), last
