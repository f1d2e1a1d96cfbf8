"""A data layout added from outside the package (docs/usage.md, "Extending"): one class and one registration here,
then the TFDS builder, the input pipeline and prediction read its folder."""

import json
import os
import shutil

import ml_collections
import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_ocmr
from segrecon_jax.data import layouts
from segrecon_jax.data import ocmr
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import prediction_io
from tests import slice_layout_test


# --- The user's code: the worked example of docs/usage.md. ---

class NpySlices(layouts.Layout):
  """A folder of 2-D magnitude slices `<subject>_<slice>.npy` [H, W], labels (our classes) in `<stem>_label.npy`."""
  description = 'Magnitude slices <subject>_<slice>.npy with labels <subject>_<slice>_label.npy.'
  instructions = 'Put <subject>_<slice>.npy slices [H, W] and their <subject>_<slice>_label.npy in manual_dir.'
  input_description = 'a magnitude slice <subject>_<slice>.npy'
  suffixes = ('.npy',)

  @staticmethod
  def label_path(path):
    return path[:-len('.npy')] + '_label.npy'

  def find(self, folder, config):
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith('.npy') and not self.skips(n)]

  def subject(self, item):
    return os.path.basename(item).split('_')[0]

  def load_examples(self, item, image_size, config, root=None, labelled_only=True):
    has_labels = os.path.exists(self.label_path(item))
    if labelled_only and not has_labels:
      return []
    image = np.load(item)
    label = np.load(self.label_path(item)) if has_labels else np.zeros(image.shape, np.uint8)
    slice_index = int(os.path.basename(item)[:-len('.npy')].split('_')[1])
    return [layouts.served_example(image, label, image_size, subject_id=self.subject(item),
                                   file_name=os.path.basename(item), slice_index=slice_index, frame=0,
                                   has_labels=has_labels)]

  def files(self, folder, config):  # The label files too, present or not: adding one changes the data.
    return [path for image in self.find(folder, config) for path in (image, self.label_path(image))]

  def skips(self, path):
    return path.endswith('_label.npy')

  def geometry(self, path):
    return layouts.Geometry(np.load(path, mmap_mode='r').shape, np.eye(4))


layouts.register_layout('npy_slices', NpySlices())

# --- The tests. ---


def _heart(shape, centre, radius):
  """slice_layout_test's heart in our classes (ACDC's values swap the two cavities)."""
  acdc = slice_layout_test._heart(shape, centre, radius)  # pylint: disable=protected-access
  return np.array([0, 3, 2, 1], np.uint8)[acdc]


@pytest.fixture(name='folder')
def fixture_folder(tmp_path):
  """5 subjects x 2 labelled slices of 20x18, and one slice without labels."""
  folder = tmp_path / 'slices'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for s in range(1, 6):
    for k in (0, 1):
      label = _heart((20, 18), (10, 7), 2 + k)
      np.save(folder / f'case{s}_{k}.npy', (0.2 + 0.5 * (label > 0) + 0.1 * rng.random(label.shape)).astype(np.float32))
      np.save(folder / f'case{s}_{k}_label.npy', label)
  np.save(folder / 'case5_2.npy', rng.random((20, 18)).astype(np.float32))
  (folder / 'notes.txt').write_text('not data')
  return str(folder)


def test_a_registered_layout_builds_through_the_tfds_builder(tmp_path, folder):
  config = tfds_ocmr.configure('npy_slices', image_size=16, test_fraction=0.3)
  assert (config.name, config.source) == ('npy_slices_16x16_test0.3', 'npy_slices')
  assert 'label_mapping' not in config.stored_fields()  # not a field this layout reads
  with pytest.raises(ValueError, match='applies to magnitude folders'):
    tfds_ocmr.configure('npy_slices', label_mapping=(0, 1, 2, 3))
  builder = tfds.builder('ocmr', config=config, data_dir=str(tmp_path / 'tfds'))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=folder))
  sources = builder.as_data_source()
  assert sorted(sources) == ['test', 'train'] and len(sources['train']) + len(sources['test']) == 10
  subjects = {split: {source[i]['subject_id'].decode() for i in range(len(source))}
              for split, source in sources.items()}
  assert subjects['train'] | subjects['test'] == {f'case{s}' for s in range(1, 6)}
  assert subjects['train'] and subjects['test'] and not subjects['train'] & subjects['test']
  examples = [source[i] for source in sources.values() for i in range(len(source))]
  ids = sorted((e['subject_id'].decode(), int(e['slice'])) for e in examples)
  assert ids == [(f'case{s}', k) for s in range(1, 6) for k in (0, 1)]  # the unlabelled slice is not served
  for example in examples:  # each slice centre-cropped to 16x16 and divided by its maximum, its labels alike
    name = example['file_name'].decode()
    source = ocmr.crop_or_pad(np.load(os.path.join(folder, name)), (16, 16))
    np.testing.assert_allclose(np.hypot(example['image'][..., 0], example['image'][..., 1]), source / source.max(),
                               rtol=1e-6)
    np.testing.assert_array_equal(example['segmentation'],
                                  ocmr.crop_or_pad(np.load(os.path.join(folder, name[:-4] + '_label.npy')), (16, 16)))
  record = json.load(open(os.path.join(builder.data_dir, tfds_ocmr.ocmr.SOURCE_RECORD)))
  assert len(record['files']) == 22 and record['files']['case5_2_label.npy'] is None


def test_an_experiment_config_reads_a_registered_layout(tmp_path, folder):
  """`--config.dataset_config=npy_slices` (the layout registered by the config file): prepared, checked against its
  folder, stored with the checkpoint."""
  config = ml_collections.ConfigDict(dict(dataset='ocmr', dataset_config='npy_slices', data_dir=str(tmp_path / 'tfds'),
                                          manual_dir=folder, train_split='train', eval_split='test', image_size=16))
  train = input_pipeline.load_split(config, 'train')
  assert input_pipeline.image_shape(train) == (16, 16)
  assert input_pipeline.data_info(config)['builder_config']['source'] == 'npy_slices'
  np.save(os.path.join(folder, 'case6_0.npy'), np.ones((20, 18), np.float32))
  with pytest.raises(input_pipeline.StaleDatasetError, match='case6_0.npy was added'):
    input_pipeline.load_split(config, 'train')


def test_predict_reads_a_registered_layout(tmp_path, folder):
  """`--mode=predict --input=<folder>`: the layout's files, each prediction back on the file's grid."""
  items = prediction_io.input_files(folder)
  assert [(item.name, item.layout.name) for item in items] == [
      (f'case{s}_{k}', 'npy_slices') for s in range(1, 6) for k in (0, 1)] + [('case5_2', 'npy_slices')]
  config = ml_collections.ConfigDict(dict(dataset='ocmr', dataset_config='npy_slices', image_size=16))
  loaded = prediction_io.load_file(items[-1], (16, 16), config)
  assert len(loaded.examples) == 1 and not loaded.examples[0]['has_labels']
  seg = np.full((1, 16, 16), 2, np.int32)
  prediction_io.write_nifti(str(tmp_path), loaded, {'recon': np.stack([e['image'] for e in loaded.examples]),
                                                     'seg': seg})
  written = np.asarray(nib.load(tmp_path / 'seg.nii.gz').dataobj)
  np.testing.assert_array_equal(written, ocmr.crop_or_pad(seg[0], (20, 18)))  # the crop undone, background around
  recon = nib.load(tmp_path / 'recon.nii.gz').get_fdata()
  np.testing.assert_allclose(recon[2:18, 1:17], np.load(os.path.join(folder, 'case5_2.npy'))[2:18, 1:17], rtol=1e-5)


def test_layout_names_and_ids_are_checked(monkeypatch, folder):
  with pytest.raises(ValueError, match='taken by NpySlices'):
    layouts.register_layout('npy_slices', layouts.MagnitudeLayout())
  with pytest.raises(ValueError, match='lower-case letters'):
    layouts.register_layout('Npy slices', NpySlices())
  monkeypatch.setattr(layouts, '_LAYOUTS', dict(layouts._LAYOUTS))  # pylint: disable=protected-access  (undone after)
  layouts.register_layout('nifti', NpySlices())
  with pytest.raises(ValueError, match="data layout 'nifti' has the name of a built-in ocmr config"):
    tfds_ocmr.configure('nifti')
  layout = layouts.get('npy_slices')
  for name in ('case2_1.npy', 'case2_1_label.npy'):  # slice 1 of case2 twice
    shutil.copy(os.path.join(folder, name), os.path.join(folder, name.replace('_1', '_01')))
  config = tfds_ocmr.configure('npy_slices')
  with pytest.raises(layouts.DataFormatError, match=r"case2_1.npy and .*case2_01.npy both give subject 'case2' "
                                                    'slice 1 frame 0'):
    layout.count_examples(layout.find(folder, config), config)
