"""Tests of the OCMR reader on hand-written ISMRMRD files and on files written by the phantom."""

import math
import os

import h5py
import ismrmrd
import ismrmrd.xsd as xsd
import jax
import numpy as np
import pytest

from segrecon_jax import mri
from segrecon_jax.data import ocmr
from segrecon_jax.data import phantom


def _limit(maximum):
  return xsd.limitType(minimum=0, maximum=maximum, center=0)


def write_ismrmrd(path, kspace, *, noise_scan=True, kx_prezp=0, pilot_tone=False, skip_lines=(), num_averages=1):
  """Writes an OCMR-structured ISMRMRD file by hand.

  Args:
    path: output file.
    kspace: complex `[avg, slice, phase, coil, kx, ky]` (kx includes the 2x readout oversampling).
    noise_scan: write a leading noise-scan acquisition.
    kx_prezp: asymmetric echo: each line stores only samples `kx_prezp:` and `center_sample = kx/2 - kx_prezp`.
    pilot_tone: set the fourth long user parameter to `PilotTone = 1`.
    skip_lines: (avg, slice, phase, ky) lines not written.
    num_averages: leading axis size of kspace (for the header).
  """
  _, num_slices, num_phases, num_coils, num_kx, num_ky = kspace.shape
  header = xsd.ismrmrdHeader(
      experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=63_686_000), encoding=[])
  header.acquisitionSystemInformation = xsd.acquisitionSystemInformationType(
      coilLabel=[], receiverChannels=num_coils, systemModel='Avanto', systemFieldStrength_T=1.494)
  header.measurementInformation = xsd.measurementInformationType(
      protocolName='trufi_cine_test', patientPosition='HFS', measurementDependency=[])
  header.sequenceParameters = xsd.sequenceParametersType(
      TR=[38.4], TE=[1.3], TI=[], flipAngle_deg=[55.0], echo_spacing=[], diffusion=[], sequence_type='TrueFISP')
  header.encoding.append(xsd.encodingType(
      encodedSpace=xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=num_kx, y=num_ky, z=1),
                                         fieldOfView_mm=xsd.fieldOfViewMm(x=720.0, y=292.5, z=8.0)),
      reconSpace=xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=num_kx // 2, y=num_ky, z=1),
                                       fieldOfView_mm=xsd.fieldOfViewMm(x=360.0, y=292.5, z=8.0)),
      encodingLimits=xsd.encodingLimitsType(
          kspace_encoding_step_1=_limit(num_ky - 1), kspace_encoding_step_2=_limit(0), slice=_limit(num_slices - 1),
          phase=_limit(num_phases - 1), average=_limit(num_averages - 1)),
      trajectory=xsd.trajectoryType.CARTESIAN))
  if pilot_tone:
    header.userParameters = xsd.userParametersType(
        userParameterLong=[xsd.userParameterLongType(name=n, value=1) for n in ('a', 'b', 'c', 'PilotTone')],
        userParameterDouble=[], userParameterString=[], userParameterBase64=[])
  with ismrmrd.Dataset(path, 'dataset', create_if_needed=True) as dataset:
    dataset.write_xml_header(header.toXML('utf-8'))
    if noise_scan:
      noise = ismrmrd.Acquisition.from_array(np.ones((num_coils, 16), np.complex64))
      noise.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
      dataset.append_acquisition(noise)
    for a in range(kspace.shape[0]):
      for s in range(num_slices):
        for p in range(num_phases):
          for y in range(num_ky):
            if (a, s, p, y) in skip_lines:
              continue
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(kspace[a, s, p, :, kx_prezp:, y], np.complex64),
                                                 center_sample=num_kx // 2 - kx_prezp)
            acq.idx.kspace_encode_step_1, acq.idx.slice, acq.idx.phase, acq.idx.average = y, s, p, a
            dataset.append_acquisition(acq)


def _random_kspace(shape, seed=0):
  """Random k-space `[..., kx, ky]` with an MR image's centre-heavy energy (white noise fails the frame checks)."""
  rng = np.random.default_rng(seed)
  kx, ky = (np.linspace(-1, 1, n)[:, None] if i == 0 else np.linspace(-1, 1, n)[None, :]
            for i, n in enumerate(shape[-2:]))
  envelope = np.exp(-(kx**2 + ky**2) / (2 * 0.3**2))
  return ((rng.normal(size=shape) + 1j * rng.normal(size=shape)) * envelope).astype(np.complex64)


def _ocmr_layout(kspace):
  """`[avg, slice, phase, coil, kx, ky]` -> OCMR's `[kx, ky, kz, coil, phase, set, slice, rep, avg]`."""
  k = np.transpose(kspace, (4, 5, 3, 2, 1, 0))  # [kx, ky, coil, phase, slice, avg]
  return k[:, :, None, :, :, None, :, None, :]


def _np_ifft2c(k):
  k = np.fft.ifftshift(k, axes=(-2, -1))
  return np.fft.fftshift(np.fft.ifft2(k, axes=(-2, -1), norm='ortho'), axes=(-2, -1))


def _np_fft2c(x):
  x = np.fft.ifftshift(x, axes=(-2, -1))
  return np.fft.fftshift(np.fft.fft2(x, axes=(-2, -1), norm='ortho'), axes=(-2, -1))


def _write_labels(path, masks, labelled):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, 'w') as f:
    f['masks'] = masks.astype(np.uint8)
    f['labelled'] = labelled.astype(np.uint8)
    f.attrs['source_file'] = os.path.basename(path)
    f.attrs['classes'] = list(ocmr.CLASSES)


@pytest.fixture(name='small_file')
def fixture_small_file(tmp_path):
  """A 2-slice, 3-frame, 3-coil file with 24 (oversampled 48) x 10 k-space and its label file."""
  kspace = _random_kspace((1, 2, 3, 3, 48, 10))
  path = str(tmp_path / 'fs_0007_1_5T.h5')
  write_ismrmrd(path, kspace)
  masks = np.random.default_rng(1).integers(0, 4, size=(2, 3, 24, 10)).astype(np.uint8)
  labelled = np.array([[1, 0, 1], [0, 1, 0]], np.uint8)
  _write_labels(ocmr.label_path_for(path), masks, labelled)
  return path, kspace, masks, labelled


@pytest.mark.parametrize('kx_prezp,pilot_tone', [(0, False), (7, False), (7, True)])
def test_read_ocmr_layout(tmp_path, kx_prezp, pilot_tone):
  kspace = _random_kspace((2, 2, 3, 4, 32, 12))
  path = str(tmp_path / 'fs_0001_1_5T.h5')
  write_ismrmrd(path, kspace, kx_prezp=kx_prezp, pilot_tone=pilot_tone, num_averages=2)
  kdata, info = ocmr.read_ocmr(path)
  expected = _ocmr_layout(kspace).copy()
  expected[:kx_prezp] = 0  # asymmetric echo: zeros before the stored samples
  if pilot_tone:  # OCMR zeroes the first three acquired samples and the last, after the asymmetric-echo offset.
    expected[[kx_prezp, kx_prezp + 1, kx_prezp + 2, -1]] = 0
  assert kdata.dtype == np.complex64
  assert kdata.shape == (32, 12, 1, 4, 3, 1, 2, 1, 2)
  np.testing.assert_array_equal(kdata, expected)
  assert info['kx_prezp'] == kx_prezp and info['asymmetric_echo'] == (kx_prezp > 0)
  assert info['pilot_tone'] == int(pilot_tone)
  assert info['encoded_matrix'] == (32, 12, 1) and info['recon_matrix'] == (16, 12, 1)
  assert info['image_shape'] == (16, 12) and info['num_coils'] == 4
  np.testing.assert_allclose(info['fov_mm'], (720.0, 292.5, 8.0))
  assert info['field_strength_t'] == pytest.approx(1.494)
  assert info['protocol'] == 'trufi_cine_test' and info['tr_ms'] == pytest.approx(38.4)
  assert info['subject_id'] == 'fs_0001_1_5T'


def test_slice_images_matches_numpy_reference(tmp_path):
  kspace = _random_kspace((2, 2, 3, 4, 40, 14), seed=3)
  path = str(tmp_path / 'fs_0002_3T.h5')
  write_ismrmrd(path, kspace, num_averages=2)
  kdata, _ = ocmr.read_ocmr(path)
  images = ocmr.slice_images(kdata)
  # NumPy reference: average, centred iFFT, crop the central half of the readout, then mri.coil_combine.
  coil_images = _np_ifft2c(kspace.astype(np.complex128).mean(axis=0))[..., 10:30, :]  # [slice, phase, coil, 20, 14]
  with jax.default_device(jax.local_devices(backend='cpu')[0]):
    expected = np.asarray(mri.coil_combine(coil_images.astype(np.complex64)))
  assert images.shape == (2, 3, 20, 14) and images.dtype == np.complex64
  np.testing.assert_allclose(images, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_coil_combined_image_matches_ground_truth(tmp_path):
  """Smooth coil profiles with sum |S_c|^2 = 1 on an object: the combined image's magnitude is the object's."""
  height, width, num_coils = 32, 24, 4
  yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing='ij')
  obj = ((xx / 0.7)**2 + (yy / 0.8)**2 < 1).astype(float) * (1 + 0.5 * xx) + 1.5 * ((xx**2 + yy**2) < 0.1)
  centres = [(-1.2, -1.2), (-1.2, 1.2), (1.2, -1.2), (1.2, 1.2)]
  profiles = np.stack([np.exp(-((yy - cy)**2 + (xx - cx)**2) / 2.0) * np.exp(1j * (0.5 * c + 0.3 * xx))
                       for c, (cy, cx) in enumerate(centres[:num_coils])])
  profiles /= np.sqrt(np.sum(np.abs(profiles)**2, axis=0))
  coil_images = profiles * obj  # [coil, H, W]
  oversampled = np.zeros((num_coils, 2 * height, width), complex)
  oversampled[:, height // 2:height // 2 + height] = coil_images
  kspace = _np_fft2c(oversampled)[None, None, None]  # [avg, slice, phase, coil, kx, ky]
  path = str(tmp_path / 'fs_0003_1_5T.h5')
  write_ismrmrd(path, kspace.astype(np.complex64), kx_prezp=0)
  kdata, _ = ocmr.read_ocmr(path)
  image = ocmr.slice_images(kdata)[0, 0]
  error = np.linalg.norm(np.abs(image) - obj) / np.linalg.norm(obj)
  assert error < 0.05, error


def test_crop_or_pad():
  image = np.arange(5 * 4).reshape(5, 4) + 1
  out = ocmr.crop_or_pad(image, (3, 6))  # crop H 5 -> 3, pad W 4 -> 6
  assert out.shape == (3, 6) and out.dtype == image.dtype
  assert out[3 // 2, 6 // 2] == image[5 // 2, 4 // 2]  # the centre pixel stays the centre pixel
  np.testing.assert_array_equal(out[:, 1:5], image[1:4])
  np.testing.assert_array_equal(out[:, [0, 5]], 0)
  batch = np.stack([image, 2 * image])
  np.testing.assert_array_equal(ocmr.crop_or_pad(batch, (3, 6))[1], 2 * out)
  np.testing.assert_array_equal(ocmr.crop_or_pad(ocmr.crop_or_pad(image, (9, 8)), (5, 4)), image)


def test_normalize():
  image = np.array([[3 + 4j, 1j], [0, -2]], np.complex64)
  normalized, scale = ocmr.normalize(image)
  assert scale == pytest.approx(5.0)
  assert np.abs(normalized).max() == pytest.approx(1.0)
  np.testing.assert_allclose(normalized * scale, image)
  assert ocmr.normalize(np.zeros((2, 2), np.complex64))[1] == 1.0


def test_load_examples(small_file):
  path, _, masks, labelled = small_file
  examples = ocmr.load_examples(path, (16, 16))
  assert [(e['slice'], e['frame']) for e in examples] == [(0, 0), (0, 2), (1, 1)]
  assert ocmr.example_frames(path) == [(0, 0), (0, 2), (1, 1)]
  for e in examples:
    assert set(e) == {'image', 'segmentation', 'subject_id', 'file_name', 'slice', 'frame', 'scale', 'has_labels'}
    assert e['image'].dtype == np.complex64 and e['image'].shape == (16, 16)
    assert e['segmentation'].dtype == np.uint8 and e['segmentation'].shape == (16, 16)
    assert np.abs(e['image']).max() == pytest.approx(1.0, abs=1e-6)
    assert e['subject_id'] == 'fs_0007_1_5T' and e['file_name'] == 'fs_0007_1_5T.h5' and e['has_labels']
    np.testing.assert_array_equal(e['segmentation'], ocmr.crop_or_pad(masks[e['slice'], e['frame']], (16, 16)))
  kdata, info = ocmr.read_ocmr(path)
  image = ocmr.crop_or_pad(ocmr.slice_images(kdata, info['recon_matrix'][0])[1, 1], (16, 16))
  np.testing.assert_allclose(examples[2]['image'] * examples[2]['scale'], image, atol=1e-5 * np.abs(image).max())
  everything = ocmr.load_examples(path, (16, 16), labelled_only=False)
  assert len(everything) == 6 and sum(e['has_labels'] for e in everything) == 3


def test_load_examples_without_labels(small_file):
  path = small_file[0]
  os.remove(ocmr.label_path_for(path))
  examples = ocmr.load_examples(path, (20, 12))
  assert len(examples) == 6
  assert not any(e['has_labels'] for e in examples)
  assert all(not e['segmentation'].any() and e['segmentation'].shape == (20, 12) for e in examples)
  assert ocmr.example_frames(path) == [] and len(ocmr.example_frames(path, include_unlabelled=True)) == 6


def _assert_raises_naming(path, error, match, fn, *args, **kwargs):
  with pytest.raises(error, match=match) as info:
    fn(*args, **kwargs)
  assert os.path.basename(path) in str(info.value)


def test_bad_inputs(tmp_path, small_file):
  path, kspace, masks, labelled = small_file
  missing = str(tmp_path / 'fs_9999.h5')
  _assert_raises_naming(missing, FileNotFoundError, 'no such', ocmr.load_examples, missing, (16, 16))

  text = str(tmp_path / 'fs_0100_text.h5')
  with open(text, 'w') as f:
    f.write('not an HDF5 file\n')
  _assert_raises_naming(text, ocmr.OCMRFormatError, 'HDF5', ocmr.read_ocmr, text)

  no_group = str(tmp_path / 'fs_0101_plain.h5')
  with h5py.File(no_group, 'w') as f:
    f['images'] = np.zeros(3)
  _assert_raises_naming(no_group, ocmr.OCMRFormatError, 'not an ISMRMRD file', ocmr.read_ocmr, no_group)

  truncated = str(tmp_path / 'fs_0102_cut.h5')
  with open(path, 'rb') as f:
    content = f.read()
  with open(truncated, 'wb') as f:
    f.write(content[:len(content) // 2])
  _assert_raises_naming(truncated, ocmr.OCMRFormatError, 'truncated|corrupt', ocmr.read_ocmr, truncated)

  undersampled_name = str(tmp_path / 'us_0103_3T.h5')
  write_ismrmrd(undersampled_name, kspace)
  _assert_raises_naming(undersampled_name, ocmr.OCMRFormatError, 'undersampled', ocmr.read_ocmr, undersampled_name)

  missing_lines = str(tmp_path / 'fs_0104_3T.h5')
  write_ismrmrd(missing_lines, kspace, skip_lines={(0, 1, 2, 3), (0, 0, 0, 9)})
  _assert_raises_naming(missing_lines, ocmr.OCMRFormatError,
                        r'slice 0 frame 0: phase-encode \(ky\) line\(s\) 9 of 0..9 are missing.*1 more of the '
                        r"file's 6 frames.*fully sampled", ocmr.load_examples, missing_lines, (16, 16))
  assert ocmr.read_ocmr(missing_lines, require_fully_sampled=False)[0].shape[1] == 10

  nan = str(tmp_path / 'fs_0105_3T.h5')
  bad = kspace.copy()
  bad[0, 1, 1, 2, 5, 5] = np.nan
  write_ismrmrd(nan, bad)
  _assert_raises_naming(nan, ocmr.OCMRFormatError, 'NaN or Inf', ocmr.read_ocmr, nan)
  inf = str(tmp_path / 'fs_0106_3T.h5')
  bad[0, 1, 1, 2, 5, 5] = np.inf
  write_ismrmrd(inf, bad)
  _assert_raises_naming(inf, ocmr.OCMRFormatError, 'NaN or Inf', ocmr.read_ocmr, inf)

  wrong_labels = ocmr.label_path_for(path)
  _write_labels(wrong_labels, masks[:, :, :20], labelled)
  _assert_raises_naming(wrong_labels, ocmr.OCMRFormatError, r'\(2, 3, 20, 10\).*\(2, 3, 24, 10\)',
                        ocmr.load_examples, path, (16, 16))
  _write_labels(wrong_labels, np.full_like(masks, 7), labelled)
  _assert_raises_naming(wrong_labels, ocmr.OCMRFormatError, 'label values', ocmr.load_examples, path, (16, 16))
  no_labels = str(tmp_path / 'labels' / 'other.h5')
  _assert_raises_naming(no_labels, FileNotFoundError, 'no such', ocmr.load_examples, path, (16, 16),
                        label_path=no_labels)


def test_phantom_file_matches_noiseless_ground_truth(tmp_path):
  """On a noiseless phantom the combined image is the phantom's image times the root-sum-of-squares of its coils."""
  recon_size = (48, 40)
  kwargs = dict(recon_size=recon_size, num_coils=6, num_slices=2, num_frames=4, snr=math.inf)
  path, label_path = phantom.write_subject(str(tmp_path), 3, 7, labelled_frames='ed_es', **kwargs)
  assert label_path == ocmr.label_path_for(path)
  subject = phantom.make_subject(7, 3, **kwargs)
  truth, labels = phantom.subject_anatomy(subject)
  height = recon_size[0]
  sensitivities = phantom.coil_sensitivities(subject)[:, height // 2:height // 2 + height]
  expected = np.abs(truth) * np.sqrt(np.sum(np.abs(sensitivities)**2, axis=0))
  kdata, info = ocmr.read_ocmr(path)
  assert kdata.shape == (96, 40, 1, 6, 4, 1, 2, 1, 1)
  assert info['protocol'] == phantom.PROTOCOL_NAME and info['image_shape'] == recon_size
  images = ocmr.slice_images(kdata)
  assert images.shape == (2, 4) + recon_size
  np.testing.assert_allclose(np.abs(images), expected, rtol=0, atol=1e-2 * expected.max())

  examples = ocmr.load_examples(path, (32, 48))  # crops the readout 48 -> 32, pads the phase encode 40 -> 48
  assert [(e['slice'], e['frame']) for e in examples] == [(0, 0), (0, 2), (1, 0), (1, 2)]
  for e in examples:
    np.testing.assert_array_equal(e['segmentation'], ocmr.crop_or_pad(labels[e['slice'], e['frame']], (32, 48)))
    np.testing.assert_allclose(e['image'] * e['scale'], ocmr.crop_or_pad(images[e['slice'], e['frame']], (32, 48)),
                               atol=1e-5 * expected.max())
    assert e['subject_id'] == 'fs_0003_phantom'


def _frame_rows(path, slice_index, phase):
  """Row numbers of the imaging acquisitions of one (slice, frame) in `/dataset/data`."""
  with h5py.File(path, 'r') as f:
    heads = f['dataset']['data']['head']
  imaging = (heads['flags'].astype(np.uint64) & np.uint64(1 << (ismrmrd.ACQ_IS_NOISE_MEASUREMENT - 1))) == 0
  return np.flatnonzero(imaging & (heads['idx']['slice'] == slice_index) & (heads['idx']['phase'] == phase))


def _rewrite_rows(path, rows, change):
  with h5py.File(path, 'r+') as f:
    table = f['dataset']['data']
    for i in rows:
      row = table[i]
      row['data'] = change(np.array(row['data'], np.float32))
      table[i] = row


def test_files_that_lie_name_the_slice_and_frame(tmp_path):
  """HDF5 has no checksums: a few flipped bytes, a block of noise or a zeroed frame read as numbers; each stops."""
  kwargs = dict(recon_size=(32, 24), num_coils=2, num_slices=2, num_frames=3, snr=40.0)
  clean, _ = phantom.write_subject(str(tmp_path / 'clean'), 1, 3, **kwargs)
  ocmr.read_ocmr(clean)  # the phantom itself is plausible

  def corrupt(name, slice_index, phase, change):
    path = str(tmp_path / name)
    with open(clean, 'rb') as src, open(path, 'wb') as dst:
      dst.write(src.read())
    _rewrite_rows(path, _frame_rows(path, slice_index, phase), change)
    return path

  def flip_exponent_bytes(values):  # 3 flipped bytes in an outer line: |v| < 2 becomes |v| * 2^128, still finite
    raw = values.view(np.uint8)
    for sample in (1, 2, 3):
      raw[4 * sample + 3] ^= 0x40
    return values

  flipped = corrupt('fs_0001_flipped.h5', 1, 2, lambda v: v)
  _rewrite_rows(flipped, _frame_rows(flipped, 1, 2)[:1], flip_exponent_bytes)
  with pytest.raises(ocmr.OCMRFormatError, match=r'fs_0001_flipped.h5: slice 1 frame 2: .*maximum \|k\|.*times'):
    ocmr.load_examples(flipped, (32, 32))
  assert np.all(np.isfinite(ocmr.read_ocmr(flipped, check_frames=False)[0]))  # finite: only the check catches it

  rng = np.random.default_rng(0)
  kdata, _ = ocmr.read_ocmr(clean)
  rms = float(np.sqrt(np.mean(np.abs(kdata[:, :, :, :, 1, :, 0]) ** 2)))  # slice 0, frame 1 keeps its energy
  noise = corrupt('fs_0002_noise.h5', 0, 1, lambda v: rng.normal(0, rms / np.sqrt(2), v.shape).astype(np.float32))
  with pytest.raises(ocmr.OCMRFormatError, match=r'fs_0002_noise.h5: slice 0 frame 1: .*outside the central half'):
    ocmr.read_ocmr(noise)
  zeroed = corrupt('fs_0003_zeroed.h5', 1, 0, np.zeros_like)
  with pytest.raises(ocmr.OCMRFormatError, match=r'fs_0003_zeroed.h5: slice 1 frame 0: .*line\(s\) 0-23 .* zero'):
    ocmr.read_ocmr(zeroed)
  with pytest.raises(ocmr.OCMRFormatError, match=r'fs_0003_zeroed.h5: slice 1 frame 0: .*0 times'):
    ocmr.read_ocmr(zeroed, require_fully_sampled=False)  # the frame check sees it too


def _ky_rows(path, lines, slice_index=None, phase=None):
  """Row numbers of the imaging acquisitions with ky in `lines` (of one slice / frame when given)."""
  with h5py.File(path, 'r') as f:
    heads = f['dataset']['data']['head']
  imaging = (heads['flags'].astype(np.uint64) & np.uint64(1 << (ismrmrd.ACQ_IS_NOISE_MEASUREMENT - 1))) == 0
  keep = imaging & np.isin(heads['idx']['kspace_encode_step_1'], lines)
  if slice_index is not None:
    keep &= (heads['idx']['slice'] == slice_index) & (heads['idx']['phase'] == phase)
  return np.flatnonzero(keep)


def test_zeroed_phase_encode_lines_name_file_slice_frame_and_lines(tmp_path):
  """Zeroed ky lines are lines never measured: the build must not serve the file as fully sampled."""
  kwargs = dict(recon_size=(32, 24), num_coils=2, num_slices=2, num_frames=3, snr=40.0)
  clean, _ = phantom.write_subject(str(tmp_path / 'clean'), 1, 3, **kwargs)
  every_frame = str(tmp_path / 'fs_0005_lines.h5')
  with open(clean, 'rb') as src, open(every_frame, 'wb') as dst:
    dst.write(src.read())
  _rewrite_rows(every_frame, _ky_rows(every_frame, [5, 6, 7]), np.zeros_like)
  with pytest.raises(ocmr.OCMRFormatError, match=r"fs_0005_lines.h5: slice 0 frame 0: phase-encode \(ky\) line\(s\) "
                                                 r"5-7 of 0..23 are zero in every coil; so are lines of 5 more of "
                                                 r"the file's 6 frames"):
    ocmr.load_examples(every_frame, (32, 32))

  one_frame = str(tmp_path / 'fs_0006_line.h5')
  with open(clean, 'rb') as src, open(one_frame, 'wb') as dst:
    dst.write(src.read())
  _rewrite_rows(one_frame, _ky_rows(one_frame, [2, 11, 12], slice_index=1, phase=2), np.zeros_like)
  with pytest.raises(ocmr.OCMRFormatError, match=r'fs_0006_line.h5: slice 1 frame 2: .*line\(s\) 2, 11-12 of 0..23 '
                                                 r'are zero in every coil\. Expected fully sampled'):
    ocmr.read_ocmr(one_frame)
  # Undersampled data (predict on a us_* file) may hold zero lines; the frames are still checked.
  assert ocmr.read_ocmr(one_frame, require_fully_sampled=False)[0].shape[1] == 24
  # A single zeroed sample is not a zeroed line.
  one_sample = str(tmp_path / 'fs_0007_sample.h5')
  with open(clean, 'rb') as src, open(one_sample, 'wb') as dst:
    dst.write(src.read())
  _rewrite_rows(one_sample, _ky_rows(one_sample, [5])[:1], lambda v: np.concatenate([np.zeros(2, v.dtype), v[2:]]))
  ocmr.read_ocmr(one_sample)
