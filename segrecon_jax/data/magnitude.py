"""Labelled magnitude cine folders (ACDC, M&Ms, Sunnybrook-style; NIfTI or HDF5) -> simulated single-coil slices.

These datasets ship magnitude images and label maps, not k-space. Each magnitude slice gets a smooth synthetic
phase (`synthetic_phase`, seeded by `phase_seed` and the example's key), so the served complex image `x` stands
for single-coil k-space `fft2c(x)`: the undersampling in the step is real, the acquisition is simulated.

Folder layout (searched recursively, sorted; hidden files skipped):
  NIfTI   `<stem>.nii.gz` (or `.nii`) with its labels in `<stem>_gt.nii.gz` (or `_gt.nii`) beside it, as ACDC
          (`patient001/patient001_frame01.nii.gz` + `patient001_frame01_gt.nii.gz`) and M&Ms
          (`A0S9V9/A0S9V9_sa.nii.gz` + `A0S9V9_sa_gt.nii.gz`) ship them. Voxel axes `[x, y]`, `[x, y, z]` or
          `[x, y, z, t]`: served images are `[H, W] = [x, y]` in voxel order (no reorientation, the same for image
          and labels), slices along z, frames along t. Image files without a `_gt` partner are skipped.
  HDF5    `<stem>.h5` with datasets `image` and `label` of one shape, `[H, W]`, `[slices, H, W]` (one cardiac
          phase, as an ACDC `_frameYY` volume) or `[slices, frames, H, W]`, and optionally `labelled` uint8
          `[slices, frames]`.
Subject (the unit of the train/test split): the file name up to its first `_` (`patient001_frame01` ->
`patient001`, `A0S9V9_sa` -> `A0S9V9`), so every frame and file of a patient lands in one split.
Labelled frames: every slice of a file without a time axis, also one whose label map is all background (a slice
past the apex or base, with no heart in it); in a 4-D file, the frames whose label volume is not all background
(M&Ms labels only end-diastole and end-systole); `labelled` when an HDF5 file gives it.
Served `slice` and `frame`: the slice index, and the frame index along t (from 0). A file without a time axis
holds one cardiac phase: its `frame` is the number in an ACDC-style name less one (`patient001_frame12` -> 11, the
index of that phase in ACDC's `_4d.nii.gz`), else 0; so the ED and ES volumes of a patient get different example
ids (`subject/slice/frame`) and evaluation masks. The 2-D slice layout (`patient001_frame01_slice_3.h5`, one slice
of one phase per file, as the SSL4MIS preprocessing ships ACDC) serves the `K` of `_slice_K` as it is named as the
slice, with the frame of its `_frameYY`; `distinct_examples` refuses a folder where two files give one id.
Field of view: `image_size` alone centre-crops or zero-pads each image to `(H, W)` source pixels
(`ocmr.crop_or_pad`); a `field_of_view` F serves the F x F source pixels around the image centre (zero outside the
image) resampled to `(H, W)` (`resample_view`: antialiased linear for the magnitude, the same weights on one-hot
label maps then argmax), so a small `image_size` keeps the whole heart instead of its centre.
Label values go through `labels.remap(label, label_mapping)`: value `v` of the file becomes ours `label_mapping[v]`
(ACDC: 1 RV, 2 myocardium, 3 LV cavity -> `(0, 3, 2, 1)`; M&Ms: 1 LV, 2 myocardium, 3 RV -> `(0, 1, 2, 3)`).

A slice or frame whose magnitude is all zero is refused: it holds nothing to reconstruct, and PSNR and SSIM,
relative to the image's peak, are undefined on it.

Every problem with an input file raises `MagnitudeFormatError` (a `ValueError`) or `FileNotFoundError`, naming the
file and what was expected.
"""

import os
import re
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from segrecon_jax.data import labels as labels_format
from segrecon_jax.data import ocmr

NIFTI_SUFFIXES = ('.nii.gz', '.nii')
LABEL_SUFFIX = '_gt'
ACDC_LABEL_MAPPING = (0, labels_format.RV_POOL, labels_format.MYOCARDIUM, labels_format.LV_POOL)
# The affines of an image and its labels may differ by rounding in the writer, not by a voxel.
_AFFINE_TOLERANCE_MM = 1e-3
# ACDC names each single-phase volume after its 1-based frame in the cine: `patient001_frame12`; its 2-D slice layout
# adds the slice: `patient001_frame12_slice_3`.
_FRAME_IN_NAME = re.compile(r'_frame(\d+)(?:_slice_\d+)?$')
_SLICE_IN_NAME = re.compile(r'_slice_(\d+)$')


class MagnitudeFormatError(ValueError):
  """An input file is not a usable magnitude / label file; the message names the file and what was expected."""


def _strip_suffix(name: str) -> Tuple[str, str]:
  for suffix in NIFTI_SUFFIXES + ('.h5',):
    if name.endswith(suffix):
      return name[:-len(suffix)], suffix
  return name, ''


def subject_id(path: str) -> str:
  """The subject key of a file: its name up to the first `_` (`patient001_frame01.nii.gz` -> `patient001`)."""
  stem, _ = _strip_suffix(os.path.basename(path))
  return stem.split('_')[0]


def cine_frame(path: str) -> int:
  """The frame (from 0) that a file without a time axis holds: `<subject>_frameYY` -> YY - 1, else 0."""
  match = _FRAME_IN_NAME.search(_strip_suffix(os.path.basename(path))[0])
  return max(int(match.group(1)) - 1, 0) if match else 0


def named_slice(path: str) -> Optional[int]:
  """The slice a one-slice file names: `<stem>_slice_K` -> K (as named), else None."""
  match = _SLICE_IN_NAME.search(_strip_suffix(os.path.basename(path))[0])
  return int(match.group(1)) if match else None


def is_image_name(name: str) -> bool:
  """A NIfTI or HDF5 file name that is not a `_gt` label file (nor hidden)."""
  stem, suffix = _strip_suffix(name)
  return bool(suffix) and not name.startswith('.') and not (suffix != '.h5' and stem.endswith(LABEL_SUFFIX))


def label_partner(image_path: str) -> Optional[str]:
  """The label file of an image: the HDF5 file itself when it has `label`, `<stem>_gt.nii(.gz)` beside a NIfTI
  image; None when there is none."""
  if image_path.endswith('.h5'):
    with ocmr.open_h5(image_path, 'HDF5 image/label') as f:
      return image_path if 'label' in f else None
  stem, _ = _strip_suffix(image_path)
  return next((stem + LABEL_SUFFIX + s for s in NIFTI_SUFFIXES if os.path.isfile(stem + LABEL_SUFFIX + s)), None)


def image_geometry(image_path: str) -> Tuple[Tuple[int, ...], Optional[np.ndarray]]:
  """The array shape of an image file (NIfTI voxel axes or HDF5 `image`) and its affine (NIfTI; None for HDF5),
  read from the header."""
  if image_path.endswith('.h5'):
    with ocmr.open_h5(image_path, 'HDF5 image/label') as f:
      if 'image' not in f:
        raise MagnitudeFormatError(f'{image_path}: expected an HDF5 dataset `image`, found {sorted(f.keys())}')
      return tuple(f['image'].shape), None
  import nibabel as nib  # pylint: disable=g-import-not-at-top  (only NIfTI users need it)
  if not os.path.isfile(image_path):
    raise FileNotFoundError(f'{image_path}: no such image file')
  try:
    image = nib.load(image_path)
  except Exception as e:  # nibabel raises several types for truncated or foreign files
    raise MagnitudeFormatError(f'{image_path}: expected a NIfTI image file, but it cannot be read: {e}') from e
  return tuple(int(n) for n in image.shape), np.asarray(image.affine, np.float64)


def find_pairs(directory: str) -> List[Tuple[str, str]]:
  """`(image path, label path)` of every NIfTI pair and HDF5 file under `directory`, sorted by path.

  An HDF5 file is its own label file (the pair is `(path, path)`).
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'{directory}: no such folder of magnitude cine files')
  pairs = []
  for root, dirs, names in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    present = set(names)
    for name in sorted(names):
      if name.startswith('.'):
        continue
      stem, suffix = _strip_suffix(name)
      if suffix == '.h5':
        pairs.append((os.path.join(root, name), os.path.join(root, name)))
      elif suffix and not stem.endswith(LABEL_SUFFIX):
        partner = next((stem + LABEL_SUFFIX + s for s in NIFTI_SUFFIXES if stem + LABEL_SUFFIX + s in present), None)
        if partner is not None:
          pairs.append((os.path.join(root, name), os.path.join(root, partner)))
  return sorted(pairs)


def _load_nifti(path: str, what: str):
  import nibabel as nib  # pylint: disable=g-import-not-at-top  (only NIfTI users need it)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such {what} file')
  try:
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
  except Exception as e:  # nibabel raises several types for truncated or foreign files
    raise MagnitudeFormatError(f'{path}: expected a NIfTI {what} file, but it cannot be read (truncated, corrupt or '
                               f'not NIfTI): {e}') from e
  return data, np.asarray(image.affine, np.float64)


def _to_slices_frames(array: np.ndarray, path: str, voxel_order: bool) -> np.ndarray:
  """`[x, y(, z(, t))]` (NIfTI) or `[(slices, (frames,)) H, W]` (HDF5) -> `[slices, frames, H, W]`."""
  if not 2 <= array.ndim <= 4:
    raise MagnitudeFormatError(f'{path}: expected a 2-D, 3-D or 4-D image (in-plane, slices, frames), got shape '
                               f'{array.shape}')
  if voxel_order:
    array = array.reshape(array.shape + (1,) * (4 - array.ndim))
    return np.transpose(array, (2, 3, 0, 1))
  if array.ndim == 3:  # [slices, H, W]: one frame of each slice
    return array[:, None]
  return array.reshape((1,) * (4 - array.ndim) + array.shape)


def _check_no_empty_slice(magnitude: np.ndarray, image_path: str) -> None:
  """Raises `MagnitudeFormatError` naming the first all-zero (slice, frame) of `[slices, frames, H, W]`: such an
  image holds nothing to reconstruct or segment, and PSNR and SSIM, relative to its peak, are undefined on it."""
  empty = ~np.any(magnitude > 0, axis=(2, 3))
  if not np.any(empty):
    return
  slice_index, frame = (int(i) for i in np.argwhere(empty)[0])
  frame += cine_frame(image_path) if magnitude.shape[1] == 1 else 0  # The served ids (`_first_indices`).
  slice_index += (named_slice(image_path) or 0) if magnitude.shape[0] == 1 else 0
  more = int(np.sum(empty)) - 1
  others = f' (and {more} more of its {empty.size} slices x frames)' if more else ''
  raise MagnitudeFormatError(f'{image_path}: slice {slice_index} frame {frame}{others} is all zero: an image with '
                             'nothing in it cannot be reconstructed, segmented or scored (PSNR and SSIM are relative '
                             'to its peak). Expected a magnitude image with signal in every slice and frame: remove '
                             'the file (with its labels) or its empty slices.')


def read_pair(image_path: str, label_path: Optional[str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads one image file and its label file (None: no labels, for prediction).

  Returns:
    `magnitude` float32 `[slices, frames, H, W]` (>= 0), `label` int64 `[slices, frames, H, W]` in the file's own
    convention (not remapped), `labelled` bool `[slices, frames]` (rule in the module docstring). `frames` is 1 for
    a file without a time axis (its frame number is `cine_frame`). Without a label file: all-zero labels, nothing
    labelled.
  """
  labelled = None
  if image_path.endswith('.h5'):
    with ocmr.open_h5(image_path, 'HDF5 image/label') as f:
      missing = [n for n in (('image', 'label') if label_path else ('image',)) if n not in f]
      if missing:
        raise MagnitudeFormatError(f'{image_path}: expected HDF5 datasets `image` and `label` of one shape '
                                   f'([H, W], [slices, H, W] or [slices, frames, H, W]); missing {missing}')
      try:
        image = f['image'][()]
        label = f['label'][()] if label_path else np.zeros(image.shape, np.uint8)
        labelled = f['labelled'][()] if 'labelled' in f and label_path else None
      except (OSError, ValueError) as e:
        raise MagnitudeFormatError(f'{image_path}: the datasets cannot be read (truncated or corrupt file): '
                                   f'{e}') from e
    voxel_order = False
  else:
    image, image_affine = _load_nifti(image_path, 'image')
    label, label_affine = _load_nifti(label_path, 'label') if label_path else (np.zeros(image.shape, np.uint8),
                                                                                image_affine)
    if image.shape == label.shape and not np.allclose(image_affine, label_affine, atol=_AFFINE_TOLERANCE_MM):
      raise MagnitudeFormatError(f'{label_path}: its affine\n{label_affine}\ndiffers from that of its image '
                                 f'{image_path}\n{image_affine}\nso the labels do not lie on the image voxels')
    voxel_order = True
  if image.shape != label.shape:
    raise MagnitudeFormatError(f'{label_path}: label shape {label.shape} does not match the image shape '
                               f'{image.shape} of {image_path}')
  if np.iscomplexobj(image) or not np.issubdtype(image.dtype, np.number):
    raise MagnitudeFormatError(f'{image_path}: expected real magnitude values, got dtype {image.dtype}')
  image = image.astype(np.float32)
  if not np.all(np.isfinite(image)):
    raise MagnitudeFormatError(f'{image_path}: the image holds NaN or Inf values; expected finite magnitudes')
  if image.size and image.min() < 0:
    raise MagnitudeFormatError(f'{image_path}: expected magnitude images (values >= 0), got a minimum of '
                               f'{image.min():.4g}')
  if np.issubdtype(label.dtype, np.floating):
    if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
      raise MagnitudeFormatError(f'{label_path}: expected integer label values, got non-integer floats')
  elif not np.issubdtype(label.dtype, np.integer):
    raise MagnitudeFormatError(f'{label_path}: expected integer label values, got dtype {label.dtype}')
  magnitude = _to_slices_frames(image, image_path, voxel_order)
  _check_no_empty_slice(magnitude, image_path)
  label = _to_slices_frames(label.astype(np.int64), label_path, voxel_order)
  if labelled is not None:
    labelled = np.asarray(labelled)
    if labelled.size != int(np.prod(magnitude.shape[:2])):
      raise MagnitudeFormatError(f'{image_path}: `labelled` shape {labelled.shape} does not match the '
                                 f'[slices, frames] {magnitude.shape[:2]} of its `image`')
    labelled = labelled.reshape(magnitude.shape[:2]).astype(bool)
  elif not label_path:
    labelled = np.zeros(magnitude.shape[:2], bool)
  elif magnitude.shape[1] == 1:  # One phase: every slice is labelled (all background where it shows no heart).
    labelled = np.ones(magnitude.shape[:2], bool)
  else:  # A frame is labelled when its label volume is not all background.
    labelled = np.broadcast_to(np.any(label != 0, axis=(0, 2, 3))[None], magnitude.shape[:2]).copy()
  return magnitude, label, labelled


def synthetic_phase(shape: Sequence[int], phase_seed: int, key: str) -> np.ndarray:
  """A smooth image phase (radians) for a magnitude slice, the same for the same `(phase_seed, key)`.

  phi(x, y) = q0 + q1 x + q2 y + q3 x^2 + q4 x y + q5 y^2 over coordinates scaled to [-1, 1) on the larger side, with
  q0 ~ U(-pi, pi), q1, q2 ~ N(0, 1) and q3..q5 ~ N(0, 0.5): a constant offset, a shift of the k-space centre by a
  few samples and a slow quadratic, the smooth background phase of a cine image. Drawn from a generator seeded by
  `phase_seed` and the CRC32 of `key` (the example key), so it does not depend on the build order.

  Returns:
    float32 `[H, W]`.
  """
  height, width = (int(s) for s in shape)
  rng = np.random.default_rng([int(phase_seed), zlib.crc32(key.encode())])
  q = np.concatenate([rng.uniform(-np.pi, np.pi, 1), rng.normal(0.0, 1.0, 2), rng.normal(0.0, 0.5, 3)])
  half = max(height, width) / 2
  x = (np.arange(height) - height // 2)[:, None] / half
  y = (np.arange(width) - width // 2)[None, :] / half
  return (q[0] + q[1] * x + q[2] * y + q[3] * x * x + q[4] * x * y + q[5] * y * y).astype(np.float32)


def relative_stem(path: str, root: str) -> str:
  """The file's path under `root` without its suffix, with `/` separators: the stable part of example keys."""
  stem, _ = _strip_suffix(os.path.relpath(os.path.abspath(path), os.path.abspath(root)))
  return stem.replace(os.sep, '/')


def _first_indices(image_path: str, magnitude: np.ndarray) -> Tuple[int, int]:
  """The served `(slice, frame)` of index `(0, 0)` of the `[slices, frames, H, W]` array: `named_slice` for a file of
  the 2-D slice layout (else 0), `cine_frame` for a single-phase file (else 0)."""
  first_slice = named_slice(image_path)
  if first_slice is not None and magnitude.shape[0] != 1:
    raise MagnitudeFormatError(f'{image_path}: its name gives one slice (`_slice_{first_slice}`) but it holds '
                               f'{magnitude.shape[0]} slices; expected one [H, W] image per `_slice_K` file')
  return first_slice or 0, cine_frame(image_path) if magnitude.shape[1] == 1 else 0


def example_frames(image_path: str, label_path: str, include_unlabelled: bool = False) -> List[Tuple[int, int]]:
  """The (slice, frame) pairs `load_examples` serves for a pair of files."""
  magnitude, _, labelled = read_pair(image_path, label_path)
  first_slice, first_frame = _first_indices(image_path, magnitude)
  if include_unlabelled:
    labelled = np.ones_like(labelled)
  return [(first_slice + int(s), first_frame + int(t)) for s, t in np.argwhere(labelled)]


def distinct_examples(pairs: Sequence[Tuple[str, Optional[str]]], include_unlabelled: bool = False
                      ) -> Dict[str, int]:
  """Examples served per subject for the pairs of a folder, after checking that no two files give one example id.

  Raises:
    MagnitudeFormatError: two files give one `(subject, slice, frame)` (the id of the evaluation masks and of the
      per-slice results), naming both.
  """
  owners, counts = {}, {}
  for image_path, label_path in pairs:
    subject = subject_id(image_path)
    frames = example_frames(image_path, label_path, include_unlabelled)
    counts[subject] = counts.get(subject, 0) + len(frames)
    for slice_index, frame in frames:
      other = owners.setdefault((subject, slice_index, frame), image_path)
      if other != image_path:
        raise MagnitudeFormatError(
            f'{image_path} and {other} both give subject {subject!r} slice {slice_index} frame {frame}: every '
            'example needs its own id (its evaluation mask and results row). Name single-phase files '
            '`<subject>_frameYY` and one-slice files `<subject>_frameYY_slice_K`, or give each subject its own name')
  return counts


def _window_weights(source: int, served: int, field_of_view: int) -> np.ndarray:
  """`[served, source]` weights resampling the `field_of_view` source pixels centred on pixel `source // 2` (the
  centre `crop_or_pad` keeps) to `served` pixels: linear interpolation, widened by the step when it shrinks
  (antialiasing, as `jax.image.resize(..., 'linear', antialias=True)`); source pixels outside `[0, source)` are
  zero, so each row is normalised over the unbounded grid, not over the pixels that exist."""
  step = field_of_view / served
  start = source // 2 - field_of_view // 2  # The window's first source pixel, as crop_or_pad's offset.
  centres = start - 0.5 + (np.arange(served) + 0.5) * step  # Served pixel centres in source pixel coordinates.
  support = max(step, 1.0)
  reach = int(np.ceil(support)) + 1
  grid = np.arange(int(np.floor(centres.min())) - reach, int(np.ceil(centres.max())) + reach + 1)
  weights = np.maximum(0.0, 1.0 - np.abs(grid[None, :] - centres[:, None]) / support)
  weights /= weights.sum(axis=1, keepdims=True)
  inside = (grid >= 0) & (grid < source)
  out = np.zeros((served, source))
  out[:, grid[inside]] = weights[:, inside]
  return out


def resample_view(image: np.ndarray, size: Sequence[int], field_of_view: int, is_label: bool = False) -> np.ndarray:
  """The `field_of_view` x `field_of_view` source pixels around the image centre, resampled to `size`.

  `field_of_view == size` (square) is `ocmr.crop_or_pad`'s centred crop or pad exactly.

  Args:
    image: real `[H, W]` (a magnitude) or, with `is_label`, integer class labels `[H, W]`.
    size: served `(H', W')`.
    field_of_view: the side of the square window, in source pixels.
    is_label: resample each class's indicator with the image weights and take the argmax (ties: the lower class),
      so thin structures keep their area instead of aliasing as with nearest neighbours.

  Returns:
    float32 `[H', W']`, or the labels' dtype with `is_label`.
  """
  rows = _window_weights(image.shape[0], int(size[0]), field_of_view)
  cols = _window_weights(image.shape[1], int(size[1]), field_of_view)
  if not is_label:
    return (rows @ np.asarray(image, np.float64) @ cols.T).astype(np.float32)
  classes = np.arange(int(image.max()) + 1 if image.size else 1)
  shares = np.stack([rows @ (image == c).astype(np.float64) @ cols.T for c in classes])
  return classes[np.argmax(shares, axis=0)].astype(image.dtype)


def place_view(values: np.ndarray, source_size: Sequence[int], field_of_view: int, is_label: bool = False
               ) -> np.ndarray:
  """The inverse placement of `resample_view`, as a prediction is written on its file's grid: served `[n, h, w]`
  values resampled (linear; labels through their class indicators) to the `field_of_view` window, then put on the
  source's `(H, W)` grid around its centre (zero / background outside the window).

  Returns:
    `[n, H, W]`: float32, or the labels' dtype with `is_label`.
  """
  values = np.asarray(values)
  rows = _window_weights(values.shape[1], field_of_view, values.shape[1])  # [F, h]: served -> window
  cols = _window_weights(values.shape[2], field_of_view, values.shape[2])
  if is_label:
    classes = np.arange(int(values.max()) + 1 if values.size else 1)
    shares = np.stack([rows @ (values == c).astype(np.float64) @ cols.T for c in classes])  # [C, n, F, F]
    window = classes[np.argmax(shares, axis=0)].astype(values.dtype)
  else:
    window = (rows @ values.astype(np.float64) @ cols.T).astype(np.float32)
  return ocmr.crop_or_pad(window, source_size)


def load_examples(image_path: str, label_path: str, image_size: Sequence[int],
                  label_mapping: Sequence[int] = ACDC_LABEL_MAPPING, phase_seed: int = 0, root: Optional[str] = None,
                  labelled_only: bool = True, field_of_view: int = 0) -> List[Dict[str, Any]]:
  """Reads one image file and its labels into examples like `ocmr.load_examples`.

  Args:
    image_path, label_path: a pair from `find_pairs` (label_path None: no labels, every example unlabelled).
    image_size: `(H, W)` every image and label map is served at: centred-cropped or zero-padded to it
      (`ocmr.crop_or_pad`), or with `field_of_view` resampled to it.
    label_mapping: value `v` of the label file becomes `label_mapping[v]` (our classes, `labels.CLASS_NAMES`).
    phase_seed: seed of the synthetic phase.
    root: the folder the keys and `file_name` are relative to (the file's folder when None).
    labelled_only: skip unlabelled (slice, frame) pairs (False: serve them with `has_labels=False` and an all-zero
      segmentation).
    field_of_view: 0, or the side in source pixels of the square around the image centre that is served
      (`resample_view`); the synthetic phase is then drawn on the served grid.

  Returns:
    One dict per example: `image` complex64 `[H, W]` (magnitude times `exp(i synthetic_phase)`, max magnitude 1),
    `segmentation` uint8 `[H, W]`, `subject_id`, `file_name` (path under root), `slice` (`named_slice` for the
    2-D slice layout), `frame` (the cine frame, `cine_frame` for a single-phase file), `scale` (the magnitude was
    divided by it), `has_labels`.
  """
  magnitude, label, labelled = read_pair(image_path, label_path)
  try:
    ours = labels_format.remap(label, label_mapping, label_path)
  except ValueError as e:  # A label value the mapping has no entry for (a 5, a 255).
    raise MagnitudeFormatError(f'{e}; config.label_mapping gives our class for each label value v of the files '
                               "(ACDC's (0, 3, 2, 1), M&Ms' (0, 1, 2, 3)) and needs an entry for every value they "
                               'hold') from None
  if np.any(ours >= labels_format.NUM_CLASSES):
    raise MagnitudeFormatError(f'{label_path}: label_mapping {tuple(label_mapping)} maps to values outside our '
                               f'classes 0..{labels_format.NUM_CLASSES - 1} {labels_format.CLASS_NAMES}')
  root = root or os.path.dirname(os.path.abspath(image_path))
  stem = relative_stem(image_path, root)
  file_name = os.path.relpath(os.path.abspath(image_path), os.path.abspath(root)).replace(os.sep, '/')
  first_slice, first_frame = _first_indices(image_path, magnitude)
  examples = []
  for s in range(magnitude.shape[0]):
    for t in range(magnitude.shape[1]):
      if labelled_only and not labelled[s, t]:
        continue
      # Keyed by the file's stem and array indices: unique within the folder.
      key = f'{stem}/slice{s:02d}/frame{t:03d}'
      segmentation = ours[s, t] if labelled[s, t] else np.zeros_like(ours[s, t])
      if field_of_view:
        served = resample_view(magnitude[s, t], image_size, field_of_view)
        image = served * np.exp(1j * synthetic_phase(served.shape, phase_seed, key))
        segmentation = resample_view(segmentation, image_size, field_of_view, is_label=True)
      else:
        image = ocmr.crop_or_pad(magnitude[s, t] * np.exp(1j * synthetic_phase(magnitude.shape[2:], phase_seed, key)),
                                 image_size)
        segmentation = ocmr.crop_or_pad(segmentation, image_size)
      if not np.any(image):  # The slice has signal (read_pair checked it), but none inside the served window.
        window = (f'{field_of_view}x{field_of_view} field of view' if field_of_view else
                  f'{image_size[0]}x{image_size[1]} crop to config.image_size')
        raise MagnitudeFormatError(f'{image_path}: slice {first_slice + s} frame {first_frame + t} is all zero inside '
                                   f'the central {window} (its signal lies outside it): expected the heart near the '
                                   'image centre, or a larger image_size / field_of_view.')
      image, scale = ocmr.normalize(image.astype(np.complex64))
      examples.append({
          'image': image.astype(np.complex64),
          'segmentation': segmentation.astype(np.uint8),
          'subject_id': subject_id(image_path),
          'file_name': file_name,
          'slice': first_slice + s,
          'frame': first_frame + t,
          'scale': scale,
          'has_labels': bool(labelled[s, t]),
      })
  return examples
