"""Phantom files in OCMR's layout: the ISMRMRD XML header and the `/dataset/data` acquisition table of a subject.

Acquisition `(slice, ky, phase)` holds `kspace[:, :, ky]`, shape (coils, 2H), after an optional noise scan, laid out
like OCMR's Siemens-converted cine files so `segrecon_jax.data.ocmr` reads them unchanged.
"""

from typing import Optional, Tuple

import ismrmrd
import ismrmrd.hdf5
import ismrmrd.xsd as xsd
import numpy as np

from segrecon_jax.data.phantom_anatomy import SLICE_THICKNESS_MM, STREAM_ANATOMY, Subject, subject_rng

PROTOCOL_NAME = 'phantom_cine_sax'
SYSTEM_VENDOR = 'segrecon_jax phantom'
_FIELD_STRENGTH_T = 1.5
_PROTON_HZ_PER_T = 42.577478e6
_TICK_MS = 2.5  # Siemens-converted ISMRMRD time stamps count 2.5 ms ticks


def _limit(maximum: int, center: int = 0) -> xsd.limitType:
  return xsd.limitType(minimum=0, maximum=int(maximum), center=int(center))


def ismrmrd_header(subject: Subject) -> xsd.ismrmrdHeader:
  """The ISMRMRD XML header of a subject's file, laid out like OCMR's (Siemens-converted) cine headers."""
  h, w = subject.recon_size
  fov_x, fov_y = h * subject.pixel_mm, w * subject.pixel_mm
  seq = subject.sequence
  encoding = xsd.encodingType(
      encodedSpace=xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=2 * h, y=w, z=1),
                                         fieldOfView_mm=xsd.fieldOfViewMm(x=2 * fov_x, y=fov_y,
                                                                          z=SLICE_THICKNESS_MM)),
      reconSpace=xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=h, y=w, z=1),
                                       fieldOfView_mm=xsd.fieldOfViewMm(x=fov_x, y=fov_y, z=SLICE_THICKNESS_MM)),
      encodingLimits=xsd.encodingLimitsType(
          kspace_encoding_step_0=_limit(2 * h - 1, h), kspace_encoding_step_1=_limit(w - 1, w // 2),
          kspace_encoding_step_2=_limit(0), average=_limit(0), slice=_limit(subject.num_slices - 1),
          contrast=_limit(0), phase=_limit(subject.num_frames - 1), repetition=_limit(0), set=_limit(0),
          segment=_limit(0)),
      trajectory=xsd.trajectoryType.CARTESIAN)
  return xsd.ismrmrdHeader(
      version=1,
      subjectInformation=xsd.subjectInformationType(patientID=f'phantom_{subject.subject:04d}'),
      measurementInformation=xsd.measurementInformationType(
          measurementID=f'phantom_{subject.seed}_{subject.subject:04d}', patientPosition=xsd.patientPositionType.HFS,
          protocolName=PROTOCOL_NAME, seriesDescription='segrecon_jax cardiac phantom, bSSFP cine short axis',
          measurementDependency=[]),
      acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
          systemVendor=SYSTEM_VENDOR, systemModel='phantom', systemFieldStrength_T=_FIELD_STRENGTH_T,
          relativeReceiverNoiseBandwidth=0.793, receiverChannels=subject.num_coils, coilLabel=[]),
      experimentalConditions=xsd.experimentalConditionsType(
          H1resonanceFrequency_Hz=int(round(_FIELD_STRENGTH_T * _PROTON_HZ_PER_T))),
      encoding=[encoding],
      sequenceParameters=xsd.sequenceParametersType(
          TR=[round(seq['tr_ms'], 3)], TE=[round(seq['te_ms'], 3)], TI=[], flipAngle_deg=[round(seq['flip_deg'], 1)],
          sequence_type='TrueFISP', echo_spacing=[round(seq['tr_ms'], 3)], diffusion=[]),
      userParameters=xsd.userParametersType(
          userParameterLong=[], userParameterDouble=[xsd.userParameterDoubleType(name='RRInterval_ms',
                                                                                  value=round(seq['rr_ms'], 1))],
          userParameterString=[], userParameterBase64=[]))


def _slice_geometry(subject: Subject) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """An oblique short-axis orientation (read, phase, slice directions) and each slice's centre, patient mm."""
  rng = subject_rng(subject.seed, subject.subject, STREAM_ANATOMY, 1)
  slice_dir = np.array([-0.55, 0.45, -0.7]) + rng.normal(0, 0.08, 3)
  slice_dir /= np.linalg.norm(slice_dir)
  read_dir = np.cross(slice_dir, [0.0, 0.0, 1.0])
  read_dir /= np.linalg.norm(read_dir)
  phase_dir = np.cross(slice_dir, read_dir)
  base = np.array([20.0, -40.0, 30.0]) + rng.normal(0, 10.0, 3)
  centres = np.array([base + sl['offset_mm'] * slice_dir for sl in subject.slices])
  return read_dir, phase_dir, slice_dir, centres


def flag_bits(*flags: int) -> np.uint64:
  return np.uint64(sum(1 << (flag - 1) for flag in flags))


def acquisition_rows(subject: Subject, kspace: np.ndarray, noise_scan: Optional[np.ndarray]) -> np.ndarray:
  """The `/dataset/data` table: an optional noise scan, then one row per (slice, ky, phase), in that loop order."""
  num_slices, num_frames, num_coils, num_kx, num_ky = kspace.shape
  num_lines = num_slices * num_ky * num_frames
  offset = 0 if noise_scan is None else 1
  rows = np.zeros(num_lines + offset, ismrmrd.hdf5.acquisition_dtype)
  head = rows['head']
  head['version'] = 1
  head['measurement_uid'] = subject.subject
  head['scan_counter'] = np.arange(1, len(rows) + 1)
  tr_ticks = subject.sequence['tr_ms'] / _TICK_MS
  head['acquisition_time_stamp'] = (1_000_000 + np.arange(len(rows)) * tr_ticks).astype(np.uint32)
  head['number_of_samples'] = num_kx
  head['available_channels'] = num_coils
  head['active_channels'] = num_coils
  mask = np.zeros(16, np.uint64)
  for c in range(num_coils):
    mask[c // 64] |= np.uint64(1 << (c % 64))
  head['channel_mask'] = mask
  head['center_sample'] = num_kx // 2
  head['sample_time_us'] = 1e6 / (subject.sequence['bandwidth_hz_per_pixel'] * num_kx)
  read_dir, phase_dir, slice_dir, centres = _slice_geometry(subject)
  head['read_dir'], head['phase_dir'], head['slice_dir'] = read_dir, phase_dir, slice_dir

  image = head[offset:]
  slc, ky, phase = (a.ravel() for a in np.meshgrid(np.arange(num_slices), np.arange(num_ky), np.arange(num_frames),
                                                   indexing='ij'))
  image['idx']['kspace_encode_step_1'] = ky
  image['idx']['slice'] = slc
  image['idx']['phase'] = phase
  image['position'] = centres[slc]
  image['physiology_time_stamp'][:, 0] = np.round(phase * subject.sequence['rr_ms'] / num_frames / _TICK_MS)
  flags = np.zeros(num_lines, np.uint64)
  # Each (slice, phase) image starts at ky = 0 and ends at the last ky line.
  flags[ky == 0] |= flag_bits(ismrmrd.ACQ_FIRST_IN_SLICE, ismrmrd.ACQ_FIRST_IN_PHASE)
  flags[ky == num_ky - 1] |= flag_bits(ismrmrd.ACQ_LAST_IN_SLICE, ismrmrd.ACQ_LAST_IN_PHASE)
  flags[-1] |= flag_bits(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
  image['flags'] = flags

  # [slice, frame, coil, kx, ky] -> one (coil, kx) block per (slice, ky, frame), stored as interleaved float32.
  lines = np.ascontiguousarray(np.transpose(kspace, (0, 4, 1, 2, 3))).reshape(num_lines, num_coils * num_kx)
  lines = lines.view(np.float32)
  data, traj = rows['data'], rows['traj']
  empty = np.zeros(0, np.float32)
  if noise_scan is not None:
    head['flags'][0] = flag_bits(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    head['position'][0] = centres[0]
    data[0] = np.ascontiguousarray(noise_scan, np.complex64).view(np.float32).ravel()
  for i in range(num_lines):
    data[offset + i] = lines[i]
  for i in range(len(rows)):
    traj[i] = empty
  return rows

