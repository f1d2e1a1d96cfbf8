"""Tests of the TFDS `ocmr` builder: phantom_tiny built once into a tmp data_dir, and `real` from a manual_dir."""

import os
import shutil
import types

import grain
import h5py
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_ocmr
from segrecon_jax.data import ocmr
from segrecon_jax.data import phantom
from segrecon_jax.training import input_pipeline

_DOWNLOAD = dict(file_format='array_record')


def _download_config(manual_dir=None):
  return tfds.download.DownloadConfig(manual_dir=manual_dir)


@pytest.fixture(name='tiny', scope='module')
def fixture_tiny(tmp_path_factory):
  """phantom_tiny built once: (builder, {split: data source})."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  builder = tfds.builder('ocmr', config='phantom_tiny', data_dir=data_dir)
  assert not builder.is_prepared()
  builder.download_and_prepare()  # the plain call: array_record is the builder's default, no TensorFlow needed
  assert builder.is_prepared() and builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  return builder, builder.as_data_source()


def _examples(source):
  return [source[i] for i in range(len(source))]


def test_tiny_splits_and_features(tiny):
  builder, sources = tiny
  assert sorted(sources) == ['test', 'train']
  assert (len(sources['train']), len(sources['test'])) == (20, 4)
  assert builder.info.splits['train'].num_examples == 20
  subjects = {}
  for split, source in sources.items():
    for example in _examples(source):
      image, segmentation = example['image'], example['segmentation']
      assert image.dtype == np.float32 and image.shape == (32, 32, 2)
      assert segmentation.dtype == np.uint8 and segmentation.shape == (32, 32)
      assert np.all(np.isfinite(image))
      magnitude = np.hypot(image[..., 0], image[..., 1])
      assert magnitude.max() <= 1 + 1e-5 and magnitude.max() > 1 - 1e-5
      assert set(np.unique(segmentation)) <= {0, 1, 2, 3}
      assert example['has_labels'] and example['scale'] > 0
      assert example['frame'] in (0, 2)  # phantom_tiny labels frames 0 and 2 only; frame 1 is not served
      subjects.setdefault(split, set()).add(example['subject_id'])
  assert subjects['train'] and subjects['test']
  assert not subjects['train'] & subjects['test']


def _dilate(mask):
  """One-pixel 8-neighbour dilation."""
  padded = np.pad(mask, 1)
  out = np.zeros_like(mask)
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      out |= padded[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]]
  return out


def _assert_lv_pool_inside_myocardium(segmentation):
  """The LV blood pool lies inside the myocardium ring: its one-pixel dilation stays within pool + myocardium."""
  pool = segmentation == 1
  assert pool.any() and (segmentation == 2).any() and (segmentation == 3).any()
  assert np.all(_dilate(pool) <= (pool | (segmentation == 2)))


def test_tiny_labels_follow_the_anatomy(tiny):
  # At 32x32 the phantom's pixels are ~10 mm, thicker than the myocardium, so the ring need not be closed here;
  # the closed-ring check runs on finer phantoms in test_real_from_manual_dir.
  _, sources = tiny
  for example in _examples(sources['train']) + _examples(sources['test']):
    segmentation = example['segmentation']
    pool, myocardium = segmentation == 1, segmentation == 2
    assert pool.any() and myocardium.any() and (segmentation == 3).any()
    assert np.any(_dilate(pool) & myocardium)  # the pool touches the myocardium


def test_tiny_grain_batches_decode(tiny):
  _, sources = tiny
  source = sources['train']
  dataset = (grain.MapDataset.source(source)
             .map(lambda example: input_pipeline.decode(example, 0))
             .batch(4, drop_remainder=True))
  assert len(dataset) == 5
  batch = dataset[0]
  assert batch['image'].dtype == np.complex64 and batch['image'].shape == (4, 32, 32)
  assert batch['segmentation'].shape == (4, 32, 32)
  assert np.all(np.abs(batch['image']) <= 1 + 1e-5)


def test_data_info_is_serialisable(tiny):
  builder, _ = tiny
  config = types.SimpleNamespace(dataset='ocmr', dataset_config='phantom_tiny', data_dir=builder.data_dir_root)
  info = input_pipeline.data_info(config)
  assert info['version'] == '1.0.0'
  assert info['builder_config']['image_size'] == [32, 32]
  assert info['builder_config']['num_phantom_subjects'] == 6
  assert 'label_mapping' not in info['builder_config']  # nifti-only fields: checkpoints of before still match
  # An experiment's settings give a derived config of their own name, stored with the checkpoint.
  config.image_size, config.split_seed = 16, 4
  info = input_pipeline.data_info(config)
  assert info['builder_config']['name'] == 'phantom_tiny_16x16_seed4' and info['dataset_config'] == 'phantom_tiny'
  assert info['builder_config']['image_size'] == [16, 16] and info['builder_config']['split_seed'] == 4
  assert input_pipeline.builder(config).data_dir.endswith('phantom_tiny_16x16_seed4/1.0.0')


def test_split_rule():
  counts = {f's{i:02d}': n for i, n in enumerate([3, 5, 2, 8, 1, 4, 6, 2, 3, 5])}
  train, test = tfds_ocmr.split_subjects(counts, 0.2, seed=1)
  assert (train, test) == tfds_ocmr.split_subjects(dict(reversed(list(counts.items()))), 0.2, seed=1)
  assert not set(train) & set(test) and set(train) | set(test) == set(counts)
  assert sum(counts[s] for s in test) <= round(0.2 * sum(counts.values()))
  assert tfds_ocmr.split_subjects(counts, 0.2, seed=2) != (train, test)
  with pytest.raises(ValueError, match='at least 2 subjects'):
    tfds_ocmr.split_subjects({'only': 5}, 0.2, seed=0)


@pytest.mark.parametrize('name,expected', [('phantom', (155, 28)), ('phantom_small', (51, 9)),
                                           ('phantom_medium', (204, 36)), ('phantom_tiny', (20, 4))])
def test_phantom_config_split_sizes(name, expected):
  config = next(c for c in tfds_ocmr.Ocmr.BUILDER_CONFIGS if c.name == name)
  counts = {f'fs_{s:04d}_phantom': tfds_ocmr.ocmr.phantom_subject_examples(config, s)
            for s in range(1, config.num_phantom_subjects + 1)}
  train, test = tfds_ocmr.split_subjects(counts, config.test_fraction, config.split_seed)
  assert (sum(counts[s] for s in train), sum(counts[s] for s in test)) == expected
  sizes = [tfds_ocmr.ocmr.phantom_subject_settings(config, s)['recon_size']
           for s in range(1, config.num_phantom_subjects + 1)]
  assert any(h > config.image_size[0] for h, _ in sizes)  # some readouts are cropped
  assert any(w < config.image_size[1] for _, w in sizes)  # some phase encodes are padded


@pytest.fixture(name='manual_dir', scope='module')
def fixture_manual_dir(tmp_path_factory):
  """Three small phantom subjects laid out as a user lays out OCMR files: fs_*.h5 plus labels/."""
  directory = str(tmp_path_factory.mktemp('manual'))
  phantom.write_dataset(directory, 3, seed=5, recon_size=(96, 80), num_coils=4, num_slices=1, num_frames=3,
                        labelled_frames=(0, 2))
  return directory


def test_real_from_manual_dir(tmp_path, manual_dir, caplog):
  data_dir = str(tmp_path / 'tfds')
  # A corrupt file (a copy cut in half) stops the build, and nothing reads as prepared afterwards.
  corrupt = os.path.join(manual_dir, 'fs_0099_phantom.h5')
  with open(os.path.join(manual_dir, 'fs_0001_phantom.h5'), 'rb') as f:
    content = f.read()
  with open(corrupt, 'wb') as f:
    f.write(content[:len(content) // 2])
  builder = tfds.builder('ocmr', config='real', data_dir=data_dir)
  with pytest.raises(ocmr.OCMRFormatError, match='fs_0099_phantom.h5'):
    builder.download_and_prepare(download_config=_download_config(manual_dir), **_DOWNLOAD)
  assert not builder.is_prepared()
  assert not tfds.builder('ocmr', config='real', data_dir=data_dir).is_prepared()
  assert not [n for n in os.listdir(os.path.join(data_dir, 'ocmr', 'real')) if n.startswith('1.0.0')]
  os.remove(corrupt)
  # A file that only fails while its examples are generated (NaN k-space; header and labels fine) also leaves
  # nothing that reads as prepared.
  nan_file = os.path.join(manual_dir, 'fs_0098_phantom.h5')
  shutil.copy(os.path.join(manual_dir, 'fs_0002_phantom.h5'), nan_file)
  shutil.copy(os.path.join(manual_dir, 'labels', 'fs_0002_phantom.h5'), ocmr.label_path_for(nan_file))
  with h5py.File(nan_file, 'r+') as f:
    row = f['dataset']['data'][5]
    row['data'][0] = np.nan
    f['dataset']['data'][5] = row
  builder = tfds.builder('ocmr', config='real', data_dir=data_dir)
  with pytest.raises(ocmr.OCMRFormatError, match='fs_0098_phantom.h5.*NaN'):
    builder.download_and_prepare(download_config=_download_config(manual_dir), **_DOWNLOAD)
  assert not builder.is_prepared()
  assert not [n for n in os.listdir(os.path.join(data_dir, 'ocmr', 'real')) if n.startswith('1.0.0')]
  os.remove(nan_file)
  os.remove(ocmr.label_path_for(nan_file))
  shutil.copy(os.path.join(manual_dir, 'fs_0001_phantom.h5'), os.path.join(manual_dir, 'us_0001_phantom.h5'))

  builder = tfds.builder('ocmr', config='real', data_dir=data_dir)
  builder.download_and_prepare(download_config=_download_config(manual_dir), **_DOWNLOAD)
  assert builder.is_prepared()
  assert any('us_0001_phantom.h5: undersampled OCMR file skipped' in r.getMessage() for r in caplog.records)
  os.remove(os.path.join(manual_dir, 'us_0001_phantom.h5'))
  sources = builder.as_data_source()
  served = {}
  for source in sources.values():
    for example in _examples(source):
      served[(example['file_name'].decode(), example['slice'], example['frame'])] = example
  expected = [e for name in sorted(os.listdir(manual_dir)) if name.endswith('.h5')
              for e in ocmr.load_examples(os.path.join(manual_dir, name), (256, 256))]
  assert len(served) == len(expected) == 6
  for e in expected:
    example = served[(e['file_name'], e['slice'], e['frame'])]
    np.testing.assert_allclose(example['image'][..., 0] + 1j * example['image'][..., 1], e['image'], atol=1e-6)
    np.testing.assert_array_equal(example['segmentation'], e['segmentation'])
    assert example['scale'] == pytest.approx(e['scale'], rel=1e-6)
    assert example['subject_id'].decode() == e['subject_id']
    assert e['frame'] in (0, 2)
    _assert_lv_pool_inside_myocardium(example['segmentation'])


def test_real_without_manual_dir_raises(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  for manual_dir in (str(empty), str(tmp_path / 'missing')):
    builder = tfds.builder('ocmr', config='real', data_dir=str(tmp_path / 'tfds'))
    with pytest.raises(tfds_ocmr.OCMRManualDirError, match='manual_dir.*fs_'):
      builder.download_and_prepare(download_config=_download_config(manual_dir), **_DOWNLOAD)
    assert not builder.is_prepared()
  only_labels = tmp_path / 'only_labels'
  (only_labels / 'labels').mkdir(parents=True)
  builder = tfds.builder('ocmr', config='real', data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(tfds_ocmr.OCMRManualDirError, match='no fully sampled OCMR file'):
    builder.download_and_prepare(download_config=_download_config(str(only_labels)), **_DOWNLOAD)
