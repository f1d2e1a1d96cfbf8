"""Phantom anatomy: a subject's random body, thorax and contracting heart, drawn as images and label maps.

Conventions (shared by the other `phantom_*` modules):
  image       `[H, W]`: H = readout (x, the patient's left-right), W = phase encode (y, anterior-posterior). Pixel
              `(i, j)` sits at `((i - H // 2) * d, (j - W // 2) * d)` mm with square pixels of side d.
  randomness  everything about subject `s` comes from `np.random.SeedSequence(seed, spawn_key=(s, ...))`
              (`subject_rng`), one stream per purpose (`STREAM_*`).
"""

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from segrecon_jax.data import labels as labels_format

CLASSES = labels_format.CLASS_NAMES
BACKGROUND, LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL = range(len(CLASSES))
# Defaults drawn from the seed when an argument is None: (low, high), both included.
DEFAULT_NUM_COILS = (8, 30)
DEFAULT_NUM_SLICES = (1, 3)
DEFAULT_NUM_FRAMES = (3, 6)
DEFAULT_SNR = (30.0, 60.0)  # blood-pool SNR of the sensitivity-combined image near the heart.

_SUPERSAMPLE = 3  # shapes are drawn at 3x resolution and box-averaged: partial-volume edges, not binary shapes
SLICE_THICKNESS_MM = 8.0
SLICE_SPACING_MM = 10.0
STREAM_SIZES, STREAM_ANATOMY, STREAM_SLICE, STREAM_COILS, STREAM_NOISE = range(5)


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


def subject_rng(seed: int, subject: int, *stream: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(subject,) + tuple(stream)))


def check_int(name: str, value: Any, low: int, high: Optional[int] = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name} must be an integer, got {value!r}')
  if value < low or (high is not None and value > high):
    bound = f'>= {low}' if high is None else f'in [{low}, {high}]'
    raise ValueError(f'{name} must be {bound}, got {value}')
  return int(value)


def check_recon_size(recon_size: Sequence[int]) -> Tuple[int, int]:
  try:
    size = tuple(recon_size)
  except TypeError:
    raise ValueError(f'recon_size must be (readout H, phase-encode W), got {recon_size!r}') from None
  if len(size) != 2:
    raise ValueError(f'recon_size must be (readout H, phase-encode W), got {recon_size!r}')
  for name, n in zip(('recon_size[0] (readout)', 'recon_size[1] (phase encode)'), size):
    check_int(name, n, 8, 2048)
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
  seed = check_int('seed', seed, 0)
  subject = check_int('subject', subject, 1, 9999)
  recon_size = check_recon_size(recon_size)
  sizes = subject_rng(seed, subject, STREAM_SIZES)
  drawn = {name: int(sizes.integers(low, high + 1)) for name, (low, high) in
           (('num_coils', DEFAULT_NUM_COILS), ('num_slices', DEFAULT_NUM_SLICES), ('num_frames', DEFAULT_NUM_FRAMES))}
  drawn_snr = float(sizes.uniform(*DEFAULT_SNR))
  num_coils = drawn['num_coils'] if num_coils is None else check_int('num_coils', num_coils, 1, 128)
  num_slices = drawn['num_slices'] if num_slices is None else check_int('num_slices', num_slices, 1, 64)
  num_frames = drawn['num_frames'] if num_frames is None else check_int('num_frames', num_frames, 1, 256)
  if snr is None:
    snr = drawn_snr
  elif not (isinstance(snr, (int, float, np.floating)) and snr > 0):
    raise ValueError(f'snr must be a positive number (math.inf for noiseless data) or None, got {snr!r}')
  anatomy = _draw_anatomy(subject_rng(seed, subject, STREAM_ANATOMY))
  pixel_mm, centre = _field_of_view(anatomy, recon_size)
  anatomy['centre'] = centre
  slices = _draw_slices(seed, subject, anatomy, num_slices)
  coils = _draw_coils(subject_rng(seed, subject, STREAM_COILS), anatomy, num_coils)
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
  span = (num_slices - 1) * SLICE_SPACING_MM / p['lv_length_mm']
  placement = subject_rng(seed, subject, STREAM_SLICE)
  start = placement.uniform(0.0, max(0.0, 0.85 - span)) if span < 0.85 else 0.0
  step = span / (num_slices - 1) if num_slices > 1 else 0.0
  slices = []
  for k in range(num_slices):
    rng = subject_rng(seed, subject, STREAM_SLICE, k)
    slices.append({
        'position': float(min(start + k * step, 0.95)),
        'offset_mm': k * SLICE_SPACING_MM,
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


def body_grid(subject: Subject, rows: int, supersample: int) -> Tuple[np.ndarray, np.ndarray]:
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
  cav_u, cav_front, cav_back = lv_cavity(p)

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


def lv_cavity(p: Dict[str, Any]) -> Tuple[float, float, float]:
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
  fine_u, fine_v = body_grid(subject, h, ss)
  u, v = body_grid(subject, h, 1)
  cavity_u, cavity_front, _ = lv_cavity(p)
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

