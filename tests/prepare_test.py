"""Tests of dataset preparation (input_pipeline.prepare): a stale prepared dataset, two first runs sharing a fresh
data_dir, and the leftovers of a killed preparation."""

import json
import os
import shutil
import subprocess
import sys

import h5py
import ml_collections
import numpy as np
import pytest

import tfds_ocmr
from segrecon_jax.data import phantom
from segrecon_jax.training import config_checks
from segrecon_jax.training import input_pipeline

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, dataset_config, manual_dir='', **fields):
  return ml_collections.ConfigDict(dict(dataset='ocmr', dataset_config=dataset_config, data_dir=str(data_dir),
                                        manual_dir=str(manual_dir), train_split='train', eval_split='test',
                                        **fields))


@pytest.fixture(name='manual_dir')
def fixture_manual_dir(tmp_path):
  """Three small OCMR-format subjects with labels, as a user lays out a manual_dir."""
  directory = str(tmp_path / 'ocmr_a')
  phantom.write_dataset(directory, 3, seed=5, recon_size=(40, 32), num_coils=2, num_slices=1, num_frames=2)
  return directory


def test_a_stale_prepared_dataset_is_refused(tmp_path, manual_dir):
  data_dir = tmp_path / 'tfds'
  config = _config(data_dir, 'real', manual_dir, image_size=32)
  train = input_pipeline.load_split(config, 'train')
  dataset_dir = input_pipeline.builder(config).data_dir
  record = json.load(open(os.path.join(dataset_dir, tfds_ocmr.ocmr.SOURCE_RECORD)))
  assert sorted(record['files']) == sorted([f'fs_000{i}_phantom.h5' for i in (1, 2, 3)] +
                                           [f'labels/fs_000{i}_phantom.h5' for i in (1, 2, 3)])
  assert len(input_pipeline.load_split(config, 'train')) == len(train)  # the same files: reused

  # The same files elsewhere (a copy that keeps or changes the modification times) are the same data.
  copy = str(tmp_path / 'ocmr_copy')
  shutil.copytree(manual_dir, copy)
  os.utime(os.path.join(copy, 'fs_0002_phantom.h5'), ns=(1, 1))
  input_pipeline.load_split(_config(data_dir, 'real', copy, image_size=32), 'train')

  # Another manual_dir: other subjects (one removed, one added) and one label file edited in place.
  other = str(tmp_path / 'ocmr_b')
  shutil.copytree(manual_dir, other)
  os.remove(os.path.join(other, 'fs_0003_phantom.h5'))
  phantom.write_dataset(str(tmp_path / 'extra'), 4, seed=6, recon_size=(40, 32), num_coils=2, num_slices=1,
                        num_frames=2)
  shutil.copy(str(tmp_path / 'extra' / 'fs_0004_phantom.h5'), other)
  shutil.copy(str(tmp_path / 'extra' / 'labels' / 'fs_0004_phantom.h5'), os.path.join(other, 'labels'))
  with h5py.File(os.path.join(other, 'labels', 'fs_0001_phantom.h5'), 'r+') as f:
    f['labelled'][...] = np.zeros_like(f['labelled'][...])
  with pytest.raises(input_pipeline.StaleDatasetError) as raised:
    input_pipeline.load_split(_config(data_dir, 'real', other, image_size=32), 'train')
  message = str(raised.value)
  assert f'prepared dataset {dataset_dir} was built from the files of {manual_dir}' in message
  for change in ('fs_0003_phantom.h5 was removed', 'fs_0004_phantom.h5 was added',
                 'labels/fs_0001_phantom.h5 changed', 'labels/fs_0004_phantom.h5 was added',
                 f'Delete {os.path.dirname(dataset_dir)}'):
    assert change in message

  # A manual_dir that does not exist is an error, before and after preparation.
  missing = _config(data_dir, 'real', tmp_path / 'nowhere', image_size=32)
  with pytest.raises(config_checks.ConfigError, match=r"config.manual_dir=.*nowhere' does not exist"):
    input_pipeline.load_split(missing, 'train')

  # A dataset prepared by older readers (which served the same files differently) is refused, not reused.
  record_path = os.path.join(dataset_dir, tfds_ocmr.ocmr.SOURCE_RECORD)
  assert record['reader_version'] == tfds_ocmr.ocmr.READER_VERSION
  json.dump(dict(record, reader_version=1), open(record_path, 'w'))
  with pytest.raises(input_pipeline.StaleDatasetError, match=r'prepared by readers of version 1, which serve'):
    input_pipeline.load_split(config, 'train')
  old_record = dict(record)
  del old_record['reader_version']  # Records from before reader versions are version 1.
  json.dump(old_record, open(record_path, 'w'))
  with pytest.raises(input_pipeline.StaleDatasetError, match=r'prepared by readers of version 1'):
    input_pipeline.load_split(config, 'train')

  # A dataset prepared before records existed cannot be checked: a clear error, not a silent reuse.
  os.remove(os.path.join(dataset_dir, tfds_ocmr.ocmr.SOURCE_RECORD))
  with pytest.raises(input_pipeline.StaleDatasetError, match='without a record of its source files'):
    input_pipeline.load_split(config, 'train')


_PREPARE = '''
import logging, sys
logging.basicConfig(level=logging.INFO, format='%(message)s')
import ml_collections
from segrecon_jax.training import input_pipeline
config = ml_collections.ConfigDict(dict(dataset='ocmr', dataset_config='phantom_tiny', data_dir=sys.argv[1],
                                        manual_dir='', train_split='train'))
print('examples', len(input_pipeline.load_split(config, 'train')))
'''


@pytest.mark.slow
def test_two_first_runs_share_a_fresh_data_dir(tmp_path):
  """Both prepare phantom_tiny at once: one builds, the other waits and reuses it; a killed build's leftovers go."""
  data_dir = tmp_path / 'tfds'
  config_dir = data_dir / 'ocmr' / 'phantom_tiny'
  incomplete = config_dir / 'incomplete.K1LLED_1.0.0'  # what TFDS leaves when a preparation is killed
  incomplete.mkdir(parents=True)
  (incomplete / 'ocmr-train.array_record-00000-of-00001').write_bytes(b'partial')
  scratch = data_dir / 'downloads' / 'ocmr_phantom_scratch' / 'phantom_tiny' / 'tmpk1lled'
  scratch.mkdir(parents=True)
  (scratch / 'fs_0001_phantom.h5').write_bytes(b'partial')
  env = dict(os.environ, PYTHONPATH=_ROOT, JAX_PLATFORMS='cpu')
  runs = [subprocess.Popen([sys.executable, '-c', _PREPARE, str(data_dir)], env=env, cwd=_ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outputs = [run.communicate(timeout=600) for run in runs]
  for run, (out, err) in zip(runs, outputs):
    assert run.returncode == 0, err[-3000:]
    assert 'examples 20' in out
  logs = '\n'.join(err for _, err in outputs)
  assert logs.count('Building TFDS ocmr/phantom_tiny') == 1
  assert f'Deleted {incomplete}' in logs
  assert not incomplete.exists() and not scratch.exists()
  assert [n for n in os.listdir(config_dir) if not n.startswith('.')] == ['1.0.0']

  # Flipped bytes in a prepared file: array_record's checksums catch them; the error names the folder to delete.
  dataset_dir = str(config_dir / '1.0.0')
  train_file = next(os.path.join(dataset_dir, n) for n in os.listdir(dataset_dir) if '-train.array_record' in n)
  data = bytearray(open(train_file, 'rb').read())
  data[len(data) // 3:len(data) // 3 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 3:len(data) // 3 + 64])
  with open(train_file, 'wb') as f:
    f.write(bytes(data))
  config = _config(data_dir, 'phantom_tiny', eval_batch_size=4)
  with pytest.raises(input_pipeline.CorruptDatasetError, match=rf"{dataset_dir} \(split 'train'\): example \d+ "
                                                              rf'cannot be read back.*Riegeli.*Delete {dataset_dir}'):
    list(input_pipeline.eval_batches(input_pipeline.load_split(config, 'train'), config))
