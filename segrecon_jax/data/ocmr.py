"""OCMR reader: fully sampled ISMRMRD cine k-space -> coil-combined, normalised complex slice images and labels.

Follows OCMR's own `read_ocmr.py` (MRIOSU/OCMR) for the k-space layout, then builds the single-coil images the paper
trains on ("coil combined to simulate single-coil data acquisition"):

  read_ocmr      k-space `[kx, ky, kz, coil, phase, set, slice, rep, avg]` complex64 plus a parameter dict; every
                 frame is checked for plausibility (`check_frames_plausible`): HDF5 has no checksums.
  slice_images   average over `avg`, centred orthonormal iFFT over (kx, ky), crop the central half of kx (the 2x
                 readout oversampling), sensitivity-weighted coil combination (`mri.coil_combine` with sensitivities
                 from `mri.estimate_sensitivities`): complex64 `[slice, frame, H, W]`, H = readout, W = phase encode.
  crop_or_pad    centred crop / zero-pad of the last two axes to a fixed `(H, W)`; labels get the same crop.
  normalize      each 2-D image is divided by its maximum magnitude (the `scale`), so |image| <= 1 with max 1.
  read_labels    the label file `<dir>/labels/<stem>.h5` (format below).
  example_frames the (slice, frame) pairs a file contributes, from its headers alone (cheap; used for splits).
  load_examples  all of the above: one dict per labelled (slice, frame).

Label file (one per OCMR file, `<dir of the OCMR file>/labels/<OCMR file stem>.h5`):
  `masks`     uint8 `[num_slices, num_frames, H, W]`, H = reconSpace matrixSize.x (readout after oversampling
              removal), W = number of ky lines; 0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool.
  `labelled`  uint8 `[num_slices, num_frames]`, 1 where that frame is labelled.
  attributes  `source_file` (the OCMR file name), `classes` (the class names in label order); informational, the
              reader does not need them.

Every problem with an input file raises `OCMRFormatError` (a `ValueError`) or `FileNotFoundError`, naming the file
and what was expected. The jax ops run on the host CPU device: the data pipeline never touches accelerators.
"""

import functools
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import h5py
import ismrmrd
import ismrmrd.xsd
import jax
import numpy as np

from segrecon_jax import mri
from segrecon_jax.data import labels as labels_format

KSPACE_AXES = ('kx', 'ky', 'kz', 'coil', 'phase', 'set', 'slice', 'rep', 'avg')
CLASSES = labels_format.CLASS_NAMES
NUM_CLASSES = labels_format.NUM_CLASSES
# OCMR's reader zeroes these samples of every ACQUIRED line (`acq.data[:, [0, 1, 2, last]]`) when the PilotTone user
# parameter is 1 (the pilot-tone signal sits at the edges of the readout), before placing the line at `kx_prezp`.
_PILOT_TONE_SAMPLES = (0, 1, 2, -1)
_NOISE_FLAG_BIT = np.uint64(1 << (ismrmrd.ACQ_IS_NOISE_MEASUREMENT - 1))
# Plausibility of each frame's k-space (HDF5 has no checksums, so flipped bytes read as valid numbers). The k-space
# maximum (at the centre) of a cine frame stays within a few times that of the file's other frames, and an MR image
# puts most of its energy in the central half of kx and ky; white noise puts 3/4 outside it, a corrupt sample all.
MAX_FRAME_RATIO = 100.0  # A frame's max |k| may be at most this many times the file's median frame max (or 1/it).
MAX_OUTER_ENERGY = 0.5  # Largest share of a frame's energy outside the central half of kx and ky.
ZERO_LINE_FRACTION = 1e-6  # A ky line whose max |k| is at most this share of its frame's median line max is zeroed.


class OCMRFormatError(ValueError):
  """An input file is not a usable OCMR / label file; the message names the file and what was expected."""


def subject_id(path: str) -> str:
  """The subject key of an OCMR file: its file stem (OCMR publishes no other subject key; one file = one subject)."""
  return os.path.splitext(os.path.basename(path))[0]


def label_path_for(path: str) -> str:
  """Where the label file of an OCMR file lives: `<dir of path>/labels/<stem>.h5`."""
  return os.path.join(os.path.dirname(os.path.abspath(path)), 'labels', subject_id(path) + '.h5')


def open_h5(path: str, what: str) -> h5py.File:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such {what} file')
  try:
    return h5py.File(path, 'r')
  except OSError as e:
    raise OCMRFormatError(f'{path}: expected an HDF5 {what} file, but it cannot be opened as HDF5 (truncated, '
                          f'corrupt or not HDF5): {e}') from e


def _limit(limits, name: str) -> int:
  """`maximum + 1` of an encoding limit, 1 when the header does not give it (as OCMR's reader does)."""
  limit = getattr(limits, name, None)
  if limit is None or getattr(limit, 'maximum', None) is None:
    return 1
  return int(limit.maximum) + 1


def _field_strength(header) -> Optional[float]:
  """Tesla: the system's nominal field strength, else the proton resonance frequency / 42.577 MHz/T."""
  system = header.acquisitionSystemInformation
  if system is not None and system.systemFieldStrength_T:
    return float(system.systemFieldStrength_T)
  if header.experimentalConditions is not None and header.experimentalConditions.H1resonanceFrequency_Hz:
    return float(header.experimentalConditions.H1resonanceFrequency_Hz) / 42.577478e6
  return None


def _parse_header(path: str, xml: bytes) -> Dict[str, Any]:
  """The parameters of an OCMR XML header that the reader and the label format need."""
  try:
    header = ismrmrd.xsd.CreateFromDocument(xml)
    enc = header.encoding[0]
    encoded, recon, limits = enc.encodedSpace, enc.reconSpace, enc.encodingLimits
    ky_limit = limits.kspace_encoding_step_1
    num_ky = int(ky_limit.maximum) + 1
    seq = header.sequenceParameters
    system = header.acquisitionSystemInformation
    first = lambda values: float(values[0]) if values else None  # pylint: disable=unnecessary-lambda-assignment
    pilot_tone = 0
    user = header.userParameters
    longs = list(user.userParameterLong) if user is not None else []
    # OCMR's reader looks at exactly the fourth long user parameter.
    if len(longs) > 3 and longs[3].name == 'PilotTone':
      pilot_tone = int(longs[3].value)
    info = {
        'encoded_matrix': (int(encoded.matrixSize.x), int(encoded.matrixSize.y), int(encoded.matrixSize.z)),
        'recon_matrix': (int(recon.matrixSize.x), int(recon.matrixSize.y), int(recon.matrixSize.z)),
        # As in OCMR's reader: the y field of view is scaled to the acquired ky lines.
        'fov_mm': (float(encoded.fieldOfView_mm.x),
                   num_ky / int(encoded.matrixSize.y) * float(encoded.fieldOfView_mm.y),
                   float(encoded.fieldOfView_mm.z)),
        'ky_minimum': int(ky_limit.minimum or 0),
        'num_coils': int(system.receiverChannels) if system is not None and system.receiverChannels else None,
        'field_strength_t': _field_strength(header),
        'system_model': str(system.systemModel) if system is not None and system.systemModel else '',
        'protocol': (str(header.measurementInformation.protocolName)
                     if header.measurementInformation is not None and header.measurementInformation.protocolName
                     else ''),
        'tr_ms': first(seq.TR) if seq is not None else None,
        'te_ms': first(seq.TE) if seq is not None else None,
        'ti_ms': first(seq.TI) if seq is not None else None,
        'flip_angle_deg': first(seq.flipAngle_deg) if seq is not None else None,
        'sequence_type': str(seq.sequence_type) if seq is not None and seq.sequence_type else '',
        'pilot_tone': pilot_tone,
    }
    shape = (info['encoded_matrix'][0], num_ky, info['encoded_matrix'][2], info['num_coils'] or 0,
             _limit(limits, 'phase'), _limit(limits, 'set'), _limit(limits, 'slice'), _limit(limits, 'repetition'),
             _limit(limits, 'average'))
  except (AttributeError, IndexError, TypeError, ValueError) as e:
    raise OCMRFormatError(f'{path}: the ISMRMRD XML header lacks a field the reader needs (encoding[0] with '
                          f'encodedSpace, reconSpace and encodingLimits.kspace_encoding_step_1): {e!r}') from e
  except Exception as e:  # the XML parser raises its own exception types
    raise OCMRFormatError(f'{path}: the ISMRMRD XML header cannot be parsed: {e!r}') from e
  info['kspace_shape'] = shape
  return info


def _check_ismrmrd(path: str, f: h5py.File) -> None:
  if 'dataset' not in f or not isinstance(f['dataset'], h5py.Group):
    raise OCMRFormatError(f'{path}: not an ISMRMRD file: expected an HDF5 group `dataset`, found {sorted(f.keys())}')
  missing = [name for name in ('xml', 'data') if name not in f['dataset']]
  if missing:
    raise OCMRFormatError(f'{path}: not an ISMRMRD file with acquisitions: the `dataset` group lacks {missing}')


def read_header(path: str) -> Dict[str, Any]:
  """The header parameters of an OCMR file without reading its k-space.

  Returns:
    A dict with `kspace_shape` (the 9 sizes of `KSPACE_AXES`), `encoded_matrix`, `recon_matrix` (x, y, z),
    `fov_mm` (x, y, z; y scaled to the acquired lines as in OCMR's reader), `num_coils`, `field_strength_t`,
    `system_model`, `protocol`, `tr_ms`, `te_ms`, `ti_ms`, `flip_angle_deg`, `sequence_type`, `pilot_tone`,
    `ky_minimum`, `image_shape` (H, W) of `slice_images`, `file_name`, `subject_id`.
  """
  with open_h5(path, 'ISMRMRD') as f:
    _check_ismrmrd(path, f)
    try:
      xml = f['dataset']['xml'][0]
    except (OSError, KeyError, IndexError) as e:
      raise OCMRFormatError(f'{path}: the ISMRMRD XML header cannot be read (truncated or corrupt file): {e}') from e
  info = _parse_header(path, xml)
  info['image_shape'] = (info['recon_matrix'][0], info['kspace_shape'][1])
  info['file_name'] = os.path.basename(path)
  info['subject_id'] = subject_id(path)
  return info


def _read_acquisitions(path: str, f: h5py.File) -> np.ndarray:
  """All rows of `/dataset/data` in one HDF5 read.

  This is the layout `ismrmrd.Dataset` reads and writes; reading it whole avoids
  `ismrmrd.Dataset.read_acquisition`'s Python call and HDF5 read per line.
  """
  try:
    rows = f['dataset']['data'][()]
  except (OSError, KeyError, ValueError) as e:
    raise OCMRFormatError(f'{path}: the ISMRMRD acquisitions cannot be read (truncated or corrupt file): {e}') from e
  names = rows.dtype.names or ()
  if 'head' not in names or 'data' not in names:
    raise OCMRFormatError(f'{path}: `dataset/data` is not an ISMRMRD acquisition table (fields {names})')
  return rows


def read_ocmr(path: str, require_fully_sampled: bool = True, check_frames: bool = True
              ) -> Tuple[np.ndarray, Dict[str, Any]]:
  """Reads an OCMR file the way OCMR's `read_ocmr.py` does.

  Noise scans (`ACQ_IS_NOISE_MEASUREMENT`) are skipped. With an asymmetric echo (`center_sample * 2 < kx` for the
  first imaging line) the lines are right-aligned: `kx_prezp = kx - number_of_samples` zeros at the start. With the
  PilotTone user parameter set, the first three acquired samples of each line (`kx_prezp` to `kx_prezp + 2`) and
  the last are zeroed. Lines below the header's
  `kspace_encoding_step_1.minimum` (partial Fourier) stay zero, as in OCMR's reader.

  Args:
    path: an OCMR (ISMRMRD HDF5) file.
    require_fully_sampled: raise `OCMRFormatError` for a `us_*` file or when any ky line (from the header's
      minimum to maximum) of any kz/phase/set/slice/rep/avg is missing or zero in every coil, naming the slice,
      frame and lines.
    check_frames: run `check_frames_plausible` (stop on a frame whose k-space cannot be an MR image).

  Returns:
    `kdata`: complex64 `[kx, ky, kz, coil, phase, set, slice, rep, avg]` (see `KSPACE_AXES`); kx includes the 2x
      readout oversampling. `info`: `read_header`'s dict plus `kx_prezp` and `asymmetric_echo`.
  """
  name = os.path.basename(path)
  if require_fully_sampled and name.startswith('us_'):
    raise OCMRFormatError(f'{path}: an undersampled OCMR file (us_*); fully sampled data (an fs_* file) is required')
  info = read_header(path)
  with open_h5(path, 'ISMRMRD') as f:
    rows = _read_acquisitions(path, f)
  heads = rows['head']
  imaging = (heads['flags'].astype(np.uint64) & _NOISE_FLAG_BIT) == 0
  if not np.any(imaging):
    raise OCMRFormatError(f'{path}: expected imaging acquisitions, found only {len(rows)} noise scans')
  heads, data = heads[imaging], rows['data'][imaging]
  num_kx, num_ky, num_kz, num_coils, num_phases, num_sets, num_slices, num_reps, num_avgs = info['kspace_shape']
  samples, channels = heads['number_of_samples'].astype(int), heads['active_channels'].astype(int)
  if len(set(samples)) != 1 or len(set(channels)) != 1:
    raise OCMRFormatError(f'{path}: expected every imaging line to have the same number of samples and coils, got '
                          f'samples {sorted(set(samples))} and coils {sorted(set(channels))}')
  num_samples, num_channels = int(samples[0]), int(channels[0])
  if num_coils and num_channels != num_coils:
    raise OCMRFormatError(f'{path}: the header gives receiverChannels={num_coils} but the lines hold '
                          f'{num_channels} coils')
  num_coils = num_channels
  kx_prezp = 0
  if int(heads['center_sample'][0]) * 2 < num_kx:
    kx_prezp = num_kx - num_samples
  if not 0 <= kx_prezp < num_kx:
    raise OCMRFormatError(f'{path}: lines hold {num_samples} samples, more than the encoded matrix x={num_kx}')
  idx = heads['idx']
  index = [idx['kspace_encode_step_1'], idx['kspace_encode_step_2'], idx['phase'], idx['set'], idx['slice'],
           idx['repetition'], idx['average']]
  sizes = (num_ky, num_kz, num_phases, num_sets, num_slices, num_reps, num_avgs)
  for axis_name, values, size in zip(('ky', 'kz', 'phase', 'set', 'slice', 'rep', 'avg'), index, sizes):
    if values.size and int(values.max()) >= size:
      raise OCMRFormatError(f'{path}: a line has {axis_name} index {int(values.max())}, outside the header\'s '
                            f'encoding limits (expected < {size})')
  try:
    lines = np.stack([np.asarray(d, np.float32) for d in data])
  except ValueError as e:
    raise OCMRFormatError(f'{path}: the acquisition data have inconsistent lengths: {e}') from e
  if lines.shape[1] != 2 * num_channels * num_samples:
    raise OCMRFormatError(f'{path}: expected {2 * num_channels * num_samples} floats per line '
                          f'({num_channels} coils x {num_samples} complex samples), got {lines.shape[1]}')
  lines = lines.view(np.complex64).reshape(-1, num_channels, num_samples)
  if not np.all(np.isfinite(lines)):
    raise OCMRFormatError(f'{path}: the k-space holds NaN or Inf samples; expected finite data')
  kdata = np.zeros((num_kx, num_ky, num_kz, num_coils, num_phases, num_sets, num_slices, num_reps, num_avgs),
                   np.complex64)
  ky, kz, phase, set_, slc, rep, avg = index
  # kdata[kx_prezp:, y, z, :, phase, set, slice, rep, avg] = acq.data.T, for every line at once.
  kdata_lines = np.moveaxis(kdata[kx_prezp:], 0, -1)  # [ky, kz, coil, phase, set, slice, rep, avg, kx] view
  kdata_lines = np.moveaxis(kdata_lines, 2, -2)  # [ky, kz, phase, set, slice, rep, avg, coil, kx] view
  kdata_lines[ky, kz, phase, set_, slc, rep, avg] = lines
  if info['pilot_tone'] == 1:  # Offsets into the acquired samples, which start at kx_prezp.
    kdata[[kx_prezp + i if i >= 0 else i for i in _PILOT_TONE_SAMPLES]] = 0
  if require_fully_sampled:
    acquired = np.zeros(sizes, bool)
    acquired[ky, kz, phase, set_, slc, rep, avg] = True
    _check_every_line(path, ~acquired, info['ky_minimum'], 'missing (never acquired)', 'undersampled data?')
    # A line whose samples are all zero was not measured either: received noise alone keeps every acquired line far
    # above ZERO_LINE_FRACTION of its frame's typical (median) line, which a few corrupt samples do not move.
    line_peak = np.zeros(sizes, np.float32)
    np.maximum.at(line_peak, (ky, kz, phase, set_, slc, rep, avg), np.abs(lines).max(axis=(1, 2)))
    typical = np.median(line_peak[info['ky_minimum']:], axis=(0, 1, 3, 5, 6), keepdims=True)  # per (phase, slice)
    _check_every_line(path, acquired & (line_peak <= ZERO_LINE_FRACTION * typical), info['ky_minimum'],
                      'zero in every coil', 'zeroed or missing lines stored as zeros?')
  if check_frames:
    check_frames_plausible(kdata, path)
  info.update(kx_prezp=kx_prezp, asymmetric_echo=kx_prezp > 0)
  return kdata, info


def _line_ranges(lines: Sequence[int]) -> str:
  """[5, 6, 7, 12] -> '5-7, 12'."""
  ranges = []
  for line in lines:
    if ranges and line == ranges[-1][1] + 1:
      ranges[-1][1] = line
    else:
      ranges.append([line, line])
  return ', '.join(f'{a}' if a == b else f'{a}-{b}' for a, b in ranges)


def _check_every_line(path: str, bad: np.ndarray, ky_minimum: int, what: str, hint: str) -> None:
  """Raises `OCMRFormatError` naming the first (slice, frame) with a bad ky line, its lines and how many frames.

  Args:
    path: the file, for the message.
    bad: bool `[ky, kz, phase, set, slice, rep, avg]`, True for a bad line; lines below `ky_minimum` (partial
      Fourier, never acquired) are not checked.
  """
  per_frame = bad[ky_minimum:].any(axis=(1, 3, 5, 6))  # [ky - ky_minimum, phase, slice]
  frames = sorted((int(s), int(p)) for p, s in np.argwhere(per_frame.any(axis=0)))
  if not frames:
    return
  slice_index, phase = frames[0]
  lines = [ky_minimum + int(i) for i in np.flatnonzero(per_frame[:, phase, slice_index])]
  others = (f'; so are lines of {len(frames) - 1} more of the file\'s {per_frame.shape[1] * per_frame.shape[2]} '
            'frames' if len(frames) > 1 else '')
  raise OCMRFormatError(f'{path}: slice {slice_index} frame {phase}: phase-encode (ky) line(s) {_line_ranges(lines)} '
                        f'of {ky_minimum}..{bad.shape[0] - 1} are {what}{others}. Expected fully sampled k-space, '
                        f'every ky line of every frame ({hint})')


def check_frames_plausible(kdata: np.ndarray, path: str = '<kdata>') -> None:
  """Raises `OCMRFormatError` naming the file, slice and frame of the first implausible frame.

  A frame (slice, cardiac phase) is implausible when its maximum |k| is more than `MAX_FRAME_RATIO` times the
  median of the file's frame maxima, or less than 1 / `MAX_FRAME_RATIO` of it (a zeroed block), or when more than
  `MAX_OUTER_ENERGY` of its energy lies outside the central half of kx and of ky (noise or stripes).

  Args:
    kdata: complex64 `[kx, ky, kz, coil, phase, set, slice, rep, avg]` (`read_ocmr`).
    path: file name for the message.
  """
  magnitude = np.abs(kdata)
  frame_max = magnitude.max(axis=(0, 1, 2, 3, 5, 7, 8))  # [phase, slice]
  energy = np.square(magnitude, dtype=np.float64).sum(axis=(2, 3, 5, 7, 8))  # [kx, ky, phase, slice]; no overflow
  del magnitude
  num_kx, num_ky = kdata.shape[:2]
  centre = energy[num_kx // 4:num_kx // 4 + max(num_kx // 2, 1), num_ky // 4:num_ky // 4 + max(num_ky // 2, 1)]
  total = energy.sum(axis=(0, 1))
  outer = 1.0 - centre.sum(axis=(0, 1)) / np.where(total > 0, total, 1.0)
  median = float(np.median(frame_max))
  for phase, slice_index in np.ndindex(frame_max.shape):
    where = f'{path}: slice {slice_index} frame {phase}: implausible k-space'
    peak = float(frame_max[phase, slice_index])
    if median > 0 and not 1 / MAX_FRAME_RATIO <= peak / median <= MAX_FRAME_RATIO:
      raise OCMRFormatError(f'{where}: its maximum |k| {peak:.3g} is {peak / median:.3g} times the median frame '
                            f'maximum of the file ({median:.3g}); expected within a factor {MAX_FRAME_RATIO:g} '
                            '(flipped bytes or a corrupt block in the file?)')
    if peak == 0 or outer[phase, slice_index] > MAX_OUTER_ENERGY:
      raise OCMRFormatError(f'{where}: {outer[phase, slice_index]:.0%} of its energy lies outside the central half '
                            f'of kx and ky (peak |k| {peak:.3g}); an MR image keeps most of it in the centre, '
                            f'expected at most {MAX_OUTER_ENERGY:.0%} (noise, stripes or corrupt bytes?)')


def _cpu_device():
  return jax.local_devices(backend='cpu')[0]


def slice_images(kdata: np.ndarray, readout_size: Optional[int] = None, calibration_size: int = 24,
                 path: str = '<kdata>') -> np.ndarray:
  """Coil-combined complex images of every (slice, frame) of `read_ocmr`'s k-space.

  Averages over `avg`; takes set 0 and repetition 0 (OCMR cine files have one set and one repetition); requires
  kz = 1 (2-D cine). Runs on the host CPU device.

  Args:
    kdata: complex64 `[kx, ky, kz, coil, phase, set, slice, rep, avg]`.
    readout_size: image height after removing the readout oversampling (the central `readout_size` of x);
      `kx // 2` when None (OCMR oversamples the readout 2x).
    calibration_size: side of the central k-space block used by `mri.estimate_sensitivities`.
    path: file name for error messages.

  Returns:
    complex64 `[slice, frame, H, W]`, H = readout_size, W = ky.
  """
  if kdata.ndim != len(KSPACE_AXES):
    raise OCMRFormatError(f'{path}: expected k-space {list(KSPACE_AXES)} (9 axes), got shape {kdata.shape}')
  num_kx, num_ky, num_kz = kdata.shape[:3]
  if num_kz != 1:
    raise OCMRFormatError(f'{path}: expected 2-D cine data (kz = 1), got kz = {num_kz}')
  readout_size = num_kx // 2 if readout_size is None else int(readout_size)
  if not 0 < readout_size <= num_kx:
    raise OCMRFormatError(f'{path}: readout_size {readout_size} must be in (0, kx={num_kx}]')
  kspace = kdata[:, :, 0, :, :, 0, :, 0, :].mean(axis=-1)  # [kx, ky, coil, phase, slice]
  kspace = np.transpose(kspace, (4, 3, 2, 0, 1))  # [slice, phase, coil, kx, ky]
  start = num_kx // 2 - readout_size // 2
  images = np.empty(kspace.shape[:2] + (readout_size, num_ky), np.complex64)
  cpu = _cpu_device()
  for s in range(kspace.shape[0]):  # one slice at a time bounds the memory of a real file
    images[s] = np.asarray(_combine_slice(jax.device_put(kspace[s], cpu), start, readout_size, calibration_size))
  return images


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _combine_slice(kspace: jax.Array, start: int, readout_size: int, calibration_size: int) -> jax.Array:
  """complex64 `[frame, coil, kx, ky]` -> `[frame, readout_size, ky]`; compiled once per shape, on kspace's device."""
  coil_images = mri.ifft2c(kspace)[..., start:start + readout_size, :]
  sensitivities = mri.estimate_sensitivities(coil_images, calibration_size=calibration_size)
  return mri.coil_combine(coil_images, sensitivities)


def crop_or_pad(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Centred crop or zero-pad of the last two axes to `size`.

  The centre pixel (index `n // 2`, where `ifft2c` puts the k = 0 image centre) maps to index `m // 2`, so an
  image and its label map cropped alike stay aligned.

  Args:
    image: `[..., H, W]` of any dtype.
    size: target `(H', W')`.

  Returns:
    `[..., H', W']`, same dtype.
  """
  out = np.zeros(image.shape[:-2] + tuple(int(s) for s in size), image.dtype)
  src, dst = [slice(None)] * (image.ndim - 2), [slice(None)] * (image.ndim - 2)
  for n, m in zip(image.shape[-2:], size):
    if m >= n:  # pad
      offset = m // 2 - n // 2
      src.append(slice(0, n))
      dst.append(slice(offset, offset + n))
    else:  # crop
      offset = n // 2 - m // 2
      src.append(slice(offset, offset + m))
      dst.append(slice(0, m))
  out[tuple(dst)] = image[tuple(src)]
  return out


def normalize(image: np.ndarray) -> Tuple[np.ndarray, float]:
  """Divides a 2-D image by its maximum magnitude.

  Returns:
    (image / scale, scale), with scale = max |image| (1.0 for an all-zero image).
  """
  scale = float(np.max(np.abs(image))) if image.size else 0.0
  if not np.isfinite(scale):
    raise OCMRFormatError(f'image holds non-finite values (max magnitude {scale})')
  if scale == 0.0:
    scale = 1.0
  return (image / scale).astype(image.dtype), scale


def read_labels(label_path: str, expected_shape: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
  """Reads a label file (format in the module docstring).

  Args:
    label_path: the label HDF5 file.
    expected_shape: `(num_slices, num_frames, H, W)` of the OCMR file's images (`slice_images`).

  Returns:
    `masks` uint8 `[num_slices, num_frames, H, W]` with values in 0..3, and `labelled` bool
    `[num_slices, num_frames]`.
  """
  expected_shape = tuple(int(s) for s in expected_shape)
  with open_h5(label_path, 'label') as f:
    missing = [name for name in ('masks', 'labelled') if name not in f]
    if missing:
      raise OCMRFormatError(f'{label_path}: expected label datasets `masks` [slices, frames, H, W] and `labelled` '
                            f'[slices, frames]; missing {missing}')
    try:
      masks, labelled = f['masks'][()], f['labelled'][()]
    except (OSError, ValueError) as e:
      raise OCMRFormatError(f'{label_path}: the label datasets cannot be read (truncated or corrupt file): {e}') from e
  if masks.shape != expected_shape:
    raise OCMRFormatError(f'{label_path}: label `masks` shape {masks.shape} does not match the image shape '
                          f'{expected_shape} [slices, frames, H, W] of its OCMR file')
  if labelled.shape != expected_shape[:2]:
    raise OCMRFormatError(f'{label_path}: label `labelled` shape {labelled.shape} does not match the image shape '
                          f'{expected_shape[:2]} [slices, frames] of its OCMR file')
  if not np.issubdtype(masks.dtype, np.integer) or masks.size and (masks.min() < 0 or masks.max() >= NUM_CLASSES):
    raise OCMRFormatError(f'{label_path}: expected integer label values in 0..{NUM_CLASSES - 1} {CLASSES}, got '
                          f'dtype {masks.dtype} with range [{masks.min()}, {masks.max()}]')
  return masks.astype(np.uint8), labelled.astype(bool)


def example_frames(path: str, label_path: Optional[str] = None, include_unlabelled: bool = False
                   ) -> List[Tuple[int, int]]:
  """The (slice, frame) pairs `load_examples` returns for a file, from the headers and `labelled` only (cheap).

  Without a label file every (slice, frame) when `include_unlabelled`, else none.
  """
  info = read_header(path)
  shape = _images_shape(info)
  label_path = label_path or label_path_for(path)
  if os.path.exists(label_path):
    with open_h5(label_path, 'label') as f:
      if 'labelled' not in f:
        raise OCMRFormatError(f'{label_path}: expected a `labelled` [slices, frames] dataset')
      labelled = f['labelled'][()]
    if labelled.shape != shape[:2]:
      raise OCMRFormatError(f'{label_path}: label `labelled` shape {labelled.shape} does not match the image '
                            f'shape {shape[:2]} [slices, frames] of its OCMR file')
    return [tuple(int(i) for i in sf) for sf in np.argwhere(labelled)]
  if include_unlabelled:
    return [(s, t) for s in range(shape[0]) for t in range(shape[1])]
  return []


def _images_shape(info: Dict[str, Any]) -> Tuple[int, int, int, int]:
  """`[slice, frame, H, W]` of `slice_images` for a header."""
  k = info['kspace_shape']
  return (k[6], k[4]) + tuple(info['image_shape'])


def load_examples(path: str, image_size: Sequence[int], label_path: Optional[str] = None,
                  labelled_only: bool = True) -> List[Dict[str, Any]]:
  """Reads an OCMR file (and its labels) into training examples.

  Args:
    path: a fully sampled OCMR file (fs_*.h5).
    image_size: `(H, W)` every image and label map is centred-cropped or zero-padded to.
    label_path: the label file; `<dir of path>/labels/<stem>.h5` when None. Without one, every (slice, frame)
      is returned with an all-zero segmentation and `has_labels=False`.
    labelled_only: with a label file, return only the labelled (slice, frame) pairs (False: all of them, the
      unlabelled ones with `has_labels=False` and an all-zero segmentation).

  Returns:
    One dict per example, in (slice, frame) order: `image` complex64 `[H, W]` normalised to max magnitude 1,
    `segmentation` uint8 `[H, W]` (0..3), `subject_id` str, `file_name` str, `slice` int, `frame` int, `scale` float
    (the image was divided by it), `has_labels` bool.
  """
  kdata, info = read_ocmr(path)
  images = slice_images(kdata, readout_size=info['recon_matrix'][0], path=path)
  del kdata
  explicit_label_path = label_path is not None
  label_path = label_path or label_path_for(path)
  has_label_file = explicit_label_path or os.path.exists(label_path)
  if has_label_file:
    masks, labelled = read_labels(label_path, images.shape)
  else:
    logging.info('%s: no label file at %s; every frame is returned unlabelled', path, label_path)
    masks = np.zeros(images.shape, np.uint8)
    labelled = np.zeros(images.shape[:2], bool)
  examples = []
  for s in range(images.shape[0]):
    for t in range(images.shape[1]):
      if has_label_file and labelled_only and not labelled[s, t]:
        continue
      image, scale = normalize(crop_or_pad(images[s, t], image_size))
      examples.append({
          'image': image.astype(np.complex64),
          'segmentation': crop_or_pad(masks[s, t], image_size).astype(np.uint8),
          'subject_id': info['subject_id'],
          'file_name': info['file_name'],
          'slice': s,
          'frame': t,
          'scale': scale,
          'has_labels': bool(labelled[s, t]),
      })
  return examples
