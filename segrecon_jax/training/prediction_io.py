"""The files `--mode=predict --input=` reads (an OCMR, NIfTI or HDF5 magnitude file, or a folder of them) and the NIfTI
volumes it writes for each: the reconstruction and the segmentation on the file's own voxel grid."""

import dataclasses
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from segrecon_jax.data import labels as labels_format
from segrecon_jax.data import magnitude
from segrecon_jax.data import ocmr
from segrecon_jax.training import input_pipeline

OCMR = 'ocmr'  # ISMRMRD k-space (`ocmr.load_examples`)
MAGNITUDE = 'magnitude'  # NIfTI or HDF5 magnitude images (`magnitude.load_examples`), labels optional
# An OCMR folder keeps its label files in `labels/` (`ocmr.label_path_for`): they are not inputs.
_LABELS_FOLDER = 'labels'
# The NIfTI header's 80-byte description of the written label values: our classes, or the input's own values.
_OUR_LABELS = 'segrecon labels: '
_INPUT_LABELS = 'labels as in the input: '


@dataclasses.dataclass
class InputFile:
  """One file to predict."""
  path: str
  name: str  # Its folder under the prediction folder: the file stem, in a folder its path there without suffix.
  kind: str  # OCMR or MAGNITUDE.


@dataclasses.dataclass
class LoadedFile:
  """A file's examples at the model's size and what puts predictions back on its grid.

  `examples` hold every (slice, frame) in (slice, frame) order; `volume_shape` is `(H, W) + (slices(, frames))` as
  the file stores them (NIfTI: its voxel shape; HDF5 magnitude `[slices, frames, H, W]` -> `(H, W, slices,
  frames)`; OCMR `(readout, phase encode, slices, frames)`); `affine` maps its voxels to mm. `label_mapping` took
  the file's label values to our classes (`labels.remap`; None: the file's values are our classes, as OCMR's).
  """
  examples: List[Dict[str, Any]]
  volume_shape: Tuple[int, ...]
  affine: np.ndarray
  label_path: Optional[str]
  label_mapping: Optional[Tuple[int, ...]] = None
  field_of_view: int = 0  # The examples' `magnitude.resample_view` window (0: centre-cropped or padded).


def file_kind(path: str) -> str:
  """OCMR for an ISMRMRD `.h5` file (group `dataset`); MAGNITUDE for NIfTI or a `.h5` file with `image`."""
  if path.endswith(magnitude.NIFTI_SUFFIXES):
    return MAGNITUDE
  if path.endswith('.h5'):
    with ocmr.open_h5(path, 'OCMR or magnitude') as f:
      keys = sorted(f.keys())
    if 'dataset' in keys:
      return OCMR
    if 'image' in keys:
      return MAGNITUDE
    raise magnitude.MagnitudeFormatError(f'{path}: expected an OCMR file (ISMRMRD group `dataset`) or a magnitude '
                                         f'file (dataset `image`, optionally `label`), found {keys}')
  raise magnitude.MagnitudeFormatError(f'{path}: expected an OCMR .h5 file, a NIfTI .nii / .nii.gz image or an '
                                       'HDF5 magnitude .h5 file')


def input_files(input_path: str) -> List[InputFile]:
  """The file `input_path`, or every OCMR, NIfTI and HDF5 magnitude file under the folder `input_path`.

  A folder is searched recursively in sorted order; hidden files, NIfTI `_gt` label files, OCMR `labels/` folders and
  undersampled OCMR `us_*.h5` files (logged) are skipped.
  """
  if os.path.isfile(input_path):
    root = os.path.dirname(os.path.abspath(input_path))
    return [InputFile(input_path, magnitude.relative_stem(input_path, root), file_kind(input_path))]
  if not os.path.isdir(input_path):
    raise FileNotFoundError(f'{input_path}: no such file or folder to predict')
  files = []
  for root, dirs, names in os.walk(input_path):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.') and d != _LABELS_FOLDER)
    for name in sorted(names):
      if not magnitude.is_image_name(name):
        continue
      path = os.path.join(root, name)
      if name.startswith('us_') and name.endswith('.h5'):
        logging.warning('%s: undersampled OCMR file skipped; prediction needs fully sampled fs_* files', path)
        continue
      files.append(InputFile(path, magnitude.relative_stem(path, input_path), file_kind(path)))
  if not files:
    raise FileNotFoundError(f'{input_path}: no file to predict in it (OCMR .h5, NIfTI .nii / .nii.gz images, HDF5 '
                            'magnitude .h5 with `image`)')
  seen = {}
  for item in files:
    if item.name in seen:
      raise magnitude.MagnitudeFormatError(f'{item.path} and {seen[item.name]} would share the prediction folder '
                                           f'{item.name!r}: rename one or predict them separately')
    seen[item.name] = item.path
  return files


def _ocmr_affine(info: Dict[str, Any]) -> np.ndarray:
  """Voxel sizes (mm) from an OCMR header: readout and phase-encode pixels, the slice thickness (no position)."""
  fov_x, fov_y, fov_z = info['fov_mm']
  sizes = (fov_x / info['encoded_matrix'][0], fov_y / info['kspace_shape'][1], fov_z)
  return np.diag([s if s > 0 else 1.0 for s in sizes] + [1.0])


def _log_resize(path: str, file_shape: Sequence[int], image_size: Sequence[int], axes: Sequence[str]) -> None:
  if tuple(file_shape) == tuple(image_size):
    return
  changes = ', '.join(f'{axis} {"cropped" if f > m else "zero-padded"} {f} -> {m}' for axis, f, m in
                      zip(axes, file_shape, image_size) if f != m)
  logging.warning('%s: its images are %dx%d (%s), the model\'s %dx%d: for prediction each image (and label map) is '
                  'centred and %s; predicted label files and NIfTI volumes are put back at %dx%d, background where '
                  'the model saw nothing', path, *file_shape, ', '.join(axes), *image_size, changes, *file_shape)


def load_file(item: InputFile, image_size: Sequence[int], config) -> LoadedFile:
  """Every (slice, frame) of a file at the model's `(H, W)`, with its reference labels where it has a label file.

  Magnitude files get the synthetic phase and label mapping of the config's data (`label_mapping`, `phase_seed`;
  ACDC's mapping and seed 0 for data without them).
  """
  if item.kind == OCMR:
    info = ocmr.read_header(item.path)
    file_shape = tuple(info['image_shape'])
    _log_resize(item.path, file_shape, image_size, ('readout', 'phase encode'))
    examples = ocmr.load_examples(item.path, image_size, labelled_only=False)
    label_path = ocmr.label_path_for(item.path)
    k = info['kspace_shape']
    return LoadedFile(examples, file_shape + (k[6], k[4]), _ocmr_affine(info),
                      label_path if os.path.exists(label_path) else None)
  described = input_pipeline.builder_config(config)
  label_mapping = tuple(getattr(described, 'label_mapping', magnitude.ACDC_LABEL_MAPPING))
  phase_seed = int(getattr(described, 'phase_seed', 0))
  field_of_view = int(getattr(described, 'field_of_view', 0))
  shape, affine = magnitude.image_geometry(item.path)
  if item.path.endswith('.h5'):  # [(slices, (frames,)) H, W]
    volume_shape, axes = tuple(shape[-2:]) + tuple(shape[:-2]), ('H', 'W')
  else:  # [x, y(, z(, t))]
    volume_shape, axes = tuple(shape), ('x', 'y')
  label_path = magnitude.label_partner(item.path)
  if field_of_view:
    logging.info('%s: the %dx%d source pixels around the centre of each image are resampled to the model\'s %dx%d '
                 '(field_of_view); predictions are put back on the file\'s grid, background outside that window',
                 item.path, field_of_view, field_of_view, *image_size)
  else:
    _log_resize(item.path, volume_shape[:2], image_size, axes)
  examples = magnitude.load_examples(item.path, label_path, image_size, label_mapping, phase_seed,
                                     labelled_only=False, field_of_view=field_of_view)
  return LoadedFile(examples, volume_shape, np.eye(4) if affine is None else affine, label_path, label_mapping,
                    field_of_view)


def _on_file_grid(values: np.ndarray, loaded: LoadedFile, is_label: bool = False) -> np.ndarray:
  """`[slices * frames, h, w]` predictions in example order -> the file's `volume_shape`, centre-cropped or padded
  back to its in-plane size (`ocmr.crop_or_pad`), or resampled back from its field of view (`magnitude.place_view`):
  the inverse placement of the reader's."""
  in_plane = tuple(loaded.volume_shape[:2])
  grid = (tuple(loaded.volume_shape[2:]) + (1, 1))[:2]
  if len(values) != grid[0] * grid[1]:
    raise ValueError(f'{len(values)} predictions for a file of {grid[0]} slices x {grid[1]} frames')
  if loaded.field_of_view:
    placed = magnitude.place_view(np.asarray(values), in_plane, loaded.field_of_view, is_label)
  else:
    placed = ocmr.crop_or_pad(np.asarray(values), in_plane)
  placed = placed.reshape(grid + in_plane)  # [slices, frames, H, W]
  return np.transpose(placed, (2, 3, 0, 1)).reshape(loaded.volume_shape)


def _labels_as_input(path: str, seg: np.ndarray, label_mapping: Optional[Sequence[int]]) -> Tuple[np.ndarray, str]:
  """Our predicted classes `seg` in the label values of the input (the inverse of its `label_mapping`), and the
  NIfTI description that says which values they are. Our classes where the mapping cannot be inverted (a class
  with no value of the input's, or with several), with a warning naming `path`, the file they go to."""
  names = labels_format.CLASS_NAMES
  ours = ', '.join(f'{c} {n}' for c, n in enumerate(names))
  if label_mapping is None:
    return seg, _OUR_LABELS + ours
  inverse = labels_format.inverse_mapping(label_mapping)
  if inverse is None:
    values = {n: [v for v, c in enumerate(label_mapping) if c == ours_class] for ours_class, n in enumerate(names)}
    logging.warning('%s holds our classes (%s), not the input\'s label values, and its header says so: '
                    'config.label_mapping %s cannot be inverted, each class needs exactly one value of the input '
                    '(here, by class: %s)', path, ours, tuple(label_mapping), values)
    return seg, _OUR_LABELS + ours
  by_value = sorted((v, names[c]) for c, v in enumerate(inverse))
  return (np.asarray(inverse, seg.dtype)[seg],
          _INPUT_LABELS + ', '.join(f'{v} {n}' for v, n in by_value))


def write_nifti(out_dir: str, loaded: LoadedFile, arrays: Dict[str, np.ndarray]) -> List[str]:
  """Writes `recon.nii.gz` (float32 magnitude in the file's units) and, for a model that segments, `seg.nii.gz`
  (uint8, NIfTI intent `label`) to `out_dir`, on the file's voxel grid with its affine (NIfTI files; voxel sizes for
  OCMR; identity for HDF5 magnitude files).

  `seg.nii.gz` holds the input's own label values (the inverse of its `label_mapping`: an ACDC file gets 1 RV,
  2 myocardium, 3 LV, comparable with its `_gt` file), our classes `labels.CLASS_NAMES` for OCMR files or where
  the mapping cannot be inverted; its header's description says which (`labels as in the input: ...` or
  `segrecon labels: ...`). The `.npy` arrays beside it stay in our classes, as the reference `segmentation.npy`.

  Args:
    out_dir: the file's prediction folder.
    loaded: `load_file` of it.
    arrays: the prediction arrays in example order: `recon` complex `[n, H, W]`, optionally `seg` int `[n, H, W]`.

  Returns:
    The paths written.
  """
  import nibabel as nib  # pylint: disable=g-import-not-at-top  (only predict needs it)
  scale = np.array([e['scale'] for e in loaded.examples], np.float32)[:, None, None]
  volumes = {'recon': (np.abs(arrays['recon']) * scale).astype(np.float32)}
  if 'seg' in arrays:
    volumes['seg'], description = _labels_as_input(os.path.join(out_dir, 'seg.nii.gz'),
                                                   np.asarray(arrays['seg']).astype(np.uint8), loaded.label_mapping)
  paths = []
  for key, values in volumes.items():
    image = nib.Nifti1Image(_on_file_grid(values, loaded, is_label=key == 'seg'), loaded.affine)
    if key == 'seg':
      image.header.set_intent('label')
      image.header['descrip'] = description[:79]
    path = os.path.join(out_dir, f'{key}.nii.gz')
    nib.save(image, path)
    paths.append(path)
  return paths
