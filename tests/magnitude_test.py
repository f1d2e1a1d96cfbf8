"""Tests of the labelled magnitude reader and the `nifti` config on NIfTI and HDF5 files written here."""

import os

import h5py
import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_ocmr
from segrecon_jax.data import labels
from segrecon_jax.data import magnitude
from segrecon_jax.data import ocmr
from segrecon_jax.data import phantom_nifti
from segrecon_jax.training import input_pipeline

# ACDC's values: 1 RV, 2 myocardium, 3 LV cavity; each class gets its own intensity, so a label map that sat one
# pixel off (or transposed, or flipped) on its image would pair a class with another class's intensity.
_INTENSITY = {0: 0.05, 1: 0.5, 2: 0.3, 3: 1.0}
_SHAPE = (20, 14)  # x, y: non-square in-plane
_AFFINE = phantom_nifti.patient_affine(1.4, slice_mm=8.0)


def _acdc_volume(shift, num_slices=2):
  """ACDC-convention labels `[x, y, z]` with asymmetric blocks, and an image of class intensities times a slice gain."""
  label = np.zeros(_SHAPE + (num_slices,), np.uint8)
  for z in range(num_slices):
    label[2 + shift:6 + shift, 1:4, z] = 1
    label[10:14, 8 + z:12 + z, z] = 2
    label[14:18, 2:4, z] = 3
  image = np.vectorize(_INTENSITY.get)(label).astype(np.float32) * (1.0 + 0.5 * np.arange(num_slices))
  return image, label


def _write_nifti(path, image, label, label_affine=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(nib.Nifti1Image(image, _AFFINE), path + '.nii.gz')
  nib.save(nib.Nifti1Image(label, _AFFINE if label_affine is None else label_affine), path + '_gt.nii.gz')


@pytest.fixture(name='folder', scope='module')
def fixture_folder(tmp_path_factory):
  """Four ACDC-layout patients (ED + ES files), a 4-D M&Ms-like patient, a 3-D HDF5 file whose last slice is all
  background and a 4-D HDF5 file with an unlabelled frame; an unpaired 4-D file."""
  root = str(tmp_path_factory.mktemp('acdc_like'))
  for patient in range(1, 5):
    for frame, shift in ((1, 0), (7, 1)):
      image, label = _acdc_volume(shift)
      _write_nifti(os.path.join(root, f'patient{patient:03d}', f'patient{patient:03d}_frame{frame:02d}'), image, label)
  nib.save(nib.Nifti1Image(np.ones(_SHAPE + (2, 5), np.float32), _AFFINE),  # ACDC's 4d file: no labels, skipped
           os.path.join(root, 'patient001', 'patient001_4d.nii.gz'))
  image, label = _acdc_volume(0)
  cine = np.repeat(image[..., None], 3, axis=-1)
  cine_label = np.repeat(label[..., None], 3, axis=-1)
  cine_label[..., 1] = 0  # frame 1 not labelled (M&Ms labels ED and ES only)
  _write_nifti(os.path.join(root, 'mnm05', 'mnm05_sa'), cine, cine_label)
  image, label = _acdc_volume(0, num_slices=3)
  label[..., 2] = 0  # a slice past the apex: no heart, a valid all-background label map
  with h5py.File(os.path.join(root, 'case06_sa.h5'), 'w') as f:
    f['image'] = np.transpose(image, (2, 0, 1))  # [slices, H, W]
    f['label'] = np.transpose(label, (2, 0, 1))
  with h5py.File(os.path.join(root, 'case07_sa.h5'), 'w') as f:
    f['image'] = np.transpose(cine, (2, 3, 0, 1))  # [slices, frames, H, W]
    f['label'] = np.transpose(cine_label, (2, 3, 0, 1))
  return root


def test_find_pairs_and_subjects(folder):
  pairs = magnitude.find_pairs(folder)
  names = [os.path.relpath(image, folder) for image, _ in pairs]
  assert names == ['case06_sa.h5', 'case07_sa.h5', 'mnm05/mnm05_sa.nii.gz'] + [
      f'patient{p:03d}/patient{p:03d}_frame{f:02d}.nii.gz' for p in range(1, 5) for f in (1, 7)]
  assert all(label.endswith(('_gt.nii.gz', '.h5')) for _, label in pairs)
  assert {magnitude.subject_id(image) for image, _ in pairs} == {'case06', 'case07', 'mnm05', 'patient001',
                                                                 'patient002', 'patient003', 'patient004'}
  for name in ('mnm05', 'case07'):  # NIfTI [x, y, z, t] and HDF5 [slices, frames, H, W]
    four_d = [p for p in pairs if name in p[0]][0]
    assert magnitude.example_frames(*four_d) == [(0, 0), (0, 2), (1, 0), (1, 2)]  # the all-background frame 1 is not


def test_hdf5_slices_are_slices_and_every_slice_is_served(folder):
  """A 3-D HDF5 file is [slices, H, W]: each slice is served once, as frame 0 of itself, the all-background one too."""
  path = os.path.join(folder, 'case06_sa.h5')
  magnitude_volume, _, labelled = magnitude.read_pair(path, path)
  assert magnitude_volume.shape == (3, 1) + _SHAPE and labelled.all()
  assert magnitude.example_frames(path, path) == [(0, 0), (1, 0), (2, 0)]
  image, label = _acdc_volume(0, num_slices=3)
  examples = magnitude.load_examples(path, path, _SHAPE, root=folder)
  assert [(e['slice'], e['frame'], e['has_labels']) for e in examples] == [(0, 0, True), (1, 0, True), (2, 0, True)]
  for e in examples:
    np.testing.assert_allclose(np.abs(e['image']) * e['scale'], image[:, :, e['slice']], rtol=1e-5, atol=1e-6)
  assert not examples[2]['segmentation'].any() and examples[0]['segmentation'].any()
  np.testing.assert_array_equal(examples[1]['segmentation'], labels.remap(label[:, :, 1], (0, 3, 2, 1)))
  # Ids and evaluation masks follow the slice: case06/<slice>/0, three distinct masks.
  assert [input_pipeline.example_id(e, i) for i, e in enumerate(examples)] == ['case06/0/0', 'case06/1/0', 'case06/2/0']
  assert len({input_pipeline.mask_id(e, 0) for e in examples}) == 3


def test_single_phase_files_are_their_cine_frame():
  """ACDC's `<patient>_frameYY` volumes hold frame YY - 1 of the cine (the index in `_4d.nii.gz`)."""
  assert magnitude.cine_frame('/d/patient001/patient001_frame01.nii.gz') == 0
  assert magnitude.cine_frame('patient001_frame12.h5') == 11
  assert magnitude.cine_frame('A0S9V9_sa.nii.gz') == 0 and magnitude.cine_frame('case06_sa.h5') == 0


def test_phantom_writer_hdf5_with_background_slices(tmp_path):
  """The writer's HDF5 layout, [slices, H, W] per phase with slices past the apex, is served slice by slice."""
  pairs = phantom_nifti.write_patient(str(tmp_path), 1, recon_size=(24, 16), num_slices=2, file_format='h5',
                                      background_slices=1)
  assert [os.path.basename(p) for p, _ in pairs] == ['patient001_frame01.h5', 'patient001_frame03.h5']
  assert magnitude.find_pairs(str(tmp_path)) == pairs
  for path, label_path in pairs:
    with h5py.File(path, 'r') as f:
      assert f['image'].shape == f['label'].shape == (3, 24, 16)
      assert f['label'][:2].any(axis=(1, 2)).all() and not f['label'][2].any()
    frame = magnitude.cine_frame(path)
    assert magnitude.example_frames(path, label_path) == [(0, frame), (1, frame), (2, frame)]
  ed, es = (magnitude.load_examples(p, l, (24, 16), root=str(tmp_path)) for p, l in pairs)
  ids = [input_pipeline.example_id(e, 0) for e in ed + es]
  assert ids == [f'patient001/{s}/{t}' for t in (0, 2) for s in range(3)]
  nifti = phantom_nifti.write_patient(str(tmp_path / 'nifti'), 1, recon_size=(24, 16), num_slices=2,
                                      background_slices=1)
  for (path, label_path), served in zip(nifti, (ed, es)):
    examples = magnitude.load_examples(path, label_path, (24, 16), root=str(tmp_path / 'nifti'))
    assert [(e['slice'], e['frame']) for e in examples] == [(e['slice'], e['frame']) for e in served]
    for a, b in zip(examples, served):
      np.testing.assert_array_equal(a['segmentation'], b['segmentation'])
      np.testing.assert_allclose(np.abs(a['image']) * a['scale'], np.abs(b['image']) * b['scale'], rtol=1e-6)


def test_served_labels_sit_on_the_served_image(folder):
  """Orientation: served pixel (h, w) of image and labels is voxel (x, y) of the files, cropped/padded alike."""
  image_path = os.path.join(folder, 'patient002', 'patient002_frame07.nii.gz')
  image, label = _acdc_volume(1)
  size = (24, 10)  # pads x 20 -> 24, crops y 14 -> 10
  examples = magnitude.load_examples(image_path, image_path.replace('.nii.gz', '_gt.nii.gz'), size,
                                     magnitude.ACDC_LABEL_MAPPING, phase_seed=3, root=folder)
  assert [(e['slice'], e['frame']) for e in examples] == [(0, 6), (1, 6)]  # z slices of ACDC's frame 7
  for e in examples:
    z = e['slice']
    served = np.abs(e['image']) * e['scale']
    np.testing.assert_allclose(served, ocmr.crop_or_pad(image[:, :, z], size), rtol=1e-5, atol=1e-6)
    expected = ocmr.crop_or_pad(labels.remap(label[:, :, z], (0, 3, 2, 1)), size)
    np.testing.assert_array_equal(e['segmentation'], expected)
    gain = 1.0 + 0.5 * z
    ours_to_acdc = {labels.BACKGROUND: 0, labels.RV_POOL: 1, labels.MYOCARDIUM: 2, labels.LV_POOL: 3}
    inside = ocmr.crop_or_pad(np.ones(_SHAPE), size) > 0  # the padding is zero, not background tissue
    for ours, acdc in ours_to_acdc.items():
      where = (e['segmentation'] == ours) & inside
      assert where.any()
      np.testing.assert_allclose(served[where], _INTENSITY[acdc] * gain, rtol=1e-5)
    assert e['segmentation'][8 - 2 + 1, 0] == labels.RV_POOL  # x = 2 + shift .. -> h = x + 2 (pad), y = 2 -> w = 0
    assert e['subject_id'] == 'patient002' and e['file_name'] == 'patient002/patient002_frame07.nii.gz'


def test_synthetic_phase_is_smooth_seeded_and_served(folder):
  key = 'patient001/patient001_frame01/slice00/frame000'
  phase = magnitude.synthetic_phase((20, 14), 3, key)
  np.testing.assert_array_equal(phase, magnitude.synthetic_phase((20, 14), 3, key))
  assert not np.allclose(phase, magnitude.synthetic_phase((20, 14), 4, key))
  assert not np.allclose(phase, magnitude.synthetic_phase((20, 14), 3, key.replace('frame000', 'frame001')))
  assert np.abs(np.diff(phase, axis=0)).max() < 0.5 and np.abs(np.diff(phase, axis=1)).max() < 0.5
  image_path = os.path.join(folder, 'patient001', 'patient001_frame01.nii.gz')
  example = magnitude.load_examples(image_path, image_path.replace('.nii', '_gt.nii'), _SHAPE, phase_seed=3,
                                    root=folder)[0]
  np.testing.assert_allclose(np.angle(example['image'] * np.exp(-1j * phase)), 0, atol=1e-5)


def test_nifti_config_builds_split_by_patient(tmp_path, folder):
  config = tfds_ocmr.configure('nifti', image_size=(24, 16), test_fraction=0.3, split_seed=1)
  assert config.name == 'nifti_24x16_test0.3_seed1' and config.label_mapping == (0, 3, 2, 1)
  builder = tfds.builder('ocmr', config=config, data_dir=str(tmp_path))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=folder))
  assert builder.data_dir.endswith(os.path.join('ocmr', 'nifti_24x16_test0.3_seed1', '1.0.0'))
  sources = builder.as_data_source()
  subjects = {split: {s[i]['subject_id'].decode() for i in range(len(s))} for split, s in sources.items()}
  assert subjects['train'] and subjects['test'] and not subjects['train'] & subjects['test']
  # 4 patients x 2 files x 2 slices, the 4-D files' 2 labelled frames x 2 slices, the 3-D HDF5 file's 3 slices.
  assert sum(len(s) for s in sources.values()) == 16 + 4 + 4 + 3
  ids = [input_pipeline.example_id(s[i], i) for s in sources.values() for i in range(len(s))]
  assert len(set(ids)) == len(ids)  # ED and ES of a patient differ in frame
  assert {i for i in ids if i.startswith('case06/')} == {'case06/0/0', 'case06/1/0', 'case06/2/0'}
  for source in sources.values():
    for i in range(len(source)):
      example = source[i]
      assert example['image'].shape == (24, 16, 2) and example['has_labels']
      path = os.path.join(folder, example['file_name'].decode())
      label_path = path if path.endswith('.h5') else path.replace('.nii.gz', '_gt.nii.gz')
      expected = [e for e in magnitude.load_examples(path, label_path, (24, 16), root=folder)
                  if (e['slice'], e['frame']) == (example['slice'], example['frame'])][0]
      np.testing.assert_allclose(example['image'][..., 0] + 1j * example['image'][..., 1], expected['image'],
                                 atol=1e-6)
      np.testing.assert_array_equal(example['segmentation'], expected['segmentation'])


def test_bad_magnitude_files(tmp_path):
  image, label = _acdc_volume(0)
  base = str(tmp_path / 'p1' / 'p1_frame01')
  shifted = _AFFINE.copy()
  shifted[0, 3] += 1.4  # one voxel off
  _write_nifti(base, image, label, label_affine=shifted)
  with pytest.raises(magnitude.MagnitudeFormatError, match='p1_frame01_gt.nii.gz: its affine'):
    magnitude.read_pair(base + '.nii.gz', base + '_gt.nii.gz')
  _write_nifti(base, image, label[:, :10])
  with pytest.raises(magnitude.MagnitudeFormatError, match=r'p1_frame01_gt.nii.gz: label shape \(20, 10, 2\)'):
    magnitude.read_pair(base + '.nii.gz', base + '_gt.nii.gz')
  _write_nifti(base, -image, label)
  with pytest.raises(magnitude.MagnitudeFormatError, match=r'p1_frame01.nii.gz: expected magnitude images'):
    magnitude.read_pair(base + '.nii.gz', base + '_gt.nii.gz')
  _write_nifti(base, image, (label + 4 * (label == 3)).astype(np.uint8))  # a value 7: not in ACDC's 0..3
  # An input error (one paragraph in main.py, exit code 2), not a bug: it names the file, the range and the field.
  with pytest.raises(magnitude.MagnitudeFormatError, match=r'p1_frame01_gt.nii.gz: label values must be in 0..3 '
                     r'\(the label mapping \(0, 3, 2, 1\)\), got range \[0, 7\]; config.label_mapping gives'):
    magnitude.load_examples(base + '.nii.gz', base + '_gt.nii.gz', (16, 16))
  with open(base + '.nii.gz', 'wb') as f:
    f.write(b'not a NIfTI file')
  with pytest.raises(magnitude.MagnitudeFormatError, match=r'p1_frame01.nii.gz: expected a NIfTI image file'):
    magnitude.read_pair(base + '.nii.gz', base + '_gt.nii.gz')
  with h5py.File(tmp_path / 'c1.h5', 'w') as f:
    f['image'] = np.zeros((2, 8, 8), np.float32)
  with pytest.raises(magnitude.MagnitudeFormatError, match=r'c1.h5: expected HDF5 datasets .*missing \[.label.\]'):
    magnitude.read_pair(str(tmp_path / 'c1.h5'), str(tmp_path / 'c1.h5'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  builder = tfds.builder('ocmr', config='nifti', data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(tfds_ocmr.OCMRManualDirError, match='`nifti` config needs .*empty is missing or empty'):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(empty)))
  (empty / 'notes.txt').write_text('no images here')
  with pytest.raises(tfds_ocmr.OCMRManualDirError, match='empty: found no image file with a label file'):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(empty)))
  assert not builder.is_prepared()


def test_an_all_zero_slice_is_refused_naming_file_slice_and_frame(tmp_path):
  """An image with nothing in it is an input error (its PSNR and SSIM are undefined), also where only the crop to the
  model's size leaves nothing."""
  image, label = _acdc_volume(0)
  base = str(tmp_path / 'p1' / 'p1_frame03')  # single phase: served as frame 2
  image[..., 1] = 0.0
  _write_nifti(base, image, label)
  with pytest.raises(magnitude.MagnitudeFormatError, match=r'p1_frame03.nii.gz: slice 1 frame 2 is all zero'):
    magnitude.read_pair(base + '.nii.gz', base + '_gt.nii.gz')
  _write_nifti(base, np.zeros_like(image), label)
  with pytest.raises(magnitude.MagnitudeFormatError,
                     match=r'p1_frame03.nii.gz: slice 0 frame 2 \(and 1 more of its 2 slices x frames\) is all zero'):
    magnitude.load_examples(base + '.nii.gz', base + '_gt.nii.gz', (16, 16))
  corner = np.zeros_like(image)
  corner[:2, :2] = 1.0  # signal only outside the central 8x8
  _write_nifti(base, corner, label)
  assert magnitude.read_pair(base + '.nii.gz', base + '_gt.nii.gz')[0].max() == 1.0
  with pytest.raises(magnitude.MagnitudeFormatError, match=r'slice 0 frame 2 is all zero inside the central 8x8'):
    magnitude.load_examples(base + '.nii.gz', base + '_gt.nii.gz', (8, 8))


def _build(manual_dir, data_dir):
  builder = tfds.builder('ocmr', config='nifti', data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))


def test_a_folder_without_two_labelled_subjects_names_its_unlabelled_files(tmp_path):
  """A folder whose only file has no labelled frame (a 4-D file whose label maps are all background), then with a
  labelled subject beside it: the split needs 2 labelled subjects, and the message says which files have none."""
  image, label = _acdc_volume(0)
  cine = np.repeat(image[..., None], 3, axis=-1)
  _write_nifti(str(tmp_path / 'data' / 'A0S9V9' / 'A0S9V9_sa'), cine, np.zeros(cine.shape, np.uint8))
  unlabelled = tmp_path / 'data' / 'A0S9V9' / 'A0S9V9_sa_gt.nii.gz'
  with pytest.raises(tfds_ocmr.OCMRManualDirError) as raised:
    _build(tmp_path / 'data', tmp_path / 'tfds')
  assert str(raised.value).startswith(f'{tmp_path / "data"}: no frame of {unlabelled} is labelled, so there is '
                                      'nothing to train or test on. A train/test split needs at least 2 subjects')
  assert 'label map is not all background' in str(raised.value) and '\n' not in str(raised.value)
  _write_nifti(str(tmp_path / 'data' / 'patient001' / 'patient001_frame01'), image, label)
  with pytest.raises(tfds_ocmr.OCMRManualDirError,
                     match=f'only subject patient001 has labelled frames \\(no frame of {unlabelled} is labelled\\)'):
    _build(tmp_path / 'data', tmp_path / 'tfds')


def test_configure_names_each_setting():
  assert tfds_ocmr.configure('real') is next(c for c in tfds_ocmr.Ocmr.BUILDER_CONFIGS if c.name == 'real')
  assert tfds_ocmr.configure('real', image_size=256, split_seed=0).name == 'real'  # the built-in values
  assert tfds_ocmr.configure('real', image_size=128).name == 'real_128x128'
  assert tfds_ocmr.configure('real', image_size=128).image_size == (128, 128)
  assert tfds_ocmr.configure('phantom_tiny', include_unlabelled=True).name == 'phantom_tiny_unlabelled'
  assert tfds_ocmr.configure('nifti', label_mapping=(0, 1, 2, 3), phase_seed=2).name == 'nifti_map0-1-2-3_phase2'
  with pytest.raises(ValueError, match='label_mapping'):
    tfds_ocmr.configure('nifti', label_mapping=(0, 5))
  with pytest.raises(ValueError, match=r'label_mapping=.*\(the nifti config\) only'):
    tfds_ocmr.configure('real', label_mapping=(0, 1, 2, 3))
  with pytest.raises(ValueError, match='unknown ocmr config'):
    tfds_ocmr.configure('acdc')
  with pytest.raises(ValueError, match='cannot be set'):
    tfds_ocmr.configure('real', num_phantom_subjects=3)
