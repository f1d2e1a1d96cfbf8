"""Tests of per-slice evaluation: every test slice's metrics under a stable id, in per_slice.json."""

import importlib
import json
import os

import numpy as np
import pytest

from segrecon_jax import inference
from segrecon_jax import input_pipeline
from segrecon_jax import reporting
from segrecon_jax import train


def tiny_config(data_dir):
  """One epoch of a tiny UNet -> UNet on phantom_tiny (32x32), as tests/train_test.py's `tiny_config`."""
  config = importlib.import_module('configs.unet_unet').get_config('x4,runlocal')
  config.dataset_config = 'phantom_tiny'
  config.data_dir = data_dir
  config.batch_size = config.eval_batch_size = 4
  config.num_epochs = config.eval_every_epochs = config.checkpoint_every_epochs = 1
  config.log_every_steps = 1
  config.compilation_cache_dir = ''
  config.num_acs = 2
  config.progress_bar = False
  config.model.recon.features = config.model.seg.features = (4, 8)
  return config


def test_example_id_names_subject_slice_frame():
  assert inference.example_id({'subject_id': b'fs_0003', 'slice': np.int32(1), 'frame': 2}, 7) == 'fs_0003/1/2'
  assert inference.example_id({'subject_id': np.array(b'fs_0003', object), 'slice': 0, 'frame': 0}, 7) == \
      'fs_0003/0/0'
  assert inference.example_id({'image': np.zeros(2)}, 7) == '7'


def test_per_slice_metrics_of_a_fake_step():
  """Three examples in batches of 2 (one padding copy), the middle one without heart: its F- values are NaN, the
  padding is dropped, and the means are the means of the per-slice values."""
  names = [b'b', b'c', b'a']
  heart = [1.0, 0.0, 1.0]
  source = [{'image': np.full((4, 4), i + 1.0, np.complex64), 'segmentation': np.zeros((4, 4), np.int32),
             'subject_id': n, 'slice': 0, 'frame': i} for i, n in enumerate(names)]
  config = importlib.import_module('configs.unet').get_config('x4,runlocal')
  config.eval_batch_size = 2

  def fake_step(state, batch):
    del state
    value = np.abs(np.asarray(batch['image'])[..., 0, 0])  # [devices, per_device]: 1, 2, 3 by position.
    index = np.asarray(batch['index'])
    results = {'mse': value, 'psnr': value, 'f_psnr': 10 * value, 'zero_filled_f_psnr': -value,
               'has_heart': np.array(heart)[index]}
    return results, {'recon': np.asarray(batch['image'])}

  results, images = inference.evaluate_state(fake_step, None, source, config)
  per_slice = results.per_slice
  assert per_slice['ids'] == ['a/0/2', 'b/0/0', 'c/0/1'] and per_slice['index'] == [2, 0, 1]
  np.testing.assert_allclose(per_slice['metrics']['psnr'], [3.0, 1.0, 2.0])
  np.testing.assert_allclose(per_slice['metrics']['f_psnr'], [30.0, 10.0, np.nan])
  np.testing.assert_allclose(per_slice['metrics']['zero_filled_f_psnr'], [-3.0, -1.0, np.nan])
  np.testing.assert_allclose(per_slice['metrics']['has_heart'], [1.0, 1.0, 0.0])
  assert results['psnr'] == pytest.approx(2.0) and results['f_psnr'] == pytest.approx(20.0)
  assert results['num_examples'] == 3 and images['recon'].shape[0] == 2


def test_train_and_eval_write_per_slice_json(tmp_path):
  config = tiny_config(str(tmp_path / 'tfds'))
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  record = json.loads((tmp_path / 'run' / 'per_slice.json').read_text())
  means = json.loads((tmp_path / 'run' / 'metrics.json').read_text())['metrics']
  eval_source = input_pipeline.load_split(config, config.eval_split)
  expected_ids = sorted(inference.example_id(eval_source[i], i) for i in range(len(eval_source)))
  assert record['ids'] == expected_ids and len(set(record['ids'])) == len(eval_source) == means['num_examples']
  assert all(len(name.split('/')) == 3 for name in record['ids'])
  assert set(record['metrics']) == set(means) - {'num_examples'} | {'has_heart'}
  for key, mean in means.items():
    if key == 'num_examples':
      continue
    values = np.array([np.nan if v is None else v for v in record['metrics'][key]], float)
    assert values.shape == (len(eval_source),)
    np.testing.assert_allclose(np.nanmean(values), mean, rtol=1e-5, err_msg=key)
    if key.startswith('f_'):  # NaN exactly where the slice has no heart labels.
      np.testing.assert_array_equal(np.isnan(values), np.array(record['metrics']['has_heart']) == 0)
  # --mode=eval writes the same per-slice values from the checkpoint, in its own folder.
  inference.evaluate(config, workdir)
  again = reporting.read_per_slice(os.path.join(workdir, 'eval', 'test_x4'))
  assert again['ids'] == record['ids']
  np.testing.assert_allclose(again['metrics']['psnr'], record['metrics']['psnr'], rtol=1e-5)

