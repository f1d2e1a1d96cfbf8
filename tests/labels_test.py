"""Tests of the class table and the label-file writer."""

import h5py
import numpy as np
import pytest

from segrecon_jax import metrics
from segrecon_jax.data import labels, ocmr


def test_one_class_table():
  assert metrics.CLASS_NAMES is labels.CLASS_NAMES and ocmr.CLASSES is labels.CLASS_NAMES
  assert metrics.class_names(4) == ('background', 'lv_pool', 'myocardium', 'rv_pool')


def test_written_label_file_reads_back(tmp_path):
  rng = np.random.default_rng(0)
  masks = rng.integers(0, labels.NUM_CLASSES, (2, 3, 8, 6)).astype(np.uint8)
  labelled = np.zeros((2, 3), bool)
  path = labels.write_label_file(str(tmp_path / 'labels' / 'fs_0001.h5'), masks, labelled, 'fs_0001.h5',
                                 origin='prediction')
  read_masks, read_labelled = ocmr.read_labels(path, masks.shape)
  np.testing.assert_array_equal(read_masks, masks)
  assert not read_labelled.any()
  with h5py.File(path, 'r') as f:
    assert f.attrs['source_file'] == 'fs_0001.h5' and f.attrs['origin'] == 'prediction'
  assert sorted(p.name for p in (tmp_path / 'labels').iterdir()) == ['fs_0001.h5']  # no temporary left behind


def test_writer_rejects_bad_labels(tmp_path):
  with pytest.raises(ValueError, match='0..3'):
    labels.write_label_file(str(tmp_path / 'a.h5'), np.full((1, 1, 4, 4), 7), np.ones((1, 1)), 'a.h5')
  with pytest.raises(ValueError, match='labelled'):
    labels.write_label_file(str(tmp_path / 'a.h5'), np.zeros((1, 2, 4, 4)), np.ones((1, 1)), 'a.h5')


def test_remap_acdc_convention():
  acdc = np.array([[0, 1], [2, 3]])  # ACDC: 1 RV, 2 myocardium, 3 LV cavity
  np.testing.assert_array_equal(labels.remap(acdc, (0, 3, 2, 1)),
                                [[labels.BACKGROUND, labels.RV_POOL], [labels.MYOCARDIUM, labels.LV_POOL]])
  with pytest.raises(ValueError, match='f.nii.gz: label values'):
    labels.remap(np.array([4]), (0, 3, 2, 1), 'f.nii.gz')
