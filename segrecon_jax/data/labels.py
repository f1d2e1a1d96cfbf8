"""The segmentation classes and the project's label-file format (`labels/<stem>.h5`), one writer for every source."""

import os
from typing import Optional, Sequence, Tuple

import h5py
import numpy as np

# The one table of class names, in label order; metrics, readers and writers import it.
CLASS_NAMES = ('background', 'lv_pool', 'myocardium', 'rv_pool')
NUM_CLASSES = len(CLASS_NAMES)
BACKGROUND, LV_POOL, MYOCARDIUM, RV_POOL = range(NUM_CLASSES)


def _temporary_path(path: str) -> str:
  """A hidden name beside `path` that no `*.h5` glob matches, so a half-written file never looks complete."""
  directory, name = os.path.split(path)
  return os.path.join(directory, f'.{name}.{os.getpid()}.tmp')


def write_label_file(path: str, masks: np.ndarray, labelled: np.ndarray, source_file: str,
                     **attrs) -> str:
  """Writes a label file (format in `segrecon_jax.data.ocmr`), atomically: a temporary name, then a rename.

  Args:
    path: the label file, usually `<dir of the OCMR file>/labels/<stem>.h5` (`ocmr.label_path_for`).
    masks: integer `[num_slices, num_frames, H, W]` with values in 0..NUM_CLASSES - 1.
    labelled: `[num_slices, num_frames]`, nonzero where a person has accepted that frame's labels.
    source_file: the OCMR file name the labels belong to.
    **attrs: further informational attributes (e.g. `ed_frame`, `origin`).

  Returns:
    path.
  """
  masks, labelled = np.asarray(masks), np.asarray(labelled)
  if masks.ndim != 4 or labelled.shape != masks.shape[:2]:
    raise ValueError(f'{path}: expected masks [slices, frames, H, W] and labelled [slices, frames], got '
                     f'{masks.shape} and {labelled.shape}')
  if masks.size and (masks.min() < 0 or masks.max() >= NUM_CLASSES):
    raise ValueError(f'{path}: label values must be in 0..{NUM_CLASSES - 1} {CLASS_NAMES}, got range '
                     f'[{masks.min()}, {masks.max()}]')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  temporary = _temporary_path(path)
  try:
    with h5py.File(temporary, 'w') as f:
      f.create_dataset('masks', data=masks.astype(np.uint8), compression='gzip', compression_opts=4,
                       chunks=(1, 1) + masks.shape[2:] if masks.size else None)
      f.create_dataset('labelled', data=labelled.astype(np.uint8))
      f.attrs['source_file'] = source_file
      f.attrs['classes'] = ','.join(CLASS_NAMES)
      for key, value in attrs.items():
        f.attrs[key] = value
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  return path


def remap(labels: np.ndarray, mapping, path: Optional[str] = None) -> np.ndarray:
  """Maps a dataset's label values to ours: value `v` becomes `mapping[v]` (e.g. ACDC's (0, 3, 2, 1))."""
  labels = np.asarray(labels)
  table = np.asarray(mapping, np.int64)
  where = f'{path}: ' if path else ''
  if labels.size and (labels.min() < 0 or labels.max() >= len(table)):
    raise ValueError(f'{where}label values must be in 0..{len(table) - 1} (the label mapping {tuple(mapping)}), '
                     f'got range [{labels.min()}, {labels.max()}]')
  return table[labels.astype(np.int64)].astype(np.uint8)


def inverse_mapping(mapping: Sequence[int], num_classes: int = NUM_CLASSES) -> Optional[Tuple[int, ...]]:
  """The inverse of a label mapping (`remap`): `inverse[c]` is the dataset's value of our class c, the one `v` with
  `mapping[v] == c` (ACDC's (0, 3, 2, 1) is its own inverse). None when a class has no value or several: then our
  labels have no single way back to the dataset's values."""
  values = [[v for v, ours in enumerate(mapping) if ours == c] for c in range(num_classes)]
  return tuple(v[0] for v in values) if all(len(v) == 1 for v in values) else None
