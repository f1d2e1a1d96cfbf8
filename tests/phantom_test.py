"""Tests of the cardiac phantom: OCMR-format files, k-space convention, labels, determinism, preview."""

import glob
import math
import os

import h5py
import ismrmrd
import ismrmrd.xsd as xsd
import numpy as np
import pytest
from scipy import ndimage

from segrecon_jax import mri
from segrecon_jax.data import phantom
from segrecon_jax.data import labels as labels_format

SETTINGS = dict(recon_size=(48, 40), num_coils=5, num_slices=2, num_frames=3)
AXES = (-2, -1)


def np_ifft2c(k):
  return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=AXES), axes=AXES, norm='ortho'), axes=AXES)


def read_acquisitions(path):
  """(header, [ismrmrd.Acquisition]) through the ismrmrd package, as a real OCMR file would be read."""
  with ismrmrd.Dataset(path, 'dataset', create_if_needed=False) as dataset:
    header = xsd.CreateFromDocument(dataset.read_xml_header())
    acquisitions = [dataset.read_acquisition(i) for i in range(dataset.number_of_acquisitions())]
  return header, acquisitions


def reference_coil_images(path):
  """OCMR's layout, read by hand: k-space `[kx, ky, coil, phase, slice]`, centred iFFT, the readout's central half.

  Returns:
    complex64 `[slice, phase, coil, H, W]` coil images and the oversampled `[slice, phase, coil, 2H, W]` ones.
  """
  header, acquisitions = read_acquisitions(path)
  enc = header.encoding[0]
  num_kx, num_ky = enc.encodedSpace.matrixSize.x, enc.encodingLimits.kspace_encoding_step_1.maximum + 1
  shape = (num_kx, num_ky, header.acquisitionSystemInformation.receiverChannels,
           enc.encodingLimits.phase.maximum + 1, enc.encodingLimits.slice.maximum + 1)
  kdata = np.zeros(shape, np.complex64)
  for acq in acquisitions:
    if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
      continue
    kdata[:, acq.idx.kspace_encode_step_1, :, acq.idx.phase, acq.idx.slice] = acq.data.T
  oversampled = np_ifft2c(np.transpose(kdata, (4, 3, 2, 0, 1)))
  start = num_kx // 4
  return oversampled[..., start:start + num_kx // 2, :], oversampled


@pytest.fixture(name='noiseless', scope='module')
def fixture_noiseless(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('noiseless'))
  paths = phantom.write_subject(directory, 3, 11, snr=math.inf, **SETTINGS)
  subject = phantom.make_subject(11, 3, snr=math.inf, **SETTINGS)
  image, labels = phantom.subject_anatomy(subject)
  return paths, subject, image, labels


def test_file_names_and_header(noiseless):
  (kspace_path, label_path), subject, _, _ = noiseless
  assert os.path.basename(kspace_path) == 'fs_0003_phantom.h5'
  assert label_path == os.path.join(os.path.dirname(kspace_path), 'labels', 'fs_0003_phantom.h5')
  header, _ = read_acquisitions(kspace_path)
  enc = header.encoding[0]
  assert (enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y, enc.encodedSpace.matrixSize.z) == (96, 40, 1)
  assert (enc.reconSpace.matrixSize.x, enc.reconSpace.matrixSize.y, enc.reconSpace.matrixSize.z) == (48, 40, 1)
  assert enc.encodedSpace.fieldOfView_mm.x == pytest.approx(2 * enc.reconSpace.fieldOfView_mm.x)
  assert enc.encodedSpace.fieldOfView_mm.y == pytest.approx(enc.reconSpace.fieldOfView_mm.y)
  # Square pixels.
  assert enc.reconSpace.fieldOfView_mm.x / 48 == pytest.approx(enc.reconSpace.fieldOfView_mm.y / 40)
  ky = enc.encodingLimits.kspace_encoding_step_1
  assert (ky.minimum, ky.maximum, ky.center) == (0, 39, 20)
  assert enc.encodingLimits.slice.maximum == 1 and enc.encodingLimits.phase.maximum == 2
  system = header.acquisitionSystemInformation
  assert system.receiverChannels == 5 and system.systemFieldStrength_T == 1.5
  assert system.systemVendor == 'segrecon_jax phantom'
  assert header.measurementInformation.protocolName == 'phantom_cine_sax'
  seq = header.sequenceParameters
  assert 2.0 < seq.TR[0] < 5.0 and seq.TE[0] == pytest.approx(seq.TR[0] / 2, abs=1e-2)
  assert 30 <= seq.flipAngle_deg[0] <= 80
  assert subject.num_coils == 5


def test_acquisitions(noiseless):
  (kspace_path, _), _, _, _ = noiseless
  _, acquisitions = read_acquisitions(kspace_path)
  assert len(acquisitions) == 40 * 2 * 3 + 1
  noise = acquisitions[0]
  assert noise.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
  seen = set()
  for acq in acquisitions[1:]:
    assert not acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    assert (acq.number_of_samples, acq.active_channels, acq.center_sample) == (96, 5, 48)
    assert acq.data.shape == (5, 96) and acq.data.dtype == np.complex64
    ky, slc, phase = acq.idx.kspace_encode_step_1, acq.idx.slice, acq.idx.phase
    seen.add((ky, slc, phase))
    assert acq.is_flag_set(ismrmrd.ACQ_FIRST_IN_SLICE) == (ky == 0)
    assert acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE) == (ky == 39)
  assert seen == {(y, s, p) for y in range(40) for s in range(2) for p in range(3)}
  assert acquisitions[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT)


def test_without_noise_scan(tmp_path):
  kspace_path, _ = phantom.write_subject(str(tmp_path), 1, 0, noise_scan=False, **SETTINGS)
  _, acquisitions = read_acquisitions(kspace_path)
  assert len(acquisitions) == 40 * 2 * 3
  assert not any(acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) for acq in acquisitions)


def test_kspace_convention_reproduces_the_anatomy(noiseless):
  (kspace_path, _), subject, image, _ = noiseless
  coil_images, oversampled = reference_coil_images(kspace_path)
  sensitivities = phantom.coil_sensitivities(subject)  # [C, 2H, W]
  assert sensitivities.shape == (5, 96, 40)
  crop = sensitivities[:, 24:72]
  expected = image[:, :, None] * crop
  scale = np.abs(expected).max()
  np.testing.assert_allclose(coil_images, expected, atol=1e-5 * scale)
  # The readout oversampling: the outer half of the 2H grid is air.
  outer = np.concatenate([oversampled[..., :24, :], oversampled[..., 72:, :]], axis=-2)
  assert np.abs(outer).max() < 1e-5 * scale
  # Sensitivity-weighted combination with the true sensitivities gives back the single-coil anatomy.
  combined = np.sum(np.conj(crop) * coil_images, axis=2) / np.sum(np.abs(crop)**2, axis=0)
  np.testing.assert_allclose(combined, image, atol=1e-5 * scale)
  # The same convention as the project's jax FFT.
  k = phantom.subject_kspace(subject, image)[0]
  np.testing.assert_allclose(np.asarray(mri.ifft2c(k))[..., 24:72, :], expected, atol=1e-5 * scale)


def test_noise_level_and_noise_scan(tmp_path):
  snr = 40.0
  noisy, _ = phantom.write_subject(str(tmp_path / 'noisy'), 2, 4, snr=snr, **SETTINGS)
  clean, _ = phantom.write_subject(str(tmp_path / 'clean'), 2, 4, snr=math.inf, **SETTINGS)
  _, noisy_acqs = read_acquisitions(noisy)
  _, clean_acqs = read_acquisitions(clean)
  subject = phantom.make_subject(4, 2, snr=snr, **SETTINGS)
  expected_std = math.sqrt(np.mean(subject.coils['noise_scale']**2)) / snr
  difference = np.stack([a.data - b.data for a, b in zip(noisy_acqs[1:], clean_acqs[1:])])
  assert np.std(difference) == pytest.approx(expected_std, rel=0.1)
  assert np.std(noisy_acqs[0].data) == pytest.approx(expected_std, rel=0.3)
  assert not np.any(clean_acqs[0].data)
  # The same seed draws the same anatomy whatever the noise level.
  np.testing.assert_array_equal(phantom.subject_anatomy(subject)[1],
                                phantom.subject_anatomy(phantom.make_subject(4, 2, snr=math.inf, **SETTINGS))[1])


def test_label_file(noiseless):
  (kspace_path, label_path), _, image, labels = noiseless
  with h5py.File(label_path, 'r') as f:
    masks, labelled = f['masks'][()], f['labelled'][()]
    assert f.attrs['source_file'] == os.path.basename(kspace_path)
    assert f.attrs['classes'] == ','.join(labels_format.CLASS_NAMES) == 'background,lv_pool,myocardium,rv_pool'
    assert (f.attrs['ed_frame'], f.attrs['es_frame']) == (0, 1)
  assert masks.dtype == np.uint8 and masks.shape == (2, 3, 48, 40)
  assert labelled.shape == (2, 3) and labelled.all()
  assert set(np.unique(masks)) <= {0, 1, 2, 3}
  np.testing.assert_array_equal(masks, labels)
  assert image.shape == masks.shape and image.dtype == np.complex64


@pytest.mark.parametrize('labelled_frames,expected', [('all', [1, 1, 1, 1]), ('ed_es', [1, 0, 1, 0]),
                                                      ((0, 3), [1, 0, 0, 1])])
def test_labelled_frames(tmp_path, labelled_frames, expected):
  settings = dict(SETTINGS, num_frames=4, recon_size=(16, 16), num_coils=2)
  _, label_path = phantom.write_subject(str(tmp_path), 1, 0, labelled_frames=labelled_frames, **settings)
  with h5py.File(label_path, 'r') as f:
    labelled = f['labelled'][()]
  np.testing.assert_array_equal(labelled, [expected] * 2)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_heart_geometry(seed):
  subject = phantom.make_subject(seed, 1, recon_size=(64, 56), num_slices=3, num_frames=4, num_coils=2)
  image, labels = phantom.subject_anatomy(subject)
  cross = ndimage.generate_binary_structure(2, 1)
  pool_areas = np.zeros(labels.shape[:2])
  for s in range(labels.shape[0]):
    for f in range(labels.shape[1]):
      label = labels[s, f]
      pool, myocardium, rv = label == 1, label == 2, label == 3
      assert pool.any() and myocardium.any()
      # The LV pool is enclosed by the myocardium, and the RV never touches the LV pool.
      grown = ndimage.binary_dilation(pool, cross)
      assert np.all(grown <= (pool | myocardium))
      assert not np.any(ndimage.binary_dilation(rv, cross) & pool)
      # Bright blood, dark myocardium: the image agrees with the labels.
      magnitude = np.abs(image[s, f])
      assert magnitude[ndimage.binary_erosion(pool)].mean() > 2.0 * magnitude[myocardium].mean()
      pool_areas[s, f] = pool.sum()
    assert labels[s, 0].__eq__(3).any()
  # Contraction: the pool shrinks from end-diastole (frame 0) to end-systole (frame 2) in every slice, and the
  # LV gets smaller from base to apex.
  assert np.all(pool_areas[:, 2] < 0.85 * pool_areas[:, 0])
  assert pool_areas[-1, 0] < pool_areas[0, 0]


def test_determinism(tmp_path):
  def arrays(directory, seed, subject=2):
    kspace_path, label_path = phantom.write_subject(str(directory), subject, seed, **SETTINGS)
    with h5py.File(kspace_path, 'r') as f:
      rows = f['dataset']['data'][()]
      xml = f['dataset']['xml'][0]
    with h5py.File(label_path, 'r') as f:
      masks = f['masks'][()]
    return rows['head'].tobytes(), np.concatenate(list(rows['data'])), xml, masks

  first, again, other = arrays(tmp_path / 'a', 5), arrays(tmp_path / 'b', 5), arrays(tmp_path / 'c', 6)
  assert first[0] == again[0] and first[2] == again[2]
  np.testing.assert_array_equal(first[1], again[1])
  np.testing.assert_array_equal(first[3], again[3])
  assert not np.array_equal(first[3], other[3])
  assert not np.array_equal(first[1], other[1])
  # write_dataset's subject 2 is write_subject's subject 2 with the same seed.
  pairs = phantom.write_dataset(str(tmp_path / 'd'), 2, seed=5, **SETTINGS)
  assert [os.path.basename(k) for k, _ in pairs] == ['fs_0001_phantom.h5', 'fs_0002_phantom.h5']
  with h5py.File(pairs[1][1], 'r') as f:
    np.testing.assert_array_equal(f['masks'][()], first[3])
  with h5py.File(pairs[0][1], 'r') as f:
    assert not np.array_equal(f['masks'][()], first[3])


def test_drawn_sizes_are_in_range():
  for subject in range(1, 9):
    drawn = phantom.make_subject(0, subject, recon_size=(16, 16))
    assert phantom.DEFAULT_NUM_COILS[0] <= drawn.num_coils <= phantom.DEFAULT_NUM_COILS[1]
    assert phantom.DEFAULT_NUM_SLICES[0] <= drawn.num_slices <= phantom.DEFAULT_NUM_SLICES[1]
    assert phantom.DEFAULT_NUM_FRAMES[0] <= drawn.num_frames <= phantom.DEFAULT_NUM_FRAMES[1]
    assert phantom.DEFAULT_SNR[0] <= drawn.snr <= phantom.DEFAULT_SNR[1]


@pytest.mark.parametrize('kwargs,field', [
    (dict(num_coils=0), 'num_coils'),
    (dict(num_slices=0), 'num_slices'),
    (dict(num_frames=-1), 'num_frames'),
    (dict(recon_size=(33, 32)), 'recon_size'),
    (dict(recon_size=(32,)), 'recon_size'),
    (dict(snr=-1.0), 'snr'),
    (dict(labelled_frames=(7,)), 'labelled_frames'),
    (dict(labelled_frames='systole'), 'labelled_frames'),
])
def test_bad_arguments(tmp_path, kwargs, field):
  settings = dict(SETTINGS, recon_size=(16, 16))
  settings.update(kwargs)
  with pytest.raises(ValueError, match=field):
    phantom.write_subject(str(tmp_path), 1, 0, **settings)
  with pytest.raises(ValueError, match='subject'):
    phantom.write_subject(str(tmp_path), 0, 0)
  assert not glob.glob(str(tmp_path / '*.h5'))


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
  def fail(*args):
    raise OSError('disk full')

  monkeypatch.setattr(phantom.os, 'replace', fail)
  with pytest.raises(OSError, match='disk full'):
    phantom.write_subject(str(tmp_path), 1, 0, **dict(SETTINGS, recon_size=(16, 16)))
  assert os.listdir(tmp_path / 'labels') == [] and os.listdir(tmp_path) == ['labels']


def test_preview_command(tmp_path):
  png = str(tmp_path / 'preview.png')
  phantom.main(['--out_dir', str(tmp_path), '--num_subjects', '2', '--recon_size', '32,32', '--preview', png])
  with open(png, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert sorted(os.listdir(tmp_path / 'labels')) == ['fs_0001_phantom.h5', 'fs_0002_phantom.h5']
