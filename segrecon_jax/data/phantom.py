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

Modules (a real-data user needs none of them; `segrecon_jax.data.ocmr` does not import them):
  phantom_anatomy   `Subject`, `make_subject`, `subject_anatomy`: the body, thorax and contracting heart, labels.
  phantom_kspace    `coil_sensitivities`, `noise_covariance`, `subject_kspace`: coils, noise, multi-coil k-space.
  phantom_ismrmrd   `ismrmrd_header`, `acquisition_rows`: the ISMRMRD header and acquisition table, OCMR's layout.
  phantom_preview   `read_rss`, `save_preview`: a PNG montage of written files.
  phantom (here)    `write_subject`, `write_dataset` and the command line; re-exports the names above.

Preview: `python -m segrecon_jax.data.phantom --out_dir=DIR --num_subjects=4 --preview=DIR/preview.png`.
"""

import argparse
import os
from typing import List, Optional, Sequence, Tuple, Union

import h5py
import ismrmrd.xsd as xsd
import numpy as np

from segrecon_jax.data import labels as labels_format
# The public API of the phantom, importable from here as before; each part lives in its own module.
from segrecon_jax.data.phantom_anatomy import (
    BACKGROUND, CLASSES, DEFAULT_NUM_COILS, DEFAULT_NUM_FRAMES, DEFAULT_NUM_SLICES, DEFAULT_SNR, LV_BLOOD_POOL,
    LV_MYOCARDIUM, RV_BLOOD_POOL, Subject, check_int, contraction, make_subject, subject_anatomy)
from segrecon_jax.data.phantom_ismrmrd import PROTOCOL_NAME, SYSTEM_VENDOR, acquisition_rows, ismrmrd_header
from segrecon_jax.data.phantom_kspace import coil_sensitivities, noise_covariance, subject_kspace
from segrecon_jax.data.phantom_preview import read_rss, save_preview

__all__ = ['BACKGROUND', 'CLASSES', 'DEFAULT_NUM_COILS', 'DEFAULT_NUM_FRAMES', 'DEFAULT_NUM_SLICES', 'DEFAULT_SNR',
           'LV_BLOOD_POOL', 'LV_MYOCARDIUM', 'PROTOCOL_NAME', 'RV_BLOOD_POOL', 'SYSTEM_VENDOR', 'Subject',
           'acquisition_rows', 'coil_sensitivities', 'contraction', 'ismrmrd_header', 'make_subject', 'main',
           'noise_covariance', 'read_rss', 'save_preview', 'subject_anatomy', 'subject_kspace', 'write_dataset',
           'write_subject']


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
    check_int('labelled_frames entry', f, 0, num_frames - 1)
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
  rows = acquisition_rows(info, kspace, noise if noise_scan else None)
  del kspace
  xml = xsd.ToXML(ismrmrd_header(info), 'utf-8')
  labels_format.write_label_file(label_path, labels, labelled, os.path.basename(kspace_path), ed_frame=0,
                                 es_frame=info.es_frame)
  # The label file is complete before the k-space file appears, so a k-space file always has its labels.
  # The layout `ismrmrd.Dataset` writes (xml as a 1-element vlen string, acquisitions as one resizable table),
  # written in one call rather than appended line by line through `ismrmrd.Dataset` (an HDF5 write per line).
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
  num_subjects = check_int('num_subjects', num_subjects, 1, 9999)
  return [write_subject(directory, s, seed, **kwargs) for s in range(1, num_subjects + 1)]



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

