"""Data layouts: how one folder convention of cine files becomes examples, found by name (`register_layout`).

A layout is the one place that knows a kind of data: the TFDS builder (`tfds_ocmr`), its record of the files a
dataset was prepared from, and `main.py --mode=predict --input=` ask it instead of branching on file names or on the
builder config's `source`. The builder config `OcmrConfig(source=<name>)` picks a layout; prediction asks each
registered layout, in registration order, whether it takes a file (`claims`).

Built in: `real` (`OcmrLayout`: fully sampled OCMR k-space files with `labels/<stem>.h5`, `segrecon_jax.data.ocmr`)
and `magnitude` (`MagnitudeLayout`: labelled NIfTI / HDF5 magnitude folders, `segrecon_jax.data.magnitude`; the
`nifti` config). `tfds_ocmr` registers `phantom`, which writes OCMR files and reads them back through `real`.

Your own layout is one subclass of `Layout` and one `register_layout('<name>', YourLayout())` in your own code;
`tfds_ocmr.configure('<name>', image_size=..., ...)` (and `--config.dataset_config=<name>`) then builds it, and
`--mode=predict --input=` reads its files. docs/usage.md, "Extending", has a worked example.

An item is whatever a layout's `find` returns for one unit of a folder (a file path, an (image, label) pair, a
phantom subject); only the layout looks inside it. An example is a dict: `image` complex64 `[H, W]` with max
magnitude 1, `segmentation` uint8 `[H, W]` in our classes (`labels.CLASS_NAMES`), `subject_id` str, `file_name` str,
`slice` int, `frame` int, `scale` float (the image was divided by it), `has_labels` bool (`served_example` builds
one).
"""

import dataclasses
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from segrecon_jax.data import labels as labels_format
from segrecon_jax.data import magnitude
from segrecon_jax.data import ocmr

# The optional fields of the builder config (`tfds_ocmr.OcmrConfig`): set, shown and stored with a checkpoint only
# for a layout that reads them (`Layout.config_fields`), so checkpoints of the other layouts still match their data.
OPTIONAL_FIELDS = ('label_mapping', 'phase_seed', 'field_of_view')


class DataFormatError(ValueError):
  """A file of a layout is not usable; the message names the file and what was expected (`main.py` prints it)."""


# Every error a layout raises for bad input: `main.py` turns them into one paragraph, exit code 2.
FORMAT_ERRORS = (DataFormatError, ocmr.OCMRFormatError, magnitude.MagnitudeFormatError)


@dataclasses.dataclass
class Geometry:
  """Where a file's examples lie: its voxel grid, for putting predictions back on it (`Layout.geometry`).

  `shape` is `(H, W) + (slices(, frames))`, the in-plane size of the file's images before the reader's crop, pad
  or resampling and its slice and frame counts, examples in (slice, frame) order; `affine` maps its voxels to mm
  (4 x 4; the identity where the file has none); `axes` names the two in-plane axes for messages.
  """
  shape: Tuple[int, ...]
  affine: np.ndarray
  axes: Tuple[str, str] = ('H', 'W')


def served_example(image: np.ndarray, segmentation: np.ndarray, image_size: Sequence[int], *, subject_id: str,
                   file_name: str, slice_index: int, frame: int, has_labels: bool = True) -> Dict[str, Any]:
  """One example from a source image and its label map: both centre-cropped or zero-padded to `image_size`
  (`ocmr.crop_or_pad`), the image divided by its maximum magnitude.

  Args:
    image: `[H, W]` magnitude or complex image.
    segmentation: integer `[H, W]` in our classes (`labels.CLASS_NAMES`; `labels.remap` maps a file's values).
    image_size: served `(H', W')`.
    subject_id, file_name, slice_index, frame, has_labels: the example's ids (see the module docstring).

  Returns:
    The example dict.

  Raises:
    DataFormatError: the served image is all zero (nothing to reconstruct; PSNR and SSIM are undefined on it) or
      the labels are outside our classes.
  """
  served = ocmr.crop_or_pad(np.asarray(image).astype(np.complex64), image_size)
  if not np.any(served):
    raise DataFormatError(f'{file_name}: slice {slice_index} frame {frame} is all zero inside the served '
                          f'{image_size[0]}x{image_size[1]} window: expected an image with signal there')
  segmentation = np.asarray(segmentation)
  if segmentation.size and (segmentation.min() < 0 or segmentation.max() >= labels_format.NUM_CLASSES):
    raise DataFormatError(f'{file_name}: labels of slice {slice_index} frame {frame} lie outside our classes '
                          f'0..{labels_format.NUM_CLASSES - 1} {labels_format.CLASS_NAMES}')
  served, scale = ocmr.normalize(served)
  return {'image': served.astype(np.complex64),
          'segmentation': ocmr.crop_or_pad(segmentation.astype(np.uint8), image_size),
          'subject_id': subject_id, 'file_name': file_name, 'slice': int(slice_index), 'frame': int(frame),
          'scale': scale, 'has_labels': bool(has_labels)}


def log_resize(path: str, file_shape: Sequence[int], image_size: Sequence[int], axes: Sequence[str]) -> None:
  """Warns that a file's images are centre-cropped or padded to the model's size for prediction (and back)."""
  if tuple(file_shape) == tuple(image_size):
    return
  changes = ', '.join(f'{axis} {"cropped" if f > m else "zero-padded"} {f} -> {m}' for axis, f, m in
                      zip(axes, file_shape, image_size) if f != m)
  logging.warning('%s: its images are %dx%d (%s), the model\'s %dx%d: for prediction each image (and label map) is '
                  'centred and %s; predicted label files and NIfTI volumes are put back at %dx%d, background where '
                  'the model saw nothing', path, *file_shape, ', '.join(axes), *image_size, changes, *file_shape)


def _flat_paths(item) -> List[str]:
  if isinstance(item, (str, os.PathLike)):
    return [os.fspath(item)]
  if isinstance(item, (tuple, list)):
    return [path for part in item for path in _flat_paths(part)]
  return []


class Layout:
  """How one folder convention of cine data is found, split and read; subclass it and `register_layout` it.

  Required for building a dataset: `find`, `subject`, `load_examples`. For prediction, also `suffixes` (or
  `claims`) and `geometry`. Everything else has a default that works from those.

  `config` below is the builder config (`tfds_ocmr.OcmrConfig`): `image_size`, `include_unlabelled`, ... and the
  `OPTIONAL_FIELDS` the layout lists in `config_fields`. Prediction passes the builder config of the checkpoint's
  data, which may be another layout's (or a plain name for a dataset other than `ocmr`): read its fields with
  `getattr(config, field, default)`.
  """
  name: str = ''  # Set by `register_layout`: the `OcmrConfig.source` that picks this layout.
  description: str = ''  # One line: what a folder of this layout holds (a derived builder config's description).
  instructions: str = ''  # What to put in the manual_dir, shown when it holds none of this layout's files.
  # What makes a frame labelled, shown when a manual_dir has labelled frames of fewer than 2 subjects.
  labelled_rule: str = 'A frame is served where the layout reads labels for it (`Layout.load_examples`).'
  input_description: str = ''  # What one of its input files is, for prediction's messages ('an OCMR file (...)').
  suffixes: Tuple[str, ...] = ()  # Name endings of its input files (prediction).
  label_folders: Tuple[str, ...] = ()  # Names of sub-folders holding its label files: a folder walk skips them.
  config_fields: Tuple[str, ...] = ()  # The OPTIONAL_FIELDS of the builder config it reads.
  reads_manual_dir: bool = True  # False: it makes its examples (the phantom), in a scratch folder instead.

  # --- The dataset: what the TFDS builder asks. ---

  def find(self, folder: str, config) -> List[Any]:
    """The items of `folder` (the manual_dir; a scratch folder where `reads_manual_dir` is False), sorted."""
    raise NotImplementedError(f'layout {self.name!r}: find(folder, config) is not implemented')

  def missing(self, folder: str) -> str:
    """The sentence for a `folder` where `find` found nothing (the builder adds the folder and `instructions`)."""
    return f'found none of the files of the {self.name!r} layout ({self.description or type(self).__name__}).'

  def subject(self, item) -> str:
    """The subject of an item: the unit of the train/test split (every item of a subject lands in one split)."""
    raise NotImplementedError(f'layout {self.name!r}: subject(item) is not implemented')

  def item_file(self, item) -> str:
    """The file that names an item in messages (e.g. the items without a labelled frame): by default the last path
    in it, a pair's label file."""
    return (_flat_paths(item) or [str(item)])[-1]

  def key_stem(self, item, folder: str) -> str:
    """The first part of its examples' TFDS keys, `<stem>/slice<ss>/frame<fff>`: unique within `folder` together
    with the slice and frame. The subject by default."""
    del folder
    return self.subject(item)

  def example_frames(self, item, config) -> List[Tuple[int, int]]:
    """The (slice, frame) of each example `load_examples` serves for an item, for the split counts. By default it
    loads them; a layout that can tell from headers or names alone should say so here."""
    include_unlabelled = bool(getattr(config, 'include_unlabelled', False))
    return [(int(e['slice']), int(e['frame']))
            for e in self.load_examples(item, config.image_size, config, labelled_only=not include_unlabelled)
            if e['has_labels'] or include_unlabelled]

  def count_examples(self, items: Sequence[Any], config) -> Dict[str, int]:
    """Examples per subject over `items`, for `tfds_ocmr.split_subjects`.

    Raises:
      DataFormatError: two items give one `(subject, slice, frame)`, the id of an example's evaluation mask and
        results row.
    """
    owners, counts = {}, {}
    for index, item in enumerate(items):
      subject = self.subject(item)
      frames = self.example_frames(item, config)
      counts[subject] = counts.get(subject, 0) + len(frames)
      for slice_index, frame in frames:
        other = owners.setdefault((subject, slice_index, frame), index)
        if other != index:
          raise DataFormatError(f'{item} and {items[other]} both give subject {subject!r} slice {slice_index} frame '
                                f'{frame}: every example needs its own id (its evaluation mask and results row)')
    return counts

  def load_examples(self, item, image_size: Sequence[int], config, root: Optional[str] = None,
                    labelled_only: bool = True) -> List[Dict[str, Any]]:
    """The examples of an item at `image_size`, in (slice, frame) order.

    Args:
      item: one of `find`'s, or `item_of` a file to predict.
      image_size: `(H, W)` of the served images.
      config: the builder config (see the class docstring).
      root: the folder the item was found in (keys and `file_name` may be relative to it); None: the file's own
        folder (prediction).
      labelled_only: serve only labelled (slice, frame) pairs (False: every one, unlabelled ones with
        `has_labels=False` and an all-zero segmentation; prediction needs every one).
    """
    raise NotImplementedError(f'layout {self.name!r}: load_examples(item, image_size, config, ...) is not '
                              'implemented')

  def files(self, folder: str, config) -> List[str]:
    """Every file the dataset of `folder` reads: their names, sizes and contents are recorded when it is prepared,
    and a later run with other files there is refused. By default the paths in `find`'s items."""
    return sorted({path for item in self.find(folder, config) for path in _flat_paths(item)})

  # --- Prediction: what `main.py --mode=predict --input=` asks. ---

  def claims(self, path: str) -> bool:
    """Whether `path` is an input file of this layout (by name; where another layout shares the ending, by what
    the file holds). By default: its name ends with one of `suffixes`."""
    return bool(self.suffixes) and path.endswith(tuple(self.suffixes))

  def skips(self, path: str) -> bool:
    """Whether a folder walk passes over `path`, a file of this layout that is no input of its own (a label file
    beside its image; it may log why, where a user would not expect it). Asked before `claims`."""
    del path
    return False

  def stem(self, path: str) -> str:
    """`path` without the suffix that makes it this layout's (the prediction folder's name)."""
    for suffix in sorted(self.suffixes, key=len, reverse=True):
      if suffix and path.endswith(suffix):
        return path[:-len(suffix)]
    return os.path.splitext(path)[0]

  def item_of(self, path: str):
    """The item of one input file, for `load_examples` (its label file found beside it). The path by default."""
    return path

  def geometry(self, path: str) -> Geometry:
    """The voxel grid of an input file, from its header where it has one."""
    raise NotImplementedError(f'layout {self.name!r}: geometry(path) is not implemented, so predictions cannot '
                              'be put back on its files\' grid')

  def log_placement(self, path: str, geometry: Geometry, image_size: Sequence[int], config) -> None:
    """Logs how the file's images are placed at the model's `image_size` (by default: centre-cropped or padded)."""
    del config
    log_resize(path, geometry.shape[:2], image_size, geometry.axes)

  def place(self, values: np.ndarray, in_plane: Sequence[int], config, is_label: bool = False) -> np.ndarray:
    """The inverse of the reader's placement: served `[n, h, w]` values on the file's in-plane grid `(H, W)`,
    background outside what was served. By default the centred crop or pad undone (`ocmr.crop_or_pad`)."""
    del config, is_label
    return ocmr.crop_or_pad(np.asarray(values), in_plane)

  def label_mapping(self, config) -> Optional[Tuple[int, ...]]:
    """The mapping the reader took the file's label values through to our classes (`labels.remap`), so that a
    predicted segmentation is written back in the file's own values; None: the file holds our classes."""
    del config
    return None

  def write_predicted_labels(self, out_dir: str, path: str, examples: Sequence[Dict[str, Any]], seg: np.ndarray,
                             geometry: Geometry, **attrs) -> Optional[str]:
    """Writes a predicted segmentation as a label file of this layout, to start labelling from; returns its path,
    or None where the layout has no label file of its own (the default: `seg.nii.gz` is written for every file)."""
    del out_dir, path, examples, seg, geometry, attrs
    return None


_LAYOUTS: Dict[str, Layout] = {}


def register_layout(name: str, layout: Layout) -> Layout:
  """Registers `layout` under `name` (the builder config's `source`, and a `tfds_ocmr.configure` name).

  Registering a name again with a layout of the same class replaces it (a script run twice); another class under a
  taken name is refused.

  Returns:
    The layout, its `name` set.
  """
  if not isinstance(layout, Layout):
    raise TypeError(f'register_layout({name!r}, ...): expected an instance of a Layout subclass, got {layout!r}')
  if not name or not name.replace('_', '').isalnum() or not name[0].isalpha() or name != name.lower():
    raise ValueError(f'register_layout({name!r}, ...): a layout name is lower-case letters, digits and _, starting '
                     'with a letter (it names prepared dataset folders)')
  if name in _LAYOUTS and type(_LAYOUTS[name]) is not type(layout):
    raise ValueError(f'register_layout({name!r}, ...): the name is taken by {type(_LAYOUTS[name]).__name__}; '
                     'register yours under another name')
  layout.name = name
  _LAYOUTS[name] = layout
  return layout


def get(name: str) -> Layout:
  """The layout registered as `name`."""
  if name not in _LAYOUTS:
    raise ValueError(f'unknown data layout {name!r}: expected one of {names()} (register yours with '
                     'segrecon_jax.data.layouts.register_layout)')
  return _LAYOUTS[name]


def names() -> List[str]:
  """The registered layout names, in registration order."""
  return list(_LAYOUTS)


def registered() -> List[Layout]:
  """The registered layouts, in registration order (the order prediction asks them in)."""
  return list(_LAYOUTS.values())


# ---------------------------------------------------------------------------------------------------------------
# The built-in layouts.

def _h5_keys(path: str) -> Optional[List[str]]:
  """The top-level names of an HDF5 file; None when it cannot be opened as HDF5."""
  try:
    with h5py.File(path, 'r') as f:
      return sorted(f.keys())
  except OSError:
    return None


class OcmrLayout(Layout):
  """Fully sampled OCMR files (ISMRMRD k-space `fs_*.h5`) at the top of a folder, labels in `labels/<stem>.h5`.

  An item is the OCMR file's path; its subject is the file stem (one file = one subject). Undersampled `us_*.h5`
  files are skipped with a warning. `segrecon_jax/data/ocmr.py` has the reader and the label format.
  """
  description = 'Your OCMR fs_*.h5 files and labels from manual_dir.'
  instructions = """\
Put your fully sampled OCMR files (fs_*.h5, from https://ocmr.info, under the OCMR Data Sharing and Usage
Agreement) directly in manual_dir, and one label file per OCMR file in manual_dir/labels/ with the same stem:
  manual_dir/fs_0001_1_5T.h5
  manual_dir/labels/fs_0001_1_5T.h5   (datasets `masks` uint8 [slices, frames, H, W], `labelled` uint8
                                       [slices, frames]; see tfds_ocmr/README.md)
Then build with (array_record is the builder's default file format; no TensorFlow needed)
  builder = tfds.builder('ocmr', config='real', data_dir=DATA_DIR)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))
Undersampled us_*.h5 files found there are skipped with a warning.
"""
  labelled_rule = ('A frame is labelled where `labelled` [slices, frames] is nonzero in its label file, '
                   'manual_dir/labels/<stem>.h5 (see tfds_ocmr/README.md).')
  input_description = 'an OCMR file (ISMRMRD .h5 with group `dataset`)'
  suffixes = ('.h5',)
  label_folders = ('labels',)  # `ocmr.label_path_for`

  @staticmethod
  def fully_sampled_files(folder: str) -> List[str]:
    """The fully sampled OCMR files (top-level *.h5 but us_*.h5) of a folder."""
    names = sorted(n for n in os.listdir(folder) if n.endswith('.h5'))
    return [os.path.join(folder, n) for n in names if not n.startswith('us_')]

  def find(self, folder: str, config) -> List[str]:
    del config
    for name in sorted(os.listdir(folder)):
      if name.endswith('.h5') and name.startswith('us_'):
        logging.warning('%s: undersampled OCMR file skipped; the `real` config needs fully sampled fs_* files',
                        os.path.join(folder, name))
    return self.fully_sampled_files(folder)

  def missing(self, folder: str) -> str:
    return (f'found no fully sampled OCMR file (*.h5 other than us_*.h5); contents '
            f'{sorted(os.listdir(folder))}.')

  def subject(self, item: str) -> str:
    return ocmr.subject_id(item)

  def example_frames(self, item: str, config) -> List[Tuple[int, int]]:
    return ocmr.example_frames(item, include_unlabelled=config.include_unlabelled)

  def count_examples(self, items: Sequence[str], config) -> Dict[str, int]:
    counts = {self.subject(path): len(self.example_frames(path, config)) for path in items}
    for path in items:
      if counts[self.subject(path)] == 0:
        logging.warning('%s: no label file at %s (or no labelled frame); its frames are not served',
                        path, ocmr.label_path_for(path))
    return counts

  def load_examples(self, item: str, image_size: Sequence[int], config, root: Optional[str] = None,
                    labelled_only: bool = True) -> List[Dict[str, Any]]:
    del config, root  # OCMR examples are named by the file alone.
    return ocmr.load_examples(item, image_size, labelled_only=labelled_only)

  def files(self, folder: str, config) -> List[str]:
    """Each OCMR file and its label file, whether it exists or not (a label file added later changes the data)."""
    del config
    files = self.fully_sampled_files(folder)
    return files + [ocmr.label_path_for(path) for path in files]

  def claims(self, path: str) -> bool:
    return path.endswith('.h5') and 'dataset' in (_h5_keys(path) or [])

  def skips(self, path: str) -> bool:
    if os.path.basename(path).startswith('us_') and path.endswith('.h5'):
      logging.warning('%s: undersampled OCMR file skipped; prediction needs fully sampled fs_* files', path)
      return True
    return False

  def geometry(self, path: str) -> Geometry:
    """`(readout, phase encode, slices, frames)` with the voxel sizes of the header (readout and phase-encode
    pixels, the slice thickness; no position)."""
    info = ocmr.read_header(path)
    k = info['kspace_shape']
    fov_x, fov_y, fov_z = info['fov_mm']
    sizes = (fov_x / info['encoded_matrix'][0], fov_y / k[1], fov_z)
    affine = np.diag([s if s > 0 else 1.0 for s in sizes] + [1.0])
    return Geometry(tuple(info['image_shape']) + (k[6], k[4]), affine, ('readout', 'phase encode'))

  def write_predicted_labels(self, out_dir: str, path: str, examples: Sequence[Dict[str, Any]], seg: np.ndarray,
                             geometry: Geometry, **attrs) -> str:
    """The predicted segmentation as the file's label file `out_dir/labels/<stem>.h5` (`ocmr` label format).

    Each prediction is centre-cropped or padded back to the file's own image size (`ocmr.crop_or_pad`, the inverse
    placement of the one the reader applied), and every frame is marked unlabelled (`labelled = 0`): a person
    accepts a frame by correcting it and setting its `labelled` to 1.

    Args:
      out_dir: the prediction folder of the file.
      path: the OCMR file.
      examples: `load_examples(..., labelled_only=False)` of it, in the order of `seg`.
      seg: int `[num_examples, H, W]` predicted labels at the model's size.
      geometry: `geometry(path)`.
      **attrs: informational attributes stored in the file.
    """
    file_shape = tuple(geometry.shape[:2])
    num_slices = max(e['slice'] for e in examples) + 1
    num_frames = max(e['frame'] for e in examples) + 1
    masks = np.zeros((num_slices, num_frames) + file_shape, np.uint8)
    for example, labels in zip(examples, seg):
      masks[example['slice'], example['frame']] = ocmr.crop_or_pad(np.asarray(labels, np.uint8), file_shape)
    label_path = os.path.join(out_dir, 'labels', ocmr.subject_id(path) + '.h5')  # As `ocmr.label_path_for` has it.
    return labels_format.write_label_file(label_path, masks, np.zeros(masks.shape[:2], np.uint8),
                                          os.path.basename(path), origin='prediction', **attrs)


class MagnitudeLayout(Layout):
  """Labelled magnitude cine folders (ACDC, M&Ms; NIfTI `<stem>.nii.gz` + `<stem>_gt.nii.gz`, or HDF5 `image` /
  `label`), with a simulated smooth phase: `segrecon_jax/data/magnitude.py` has the rules.

  An item is an `(image path, label path)` pair (`magnitude.find_pairs`; an HDF5 file is its own label file);
  its subject is the file name up to its first `_`, its keys are named by the file's path under the folder.
  """
  description = ('A labelled magnitude cine folder (NIfTI <stem>.nii.gz + <stem>_gt.nii.gz as ACDC / M&Ms, or HDF5 '
                 'image/label) from manual_dir, with a simulated smooth phase.')
  instructions = """\
Put a labelled magnitude cine folder in manual_dir (searched recursively): NIfTI images `<stem>.nii.gz` with labels
`<stem>_gt.nii.gz` beside them (ACDC: patient001/patient001_frame01.nii.gz + patient001_frame01_gt.nii.gz; M&Ms:
A0S9V9/A0S9V9_sa.nii.gz + A0S9V9_sa_gt.nii.gz), or HDF5 files with datasets `image` and `label`
([H, W], [slices, H, W] or [slices, frames, H, W]). Set label_mapping to your label convention (ACDC's 1 RV,
2 myocardium, 3 LV cavity is (0, 3, 2, 1), the default; M&Ms' 1 LV, 2 myocardium, 3 RV is (0, 1, 2, 3)).
"""
  labelled_rule = ('A frame is labelled when its label map is not all background (in a file with a time axis), '
                   'every slice of a file without one.')
  input_description = ('a magnitude file (NIfTI .nii / .nii.gz, or HDF5 .h5 with dataset `image`, optionally '
                       '`label`)')
  suffixes = magnitude.NIFTI_SUFFIXES + ('.h5',)
  config_fields = OPTIONAL_FIELDS

  def find(self, folder: str, config) -> List[Tuple[str, str]]:
    del config
    return magnitude.find_pairs(folder)

  def missing(self, folder: str) -> str:
    del folder
    return 'found no image file with a label file (<stem>.nii.gz with <stem>_gt.nii.gz, or .h5 with image/label).'

  def subject(self, item: Tuple[str, Optional[str]]) -> str:
    return magnitude.subject_id(item[0])

  def key_stem(self, item: Tuple[str, Optional[str]], folder: str) -> str:
    return magnitude.relative_stem(item[0], folder)  # A patient has many files.

  def example_frames(self, item: Tuple[str, Optional[str]], config) -> List[Tuple[int, int]]:
    return magnitude.example_frames(*item, include_unlabelled=config.include_unlabelled)

  def count_examples(self, items: Sequence[Tuple[str, Optional[str]]], config) -> Dict[str, int]:
    return magnitude.distinct_examples(items, include_unlabelled=config.include_unlabelled)

  @staticmethod
  def _settings(config) -> Tuple[Tuple[int, ...], int, int]:
    """label_mapping, phase_seed and field_of_view of `config` (ACDC's mapping, seed 0, no view without them)."""
    return (tuple(getattr(config, 'label_mapping', magnitude.ACDC_LABEL_MAPPING)),
            int(getattr(config, 'phase_seed', 0)), int(getattr(config, 'field_of_view', 0)))

  def load_examples(self, item: Tuple[str, Optional[str]], image_size: Sequence[int], config,
                    root: Optional[str] = None, labelled_only: bool = True) -> List[Dict[str, Any]]:
    label_mapping, phase_seed, field_of_view = self._settings(config)
    return magnitude.load_examples(item[0], item[1], image_size, label_mapping, phase_seed, root=root,
                                   labelled_only=labelled_only, field_of_view=field_of_view)

  def claims(self, path: str) -> bool:
    if path.endswith(magnitude.NIFTI_SUFFIXES):
      return True
    return path.endswith('.h5') and 'image' in (_h5_keys(path) or [])

  def skips(self, path: str) -> bool:
    return path.endswith(magnitude.NIFTI_SUFFIXES) and not magnitude.is_image_name(os.path.basename(path))  # `_gt`

  def item_of(self, path: str) -> Tuple[str, Optional[str]]:
    return path, magnitude.label_partner(path)

  def geometry(self, path: str) -> Geometry:
    """NIfTI: its voxel shape `[x, y(, z(, t))]` and affine; HDF5 `[(slices, (frames,)) H, W]`: `(H, W, slices,
    frames)`, the identity affine."""
    shape, affine = magnitude.image_geometry(path)
    affine = np.eye(4) if affine is None else affine
    if path.endswith('.h5'):
      return Geometry(tuple(shape[-2:]) + tuple(shape[:-2]), affine, ('H', 'W'))
    return Geometry(tuple(shape), affine, ('x', 'y'))

  def log_placement(self, path: str, geometry: Geometry, image_size: Sequence[int], config) -> None:
    field_of_view = self._settings(config)[2]
    if not field_of_view:
      super().log_placement(path, geometry, image_size, config)
      return
    logging.info('%s: the %dx%d source pixels around the centre of each image are resampled to the model\'s %dx%d '
                 '(field_of_view); predictions are put back on the file\'s grid, background outside that window',
                 path, field_of_view, field_of_view, *image_size)

  def place(self, values: np.ndarray, in_plane: Sequence[int], config, is_label: bool = False) -> np.ndarray:
    field_of_view = self._settings(config)[2]
    if field_of_view:
      return magnitude.place_view(np.asarray(values), in_plane, field_of_view, is_label)
    return super().place(values, in_plane, config, is_label)

  def label_mapping(self, config) -> Tuple[int, ...]:
    return self._settings(config)[0]


register_layout('real', OcmrLayout())
register_layout('magnitude', MagnitudeLayout())
