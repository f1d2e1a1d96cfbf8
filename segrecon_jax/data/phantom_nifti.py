"""Phantom patients as an ACDC-layout NIfTI or HDF5 folder (magnitude, ACDC's labels), for tests and trials.

  python -m segrecon_jax.data.phantom_nifti --out_dir=/tmp/acdc_like --num_patients=8 --recon_size=72,56

writes `patientNNN/patientNNN_frameFF.nii.gz` (float32 magnitude `[x, y, z]`) and `patientNNN_frameFF_gt.nii.gz`
(uint8, ACDC's labels 1 RV, 2 myocardium, 3 LV cavity) for end-diastole (frame 01) and end-systole, with an
oblique affine of anisotropic voxels, so the `nifti` TFDS config reads it as it reads ACDC. `--format=h5` writes
the same volumes as `patientNNN_frameFF.h5` with `image` and `label` `[slices, H, W]` (the HDF5 layout of
`magnitude.py`); `--background_slices=N` adds N slices past the apex whose label maps are all background, as the
outermost slices of ACDC's volumes are.
"""

import argparse
import math
import os
from typing import List, Optional, Sequence, Tuple

import h5py
import numpy as np

from segrecon_jax.data import labels as labels_format
from segrecon_jax.data import magnitude

# ACDC stores its frames numbered from 1; the phantom's cycle has end-systole near its middle.
_FRAMES = 4


def patient_affine(pixel_mm: float, slice_mm: float = 10.0, angle_deg: float = 30.0) -> np.ndarray:
  """A short-axis-like affine: in-plane axes rotated about z, y flipped; voxels `pixel_mm`^2 x `slice_mm`."""
  c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
  affine = np.eye(4)
  affine[:3, :3] = np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([pixel_mm, pixel_mm, slice_mm])
  affine[:3, 3] = (-120.0, 95.0, -40.0)
  return affine


def _heart_removed(image: np.ndarray, labels: np.ndarray, margin: int = 3) -> np.ndarray:
  """`image` `[H, W]` with its labelled heart and a `margin`-pixel rim filled with the median of the rim around it."""
  def grow(mask, pixels):
    for _ in range(pixels):
      mask = mask | np.roll(mask, 1, 0) | np.roll(mask, -1, 0) | np.roll(mask, 1, 1) | np.roll(mask, -1, 1)
    return mask
  inner = grow(labels > 0, margin)
  rim = grow(inner, margin) & ~inner
  out = image.copy()
  if inner.any():
    out[inner] = np.median(image[rim]) if rim.any() else 0.0
  return out


def write_patient(directory: str, patient: int, seed: int = 0, recon_size: Sequence[int] = (72, 56),
                  num_slices: int = 2, label_mapping: Sequence[int] = magnitude.ACDC_LABEL_MAPPING,
                  file_format: str = 'nifti', background_slices: int = 0) -> List[Tuple[str, str]]:
  """Writes one phantom patient's ED and ES frames; returns the (image, label) paths.

  Labels are written in the convention that `label_mapping` maps to ours (ACDC's by default: the mapping is its
  own inverse, so `remap(ours, mapping)` gives the file's values).

  Args:
    file_format: 'nifti' (`<stem>.nii.gz` + `<stem>_gt.nii.gz`, `[x, y, z]`) or 'h5' (`<stem>.h5` with `image` and
      `label` `[slices, H, W]`; the pair is `(path, path)`).
    background_slices: slices added past the apex, all background in their label maps: the apex slice's image with
      its heart filled in by the tissue around it.
  """
  if file_format not in ('nifti', 'h5'):
    raise ValueError(f"file_format must be 'nifti' or 'h5', got {file_format!r}")
  if background_slices < 0:
    raise ValueError(f'background_slices must be >= 0, got {background_slices}')
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  from segrecon_jax.data import phantom  # pylint: disable=g-import-not-at-top
  subject = phantom.make_subject(seed, patient, recon_size=recon_size, num_coils=1, num_slices=num_slices,
                                 num_frames=_FRAMES, snr=math.inf)
  image, ours = phantom.subject_anatomy(subject)
  inverse = np.zeros(max(label_mapping) + 1, np.int64)
  for theirs, our in enumerate(label_mapping):
    inverse[our] = theirs
  affine = patient_affine(subject.pixel_mm)
  name = f'patient{patient:03d}'
  folder = os.path.join(directory, name)
  os.makedirs(folder, exist_ok=True)
  paths = []
  for frame in (0, _FRAMES // 2):  # end-diastole, end-systole
    stem = os.path.join(folder, f'{name}_frame{frame + 1:02d}')
    volume = np.abs(image[:, frame]).astype(np.float32)  # [slices, H, W]
    label = inverse[ours[:, frame]].astype(np.uint8)
    if background_slices:
      empty = _heart_removed(volume[-1], label[-1])
      volume = np.concatenate([volume, np.repeat(empty[None], background_slices, axis=0)])
      label = np.concatenate([label, np.zeros((background_slices,) + label.shape[1:], np.uint8)])
    if file_format == 'h5':
      with h5py.File(stem + '.h5', 'w') as f:
        f['image'], f['label'] = volume, label
      paths.append((stem + '.h5', stem + '.h5'))
      continue
    nib.save(nib.Nifti1Image(np.transpose(volume, (1, 2, 0)), affine), stem + '.nii.gz')  # -> [x, y, z]
    nib.save(nib.Nifti1Image(np.transpose(label, (1, 2, 0)), affine), stem + '_gt.nii.gz')
    paths.append((stem + '.nii.gz', stem + '_gt.nii.gz'))
  return paths


def write_folder(directory: str, num_patients: int, seed: int = 0, **kwargs) -> List[Tuple[str, str]]:
  """`write_patient` for patients 1..num_patients."""
  return [p for patient in range(1, num_patients + 1) for p in write_patient(directory, patient, seed, **kwargs)]


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out_dir', required=True, help='Folder for patientNNN/ (the manual_dir of `nifti`).')
  parser.add_argument('--num_patients', type=int, default=8)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num_slices', type=int, default=2)
  parser.add_argument('--recon_size', default='72,56', help='In-plane x, y voxels (both even).')
  parser.add_argument('--format', default='nifti', choices=('nifti', 'h5'),
                      help='nifti: <stem>.nii.gz + <stem>_gt.nii.gz [x, y, z]; h5: <stem>.h5 [slices, H, W].')
  parser.add_argument('--background_slices', type=int, default=0,
                      help='Slices past the apex with all-background labels, added to each volume.')
  args = parser.parse_args(argv)
  recon_size = tuple(int(n) for n in args.recon_size.split(','))
  pairs = write_folder(args.out_dir, args.num_patients, args.seed, recon_size=recon_size, num_slices=args.num_slices,
                       file_format=args.format, background_slices=args.background_slices)
  print(f'{len(pairs)} image/label pairs of {args.num_patients} patients in {args.out_dir} '
        f'(labels: {labels_format.CLASS_NAMES} in ACDC order 1 RV, 2 myocardium, 3 LV)')


if __name__ == '__main__':
  main()
