"""End to end on files a user brings: train on a NIfTI folder at a size set from the config, predict an OCMR file into a
label file, and label from it (the round trip of tfds_ocmr/README.md)."""

import importlib
import logging
import os
import shutil

import h5py
import numpy as np
import orbax.checkpoint as ocp
import pytest

from segrecon_jax.data import ocmr
from segrecon_jax.data import phantom
from segrecon_jax.data import phantom_nifti
from segrecon_jax.training import checkpoints
from segrecon_jax.training import inference
from segrecon_jax.training import train


def nifti_config(data_dir, manual_dir, image_size=32):
  config = importlib.import_module('configs.unet_unet').get_config('x4,runlocal')
  config.dataset_config = 'nifti'
  config.image_size = image_size
  config.data_dir, config.manual_dir = data_dir, manual_dir
  config.batch_size = config.eval_batch_size = 4
  config.num_epochs = config.eval_every_epochs = config.checkpoint_every_epochs = 1
  config.num_acs = 2
  config.compilation_cache_dir = ''
  config.progress_bar = False
  config.model.recon.features = config.model.seg.features = (4, 8)
  return config


@pytest.mark.slow
def test_train_on_nifti_then_predict_labels_for_an_ocmr_file(tmp_path, caplog):
  manual_dir = str(tmp_path / 'acdc_like')
  phantom_nifti.write_folder(manual_dir, 4, seed=1, recon_size=(40, 28), num_slices=2)
  config = nifti_config(str(tmp_path / 'tfds'), manual_dir)
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert np.isfinite(results['psnr']) and np.isfinite(results['dice_mean'])
  assert os.path.isdir(tmp_path / 'tfds' / 'ocmr' / 'nifti_32x32' / '1.0.0')
  manager = checkpoints.checkpoint_manager(workdir, config)
  meta = manager.restore(manager.latest_step(), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  assert meta['data']['builder_config']['name'] == 'nifti_32x32' and meta['config']['image_size'] == 32
  assert meta['data']['builder_config']['image_size'] == [32, 32]

  # Another size is another dataset, and this workdir refuses it.
  with pytest.raises(checkpoints.ResumeError, match='nifti_48x48'):
    train.train_and_evaluate(nifti_config(str(tmp_path / 'tfds'), manual_dir, image_size=48), workdir)
  assert os.path.isdir(tmp_path / 'tfds' / 'ocmr' / 'nifti_48x48' / '1.0.0')

  # Predict an OCMR file of another size (40 x 28): said in the log, and its labels come back at 40 x 28.
  ocmr_dir = str(tmp_path / 'ocmr')
  kspace_path, label_path = phantom.write_subject(ocmr_dir, 1, seed=5, recon_size=(40, 28), num_coils=4,
                                                  num_slices=1, num_frames=2)
  os.remove(label_path)  # nobody has labelled it yet
  with caplog.at_level(logging.INFO):
    out_dir = inference.predict(config, workdir, kspace_path)
  assert any('fs_0001_phantom.h5: its images are 40x28' in r.getMessage()
             and 'readout cropped 40 -> 32, phase encode zero-padded 28 -> 32' in r.getMessage()
             for r in caplog.records)
  predicted = os.path.join(out_dir, 'labels', 'fs_0001_phantom.h5')
  masks, labelled = ocmr.read_labels(predicted, (1, 2, 40, 28))
  assert not labelled.any()
  seg = np.load(os.path.join(out_dir, 'seg.npy'))
  assert seg.shape == (2, 32, 32)
  for frame in range(2):
    np.testing.assert_array_equal(masks[0, frame], ocmr.crop_or_pad(seg[frame].astype(np.uint8), (40, 28)))
  with h5py.File(predicted, 'r') as f:
    assert f.attrs['origin'] == 'prediction' and f.attrs['source_file'] == 'fs_0001_phantom.h5'
    assert f.attrs['checkpoint_step'] > 0

  # The round trip: the file goes next to the OCMR file, a person accepts frame 1, and the reader serves it.
  assert ocmr.example_frames(kspace_path) == []
  shutil.copy(predicted, ocmr.label_path_for(kspace_path))
  with h5py.File(ocmr.label_path_for(kspace_path), 'r+') as f:
    f['labelled'][0, 1] = 1
  examples = ocmr.load_examples(kspace_path, (32, 32))
  assert [(e['slice'], e['frame']) for e in examples] == [(0, 1)]
  inside = ocmr.crop_or_pad(np.ones((40, 28), np.uint8), (32, 32)) > 0  # columns the 28-wide file holds
  np.testing.assert_array_equal(examples[0]['segmentation'], np.where(inside, seg[1], 0))
