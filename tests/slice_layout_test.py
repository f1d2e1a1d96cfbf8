"""The 2-D slice layout of labelled magnitude folders (`<subject>_frameYY_slice_K.h5`) and the served field of view."""

import os

import h5py
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_ocmr
from configs import default
from segrecon_jax.data import magnitude
from segrecon_jax.data import ocmr
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import prediction_io


def _heart(shape, centre, radius):
  """ACDC-convention labels `[H, W]`: an LV cavity (3) disk in a myocardium (2) ring, an RV (1) disk beside it."""
  rows, cols = np.indices(shape)
  distance = np.hypot(rows - centre[0], cols - centre[1])
  label = np.zeros(shape, np.uint8)
  label[distance < 1.5 * radius] = 2
  label[distance < radius] = 3
  label[np.hypot(rows - centre[0], cols - centre[1] - 2.6 * radius) < radius] = 1
  return label


def _write_slice(folder, name, label, seed):
  rng = np.random.default_rng(seed)
  image = (0.2 + 0.6 * (label > 0) + 0.05 * rng.random(label.shape)).astype(np.float32)
  with h5py.File(os.path.join(folder, name), 'w') as f:
    f['image'] = image
    f['label'] = label


@pytest.fixture(name='slices', scope='module')
def fixture_slices(tmp_path_factory):
  """4 patients x 2 phases x 3 slices of 2-D files, 40x36 (two patients 36x40), the heart off the centre."""
  folder = str(tmp_path_factory.mktemp('acdc_slices'))
  for p in range(1, 5):
    shape = (40, 36) if p % 2 else (36, 40)
    for frame in (1, 12):
      for k in (1, 2, 3):
        label = _heart(shape, (shape[0] // 2 - 9, shape[1] // 2 - 8), 2.5 + 0.3 * k)
        _write_slice(folder, f'patient{p:03d}_frame{frame:02d}_slice_{k}.h5', label, seed=100 * p + 10 * frame + k)
  return folder


def test_slice_and_frame_come_from_the_name():
  assert magnitude.named_slice('d/patient003_frame12_slice_10.h5') == 10
  assert magnitude.cine_frame('d/patient003_frame12_slice_10.h5') == 11
  assert magnitude.subject_id('d/patient003_frame12_slice_10.h5') == 'patient003'
  assert magnitude.named_slice('d/patient003_frame12.h5') is None
  assert magnitude.cine_frame('d/patient003_frame12.h5') == 11


def test_every_slice_file_is_its_own_example(slices):
  pairs = magnitude.find_pairs(slices)
  counts = magnitude.distinct_examples(pairs)
  assert counts == {f'patient{p:03d}': 6 for p in range(1, 5)}
  path = os.path.join(slices, 'patient002_frame12_slice_3.h5')
  (example,) = magnitude.load_examples(path, path, (32, 32), root=slices)
  assert (example['subject_id'], example['slice'], example['frame']) == ('patient002', 3, 11)


def test_the_nifti_config_serves_distinct_ids_and_masks_split_by_patient(tmp_path, slices):
  config = tfds_ocmr.configure('nifti', image_size=16, field_of_view=32, test_fraction=0.25)
  assert config.name == 'nifti_16x16_test0.25_fov32'
  builder = tfds.builder('ocmr', config=config, data_dir=str(tmp_path))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=slices))
  sources = builder.as_data_source()
  examples = [source[i] for source in sources.values() for i in range(len(source))]
  assert len(examples) == 24
  ids = {(e['subject_id'].decode(), int(e['slice']), int(e['frame'])) for e in examples}
  assert ids == {(f'patient{p:03d}', k, f) for p in range(1, 5) for k in (1, 2, 3) for f in (0, 11)}
  mask_ids = {input_pipeline.mask_id(e, i) for i, e in enumerate(examples)}
  assert len(mask_ids) == 24  # every slice its own evaluation mask
  subjects = {split: {s[i]['subject_id'] for i in range(len(s))} for split, s in sources.items()}
  assert subjects['train'] and subjects['test'] and not subjects['train'] & subjects['test']


def test_colliding_ids_and_a_volume_named_as_a_slice_are_refused(tmp_path):
  label = _heart((24, 24), (12, 12), 3)
  _write_slice(str(tmp_path), 'case1_a.h5', label, 0)
  _write_slice(str(tmp_path), 'case1_b.h5', label, 1)
  with pytest.raises(magnitude.MagnitudeFormatError, match=r'case1_b\.h5 and .*case1_a\.h5 both give subject '
                                                            r"'case1' slice 0 frame 0"):
    magnitude.distinct_examples(magnitude.find_pairs(str(tmp_path)))
  path = str(tmp_path / 'case2_frame01_slice_1.h5')
  with h5py.File(path, 'w') as f:
    f['image'] = np.ones((3, 24, 24), np.float32)
    f['label'] = np.zeros((3, 24, 24), np.uint8)
  with pytest.raises(magnitude.MagnitudeFormatError, match=r'case2_frame01_slice_1\.h5: its name gives one slice'):
    magnitude.example_frames(path, path)


@pytest.mark.parametrize('source, size', [((40, 36), (40, 40)), ((35, 41), (24, 30)), ((20, 20), (32, 32))])
def test_a_field_of_view_of_the_served_size_is_the_crop(source, size):
  rng = np.random.default_rng(0)
  image = rng.random(source).astype(np.float32)
  label = rng.integers(0, 4, source).astype(np.uint8)
  for side in {size[0]} if size[0] == size[1] else set():
    np.testing.assert_allclose(magnitude.resample_view(image, size, side), ocmr.crop_or_pad(image, size), atol=1e-6)
    np.testing.assert_array_equal(magnitude.resample_view(label, size, side, is_label=True),
                                  ocmr.crop_or_pad(label, size))
  # A square window of the served side is the crop along each axis whatever the other axis does.
  side = size[0]
  rows = magnitude._window_weights(source[0], size[0], side)  # pylint: disable=protected-access
  np.testing.assert_allclose(rows @ image[:, 0], ocmr.crop_or_pad(image[:, :1], (side, 1))[:, 0], atol=1e-6)


def test_downsampling_is_antialiased_linear():
  """Against a float64 NumPy reference: each served pixel is the triangle-weighted mean of the source pixels within
  one served step of its centre."""
  rng = np.random.default_rng(1)
  image = rng.random((30, 30))
  served = magnitude.resample_view(image, (12, 12), 30)
  step = 30 / 12
  centres = (np.arange(12) + 0.5) * step - 0.5
  weights = np.maximum(0, 1 - np.abs(np.arange(30)[None] - centres[:, None]) / step)
  weights /= weights.sum(1, keepdims=True)
  interior = slice(1, 11)  # the border rows reach past the image, where the source counts as zero
  np.testing.assert_allclose(served[interior, interior], (weights @ image @ weights.T)[interior, interior],
                             rtol=1e-5)
  np.testing.assert_allclose(magnitude.resample_view(np.ones((30, 30)), (12, 12), 30)[interior, interior], 1.0,
                             rtol=1e-6)


def test_the_view_keeps_the_heart_that_a_crop_cuts():
  label = _heart((64, 56), (14, 12), 4)  # the heart in a corner, 18 and 16 pixels from the centre
  assert (ocmr.crop_or_pad(label, (16, 16)) > 0).sum() == 0
  served = magnitude.resample_view(label, (16, 16), 64, is_label=True)
  step = 64 / 16
  for value in (1, 2, 3):  # each structure keeps its area in source pixels within a served pixel's worth
    area = (served == value).sum() * step ** 2
    assert abs(area - (label == value).sum()) < 0.25 * (label == value).sum() + step ** 2, value


def test_predictions_go_back_on_the_file_grid():
  label = _heart((44, 40), (20, 18), 5)
  served = magnitude.resample_view(label, (24, 24), 32, is_label=True)
  placed = magnitude.place_view(served[None], (44, 40), 32, is_label=True)[0]
  assert placed.shape == (44, 40) and placed.dtype == label.dtype
  assert np.mean(placed == label) > 0.97  # only the boundaries move by the resampling
  smooth = np.outer(np.hanning(44), np.hanning(40)).astype(np.float32)
  back = magnitude.place_view(magnitude.resample_view(smooth, (24, 24), 32)[None], (44, 40), 32)[0]
  window = (slice(22 - 16 + 2, 22 + 16 - 2), slice(20 - 16 + 2, 20 + 16 - 2))
  np.testing.assert_allclose(back[window], smooth[window], atol=0.02)
  assert np.all(back[:4] == 0)  # outside the window: nothing was seen


def test_predict_reads_the_view_of_the_config(tmp_path):
  label = _heart((40, 40), (14, 14), 3)
  _write_slice(str(tmp_path), 'case1_frame01_slice_2.h5', label, 0)
  config = default.get_config()
  config.update(dict(dataset_config='nifti', image_size=16, field_of_view=32))
  (item,) = prediction_io.input_files(str(tmp_path))
  loaded = prediction_io.load_file(item, (16, 16), config)
  assert loaded.builder_config.field_of_view == 32 and loaded.examples[0]['slice'] == 2
  np.testing.assert_array_equal(loaded.examples[0]['segmentation'],
                                np.asarray(magnitude.load_examples(item.path, item.path, (16, 16),
                                                                   field_of_view=32)[0]['segmentation']))
