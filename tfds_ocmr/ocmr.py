"""TFDS builder `ocmr`: normalised complex cine slices with LV/RV segmentations, from OCMR, phantom or NIfTI files.

Each config names a data layout (`OcmrConfig.source`, `segrecon_jax.data.layouts`) and the builder asks that layout
for the folder's items, their subjects, example counts and examples. The OCMR-format configs read their files
through the `real` layout (`segrecon_jax.data.ocmr.load_examples`, the same reader `main.py --mode=predict` uses),
so the phantom configs (the `phantom` layout, defined here) exercise exactly the code path of the real data;
`nifti` reads labelled magnitude folders (ACDC, M&Ms) through the `magnitude` layout. `configure` derives a config
with other settings (image size, split, ...) under its own name, so each setting is prepared into its own folder;
it also gives a config of a layout registered from your own code. The builder writes array_record by default (no
TensorFlow needed). See README.md next to this file.
"""

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from segrecon_jax import settings
from segrecon_jax.data import layouts
from segrecon_jax.data import ocmr

_CITATION = """\
@article{chen2020ocmr,
  title={OCMR (v1.0)--Open-Access Multi-Coil k-Space Dataset for Cardiovascular Magnetic Resonance Imaging},
  author={Chen, Chong and Liu, Yingmin and Schniter, Philip and Tong, Matthew and Zareba, Karolina and
          Simonetti, Orlando and Potter, Lee and Ahmad, Rizwan},
  journal={arXiv preprint arXiv:2008.03410},
  year={2020}
}
@inproceedings{acar2021segmentation,
  title={Segmentation-Aware {MRI} Reconstruction},
  author={Acar, Mert and {\\c{C}}ukur, Tolga and {\\"O}ks{\\"u}z, {\\.I}lkay},
  booktitle={Machine Learning for Medical Image Reconstruction (MLMIR)},
  year={2021}
}
"""

# The paper's split: 183 labelled slices, 155 train / 28 test, no subject in both.
_PAPER_TEST_FRACTION = 28 / 183


class OCMRManualDirError(FileNotFoundError):
  """A `real` or `nifti` config found no usable files in its manual_dir (or no manual_dir), or labelled frames of
  fewer than 2 subjects."""


# The record of the files a `real` or `nifti` dataset was prepared from, written into the prepared folder with the
# data (so it is renamed into place with them): {'manual_dir': path, 'files': {path under manual_dir: None for a
# label file that was absent, else {'size', 'mtime_ns', 'sha256'}}}.
SOURCE_RECORD = 'source_files.json'
# The version of the readers that turn a manual_dir's files into examples, stored in the source record. Raise it
# when the same files would be served differently, so that a dataset prepared by older readers is refused rather
# than silently reused. 1: the first readers. 2: a 3-D HDF5 magnitude array is [slices, H, W] (every slice served,
# background-only slices too) and a single-phase file (ACDC's `_frameYY`) serves its cine frame YY - 1. 3: a file of
# the 2-D slice layout (`_frameYY_slice_K`) serves slice K of frame YY - 1 (it was slice 0 of frame 0).
READER_VERSION = 3
PHANTOM_SCRATCH = 'ocmr_phantom_scratch'  # Under the download dir: one folder per config, deleted once prepared.


def layout_of(config: 'OcmrConfig') -> layouts.Layout:
  """The data layout a config reads (`config.source`, a name of `layouts.register_layout`)."""
  if config.source not in layouts.names():
    raise ValueError(f'OcmrConfig.source must be one of {tuple(layouts.names())}, got {config.source!r}')
  return layouts.get(config.source)


def source_files(config: 'OcmrConfig', manual_dir: str) -> List[str]:
  """Every file a manual config reads from `manual_dir` (`Layout.files`: for `real` each OCMR file and its label
  file, whether it exists or not, as a label file added later changes the data; for `nifti` each image and label
  file); none for a layout that reads no manual_dir."""
  layout = layout_of(config)
  return layout.files(manual_dir, config) if layout.reads_manual_dir else []


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      digest.update(block)
  return digest.hexdigest()


def source_record(config: 'OcmrConfig', manual_dir: str, hashes: bool = True) -> Dict:
  """The fingerprint of the files `config` reads from `manual_dir` (`SOURCE_RECORD`); `hashes=False` leaves the
  sha256 out (cheap: sizes and modification times only)."""
  manual_dir = os.path.abspath(manual_dir)
  files = {}
  for path in source_files(config, manual_dir):
    name = os.path.relpath(path, manual_dir).replace(os.sep, '/')
    if not os.path.exists(path):
      files[name] = None
      continue
    stat = os.stat(path)
    files[name] = {'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns}
    if hashes:
      files[name]['sha256'] = _sha256(path)
  return {'manual_dir': manual_dir, 'reader_version': READER_VERSION, 'files': files}


def _mtime(ns: int) -> str:
  return datetime.datetime.fromtimestamp(ns / 1e9).isoformat(sep=' ', timespec='seconds')


def source_changes(recorded: Dict, current: Dict) -> List[str]:
  """What differs between the recorded files and the files of `current` (`source_record(..., hashes=False)`).

  A file whose size and modification time are unchanged counts as unchanged; one with another modification time
  but its recorded size is hashed and compared (a copy of the same folder matches).
  """
  old, new = recorded.get('files', {}), current['files']
  changes = []
  for name in sorted(set(old) | set(new)):
    before, after = old.get(name), new.get(name)
    if before is None and after is None:
      continue
    if before is None:
      changes.append(f'{name} was added')
    elif after is None:
      changes.append(f'{name} was removed')
    elif before['size'] != after['size']:
      changes.append(f'{name} changed size ({before["size"]} -> {after["size"]} bytes)')
    elif before['mtime_ns'] != after['mtime_ns']:
      if before.get('sha256') != _sha256(os.path.join(current['manual_dir'], name)):
        changes.append(f'{name} changed (modified {_mtime(after["mtime_ns"])}, recorded {_mtime(before["mtime_ns"])})')
  return changes


def read_source_record(dataset_dir: str) -> Optional[Dict]:
  """The `SOURCE_RECORD` of a prepared dataset folder, or None (prepared from no manual_dir, or before records)."""
  path = os.path.join(dataset_dir, SOURCE_RECORD)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def clean_interrupted(builder) -> List[str]:
  """Deletes what a killed preparation of `builder`'s config left: TFDS's `incomplete.*` folders beside the
  version folder and the config's phantom scratch folder. Call only while holding the preparation lock.

  Returns:
    The deleted paths.
  """
  config_dir = os.path.dirname(os.fspath(builder.data_path))
  leftovers = []
  if os.path.isdir(config_dir):
    leftovers += [os.path.join(config_dir, n) for n in sorted(os.listdir(config_dir)) if n.startswith('incomplete.')]
  scratch = os.path.join(os.fspath(builder.data_dir_root), 'downloads', PHANTOM_SCRATCH, builder.builder_config.name)
  if os.path.exists(scratch):
    leftovers.append(scratch)
  for path in leftovers:
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)
  return leftovers


@dataclasses.dataclass(eq=False)
class OcmrConfig(tfds.core.BuilderConfig):
  """Config of the `ocmr` builder; every field is stored with each checkpoint (`input_pipeline.data_info`)."""
  # The data layout (`segrecon_jax.data.layouts`): 'phantom' (generated), 'real' (OCMR files), 'magnitude'
  # (NIfTI/HDF5 folder) or the name of one registered from your code.
  source: str = 'phantom'
  image_size: Tuple[int, int] = (128, 128)  # (H, W) every image / label map is centred-cropped or zero-padded to.
  include_unlabelled: bool = False  # Also serve frames without labels (all-zero segmentation, has_labels=False).
  test_fraction: float = _PAPER_TEST_FRACTION  # Target share of examples in `test` (whole subjects only).
  split_seed: int = 0  # Seed of the subject shuffle that assigns subjects to `test`.
  num_phantom_subjects: int = 0  # Phantom subjects 1..N (phantom source only).
  phantom_seed: int = 0  # Seed of the phantom anatomy, coils and noise.
  # Per-subject phantom settings; subject i (from 1) uses entry (i - 1) % len of each tuple.
  phantom_recon_sizes: Tuple[Tuple[int, int], ...] = ((128, 128),)  # (readout, phase-encode) recon matrix.
  phantom_num_slices: Tuple[int, ...] = (1,)  # Slices per subject.
  phantom_num_frames: Tuple[int, ...] = (2,)  # Cardiac frames per slice.
  phantom_num_coils: Tuple[int, ...] = (4,)  # Receiver coils.
  phantom_labelled_frames: Tuple[int, ...] = ()  # Frames labelled in each slice; () labels every frame.
  # Magnitude source only: label value v of the files becomes our class label_mapping[v] (ACDC's order by default).
  label_mapping: Tuple[int, ...] = (0, 3, 2, 1)
  phase_seed: int = 0  # Magnitude source only: seed of the smooth synthetic phase (`magnitude.synthetic_phase`).
  # Magnitude source only: 0 centre-crops / pads each image to image_size; F serves the F x F source pixels around
  # the image centre resampled to image_size (`magnitude.resample_view`).
  field_of_view: int = 0

  def __repr__(self) -> str:
    # TFDS logs a derived config on every builder call; the data-defining fields are enough to read there.
    fields = ['source', 'image_size', 'include_unlabelled', 'test_fraction', 'split_seed']
    fields += [f for f in layouts.OPTIONAL_FIELDS if f in _config_fields(self.source)]
    return f'OcmrConfig({self.name!r}, ' + ', '.join(f'{f}={getattr(self, f)!r}' for f in fields) + ')'

  def stored_fields(self) -> Dict:
    """The fields that describe this config's data, for the checkpoint (`input_pipeline.data_info`).

    The optional fields (`layouts.OPTIONAL_FIELDS`) are left out for a layout that does not read them
    (`Layout.config_fields`; the magnitude fields for every source but 'magnitude'), where they change nothing, so
    checkpoints written before those fields existed still match their data.
    """
    fields = {k: v for k, v in vars(self).items() if isinstance(v, (int, float, str, tuple, list))}
    read = layout_of(self).config_fields
    for field in layouts.OPTIONAL_FIELDS:
      if field not in read:
        fields.pop(field, None)
    return fields


def _config_fields(source: str) -> Tuple[str, ...]:
  """The optional fields the layout `source` reads; none for a name not registered (for `__repr__`)."""
  return layouts.get(source).config_fields if source in layouts.names() else ()


# The OcmrConfig fields an experiment config may set (the DATA_BUILDER fields of segrecon_jax/settings.py, in the
# order their parts appear in a derived name).
CONFIGURABLE_FIELDS = settings.names(settings.DATA_BUILDER)


def _name_part(field: str, value) -> str:
  if field == 'image_size':
    return 'x'.join(str(int(v)) for v in value)
  if field == 'include_unlabelled':
    return 'unlabelled' if value else 'labelled'
  if field == 'label_mapping':
    return 'map' + '-'.join(str(int(v)) for v in value)
  short = {'test_fraction': 'test', 'split_seed': 'seed', 'phase_seed': 'phase', 'field_of_view': 'fov'}[field]
  return f'{short}{value:g}' if isinstance(value, float) else f'{short}{value}'


def _registered_configs() -> List[str]:
  """The layouts registered from outside this module, each a config of its own name (`configure`)."""
  built_in = {c.source for c in Ocmr.BUILDER_CONFIGS}
  return [name for name in layouts.names() if name not in built_in]


def _base_config(name: str) -> OcmrConfig:
  """The built-in config `name`, or the config of the registered layout `name` (the OcmrConfig defaults, e.g.
  128x128, with `source=name`)."""
  base = next((c for c in Ocmr.BUILDER_CONFIGS if c.name == name), None)
  if base is not None:
    if name in _registered_configs():
      raise ValueError(f'the data layout {name!r} has the name of a built-in ocmr config: register it under another '
                       'name')
    return base
  if name in _registered_configs():
    layout = layouts.get(name)
    return OcmrConfig(name=name, source=name,
                      description=layout.description or f'The {name!r} data layout ({type(layout).__name__}).')
  raise ValueError(f'unknown ocmr config {name!r}: expected one of '
                   f'{[c.name for c in Ocmr.BUILDER_CONFIGS] + _registered_configs()}')


def configure(name: str, **overrides) -> OcmrConfig:
  """The built-in config `name`, or the config of a layout registered as `name` (`layouts.register_layout`), with
  some `CONFIGURABLE_FIELDS` changed, under a name of its own.

  Fields left None or equal to the config's value change nothing; the others are appended to the name in
  `CONFIGURABLE_FIELDS` order (`configure('real', image_size=(128, 128))` is `real_128x128`), so TFDS prepares
  each distinct setting into its own folder `data_dir/ocmr/<name>/<version>` and two sizes never mix.

  Args:
    name: a name of `Ocmr.BUILDER_CONFIGS`, or of a layout registered from your code.
    **overrides: `image_size` ((H, W) or one int for a square), `test_fraction`, `split_seed`,
      `include_unlabelled`, `label_mapping`, `phase_seed`, `field_of_view` (the last three only for a layout that
      reads them, `Layout.config_fields`).

  Returns:
    The `OcmrConfig` to pass as `tfds.builder('ocmr', config=...)`.
  """
  base = _base_config(name)
  unknown = sorted(set(overrides) - set(CONFIGURABLE_FIELDS))
  if unknown:
    raise ValueError(f'ocmr config fields {unknown} cannot be set: expected some of {list(CONFIGURABLE_FIELDS)}')
  changes = {}
  for field in CONFIGURABLE_FIELDS:
    value = overrides.get(field)
    if value is None:
      continue
    if field == 'image_size':
      value = (int(value), int(value)) if np.ndim(value) == 0 else tuple(int(v) for v in value)
      if len(value) != 2 or min(value) < 1:
        raise ValueError(f'image_size={overrides[field]!r}: expected a positive side or (H, W)')
    elif field == 'label_mapping':
      value = tuple(int(v) for v in value)
      if not value or min(value) < 0 or max(value) >= ocmr.NUM_CLASSES:
        raise ValueError(f'label_mapping={overrides[field]!r}: expected one of our classes 0..{ocmr.NUM_CLASSES - 1} '
                         f'{ocmr.CLASSES} for each label value of the files, e.g. ACDC\'s (0, 3, 2, 1)')
    elif field == 'test_fraction':
      value = float(value)
      if not 0.0 < value < 1.0:
        raise ValueError(f'test_fraction={value!r}: must be in (0, 1)')
    elif field == 'include_unlabelled':
      value = bool(value)
    elif field == 'field_of_view':
      value = int(value)
      if value < 0:
        raise ValueError(f'field_of_view={overrides[field]!r}: expected 0 (crop or pad to image_size) or the side, in '
                         'source pixels, of the square around the image centre served at image_size')
    else:
      value = int(value)
    if value != getattr(base, field):
      if field in layouts.OPTIONAL_FIELDS and field not in layout_of(base).config_fields:
        raise ValueError(f'{field}={overrides[field]!r} applies to magnitude folders (the nifti config) only, not '
                         f'to {name!r} (source {base.source!r})')
      changes[field] = value
  if not changes:
    return base
  derived = '_'.join([name] + [_name_part(f, changes[f]) for f in CONFIGURABLE_FIELDS if f in changes])
  return dataclasses.replace(base, name=derived, description=f'{base.description} Changed: {changes}.', **changes)


def _cycle(values: Sequence, subject: int):
  return values[(subject - 1) % len(values)]


def phantom_subject_settings(config: OcmrConfig, subject: int) -> Dict:
  """Keyword arguments of `phantom.write_subject` for one subject (numbered from 1) of a phantom config."""
  num_frames = _cycle(config.phantom_num_frames, subject)
  labelled = tuple(f for f in config.phantom_labelled_frames if f < num_frames) or 'all'
  return dict(recon_size=tuple(_cycle(config.phantom_recon_sizes, subject)),
              num_coils=_cycle(config.phantom_num_coils, subject),
              num_slices=_cycle(config.phantom_num_slices, subject),
              num_frames=num_frames,
              noise_scan=True,
              labelled_frames=labelled)


def phantom_subject_examples(config: OcmrConfig, subject: int) -> int:
  """How many labelled (slice, frame) examples a phantom subject contributes."""
  settings = phantom_subject_settings(config, subject)
  frames = settings['num_frames'] if settings['labelled_frames'] == 'all' else len(settings['labelled_frames'])
  return settings['num_slices'] * frames


class PhantomLayout(layouts.Layout):
  """The phantom configs' generated subjects: each is written as an OCMR file with its label file into a scratch
  folder (`phantom.write_subject`), read back through the `real` layout, and deleted.

  An item is a subject number (from 1); its subject is the stem of its OCMR file, `fs_<NNNN>_phantom`.
  """
  description = 'OCMR-format cardiac phantom (no download).'
  reads_manual_dir = False

  def find(self, folder: str, config: OcmrConfig) -> List[int]:
    del folder  # Nothing to find: the config says which subjects exist.
    return list(range(1, config.num_phantom_subjects + 1))

  def subject(self, item: int) -> str:
    return f'fs_{item:04d}_phantom'

  def count_examples(self, items: Sequence[int], config: OcmrConfig) -> Dict[str, int]:
    return {self.subject(s): phantom_subject_examples(config, s) for s in items}

  def load_examples(self, item: int, image_size: Sequence[int], config: OcmrConfig, root: Optional[str] = None,
                    labelled_only: bool = True) -> List[Dict]:
    """Writes subject `item` into a temporary folder under `root` (the scratch folder), reads it back through the
    `real` layout, deletes it."""
    from segrecon_jax.data import phantom  # pylint: disable=g-import-not-at-top
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as directory:
      kspace_path, _ = phantom.write_subject(directory, item, config.phantom_seed,
                                             **phantom_subject_settings(config, item))
      examples = [e for e in layouts.get('real').load_examples(kspace_path, image_size, config,
                                                               labelled_only=labelled_only)
                  if e['has_labels'] or not labelled_only]
    expected = phantom_subject_examples(config, item)
    if labelled_only and len(examples) != expected:
      raise RuntimeError(f'{kspace_path}: phantom subject {item} gave {len(examples)} labelled examples, '
                         f'expected {expected} from {phantom_subject_settings(config, item)}')
    return examples


layouts.register_layout('phantom', PhantomLayout())


def split_subjects(counts: Dict[str, int], test_fraction: float, seed: int) -> Tuple[List[str], List[str]]:
  """Deterministic subject-wise train/test split.

  The subjects are sorted, shuffled with `seed`, and walked in that order: a subject goes to `test` when that
  does not take the test count above `round(test_fraction * total)`; every other subject goes to `train`. If no
  subject fits, the first one of the shuffled order is the test set. No subject is in both splits.

  Args:
    counts: examples per subject id.
    test_fraction: target share of the examples in `test`, in (0, 1).
    seed: shuffle seed.

  Returns:
    (train subject ids, test subject ids), each sorted.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in (0, 1), got {test_fraction}')
  subjects = sorted(s for s, n in counts.items() if n > 0)
  if len(subjects) < 2:
    raise ValueError(f'a train/test split needs at least 2 subjects with examples, got {subjects}')
  order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
  target = round(test_fraction * sum(counts[s] for s in subjects))
  test, num_test = [], 0
  for subject in order:
    if num_test + counts[subject] <= target:
      test.append(subject)
      num_test += counts[subject]
  if not test:
    test = [order[0]]
  if len(test) == len(subjects):
    test = test[:-1]
  return sorted(set(subjects) - set(test)), sorted(test)


def check_enough_subjects(counts: Dict[str, int], files: Dict[str, List[str]], manual_dir: str,
                          include_unlabelled: bool, labelled_rule: str) -> None:
  """Raises OCMRManualDirError unless at least 2 subjects of a manual_dir have examples (`split_subjects` puts
  whole subjects in test, so it needs one on each side), naming the files that have none.

  Args:
    counts: examples per subject id.
    files: the files of each subject id.
    manual_dir: the folder read, for the message.
    include_unlabelled: whether unlabelled frames are served (then every frame counts).
    labelled_rule: what makes a frame labelled in this source, for the message.
  """
  served = sorted(s for s, n in counts.items() if n > 0)
  if len(served) >= 2:
    return
  empty = [path for subject in sorted(files) if not counts.get(subject) for path in files[subject]]
  shown = ', '.join(empty[:4]) + (f' and {len(empty) - 4} more' if len(empty) > 4 else '')
  unlabelled = f' (no frame of {shown} is labelled)' if empty else ''
  if include_unlabelled:
    found = f'found frames of {len(served)} subject(s) only{": " + served[0] if served else ""}'
  elif not served:
    found = f'no frame of {shown} is labelled, so there is nothing to train or test on'
  else:
    found = f'only subject {served[0]} has labelled frames{unlabelled}'
  raise OCMRManualDirError(f'{manual_dir}: {found}. A train/test split needs at least 2 subjects with examples (whole '
                           f'subjects go to test). {labelled_rule}')


def _example_key(subject: str, slice_index: int, frame: int) -> str:
  return f'{subject}/slice{slice_index:02d}/frame{frame:03d}'


def _to_features(example: Dict) -> Dict:
  image = example['image']
  return {
      'image': np.stack([image.real, image.imag], axis=-1).astype(np.float32),
      'segmentation': example['segmentation'].astype(np.uint8),
      'subject_id': example['subject_id'],
      'file_name': example['file_name'],
      'slice': np.int32(example['slice']),
      'frame': np.int32(example['frame']),
      'scale': np.float32(example['scale']),
      'has_labels': bool(example['has_labels']),
  }


class Ocmr(tfds.core.GeneratorBasedBuilder):
  """Coil-combined OCMR cine slices (complex, as float32 real/imag channels) with LV/RV segmentation maps."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: phantom, phantom_small, phantom_medium, phantom_tiny, real and nifti.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f'real:\n{layouts.get("real").instructions}\n'
                                  f'nifti:\n{layouts.get("magnitude").instructions}')
  BUILDER_CONFIGS = [
      # 183 labelled slices (155 train / 28 test) as in the paper. Readouts of 136..160 are cropped to 128 and
      # phase encodes of 96..120 are zero-padded to 128.
      OcmrConfig(name='phantom', description='OCMR-format cardiac phantom, 183 labelled slices, 128x128.',
                 image_size=(128, 128), num_phantom_subjects=27, phantom_seed=0,
                 phantom_recon_sizes=((144, 112), (160, 96), (136, 120), (152, 104)),
                 phantom_num_slices=(2, 2, 3, 2), phantom_num_frames=(4, 2, 3), phantom_num_coils=(4, 6)),
      OcmrConfig(name='phantom_small', description='Small phantom for a CPU smoke run: 60 slices, 64x64.',
                 image_size=(64, 64), num_phantom_subjects=12, phantom_seed=1,
                 phantom_recon_sizes=((72, 56), (80, 48), (68, 60)),
                 phantom_num_slices=(2, 1, 2), phantom_num_frames=(3,), phantom_num_coils=(4,)),
      # The CPU reproduction study (configs/default.py `cpu_study`): phantom_small's sizes with 4x the subjects, so
      # the networks see enough anatomy not to memorise it and the test split holds ~40 slices.
      OcmrConfig(name='phantom_medium', description='Phantom for the CPU study: ~240 slices, 64x64.',
                 image_size=(64, 64), num_phantom_subjects=48, phantom_seed=3,
                 phantom_recon_sizes=((72, 56), (80, 48), (68, 60)),
                 phantom_num_slices=(2, 1, 2), phantom_num_frames=(3,), phantom_num_coils=(4,)),
      OcmrConfig(name='phantom_tiny', description='Tiny phantom for tests: 24 slices, 32x32.',
                 image_size=(32, 32), num_phantom_subjects=6, phantom_seed=2,
                 phantom_recon_sizes=((40, 28), (36, 24)),
                 phantom_num_slices=(2,), phantom_num_frames=(3,), phantom_num_coils=(4,),
                 phantom_labelled_frames=(0, 2)),
      # OCMR's fully sampled recon matrices are at most 256 (readout, after removing the 2x oversampling) x 208
      # (phase encode), so 256x256 keeps every field of view whole (zero-padding only) and divides by 16 for the
      # 4-level U-Nets.
      OcmrConfig(name='real', description='Your OCMR fs_*.h5 files and labels from manual_dir, 256x256.',
                 source='real', image_size=(256, 256)),
      # ACDC's in-plane matrices are ~150..430 voxels at ~1.4 mm, the heart near the centre: 256x256 keeps it.
      OcmrConfig(name='nifti', description=('A labelled magnitude cine folder (NIfTI <stem>.nii.gz + <stem>_gt.nii.gz '
                                            'as ACDC / M&Ms, or HDF5 image/label) from manual_dir, with a simulated '
                                            'smooth phase; 256x256.'),
                 source='magnitude', image_size=(256, 256), label_mapping=(0, 3, 2, 1)),
  ]
  DEFAULT_CONFIG_NAME = 'phantom'

  def __init__(self, *, file_format=None, **kwargs):
    # array_record by default: TFDS's own default (tfrecord) needs TensorFlow to write, which this project lacks.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    height, width = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Coil-combined (sensitivity-weighted) fully sampled cine MRI slices, each divided by its '
                     'maximum magnitude, with segmentation maps: 0 background, 1 LV blood pool, 2 LV myocardium, '
                     '3 RV blood pool.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(height, width, 2), dtype=np.float32,
                                          doc='complex image as (real, imag), max magnitude 1'),
            'segmentation': tfds.features.Tensor(shape=(height, width), dtype=np.uint8,
                                                 doc='0 background, 1 LV blood pool, 2 LV myocardium, 3 RV'),
            'subject_id': tfds.features.Text(doc='subject key (the OCMR file stem); decodes as bytes'),
            'file_name': tfds.features.Text(doc='the OCMR file name; decodes as bytes'),
            'slice': tfds.features.Scalar(dtype=np.int32, doc='slice index in the file'),
            'frame': tfds.features.Scalar(dtype=np.int32, doc='cardiac phase index in the file'),
            'scale': tfds.features.Scalar(dtype=np.float32, doc='max magnitude the image was divided by'),
            'has_labels': tfds.features.Scalar(dtype=np.bool_, doc='False: segmentation is all zero, unlabelled'),
        }),
        supervised_keys=None,
        homepage='https://www.ocmr.info/',
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    layout = layout_of(config)
    if layout.reads_manual_dir:
      folder = self._manual_dir(dl_manager, layout.instructions)
    else:  # A layout that makes its examples writes them here; deleted once read.
      folder = os.path.join(os.fspath(dl_manager.download_dir), PHANTOM_SCRATCH, config.name)
    items = layout.find(folder, config)
    if layout.reads_manual_dir:
      if not items:
        raise OCMRManualDirError(f'{folder}: {layout.missing(folder)}\n{layout.instructions}')
      self._write_source_record(folder)
    counts = layout.count_examples(items, config)
    if layout.reads_manual_dir:
      files = {}
      for item in items:
        files.setdefault(layout.subject(item), []).append(layout.item_file(item))
      check_enough_subjects(counts, files, folder, config.include_unlabelled, layout.labelled_rule)
    train, test = split_subjects(counts, config.test_fraction, config.split_seed)
    logging.info('%s: %d items (%s layout) of %d subjects (%d train, %d test)', folder, len(items), layout.name,
                 len(counts), len(train), len(test))
    splits = {'train': set(train), 'test': set(test)}
    return {split: self._generate_examples(layout, [i for i in items if layout.subject(i) in subjects], folder)
            for split, subjects in splits.items()}

  def _manual_dir(self, dl_manager, instructions: str) -> str:
    given = dl_manager._manual_dir  # pylint: disable=protected-access  (the folder asked for, for the message)
    try:
      return os.fspath(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS asserts that the folder exists and is not empty
      raise OCMRManualDirError(f'The `{self.builder_config.name}` config needs your files in a manual_dir, but '
                               f'{given or "none"} is missing or empty.\n{instructions}') from e

  def _write_source_record(self, manual_dir: str) -> None:
    """Records the files read (`SOURCE_RECORD`) in the folder being prepared (renamed into place with the data)."""
    with open(os.path.join(os.fspath(self.data_dir), SOURCE_RECORD), 'w') as f:
      json.dump(source_record(self.builder_config, manual_dir), f, indent=1, sort_keys=True)

  def _generate_examples(self, layout: layouts.Layout, items: Sequence, folder: str
                         ) -> Iterator[Tuple[str, Dict]]:
    """Examples of the layout's `items` of `folder`, keyed `<Layout.key_stem>/slice<ss>/frame<fff>`."""
    config = self.builder_config
    for item in items:
      stem = layout.key_stem(item, folder)
      for example in layout.load_examples(item, config.image_size, config, root=folder,
                                          labelled_only=not config.include_unlabelled):
        if not example['has_labels'] and not config.include_unlabelled:
          continue
        yield _example_key(stem, example['slice'], example['frame']), _to_features(example)
    if not layout.reads_manual_dir:
      try:
        os.rmdir(folder)  # only once empty: the other split may still be writing there
        os.rmdir(os.path.dirname(folder))  # PHANTOM_SCRATCH, once no other config uses it
      except OSError:
        pass
