"""The files `--mode=predict --input=` reads (a file of a registered data layout: OCMR, NIfTI or HDF5 magnitude, or
yours; or a folder of them) and the NIfTI volumes it writes for each: the reconstruction and the segmentation on the
file's own voxel grid. Which files are inputs, how they are read and how predictions go back on their grid is the
layouts' (`segrecon_jax.data.layouts`), asked in registration order."""

import dataclasses
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from segrecon_jax.data import labels as labels_format
from segrecon_jax.data import layouts
from segrecon_jax.training import input_pipeline

# The NIfTI header's 80-byte description of the written label values: our classes, or the input's own values.
_OUR_LABELS = 'segrecon labels: '
_INPUT_LABELS = 'labels as in the input: '


@dataclasses.dataclass
class InputFile:
  """One file to predict."""
  path: str
  name: str  # Its folder under the prediction folder: the file stem, in a folder its path there without suffix.
  layout: layouts.Layout  # The layout that reads it (the first registered one that `claims` it).


@dataclasses.dataclass
class LoadedFile:
  """A file's examples at the model's size and what puts predictions back on its grid.

  `examples` hold every (slice, frame) in (slice, frame) order; `geometry` is the file's voxel grid
  (`Layout.geometry`: `(H, W) + (slices(, frames))` as the file stores them, e.g. NIfTI its voxel shape, HDF5
  magnitude `[slices, frames, H, W]` -> `(H, W, slices, frames)`, OCMR `(readout, phase encode, slices, frames)`,
  and the affine to mm). `builder_config` is the data config the examples were read with (the checkpoint's), which
  says how the layout placed them (`Layout.place`). `label_mapping` took the file's label values to our classes
  (`labels.remap`; None: the file's values are our classes, as OCMR's).
  """
  examples: List[Dict[str, Any]]
  geometry: layouts.Geometry
  layout: layouts.Layout
  builder_config: Any
  label_mapping: Optional[Tuple[int, ...]] = None


def _inputs_expected(predicting: Sequence[layouts.Layout]) -> str:
  return ' or '.join(layout.input_description or f'a file of the {layout.name!r} layout' for layout in predicting)


def _contents(path: str) -> str:
  """What an unrecognised file holds, for its message: an HDF5 file's top-level names."""
  if not h5py.is_hdf5(path):
    return ', but it cannot be opened as HDF5 (truncated, corrupt or not HDF5)' if path.endswith('.h5') else ''
  with h5py.File(path, 'r') as f:
    return f', found {sorted(f.keys())}'


def file_layout(path: str) -> layouts.Layout:
  """The first registered layout that `claims` the file `path`."""
  for layout in layouts.registered():
    if layout.claims(path):
      return layout
  predicting = [layout for layout in layouts.registered() if layout.suffixes or layout.input_description]
  raise layouts.DataFormatError(f'{path}: expected {_inputs_expected(predicting)}{_contents(path)}')


def _name(path: str, root: str, layout: layouts.Layout) -> str:
  """The file's path under `root` without the suffix of its layout, with `/` separators."""
  relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
  return layout.stem(relative).replace(os.sep, '/')


def input_files(input_path: str) -> List[InputFile]:
  """The file `input_path`, or every file of a registered layout under the folder `input_path`.

  A folder is searched recursively in sorted order; hidden files and folders, a layout's label folders (OCMR
  `labels/`), the files a layout skips (NIfTI `_gt` label files, undersampled OCMR `us_*.h5` files, logged) and files
  with an ending no layout reads are passed over; a file with an ending some layout reads that no layout takes is
  refused.
  """
  if os.path.isfile(input_path):
    layout = file_layout(input_path)
    return [InputFile(input_path, _name(input_path, os.path.dirname(os.path.abspath(input_path)), layout), layout)]
  if not os.path.isdir(input_path):
    raise FileNotFoundError(f'{input_path}: no such file or folder to predict')
  registered = layouts.registered()
  endings = tuple(suffix for layout in registered for suffix in layout.suffixes)
  label_folders = {name for layout in registered for name in layout.label_folders}
  files = []
  for root, dirs, names in os.walk(input_path):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.') and d not in label_folders)
    for name in sorted(names):
      path = os.path.join(root, name)
      if name.startswith('.') or any(layout.skips(path) for layout in registered):
        continue
      layout = next((layout for layout in registered if layout.claims(path)), None)
      if layout is None and not name.endswith(endings):
        continue  # Not a data file of any layout (notes, figures).
      layout = layout or file_layout(path)  # Raises: an ending of ours, but no layout takes it.
      files.append(InputFile(path, _name(path, input_path, layout), layout))
  if not files:
    predicting = [layout for layout in registered if layout.suffixes or layout.input_description]
    raise FileNotFoundError(f'{input_path}: no file to predict in it: expected {_inputs_expected(predicting)}')
  seen = {}
  for item in files:
    if item.name in seen:
      raise layouts.DataFormatError(f'{item.path} and {seen[item.name]} would share the prediction folder '
                                    f'{item.name!r}: rename one or predict them separately')
    seen[item.name] = item.path
  return files


def load_file(item: InputFile, image_size: Sequence[int], config) -> LoadedFile:
  """Every (slice, frame) of a file at the model's `(H, W)`, with its reference labels where it has a label file.

  The layout reads it with the builder config of `config`'s data (`input_pipeline.builder_config`): e.g. magnitude
  files get its synthetic phase, label mapping and field of view (ACDC's mapping, seed 0 and none for data without
  them).
  """
  described = input_pipeline.builder_config(config)
  geometry = item.layout.geometry(item.path)
  item.layout.log_placement(item.path, geometry, image_size, described)
  examples = item.layout.load_examples(item.layout.item_of(item.path), image_size, described, labelled_only=False)
  return LoadedFile(examples, geometry, item.layout, described, item.layout.label_mapping(described))


def _on_file_grid(values: np.ndarray, loaded: LoadedFile, is_label: bool = False) -> np.ndarray:
  """`[slices * frames, h, w]` predictions in example order -> the file's grid `geometry.shape`, placed back on its
  in-plane size by the inverse of the reader's placement (`Layout.place`: a centred crop or pad undone, or a field
  of view resampled back)."""
  shape = tuple(loaded.geometry.shape)
  in_plane = shape[:2]
  grid = (shape[2:] + (1, 1))[:2]
  if len(values) != grid[0] * grid[1]:
    raise ValueError(f'{len(values)} predictions for a file of {grid[0]} slices x {grid[1]} frames')
  placed = np.asarray(loaded.layout.place(np.asarray(values), in_plane, loaded.builder_config, is_label))
  placed = placed.reshape(grid + in_plane)  # [slices, frames, H, W]
  return np.transpose(placed, (2, 3, 0, 1)).reshape(shape)


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
    image = nib.Nifti1Image(_on_file_grid(values, loaded, is_label=key == 'seg'), loaded.geometry.affine)
    if key == 'seg':
      image.header.set_intent('label')
      image.header['descrip'] = description[:79]
    path = os.path.join(out_dir, f'{key}.nii.gz')
    nib.save(image, path)
    paths.append(path)
  return paths
