"""TFDS builder `ocmr`: coil-combined, normalised cine slices with LV/RV segmentations, from OCMR or phantom files.

Every config reads its OCMR-format files through `segrecon_jax.data.ocmr.load_examples` (the same reader
`train.py --mode=predict` uses), so the phantom configs exercise exactly the code path of the real data. See
README.md next to this file for the configs, the label format and how to build `real` from your own OCMR files.
"""

import dataclasses
import logging
import os
import tempfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

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

_MANUAL_INSTRUCTIONS = """\
Put your fully sampled OCMR files (fs_*.h5, from https://ocmr.info, under the OCMR Data Sharing and Usage
Agreement) directly in manual_dir, and one label file per OCMR file in manual_dir/labels/ with the same stem:
  manual_dir/fs_0001_1_5T.h5
  manual_dir/labels/fs_0001_1_5T.h5   (datasets `masks` uint8 [slices, frames, H, W], `labelled` uint8
                                       [slices, frames]; see tfds_ocmr/README.md)
Then build with
  builder = tfds.builder('ocmr', config='real', data_dir=DATA_DIR)
  builder.download_and_prepare(file_format='array_record',
                               download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))
Undersampled us_*.h5 files found there are skipped with a warning.
"""

# The paper's split: 183 labelled slices, 155 train / 28 test, no subject in both.
_PAPER_TEST_FRACTION = 28 / 183


class OCMRManualDirError(FileNotFoundError):
  """The `real` config found no usable OCMR files in manual_dir."""


@dataclasses.dataclass(eq=False)
class OcmrConfig(tfds.core.BuilderConfig):
  """Config of the `ocmr` builder; every field is stored with each checkpoint (`input_pipeline.data_info`)."""
  source: str = 'phantom'  # 'phantom' (generated, no download) or 'real' (OCMR files in manual_dir).
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
  RELEASE_NOTES = {'1.0.0': 'Initial release: phantom, phantom_small, phantom_medium, phantom_tiny and real configs.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_INSTRUCTIONS
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
  ]
  DEFAULT_CONFIG_NAME = 'phantom'

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
    if config.source == 'phantom':
      counts = {self._phantom_stem(s): phantom_subject_examples(config, s)
                for s in range(1, config.num_phantom_subjects + 1)}
      train, test = split_subjects(counts, config.test_fraction, config.split_seed)
      scratch = os.path.join(os.fspath(dl_manager.download_dir), 'ocmr_phantom_scratch')
      return {'train': self._generate_examples(phantom_stems=train, counts=counts, scratch=scratch),
              'test': self._generate_examples(phantom_stems=test, counts=counts, scratch=scratch)}
    if config.source == 'real':
      files = self._real_files(dl_manager)
      counts = {ocmr.subject_id(p): len(ocmr.example_frames(p, include_unlabelled=config.include_unlabelled))
                for p in files}
      for path in files:
        if counts[ocmr.subject_id(path)] == 0:
          logging.warning('%s: no label file at %s (or no labelled frame); its frames are not served',
                          path, ocmr.label_path_for(path))
      train, test = split_subjects(counts, config.test_fraction, config.split_seed)
      by_subject = {ocmr.subject_id(p): p for p in files}
      return {'train': self._generate_examples(paths=[by_subject[s] for s in train]),
              'test': self._generate_examples(paths=[by_subject[s] for s in test])}
    raise ValueError(f'OcmrConfig.source must be "phantom" or "real", got {config.source!r}')

  @staticmethod
  def _phantom_stem(subject: int) -> str:
    return f'fs_{subject:04d}_phantom'

  def _real_files(self, dl_manager) -> List[str]:
    """The fs_*.h5 files in manual_dir (us_*.h5 are skipped with a warning)."""
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError as e:
      raise OCMRManualDirError(f'The `real` config needs your OCMR files in a manual_dir, but it is missing or '
                               f'empty ({e}).\n{_MANUAL_INSTRUCTIONS}') from e
    names = sorted(n for n in os.listdir(manual_dir) if n.endswith('.h5'))
    for name in names:
      if name.startswith('us_'):
        logging.warning('%s: undersampled OCMR file skipped; the `real` config needs fully sampled fs_* files',
                        os.path.join(manual_dir, name))
    files = [os.path.join(manual_dir, n) for n in names if not n.startswith('us_')]
    if not files:
      raise OCMRManualDirError(f'{manual_dir}: found no fully sampled OCMR file (*.h5 other than us_*.h5); '
                               f'contents {sorted(os.listdir(manual_dir))}.\n{_MANUAL_INSTRUCTIONS}')
    return files

  def _generate_examples(self, paths: Sequence[str] = (), phantom_stems: Sequence[str] = (),
                         counts: Optional[Dict[str, int]] = None, scratch: str = '') -> Iterator[Tuple[str, Dict]]:
    """Examples of the OCMR files `paths`, or of the phantom subjects `phantom_stems` (written to `scratch`)."""
    if phantom_stems:
      yield from self._generate_phantom(phantom_stems, counts, scratch)
      return
    config = self.builder_config
    for path in paths:
      for example in ocmr.load_examples(path, config.image_size, labelled_only=not config.include_unlabelled):
        if not example['has_labels'] and not config.include_unlabelled:
          continue
        yield _example_key(example['subject_id'], example['slice'], example['frame']), _to_features(example)

  def _generate_phantom(self, stems: Sequence[str], counts: Dict[str, int], scratch: str
                        ) -> Iterator[Tuple[str, Dict]]:
    """Writes each phantom subject into a scratch folder, reads it back through the OCMR reader, deletes it."""
    from segrecon_jax.data import phantom  # pylint: disable=g-import-not-at-top
    config = self.builder_config
    os.makedirs(scratch, exist_ok=True)
    for stem in stems:
      subject = int(stem.split('_')[1])
      with tempfile.TemporaryDirectory(dir=scratch) as directory:
        kspace_path, label_path = phantom.write_subject(directory, subject, config.phantom_seed,
                                                        **phantom_subject_settings(config, subject))
        examples = [e for e in ocmr.load_examples(kspace_path, config.image_size, label_path=label_path,
                                                  labelled_only=not config.include_unlabelled)
                    if e['has_labels'] or config.include_unlabelled]
      if not config.include_unlabelled and len(examples) != counts[stem]:
        raise RuntimeError(f'{kspace_path}: phantom subject {subject} gave {len(examples)} labelled examples, '
                           f'expected {counts[stem]} from {phantom_subject_settings(config, subject)}')
      for example in examples:
        yield _example_key(example['subject_id'], example['slice'], example['frame']), _to_features(example)
    try:
      os.rmdir(scratch)  # only once empty: the other split may still be writing there
    except OSError:
      pass
