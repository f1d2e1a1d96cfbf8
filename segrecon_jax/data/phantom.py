"""Cardiac short-axis cine phantom: random subjects written as fully sampled OCMR-format ISMRMRD files plus labels.

OCMR's raw data cannot be fetched here and its segmentations were never published, so this module draws subjects
(body with a fat rim, chest-wall muscle, ribs, lungs, spine, aorta, liver, and a contracting heart with LV blood pool,
LV myocardium and an RV crescent) and writes them exactly as OCMR stores a fully sampled cine stack, so the OCMR
reader (`segrecon_jax.data.ocmr`) serves them unchanged.

Conventions:
  image       `[H, W]`: H = readout (x, the patient's left-right), W = phase encode (y, anterior-posterior). Pixel
              `(i, j)` sits at `((i - H // 2) * d, (j - W // 2) * d)` mm with square pixels of side d.
  oversampling  the readout is encoded 2x oversampled: the encoded grid is `[2H, W]` with the same pixel size, the
              recon image occupying rows `H // 2 : H // 2 + H` (the central half that `ifft2c` + crop gives back);
              the outer half is air (noise only).
  k-space     per coil `fft2c(coil image [2H, W])`, centred (k = 0 at index n // 2) and orthonormal, as
              `segrecon_jax.mri.fft2c`. Acquisition `(slice, ky, phase)` holds `kspace[:, :, ky]`, shape (coils, 2H).
  labels      `<dir>/labels/<stem>.h5`: `masks` uint8 `[slices, frames, H, W]` (0 background, 1 LV blood pool,
              2 LV myocardium, 3 RV blood pool), `labelled` uint8 `[slices, frames]`, attributes `source_file`,
              `classes`, `ed_frame`, `es_frame`.
  randomness  everything about subject `s` comes from `np.random.SeedSequence(seed, spawn_key=(s, ...))`, so
              `write_subject(d, s, seed)` writes the same subject as `write_dataset(d, n, seed)` does.

Preview: `python -m segrecon_jax.data.phantom --out_dir=DIR --num_subjects=4 --preview=DIR/preview.png`.
"""

import argparse
import dataclasses
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import h5py
import ismrmrd
import ismrmrd.hdf5
import ismrmrd.xsd as xsd
import numpy as np
import scipy.fft

from segrecon_jax.data import labels as labels_format

CLASSES = labels_format.CLASS_NAMES
BACKGROUND, LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL = range(len(CLASSES))
PROTOCOL_NAME = 'phantom_cine_sax'
SYSTEM_VENDOR = 'segrecon_jax phantom'
# Defaults drawn from the seed when an argument is None: (low, high), both included.
DEFAULT_NUM_COILS = (8, 30)
DEFAULT_NUM_SLICES = (1, 3)
DEFAULT_NUM_FRAMES = (3, 6)
DEFAULT_SNR = (30.0, 60.0)  # blood-pool SNR of the sensitivity-combined image near the heart.

_SUPERSAMPLE = 3  # shapes are drawn at 3x resolution and box-averaged: partial-volume edges, not binary shapes
_SLICE_THICKNESS_MM = 8.0
_SLICE_SPACING_MM = 10.0
_FIELD_STRENGTH_T = 1.5
_PROTON_HZ_PER_T = 42.577478e6
_TICK_MS = 2.5  # Siemens-converted ISMRMRD time stamps count 2.5 ms ticks
_STREAM_SIZES, _STREAM_ANATOMY, _STREAM_SLICE, _STREAM_COILS, _STREAM_NOISE = range(5)


@dataclasses.dataclass
class Subject:
  """Every random choice about one phantom subject (drawn by `make_subject`); lengths in mm, angles in radians.

  `anatomy` holds the subject's scalar shape and intensity parameters, `slices` one dict per slice (its base-to-apex
  position and its own random details), `coils` the receive-coil geometry.
  """
  seed: int
  subject: int
  recon_size: Tuple[int, int]
  num_coils: int
  num_slices: int
  num_frames: int
  snr: float
  pixel_mm: float
  anatomy: Dict[str, Any]
  slices: List[Dict[str, Any]]
  coils: Dict[str, np.ndarray]
  sequence: Dict[str, float]

  @property
  def encoded_size(self) -> Tuple[int, int]:
    """(2H, W): the readout is encoded with 2x oversampling."""
    return (2 * self.recon_size[0], self.recon_size[1])

  @property
  def es_frame(self) -> int:
    """End-systolic frame: the contraction `(1 - cos(2 pi t)) / 2` peaks half way through the cycle."""
    return self.num_frames // 2


def _rng(seed: int, subject: int, *stream: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(subject,) + tuple(stream)))


def _check_int(name: str, value: Any, low: int, high: Optional[int] = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name} must be an integer, got {value!r}')
  if value < low or (high is not None and value > high):
    bound = f'>= {low}' if high is None else f'in [{low}, {high}]'
    raise ValueError(f'{name} must be {bound}, got {value}')
  return int(value)


def _check_recon_size(recon_size: Sequence[int]) -> Tuple[int, int]:
  try:
    size = tuple(recon_size)
  except TypeError:
    raise ValueError(f'recon_size must be (readout H, phase-encode W), got {recon_size!r}') from None
  if len(size) != 2:
    raise ValueError(f'recon_size must be (readout H, phase-encode W), got {recon_size!r}')
  for name, n in zip(('recon_size[0] (readout)', 'recon_size[1] (phase encode)'), size):
    _check_int(name, n, 8, 2048)
    if n % 2:
      raise ValueError(f'{name} must be even (the image centre is index n // 2 of both grids), got {n}')
  return int(size[0]), int(size[1])


def make_subject(seed: int, subject: int = 1, *, recon_size: Sequence[int] = (128, 128),
                 num_coils: Optional[int] = None, num_slices: Optional[int] = None, num_frames: Optional[int] = None,
                 snr: Optional[float] = None) -> Subject:
  """Draws one subject: anatomy, slice positions, coils and noise level, all from `(seed, subject)`.

  The anatomy does not depend on `num_coils` or `snr`, and slice `k`'s details do not depend on `num_slices`
  beyond its position.

  Args:
    seed: non-negative integer seed of the whole data set.
    subject: subject number (1..9999); it names the file and keys the randomness.
    recon_size: (readout H, phase-encode W) of the reconstructed image, both even.
    num_coils: receive coils; drawn from `DEFAULT_NUM_COILS` when None.
    num_slices: short-axis slices from base to apex; drawn from `DEFAULT_NUM_SLICES` when None.
    num_frames: cardiac phases over one cycle (frame 0 end-diastole); drawn from `DEFAULT_NUM_FRAMES` when None.
    snr: blood-pool SNR of the sensitivity-combined image near the heart; drawn from `DEFAULT_SNR` when None;
      `math.inf` writes noiseless data.

  Returns:
    The `Subject`.
  """
  seed = _check_int('seed', seed, 0)
  subject = _check_int('subject', subject, 1, 9999)
  recon_size = _check_recon_size(recon_size)
  sizes = _rng(seed, subject, _STREAM_SIZES)
  drawn = {name: int(sizes.integers(low, high + 1)) for name, (low, high) in
           (('num_coils', DEFAULT_NUM_COILS), ('num_slices', DEFAULT_NUM_SLICES), ('num_frames', DEFAULT_NUM_FRAMES))}
  drawn_snr = float(sizes.uniform(*DEFAULT_SNR))
  num_coils = drawn['num_coils'] if num_coils is None else _check_int('num_coils', num_coils, 1, 128)
  num_slices = drawn['num_slices'] if num_slices is None else _check_int('num_slices', num_slices, 1, 64)
  num_frames = drawn['num_frames'] if num_frames is None else _check_int('num_frames', num_frames, 1, 256)
  if snr is None:
    snr = drawn_snr
  elif not (isinstance(snr, (int, float, np.floating)) and snr > 0):
    raise ValueError(f'snr must be a positive number (math.inf for noiseless data) or None, got {snr!r}')
  anatomy = _draw_anatomy(_rng(seed, subject, _STREAM_ANATOMY))
  pixel_mm, centre = _field_of_view(anatomy, recon_size)
  anatomy['centre'] = centre
  slices = _draw_slices(seed, subject, anatomy, num_slices)
  coils = _draw_coils(_rng(seed, subject, _STREAM_COILS), anatomy, num_coils)
  sequence = {'tr_ms': anatomy.pop('tr_ms'), 'te_ms': anatomy.pop('te_ms'), 'flip_deg': anatomy.pop('flip_deg'),
              'rr_ms': anatomy.pop('rr_ms'), 'bandwidth_hz_per_pixel': anatomy.pop('bandwidth_hz_per_pixel')}
  return Subject(seed=seed, subject=subject, recon_size=recon_size, num_coils=num_coils, num_slices=num_slices,
                 num_frames=num_frames, snr=float(snr), pixel_mm=pixel_mm, anatomy=anatomy, slices=slices,
                 coils=coils, sequence=sequence)


def _draw_anatomy(rng: np.random.Generator) -> Dict[str, Any]:
  """Scalar parameters of the body, thorax and heart (heart sizes are at the base, at end-diastole)."""
  u = rng.uniform
  p = {
      'half_width': u(145.0, 185.0), 'half_depth': u(95.0, 120.0), 'posterior_flatten': u(0.88, 1.0),
      # Fat and muscle layers of the body wall: (sides, front, back); the back holds the paraspinal muscles.
      'body_exponent': u(2.0, 2.6), 'fat_mm': u(5.0, 18.0, 3),
      'muscle_mm': np.array([u(6, 12), u(10, 20), u(28, 42)]),
      # Pose in the image: rotation, left-right and anterior-posterior flips, FOV margin, off-centre shift.
      'rotation': u(-0.3, 0.3), 'flip_lr': bool(rng.random() < 0.5), 'flip_ap': bool(rng.random() < 0.5),
      'margin': u(1.04, 1.16), 'shift': u(-1.0, 1.0, 2),
      # Heart: LV centre as a fraction of the thoracic cavity, RV direction measured from the patient's right.
      'lv_u': u(0.08, 0.2), 'lv_v': u(-0.3, -0.12), 'rv_angle': u(0.15, 0.8), 'lv_radius': u(25.0, 32.0),
      'lv_wall': u(6.5, 10.0), 'lv_ecc': u(0.9, 1.0), 'lv_shape': u(0.0, 0.05, 2),
      'lv_shape_phase': u(0, 2 * np.pi, 3), 'wall_mod': u(0.05, 0.2), 'lv_contraction': u(0.2, 0.32),
      'rv_thickness': u(13.0, 22.0), 'rv_offset': u(0.3, 0.5), 'rv_wrap': u(0.85, 1.05),
      'rv_wall': u(2.5, 4.0), 'rv_contraction': u(0.25, 0.4), 'pericardial_fat_mm': u(2.0, 5.0),
      'apex_shift': u(-12.0, 12.0, 2), 'beat_shift': u(-3.0, 3.0, 2), 'lv_length_mm': u(75.0, 95.0),
      'papillary_angles': u(-0.5, 0.5, 2) + np.array([np.pi - 0.9, np.pi + 0.9]),
      'vertebra_radius': u(13.0, 18.0), 'aorta_radius': u(9.0, 13.0), 'liver_scale': u(0.85, 1.15),
      'stomach_scale': u(0.6, 1.2), 'stomach': u(0.45, 0.8),
      # bSSFP (bright-blood) intensities relative to blood = 1.
      'blood': u(0.92, 1.05), 'myocardium': u(0.2, 0.3), 'fat': u(0.75, 0.95), 'muscle': u(0.2, 0.3),
      'soft_tissue': u(0.3, 0.4), 'lung': u(0.025, 0.06), 'liver': u(0.25, 0.36), 'marrow': u(0.45, 0.6),
      'cortex': u(0.02, 0.06), 'csf': u(0.75, 0.95), 'cord': u(0.3, 0.4), 'aorta': u(0.75, 0.95),
      # Sequence: a 1.5 T bSSFP cine.
      'tr_ms': u(2.8, 3.4), 'flip_deg': u(50.0, 70.0), 'rr_ms': u(750.0, 1100.0),
      'bandwidth_hz_per_pixel': u(900.0, 1100.0),
  }
  p['te_ms'] = p['tr_ms'] / 2  # bSSFP echoes half way through the TR
  return p


def _field_of_view(p: Dict[str, Any], recon_size: Tuple[int, int]) -> Tuple[float, np.ndarray]:
  """Square pixel size (mm) that fits the rotated body into the recon FOV with a margin, and the body centre (mm)."""
  angles = np.linspace(0, 2 * np.pi, 721)
  c, s = np.cos(angles), np.sin(angles)
  e = 2.0 / p['body_exponent']
  bu = p['half_width'] * np.sign(c) * np.abs(c)**e
  bv = p['half_depth'] * np.sign(s) * np.abs(s)**e
  x, y = _body_to_image(p, bu, bv)
  extent = np.array([np.abs(x).max(), np.abs(y).max()])
  pixel_mm = float(max(2 * extent[0] * p['margin'] / recon_size[0], 2 * extent[1] * p['margin'] / recon_size[1]))
  room = np.array(recon_size) * pixel_mm / 2 - extent
  return pixel_mm, 0.8 * p['shift'] * room


def _body_to_image(p: Dict[str, Any], u: np.ndarray, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Body frame (u: patient's left, v: posterior; mm about the body centre) -> image (x readout, y phase encode)."""
  u = -u if p['flip_lr'] else u
  v = -v if p['flip_ap'] else v
  c, s = math.cos(p['rotation']), math.sin(p['rotation'])
  return c * u - s * v, s * u + c * v


def _image_to_body(p: Dict[str, Any], x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  x = x - p['centre'][0]
  y = y - p['centre'][1]
  c, s = math.cos(p['rotation']), math.sin(p['rotation'])
  u, v = c * x + s * y, -s * x + c * y
  return (-u if p['flip_lr'] else u), (-v if p['flip_ap'] else v)


def _draw_slices(seed: int, subject: int, p: Dict[str, Any], num_slices: int) -> List[Dict[str, Any]]:
  """Slice positions s (0 = base, 1 = apex), 10 mm apart, and each slice's own random details."""
  span = (num_slices - 1) * _SLICE_SPACING_MM / p['lv_length_mm']
  placement = _rng(seed, subject, _STREAM_SLICE)
  start = placement.uniform(0.0, max(0.0, 0.85 - span)) if span < 0.85 else 0.0
  step = span / (num_slices - 1) if num_slices > 1 else 0.0
  slices = []
  for k in range(num_slices):
    rng = _rng(seed, subject, _STREAM_SLICE, k)
    slices.append({
        'position': float(min(start + k * step, 0.95)),
        'offset_mm': k * _SLICE_SPACING_MM,
        'num_ribs': int(rng.integers(6, 11)),
        'rib_angles': rng.uniform(0, 2 * np.pi, 10),
        'rib_size': rng.uniform(0.8, 1.2, 10),
        'vessels': rng.uniform(-1, 1, (24, 2)),
        'vessel_radius': rng.uniform(1.0, 3.5, 24),
        'vessel_intensity': rng.uniform(0.25, 0.6, 24),
        'liver_vessels': rng.uniform(-1, 1, (8, 2)),
        'liver_vessel_radius': rng.uniform(1.5, 4.5, 8),
        'texture_seed': int(rng.integers(2**31)),
        'phase_coefficients': np.concatenate([rng.uniform(-np.pi, np.pi, 1), rng.normal(0, 0.6, 2),
                                              rng.normal(0, 0.3, 3)]),
    })
  return slices


def _draw_coils(rng: np.random.Generator, p: Dict[str, Any], num_coils: int) -> Dict[str, np.ndarray]:
  """Loop coils of an anterior and a posterior array, in rows along the body axis (z), just outside the skin."""
  anterior = (num_coils + 1) // 2
  positions = []
  for count, side in ((anterior, -1.0), (num_coils - anterior, 1.0)):
    if count == 0:
      continue
    rows = 1 if count <= 4 else (2 if count <= 10 else 3)
    cols = math.ceil(count / rows)
    row_spacing = rng.uniform(60.0, 85.0)
    half_depth = p['half_depth'] * (p['posterior_flatten'] if side > 0 else 1.0)
    for k in range(count):
      row, col = divmod(k, cols)
      along = ((col + 0.5) / cols * 2 - 1) * 0.85 + rng.normal(0, 0.04)
      u = along * p['half_width']
      # On the body outline at this u, plus a stand-off (the table under the back, the coil housing in front).
      edge = half_depth * (1 - min(abs(along), 0.97)**p['body_exponent'])**(1 / p['body_exponent'])
      v = side * (edge + rng.uniform(20.0, 40.0))
      z = (row - (rows - 1) / 2) * row_spacing + rng.normal(0, 5.0)
      positions.append((u, v, z))
  return {
      'position': np.array(positions),
      'radius': rng.uniform(80.0, 120.0, num_coils),
      'phase': rng.uniform(-np.pi, np.pi, num_coils),
      'phase_gradient': rng.normal(0.0, 0.006, (num_coils, 2)),  # rad / mm
      'noise_scale': rng.uniform(0.8, 1.25, num_coils),
      'noise_mixing': rng.normal(0.0, 0.08, (num_coils, num_coils, 2)),
  }


def _grid(subject: Subject, rows: int, supersample: int) -> Tuple[np.ndarray, np.ndarray]:
  """Body-frame coordinates (u, v) in mm of a `[rows * ss, W * ss]` grid centred like the recon image.

  Sub-sample `k` of pixel `i` sits at `i + (k + 0.5) / ss - 0.5`, symmetric about the pixel centre, so box-averaging
  `ss x ss` blocks gives the partial-volume value of the pixel whose centre the labels sample.
  """
  cols = subject.recon_size[1]
  x = ((np.arange(rows * supersample) + 0.5) / supersample - 0.5 - rows // 2) * subject.pixel_mm
  y = ((np.arange(cols * supersample) + 0.5) / supersample - 0.5 - cols // 2) * subject.pixel_mm
  xx, yy = np.meshgrid(x, y, indexing='ij')
  return _image_to_body(subject.anatomy, xx, yy)


def _superellipse(u, v, half_u, half_v, exponent):
  return (np.abs(u) / half_u)**exponent + (np.abs(v) / half_v)**exponent


def _ellipse(u, v, centre, half_axes, angle=0.0):
  du, dv = u - centre[0], v - centre[1]
  c, s = math.cos(angle), math.sin(angle)
  return ((c * du + s * dv) / half_axes[0])**2 + ((-s * du + c * dv) / half_axes[1])**2 < 1


def _thorax(p: Dict[str, Any], sl: Dict[str, Any], u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Intensity of everything but the heart (it does not move over the cycle): float32 `[rows, cols]`."""
  a, b, e = p['half_width'], p['half_depth'], p['body_exponent']
  posterior = v > 0
  image = np.zeros(u.shape, np.float32)

  def inside(inset_sides, inset_front, inset_back):
    half_v = np.where(posterior, b * p['posterior_flatten'] - inset_back, b - inset_front)
    return _superellipse(u, v, a - inset_sides, half_v, e) <= 1

  image[inside(0, 0, 0)] = p['fat']
  image[inside(*p['fat_mm'])] = p['muscle']
  cavity = inside(*(p['fat_mm'] + p['muscle_mm']))
  image[cavity] = p['soft_tissue']
  cav_u, cav_front, cav_back = _cavity(p)

  # Ribs straddle the inner edge of the chest wall (not over the spine or sternum).
  for k in range(sl['num_ribs']):
    t = sl['rib_angles'][k]
    if abs(math.sin(t)) > 0.92:
      continue
    cu, cv = math.cos(t) * cav_u, math.sin(t) * (cav_back if math.sin(t) > 0 else cav_front)
    cu, cv = cu * 1.02, cv * 1.02
    size = sl['rib_size'][k]
    angle = math.atan2(cv, cu) + np.pi / 2
    image[_ellipse(u, v, (cu, cv), (9 * size, 5 * size), angle)] = p['cortex']
    image[_ellipse(u, v, (cu, cv), (7 * size, 3.2 * size), angle)] = p['marrow']

  # Lungs fill the cavity on both sides; the heart, spine and liver are drawn over them.
  lungs = (_ellipse(u, v, (-0.5 * cav_u, 0.08 * cav_back), (0.47 * cav_u, 0.95 * cav_front))
           | _ellipse(u, v, (0.52 * cav_u, 0.1 * cav_back), (0.45 * cav_u, 0.92 * cav_front))) & cavity
  image[lungs] = p['lung']
  for (vu, vv), radius, intensity in zip(sl['vessels'], sl['vessel_radius'], sl['vessel_intensity']):
    spot = _ellipse(u, v, (vu * cav_u, vv * cav_front), (radius, radius)) & lungs
    image[spot] = intensity * p['blood']

  # Liver under the right hemidiaphragm, against the right chest wall: more of it toward the apex, whose slices lie
  # lower; hepatic vessels show as bright dots.
  scale = p['liver_scale'] * (0.45 + 0.8 * sl['position'])
  centre = (-0.8 * cav_u, 0.3 * cav_back)
  half = (0.7 * cav_u * scale, 0.95 * cav_front * scale)
  liver = _ellipse(u, v, centre, half, -0.4) & cavity
  image[liver] = p['liver']
  for (vu, vv), radius in zip(sl['liver_vessels'], sl['liver_vessel_radius']):
    spot = _ellipse(u, v, (centre[0] + 0.6 * vu * half[0], centre[1] + 0.6 * vv * half[1]), (radius, radius)) & liver
    image[spot] = 0.7 * p['blood']
  # Stomach under the left hemidiaphragm in the lower slices: fluid, a muscular wall, an air cap in front.
  if sl['position'] > 0.4:
    size = min(1.0, (sl['position'] - 0.4) / 0.35) * p['stomach_scale']
    centre = (0.62 * cav_u, 0.3 * cav_back)
    half = (0.3 * cav_u * size + 3.0, 0.4 * cav_front * size + 3.0)
    image[_ellipse(u, v, centre, (half[0] + 3.0, half[1] + 3.0)) & cavity] = p['muscle']
    stomach = _ellipse(u, v, centre, half) & cavity
    image[stomach] = p['stomach']
    image[stomach & (v < centre[1] - 0.55 * half[1])] = p['lung']

  # Spine: vertebral body (marrow in a dark cortical ring), canal with CSF and cord, posterior arch.
  r_vb = p['vertebra_radius']
  vb = (0.0, cav_back - 0.5 * r_vb)
  image[_ellipse(u, v, (vb[0], vb[1] - 4), (r_vb + 10, r_vb + 8))] = p['muscle']
  image[_ellipse(u, v, vb, (r_vb, r_vb * 0.92))] = p['cortex']
  image[_ellipse(u, v, vb, (r_vb - 2.5, r_vb * 0.92 - 2.5))] = p['marrow']
  canal = (0.0, vb[1] + r_vb + 8.0)
  image[_ellipse(u, v, canal, (13.0, 12.0))] = p['cortex']
  image[_ellipse(u, v, canal, (11.0, 10.0))] = p['marrow'] * 0.8
  image[_ellipse(u, v, canal, (8.0, 7.0))] = p['csf']
  image[_ellipse(u, v, canal, (4.5, 4.0))] = p['cord']
  # Descending aorta: left-anterior of the vertebral body.
  r_ao = p['aorta_radius']
  image[_ellipse(u, v, (r_vb + r_ao + 2.0, vb[1] - 0.6 * r_vb), (r_ao + 1.5, r_ao + 1.5))] = p['muscle']
  image[_ellipse(u, v, (r_vb + r_ao + 2.0, vb[1] - 0.6 * r_vb), (r_ao, r_ao))] = p['aorta']
  # Sternum at the anterior midline.
  sternum = (0.0, -cav_front - 4.0)
  image[_ellipse(u, v, sternum, (13.0, 6.5))] = p['cortex']
  image[_ellipse(u, v, sternum, (11.0, 4.5))] = p['marrow']
  return image


def contraction(frame: int, num_frames: int) -> float:
  """How far frame `frame` is into systole: 0 at end-diastole (frame 0), 1 at end-systole (frame num_frames / 2)."""
  return 0.5 * (1.0 - math.cos(2.0 * math.pi * frame / num_frames))


def _heart(p: Dict[str, Any], sl: Dict[str, Any], c: float, u: np.ndarray, v: np.ndarray,
           cavity_u: float, cavity_front: float, pixel_mm: float) -> Dict[str, np.ndarray]:
  """Boolean regions of the heart at contraction `c` in [0, 1].

  The LV is a polar shape about its centre: blood pool `rho < r_endo(phi)`, myocardium up to `r_epi(phi)`. Systole
  shrinks `r_endo` and keeps the myocardial area, so the wall thickens. The RV is an ellipse on the septal side minus
  the LV, i.e. a crescent wrapped around the septum. The wall is at least 1.25 pixels thick, so the labels sampled
  at pixel centres always close the myocardial ring around the pool (it matters only for coarse matrices).
  """
  s = sl['position']
  cu = p['lv_u'] * cavity_u + p['apex_shift'][0] * s + p['beat_shift'][0] * c
  cv = p['lv_v'] * cavity_front + p['apex_shift'][1] * s + p['beat_shift'][1] * c
  # Heart frame: phi = 0 points from the LV centre to the RV (toward the patient's right and anterior).
  rv_dir = math.pi + p['rv_angle']
  du, dv = u - cu, v - cv
  rho = np.hypot(du, dv / p['lv_ecc'])
  phi = np.arctan2(dv, du) - rv_dir
  base_to_apex = 1.0 - 0.5 * s**1.3
  r_endo_ed0 = p['lv_radius'] * base_to_apex
  wall0 = p['lv_wall'] * (1.0 - 0.25 * s)
  shape = (1.0 + p['lv_shape'][0] * np.cos(2 * phi + p['lv_shape_phase'][0])
           + p['lv_shape'][1] * np.cos(3 * phi + p['lv_shape_phase'][1]))
  r_endo_ed = r_endo_ed0 * shape
  wall = np.maximum(wall0 * (1.0 + p['wall_mod'] * np.cos(phi - p['lv_shape_phase'][2])), 1.25 * pixel_mm)
  wall0 = max(wall0, 1.25 * pixel_mm)
  r_epi_ed = r_endo_ed + wall
  r_endo = r_endo_ed * (1.0 - p['lv_contraction'] * c)
  r_epi = np.sqrt(r_endo**2 + r_epi_ed**2 - r_endo_ed**2)
  pool = rho < r_endo
  lv = rho < r_epi
  myocardium = lv & ~pool

  mean_endo = r_endo_ed0 * (1.0 - p['lv_contraction'] * c)
  mean_epi = math.sqrt(mean_endo**2 + (r_endo_ed0 + wall0)**2 - r_endo_ed0**2)
  thickness = p['rv_thickness'] * (1.0 - 0.55 * s) * (1.0 - p['rv_contraction'] * c)
  # An ellipse centred between the LV centre and the septum, reaching `thickness` past the LV: minus the LV it is
  # a crescent whose horns end where the ellipse crosses the epicardium.
  rv_centre = p['rv_offset'] * mean_epi
  rv_half = mean_epi + thickness - rv_centre
  rv_wrap = mean_epi * p['rv_wrap']
  along, across = rho * np.cos(phi) - rv_centre, rho * np.sin(phi)

  def rv_ellipse(grow):
    return (along / (rv_half + grow))**2 + (across / (rv_wrap + grow))**2 < 1

  # The horns: the largest |phi| at which the RV ellipse reaches past the (mean) epicardium. The RV wall and the
  # fat along it stop there, so that the grown ellipse does not draw a thin ring round the rest of the LV.
  angles = np.linspace(0.0, np.pi, 181)
  reach = ((mean_epi * np.cos(angles) - rv_centre) / rv_half)**2 + (mean_epi * np.sin(angles) / rv_wrap)**2 < 1
  horn = float(angles[reach].max()) if reach.any() else 0.0
  within = np.abs(np.angle(np.exp(1j * phi))) < horn + p['rv_wall'] / mean_epi
  rv_pool = rv_ellipse(0.0) & ~lv
  rv_wall = rv_ellipse(p['rv_wall']) & ~rv_pool & ~lv & within
  # Epicardial fat: a thin layer, thickest in the grooves where the RV meets the LV.
  groove = np.exp(-((np.abs(np.angle(np.exp(1j * phi))) - horn) / 0.35)**2)
  fat_mm = p['pericardial_fat_mm'] * (0.25 + groove)
  fat = (((rho < r_epi + fat_mm) | (rv_ellipse(p['rv_wall'] + fat_mm) & within)) & ~lv & ~rv_pool & ~rv_wall)

  papillary = np.zeros(u.shape, bool)
  if s < 0.8:
    r_pap = max(0.14 * mean_endo, 1.5)
    for angle in p['papillary_angles']:
      pu = cu + 0.62 * mean_endo * math.cos(angle + rv_dir)
      pv = cv + 0.62 * mean_endo * math.sin(angle + rv_dir) * p['lv_ecc']
      papillary |= _ellipse(u, v, (pu, pv), (r_pap, r_pap))
    papillary &= pool
  return {'lv_pool': pool, 'lv_myocardium': myocardium, 'rv_pool': rv_pool, 'rv_wall': rv_wall, 'fat': fat,
          'papillary': papillary}


def _cavity(p: Dict[str, Any]) -> Tuple[float, float, float]:
  """Half sizes (mm) of the thoracic cavity inside the body wall: (left-right, to the front, to the back)."""
  sides, front, back = p['fat_mm'] + p['muscle_mm']
  return p['half_width'] - sides, p['half_depth'] - front, p['half_depth'] * p['posterior_flatten'] - back


def _smooth_field(rng: np.random.Generator, shape: Tuple[int, int], correlation_px: float) -> np.ndarray:
  """Unit-variance Gaussian random field with a Gaussian correlation length (pixels): float32 `shape`."""
  white = rng.standard_normal(shape)
  fx = np.fft.fftfreq(shape[0])[:, None]
  fy = np.fft.fftfreq(shape[1])[None, :]
  field = np.fft.ifft2(np.fft.fft2(white) * np.exp(-2 * (np.pi * correlation_px)**2 * (fx**2 + fy**2))).real
  return (field / (field.std() + 1e-12)).astype(np.float32)


def subject_anatomy(subject: Subject) -> Tuple[np.ndarray, np.ndarray]:
  """The noiseless single-coil image and the label map of every slice and frame, at recon resolution.

  The image is the partial-volume (3x supersampled) anatomy times a smooth tissue texture and a smooth background
  phase; the labels are the same geometry sampled at the pixel centres (hard masks), so they agree with the image.

  Returns:
    image: complex64 `[num_slices, num_frames, H, W]` (blood ~ 1), H = readout, W = phase encode.
    labels: uint8 `[num_slices, num_frames, H, W]` with values `BACKGROUND`..`RV_BLOOD_POOL`.
  """
  p = subject.anatomy
  h, w = subject.recon_size
  ss = _SUPERSAMPLE
  fine_u, fine_v = _grid(subject, h, ss)
  u, v = _grid(subject, h, 1)
  cavity_u, cavity_front, _ = _cavity(p)
  # Background-phase coordinates: pixels over the readout half-FOV, so the polynomial is about 1 at the edge.
  x = (np.arange(h) - h // 2)[:, None] / (h / 2)
  y = (np.arange(w) - w // 2)[None, :] / (h / 2)
  image = np.empty((subject.num_slices, subject.num_frames, h, w), np.complex64)
  labels = np.zeros((subject.num_slices, subject.num_frames, h, w), np.uint8)
  for k, sl in enumerate(subject.slices):
    thorax = _thorax(p, sl, fine_u, fine_v)
    rng = np.random.default_rng(sl['texture_seed'])
    texture = np.exp(0.07 * _smooth_field(rng, (h, w), 20.0 / subject.pixel_mm)
                     + 0.05 * _smooth_field(rng, (h, w), max(3.0 / subject.pixel_mm, 0.5)))
    q = sl['phase_coefficients']
    phase = np.exp(1j * (q[0] + q[1] * x + q[2] * y + q[3] * x * x + q[4] * x * y + q[5] * y * y))
    for f in range(subject.num_frames):
      c = contraction(f, subject.num_frames)
      fine = thorax.copy()
      heart = _heart(p, sl, c, fine_u, fine_v, cavity_u, cavity_front, subject.pixel_mm)
      fine[heart['fat']] = p['fat']
      fine[heart['rv_wall']] = p['myocardium']
      fine[heart['rv_pool']] = p['blood']
      fine[heart['lv_myocardium']] = p['myocardium']
      fine[heart['lv_pool']] = p['blood']
      fine[heart['papillary']] = p['myocardium']
      magnitude = fine.reshape(h, ss, w, ss).mean(axis=(1, 3)) * texture
      image[k, f] = (magnitude * phase).astype(np.complex64)
      hard = _heart(p, sl, c, u, v, cavity_u, cavity_front, subject.pixel_mm)
      labels[k, f][hard['rv_pool']] = RV_BLOOD_POOL
      labels[k, f][hard['lv_myocardium']] = LV_MYOCARDIUM
      labels[k, f][hard['lv_pool']] = LV_BLOOD_POOL
  return image, labels


def coil_sensitivities(subject: Subject) -> np.ndarray:
  """Receive sensitivities on the oversampled grid, normalised so their root-sum-of-squares is 1 at the LV centre.

  Each coil is a loop of radius R at (u, v, z) (z out of the slice plane) with the on-axis loop profile
  `(R^2 / (R^2 + d^2))^(3/2)` of the 3-D distance d and a constant plus linear phase.

  Returns:
    complex64 `[num_coils, 2H, W]`; rows `H // 2 : H // 2 + H` cover the recon image.
  """
  rows = subject.encoded_size[0]
  u, v = _grid(subject, rows, 1)
  cavity_u, cavity_front, _ = _cavity(subject.anatomy)
  lv = (subject.anatomy['lv_u'] * cavity_u, subject.anatomy['lv_v'] * cavity_front)

  def profile(uu, vv):
    out = []
    for (cu, cv, cz), radius, phase0, grad in zip(subject.coils['position'], subject.coils['radius'],
                                                  subject.coils['phase'], subject.coils['phase_gradient']):
      distance2 = (uu - cu)**2 + (vv - cv)**2 + cz**2
      magnitude = (radius**2 / (radius**2 + distance2))**1.5
      out.append(magnitude * np.exp(1j * (phase0 + grad[0] * (uu - cu) + grad[1] * (vv - cv))))
    return np.stack(out)

  norm = np.sqrt(np.sum(np.abs(profile(np.array(lv[0]), np.array(lv[1])))**2))
  return (profile(u, v) / norm).astype(np.complex64)


def noise_covariance(subject: Subject) -> np.ndarray:
  """Receiver noise covariance (per complex sample, image and k-space alike): complex128 `[C, C]`.

  Neighbouring coils couple a little (off-diagonals ~0.1) and gains differ by up to ~25%; the mean per-coil noise
  variance is about `1 / snr^2`, so with sensitivities normalised at the heart the combined blood SNR is ~`snr`.
  """
  if math.isinf(subject.snr):
    return np.zeros((subject.num_coils, subject.num_coils), np.complex128)
  mixing = subject.coils['noise_mixing']
  b = np.eye(subject.num_coils) + mixing[..., 0] + 1j * mixing[..., 1]
  psi = b @ b.conj().T
  scale = subject.coils['noise_scale'] / np.sqrt(np.real(np.diag(psi)))
  return psi * np.outer(scale, scale) / subject.snr**2


def _fft2c(x: np.ndarray) -> np.ndarray:
  """Centred orthonormal 2-D FFT over the last two axes, as `segrecon_jax.mri.fft2c`, in single precision."""
  x = np.fft.ifftshift(x, axes=(-2, -1))
  return np.fft.fftshift(scipy.fft.fft2(x, axes=(-2, -1), norm='ortho'), axes=(-2, -1))


def _ifft2c(k: np.ndarray) -> np.ndarray:
  k = np.fft.ifftshift(k, axes=(-2, -1))
  return np.fft.fftshift(scipy.fft.ifft2(k, axes=(-2, -1), norm='ortho'), axes=(-2, -1))


def _complex_noise(rng: np.random.Generator, covariance: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
  """Complex Gaussian noise `[..., C, N]` with `E[n n^H] = covariance` over the C axis."""
  white = rng.standard_normal((2,) + shape, dtype=np.float32)
  white = (white[0] + 1j * white[1]).astype(np.complex64) * np.float32(math.sqrt(0.5))
  chol = np.linalg.cholesky(covariance).astype(np.complex64)
  return np.matmul(chol, white)


def subject_kspace(subject: Subject, anatomy: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Multi-coil k-space of every slice and frame, and one noise-scan line.

  Args:
    subject: the `Subject`.
    anatomy: `subject_anatomy(subject)[0]` if already computed.

  Returns:
    kspace: complex64 `[num_slices, num_frames, C, 2H, W]`, centred, the readout 2x oversampled.
    noise_scan: complex64 `[C, 2H]`, noise only (zeros when `snr` is infinite).
  """
  if anatomy is None:
    anatomy = subject_anatomy(subject)[0]
  h, w = subject.recon_size
  sensitivities = coil_sensitivities(subject)
  covariance = noise_covariance(subject)
  noisy = not math.isinf(subject.snr)
  kspace = np.empty((subject.num_slices, subject.num_frames, subject.num_coils, 2 * h, w), np.complex64)
  padded = np.zeros((subject.num_frames, 1, 2 * h, w), np.complex64)
  for k in range(subject.num_slices):
    padded[:, 0, h // 2:h // 2 + h] = anatomy[k]
    kspace[k] = _fft2c(padded * sensitivities)
    if noisy:
      rng = _rng(subject.seed, subject.subject, _STREAM_NOISE, k)
      noise = _complex_noise(rng, covariance, (subject.num_frames, subject.num_coils, 2 * h * w))
      kspace[k] += noise.reshape(kspace[k].shape)
  noise_scan = np.zeros((subject.num_coils, 2 * h), np.complex64)
  if noisy:
    rng = _rng(subject.seed, subject.subject, _STREAM_NOISE, subject.num_slices + 1000)
    noise_scan = _complex_noise(rng, covariance, (subject.num_coils, 2 * h))
  return kspace, noise_scan


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
                                                                          z=_SLICE_THICKNESS_MM)),
      reconSpace=xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=h, y=w, z=1),
                                       fieldOfView_mm=xsd.fieldOfViewMm(x=fov_x, y=fov_y, z=_SLICE_THICKNESS_MM)),
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
  rng = _rng(subject.seed, subject.subject, _STREAM_ANATOMY, 1)
  slice_dir = np.array([-0.55, 0.45, -0.7]) + rng.normal(0, 0.08, 3)
  slice_dir /= np.linalg.norm(slice_dir)
  read_dir = np.cross(slice_dir, [0.0, 0.0, 1.0])
  read_dir /= np.linalg.norm(read_dir)
  phase_dir = np.cross(slice_dir, read_dir)
  base = np.array([20.0, -40.0, 30.0]) + rng.normal(0, 10.0, 3)
  centres = np.array([base + sl['offset_mm'] * slice_dir for sl in subject.slices])
  return read_dir, phase_dir, slice_dir, centres


def _flag_bits(*flags: int) -> np.uint64:
  return np.uint64(sum(1 << (flag - 1) for flag in flags))


def _acquisition_rows(subject: Subject, kspace: np.ndarray, noise_scan: Optional[np.ndarray]) -> np.ndarray:
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
  flags[ky == 0] |= _flag_bits(ismrmrd.ACQ_FIRST_IN_SLICE, ismrmrd.ACQ_FIRST_IN_PHASE)
  flags[ky == num_ky - 1] |= _flag_bits(ismrmrd.ACQ_LAST_IN_SLICE, ismrmrd.ACQ_LAST_IN_PHASE)
  flags[-1] |= _flag_bits(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
  image['flags'] = flags

  # [slice, frame, coil, kx, ky] -> one (coil, kx) block per (slice, ky, frame), stored as interleaved float32.
  lines = np.ascontiguousarray(np.transpose(kspace, (0, 4, 1, 2, 3))).reshape(num_lines, num_coils * num_kx)
  lines = lines.view(np.float32)
  data, traj = rows['data'], rows['traj']
  empty = np.zeros(0, np.float32)
  if noise_scan is not None:
    head['flags'][0] = _flag_bits(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    head['position'][0] = centres[0]
    data[0] = np.ascontiguousarray(noise_scan, np.complex64).view(np.float32).ravel()
  for i in range(num_lines):
    data[offset + i] = lines[i]
  for i in range(len(rows)):
    traj[i] = empty
  return rows


def _labelled_mask(labelled_frames: Union[str, Sequence[int]], num_slices: int, num_frames: int) -> np.ndarray:
  """`labelled` uint8 `[num_slices, num_frames]` from 'all', 'ed_es' (frames 0 and num_frames // 2) or frame indices."""
  labelled = np.zeros((num_slices, num_frames), np.uint8)
  if isinstance(labelled_frames, str):
    if labelled_frames == 'all':
      labelled[:] = 1
    elif labelled_frames == 'ed_es':
      labelled[:, [0, num_frames // 2]] = 1
    else:
      raise ValueError(f"labelled_frames must be 'all', 'ed_es' or a sequence of frame indices, got "
                       f'{labelled_frames!r}')
    return labelled
  frames = list(labelled_frames)
  if not frames:
    raise ValueError('labelled_frames must name at least one frame')
  for f in frames:
    _check_int('labelled_frames entry', f, 0, num_frames - 1)
  labelled[:, frames] = 1
  return labelled


def _temporary_path(path: str) -> str:
  """A hidden name beside `path` that no `fs_*.h5` glob matches, so a half-written file never looks complete."""
  directory, name = os.path.split(path)
  return os.path.join(directory, f'.{name}.{os.getpid()}.tmp')


def write_subject(directory: str, subject: int, seed: int, *, recon_size: Sequence[int] = (128, 128),
                  num_coils: Optional[int] = None, num_slices: Optional[int] = None, num_frames: Optional[int] = None,
                  noise_scan: bool = True, labelled_frames: Union[str, Sequence[int]] = 'all',
                  snr: Optional[float] = None) -> Tuple[str, str]:
  """Writes one subject as `fs_{subject:04d}_phantom.h5` and `labels/fs_{subject:04d}_phantom.h5` under directory.

  Both files are written under temporary names and renamed when complete, the label file first, so a k-space file
  that exists always has its labels.

  Args:
    directory: output folder (created if missing).
    subject: subject number, 1..9999.
    seed: non-negative seed; the subject's randomness comes from `(seed, subject)`.
    recon_size: (readout H, phase-encode W) of the reconstructed image, both even; the file encodes `[2H, W]`.
    num_coils, num_slices, num_frames: drawn from the seed when None (see `DEFAULT_NUM_*`).
    noise_scan: write a leading `ACQ_IS_NOISE_MEASUREMENT` acquisition, as real OCMR files have.
    labelled_frames: 'all', 'ed_es' (frames 0 and num_frames // 2), or a sequence of frame indices labelled in
      every slice; the masks hold the labels of every frame regardless.
    snr: see `make_subject`; `math.inf` writes noiseless k-space.

  Returns:
    (kspace_path, label_path).
  """
  info = make_subject(seed, subject, recon_size=recon_size, num_coils=num_coils, num_slices=num_slices,
                      num_frames=num_frames, snr=snr)
  labelled = _labelled_mask(labelled_frames, info.num_slices, info.num_frames)
  stem = f'fs_{info.subject:04d}_phantom'
  kspace_path = os.path.join(directory, stem + '.h5')
  label_path = os.path.join(directory, 'labels', stem + '.h5')
  image, labels = subject_anatomy(info)
  kspace, noise = subject_kspace(info, image)
  rows = _acquisition_rows(info, kspace, noise if noise_scan else None)
  del kspace
  xml = xsd.ToXML(ismrmrd_header(info), 'utf-8')
  labels_format.write_label_file(label_path, labels, labelled, os.path.basename(kspace_path), ed_frame=0,
                                 es_frame=info.es_frame)
  # The label file is complete before the k-space file appears, so a k-space file always has its labels.
  # The layout `ismrmrd.Dataset` writes (xml as a 1-element vlen string, acquisitions as one resizable table),
  # written in one call: appending line by line through `ismrmrd.Dataset` costs ~2 ms per line.
  temporary = _temporary_path(kspace_path)
  try:
    with h5py.File(temporary, 'w') as f:
      group = f.create_group('dataset')
      group.create_dataset('xml', shape=(1,), dtype=h5py.special_dtype(vlen=bytes))[0] = xml
      group.create_dataset('data', data=rows, maxshape=(None,), chunks=(min(len(rows), 256),))
    os.replace(temporary, kspace_path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  return kspace_path, label_path


def write_dataset(directory: str, num_subjects: int, seed: int = 0, **kwargs) -> List[Tuple[str, str]]:
  """Writes subjects 1..num_subjects with `write_subject` (each subject's randomness keyed by `(seed, subject)`).

  Returns:
    One (kspace_path, label_path) per subject.
  """
  num_subjects = _check_int('num_subjects', num_subjects, 1, 9999)
  return [write_subject(directory, s, seed, **kwargs) for s in range(1, num_subjects + 1)]


def read_rss(path: str) -> np.ndarray:
  """Root-sum-of-squares magnitude images of a phantom (or any single-average OCMR) file, in plain numpy.

  Returns:
    float32 `[num_slices, num_frames, H, W]`, H = encoded readout / 2 (oversampling removed).
  """
  with h5py.File(path, 'r') as f:
    header = xsd.CreateFromDocument(f['dataset']['xml'][0])
    rows = f['dataset']['data'][()]
  enc = header.encoding[0]
  num_kx, num_ky = enc.encodedSpace.matrixSize.x, enc.encodingLimits.kspace_encoding_step_1.maximum + 1
  num_slices, num_frames = enc.encodingLimits.slice.maximum + 1, enc.encodingLimits.phase.maximum + 1
  num_coils = header.acquisitionSystemInformation.receiverChannels
  kspace = np.zeros((num_slices, num_frames, num_coils, num_kx, num_ky), np.complex64)
  noise_bit = _flag_bits(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
  for row in rows:
    if np.uint64(row['head']['flags']) & noise_bit:
      continue
    idx = row['head']['idx']
    line = row['data'].view(np.complex64).reshape(num_coils, num_kx)
    kspace[idx['slice'], idx['phase'], :, :, idx['kspace_encode_step_1']] = line
  images = _ifft2c(kspace)[..., num_kx // 4:num_kx // 4 + num_kx // 2, :]
  return np.sqrt(np.sum(np.abs(images)**2, axis=2)).astype(np.float32)


def save_preview(pairs: Sequence[Tuple[str, str]], path: str, max_subjects: int = 6) -> None:
  """PNG montage: per subject, the first and last slice at end-diastole and end-systole (RSS) and label overlays.

  Images are shown transposed (readout horizontal), the usual way to look at a chest.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  pairs = list(pairs)[:max_subjects]
  colours = np.array([[0, 0, 0, 0], [1.0, 0.2, 0.2, 0.45], [0.2, 1.0, 0.2, 0.45], [0.2, 0.4, 1.0, 0.45]])
  columns = 6
  fig, axes = plt.subplots(len(pairs), columns, figsize=(3.2 * columns, 2.9 * len(pairs)), squeeze=False)
  for row, (kspace_path, label_path) in enumerate(pairs):
    rss = read_rss(kspace_path)
    with h5py.File(label_path, 'r') as f:
      masks = f['masks'][()]
      es = int(f.attrs['es_frame'])
    scale = np.percentile(rss, 99.5)
    panels = []
    for s in (0, rss.shape[0] - 1):
      panels += [(s, 0, False), (s, es, False), (s, es if s else 0, True)]
    for col, (s, frame, overlay) in enumerate(panels):
      ax = axes[row, col]
      ax.imshow(rss[s, frame].T, cmap='gray', vmin=0, vmax=scale, interpolation='nearest')
      if overlay:
        ax.imshow(colours[masks[s, frame].T], interpolation='nearest')
      phase = 'ED' if frame == 0 else ('ES' if frame == es else f'frame {frame}')
      ax.set_title(f'{os.path.basename(kspace_path)[:7]} slice {s} {phase}{" labels" if overlay else ""}', fontsize=7)
      ax.axis('off')
  fig.suptitle('segrecon_jax phantom: RSS of the written k-space (readout horizontal); red LV pool, green LV '
               'myocardium, blue RV pool', fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out_dir', required=True, help='Folder for fs_*_phantom.h5 and labels/.')
  parser.add_argument('--num_subjects', type=int, default=4)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--recon_size', default='128,128', help='Readout H, phase-encode W of the recon matrix.')
  parser.add_argument('--preview', default='', help='Write a PNG montage here.')
  args = parser.parse_args(argv)
  recon_size = tuple(int(n) for n in args.recon_size.split(','))
  pairs = write_dataset(args.out_dir, args.num_subjects, seed=args.seed, recon_size=recon_size)
  for kspace_path, _ in pairs:
    print(kspace_path)
  if args.preview:
    save_preview(pairs, args.preview)
    print(args.preview)


if __name__ == '__main__':
  main()
