"""Tests of per-slice evaluation: every test slice's metrics under a stable id, in per_slice.json."""

import importlib
import json
import os
import shutil
import zlib

import h5py
import nibabel as nib
import numpy as np
import pytest

from segrecon_jax import metrics
from segrecon_jax.data import labels
from segrecon_jax.data import layouts
from segrecon_jax.data import magnitude
from segrecon_jax.data import ocmr
from segrecon_jax.data import phantom
from segrecon_jax.data import phantom_nifti
from segrecon_jax.training import inference
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import prediction_io
from segrecon_jax.training import reporting
from segrecon_jax.training import train

import train_test


def tiny_config(data_dir):
  """One epoch of train_test's tiny UNet -> UNet on phantom_tiny (32x32), without stabilization: the config of
  conftest's `one_epoch_run`."""
  return train_test.one_epoch(data_dir)


def test_example_id_names_subject_slice_frame():
  assert input_pipeline.example_id({'subject_id': b'fs_0003', 'slice': np.int32(1), 'frame': 2}, 7) == 'fs_0003/1/2'
  assert input_pipeline.example_id({'subject_id': np.array(b'fs_0003', object), 'slice': 0, 'frame': 0}, 7) == \
      'fs_0003/0/0'
  assert input_pipeline.example_id({'image': np.zeros(2)}, 7) == '7'
  # The evaluation mask is keyed by the same id (one function builds it), the index without a subject.
  example = {'subject_id': np.array(b'fs_0003'), 'slice': 1, 'frame': np.int32(2)}
  assert input_pipeline.mask_id(example, 7) == zlib.crc32(b'fs_0003/1/2') & 0x7FFFFFFF
  assert input_pipeline.mask_id({'image': np.zeros(2)}, 7) == 7


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


def test_an_all_zero_reference_is_refused_not_averaged():
  """A split example whose fully sampled image is all zero (metrics NaN, formerly PSNR 100) stops the evaluation with
  its id instead of entering the means; a padding copy of it would not count, but here it is a valid example."""
  source = [{'image': np.full((8, 8), 0.5 + i, np.complex64), 'segmentation': np.zeros((8, 8), np.int32),
             'subject_id': b'p1', 'slice': i, 'frame': 0} for i in range(3)]
  source[1]['image'] = np.zeros((8, 8), np.complex64)
  config = importlib.import_module('configs.unet').get_config('x4,runlocal')
  config.eval_batch_size = 2

  def step(state, batch):
    del state
    image = np.asarray(batch['image'])
    recon = image + 0.1
    results = metrics.reconstruction_metrics(recon.reshape((-1, 8, 8)), image.reshape((-1, 8, 8)),
                                             np.zeros((image.shape[0] * image.shape[1], 8, 8), np.int32), 1)
    return {k: np.asarray(v).reshape(image.shape[:2]) for k, v in results.items()}, {'recon': recon}

  with pytest.raises(inference.EmptyReferenceError, match=r'holds 1 example\(s\) whose fully sampled image is all '
                                                          r'zero \(p1/1/0\): PSNR and SSIM'):
    inference.evaluate_state(step, None, source, config)
  source[1]['image'] = np.full((8, 8), 3.0, np.complex64)
  results, _ = inference.evaluate_state(step, None, source, config)
  assert np.isfinite(results['psnr']) and results['psnr'] < metrics.MAX_PSNR_DB


def test_train_and_eval_write_per_slice_json(data_dir, one_epoch_run, tmp_path):
  config = tiny_config(data_dir)
  workdir = one_epoch_run.copy(tmp_path / 'run')
  record = json.loads((tmp_path / 'run' / 'per_slice.json').read_text())
  means = json.loads((tmp_path / 'run' / 'metrics.json').read_text())['metrics']
  eval_source = input_pipeline.load_split(config, config.eval_split)
  expected_ids = sorted(input_pipeline.example_id(eval_source[i], i) for i in range(len(eval_source)))
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



def test_predict_input_files_of_a_folder(tmp_path):
  """A folder's OCMR, NIfTI and HDF5 magnitude files, each under its path there; labels, hidden and us_ skipped."""
  folder = tmp_path / 'in'
  phantom_nifti.write_patient(str(folder), 1, recon_size=(24, 16), num_slices=1)
  phantom.write_subject(str(folder), 1, seed=5, recon_size=(16, 16), num_coils=2, num_slices=1, num_frames=2)
  with h5py.File(folder / 'case02_sa.h5', 'w') as f:
    f['image'] = np.ones((2, 16, 16), np.float32)
  (folder / '.hidden.nii.gz').write_bytes(b'')
  shutil.copy(folder / 'fs_0001_phantom.h5', folder / 'us_0001.h5')
  files = prediction_io.input_files(str(folder))
  assert [(f.name, f.layout.name) for f in files] == [
      ('case02_sa', 'magnitude'), ('fs_0001_phantom', 'real'), ('patient001/patient001_frame01', 'magnitude'),
      ('patient001/patient001_frame03', 'magnitude')]
  assert [(f.name, f.layout.name) for f in prediction_io.input_files(files[2].path)] == [
      ('patient001_frame01', 'magnitude')]
  with pytest.raises(FileNotFoundError, match='nowhere: no such file or folder'):
    prediction_io.input_files(str(tmp_path / 'nowhere'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='empty: no file to predict in it'):
    prediction_io.input_files(str(tmp_path / 'empty'))
  with h5py.File(folder / 'notes.h5', 'w') as f:
    f['masks'] = np.zeros((1, 1, 2, 2), np.uint8)
  with pytest.raises(layouts.DataFormatError, match=r'notes.h5: expected an OCMR file .*found \[.masks.\]'):
    prediction_io.input_files(str(folder))


def test_nifti_predictions_are_in_the_inputs_own_label_values(tmp_path, caplog):
  """A perfect prediction of an ACDC-convention file (1 RV, 3 LV; ours are 1 LV, 3 RV) writes back its own `_gt`
  values, and the header says so; a mapping that cannot be inverted keeps our classes, says so and warns."""
  config = train_test.tiny_config(str(tmp_path / 'tfds'), num_epochs=1)  # phantom data: ACDC's mapping for files
  (image_path, label_path), _ = phantom_nifti.write_patient(str(tmp_path / 'in'), 1, recon_size=(24, 16),
                                                            num_slices=2)
  item = prediction_io.input_files(image_path)[0]
  loaded = prediction_io.load_file(item, (24, 16), config)
  ours = np.stack([e['segmentation'] for e in loaded.examples])
  assert {labels.LV_POOL, labels.RV_POOL} <= set(np.unique(ours))
  arrays = {'recon': np.stack([e['image'] for e in loaded.examples]), 'seg': ours.astype(np.int32)}
  prediction_io.write_nifti(str(tmp_path), loaded, arrays)
  written = nib.load(tmp_path / 'seg.nii.gz')
  np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(nib.load(label_path).dataobj))
  assert written.header['descrip'].item().decode() == \
      'labels as in the input: 0 background, 1 rv_pool, 2 myocardium, 3 lv_pool'
  # Background from two values of the input: no single value to write back for it.
  loaded.label_mapping = (0, 3, 2, 1, 0)
  prediction_io.write_nifti(str(tmp_path), loaded, arrays)
  written = nib.load(tmp_path / 'seg.nii.gz')
  np.testing.assert_array_equal(np.asarray(written.dataobj).transpose(2, 0, 1), ours)
  assert written.header['descrip'].item().decode() == \
      'segrecon labels: 0 background, 1 lv_pool, 2 myocardium, 3 rv_pool'
  assert "config.label_mapping (0, 3, 2, 1, 0) cannot be inverted" in caplog.text
  assert labels.inverse_mapping((0, 1, 2, 3)) == (0, 1, 2, 3) and labels.inverse_mapping((0, 1, 1, 3)) is None


def _placed(values, size):
  return ocmr.crop_or_pad(np.asarray(values), size)


def test_predict_a_folder_writes_nifti_on_each_files_grid(data_dir, one_epoch_run, tmp_path):
  """`predict --input=<folder>`: every file's predictions as NIfTI on the file's own voxel grid, with its affine."""
  config = tiny_config(data_dir)
  workdir = one_epoch_run.copy(tmp_path / 'run')
  folder = tmp_path / 'in'
  (nifti_image, _), _ = phantom_nifti.write_patient(str(folder), 1, recon_size=(36, 28), num_slices=2)
  cine = np.random.default_rng(0).uniform(0, 1, (30, 34, 2, 3)).astype(np.float32)  # [x, y, z, t], no labels
  affine = phantom_nifti.patient_affine(1.5)
  nib.save(nib.Nifti1Image(cine, affine), str(folder / 'patient001' / 'patient001_4d.nii.gz'))
  with h5py.File(folder / 'case02_sa.h5', 'w') as f:  # [slices, H, W], no labels
    f['image'] = cine[..., 0].transpose(2, 0, 1)
  kspace_path, _ = phantom.write_subject(str(folder), 1, seed=5, recon_size=(32, 24), num_coils=2, num_slices=1,
                                         num_frames=2)
  out_root = inference.predict(config, workdir, str(folder))
  assert os.path.isdir(out_root)

  def outputs(name):
    out_dir = os.path.join(out_root, name)
    arrays = {k: np.load(os.path.join(out_dir, f'{k}.npy')) for k in ('recon', 'seg', 'segmentation')}
    volumes = {k: nib.load(os.path.join(out_dir, f'{k}.nii.gz')) for k in ('recon', 'seg')}
    assert volumes['seg'].get_data_dtype() == np.uint8 and volumes['seg'].header.get_intent()[0] == 'label'
    return arrays, volumes

  # Magnitude files: seg.nii.gz in the input's label values (phantom data: ACDC's mapping, its own inverse).
  acdc = np.asarray(labels.inverse_mapping(magnitude.ACDC_LABEL_MAPPING))
  # An ACDC-layout [x, y, z] volume with its labels: the source affine, its x, y, z.
  arrays, volumes = outputs('patient001/patient001_frame01')
  source = nib.load(nifti_image)
  examples = magnitude.load_examples(nifti_image, nifti_image.replace('.nii.gz', '_gt.nii.gz'), (32, 32))
  assert arrays['segmentation'].any()  # the reference labels were read
  for key in ('recon', 'seg'):
    assert volumes[key].shape == source.shape == (36, 28, 2)
    np.testing.assert_allclose(volumes[key].affine, source.affine)
  seg, recon = np.asarray(volumes['seg'].dataobj), volumes['recon'].get_fdata()
  for z, e in enumerate(examples):
    np.testing.assert_array_equal(seg[:, :, z], _placed(acdc[arrays['seg'][z]], (36, 28)))
    np.testing.assert_allclose(recon[:, :, z], _placed(np.abs(arrays['recon'][z]) * e['scale'], (36, 28)),
                               rtol=1e-5, atol=1e-6)
  # A 4-D [x, y, z, t] file without labels: example z * frames + t is voxel [..., z, t].
  arrays, volumes = outputs('patient001/patient001_4d')
  assert volumes['seg'].shape == (30, 34, 2, 3) and not arrays['segmentation'].any()
  np.testing.assert_allclose(volumes['seg'].affine, affine)
  seg = np.asarray(volumes['seg'].dataobj)
  for z in range(2):
    for t in range(3):
      np.testing.assert_array_equal(seg[:, :, z, t], _placed(acdc[arrays['seg'][z * 3 + t]], (30, 34)))
  # HDF5 [slices, H, W]: (H, W, slices), identity affine.
  arrays, volumes = outputs('case02_sa')
  assert volumes['seg'].shape == (30, 34, 2) and np.allclose(volumes['seg'].affine, np.eye(4))
  np.testing.assert_array_equal(np.asarray(volumes['seg'].dataobj)[:, :, 1], _placed(acdc[arrays['seg'][1]],
                                                                                    (30, 34)))
  # OCMR: (readout, phase encode, slices, frames) with its voxel sizes, and the label file as before.
  arrays, volumes = outputs('fs_0001_phantom')
  assert volumes['seg'].shape == (32, 24, 1, 2)
  pixel_mm = phantom.make_subject(5, 1, recon_size=(32, 24), num_coils=2, num_slices=1, num_frames=2).pixel_mm
  assert volumes['seg'].header.get_zooms()[:2] == pytest.approx((pixel_mm, pixel_mm), rel=1e-3)
  masks, _ = ocmr.read_labels(os.path.join(out_root, 'fs_0001_phantom', 'labels', 'fs_0001_phantom.h5'),
                              (1, 2, 32, 24))
  np.testing.assert_array_equal(np.asarray(volumes['seg'].dataobj)[:, :, 0, 1], masks[0, 1])
  assert volumes['seg'].header['descrip'].item().decode().startswith('segrecon labels: 0 background, 1 lv_pool')
