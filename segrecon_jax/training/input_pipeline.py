"""Input pipeline: grain over the TFDS `ocmr` array_record data source, per host, batched on the host.

Examples stay on the host as fully sampled complex images; undersampling happens on the device inside the step.
Each batch is a dict of numpy arrays with a leading per-host batch axis:
  `image`: complex64 `[b, H, W]` (fully sampled, normalized), `segmentation`: int32 `[b, H, W]`,
  `index`: int32 `[b]` (position in the split), `mask_id`: int32 `[b]` (a stable id of the example, from its subject,
  slice and frame; eval masks are keyed by it), `valid`: float32 `[b]` (0 for padding).
"""

import fcntl
import json
import logging
import zlib
import os
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import grain
import jax
import numpy as np

from segrecon_jax import settings
from segrecon_jax.training import config_checks
from segrecon_jax.training import parallel


def builder_config(config):
  """The TFDS builder config of `config`: `dataset_config` with the DATA_BUILDER fields (`settings.py`) it sets.

  For `ocmr` a changed field gives a derived config with a name of its own (`tfds_ocmr.configure`, e.g.
  `real_128x128`), so each distinct setting is prepared into its own folder; other datasets take the name only.
  """
  overrides = settings.data_builder_fields(config)
  if config.dataset != 'ocmr':
    if overrides:
      raise ValueError(f'config fields {sorted(overrides)} apply to the ocmr dataset only, not {config.dataset!r}')
    return config.dataset_config
  import tfds_ocmr  # pylint: disable=g-import-not-at-top  (registers the 'ocmr' builder)
  return tfds_ocmr.configure(config.dataset_config, **overrides)


def builder(config):
  """The TFDS builder of `config` (not prepared)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tfds_ocmr  # pylint: disable=g-import-not-at-top,unused-import  (registers the 'ocmr' builder)
  data_dir = os.path.expanduser(config.data_dir) if config.data_dir else None
  return tfds.builder(config.dataset, config=builder_config(config), data_dir=data_dir)


class StaleDatasetError(ValueError):
  """A prepared dataset that was not prepared from the files now in `config.manual_dir`."""


class CorruptDatasetError(RuntimeError):
  """A prepared dataset file that cannot be read back (array_record's checksums do not match)."""


def read_example(source, index: int):
  """`source[index]`, with a damaged array_record file as a CorruptDatasetError naming the dataset folder."""
  try:
    return source[index]
  except RuntimeError as e:
    if 'Riegeli' not in str(e) and 'records file' not in str(e):
      raise
    info = getattr(source, 'dataset_info', None)
    where = f'{info.data_dir} (split {getattr(source, "split", "?")!r})' if info is not None else 'the prepared dataset'
    folder = info.data_dir if info is not None else 'it'
    raise CorruptDatasetError(f'{where}: example {index} cannot be read back, the prepared file is damaged ({e}). '
                              f'Delete {folder} to prepare it again.') from None


class PreparationLock:
  """`with PreparationLock(builder):` holds `<data_dir>/<dataset>/<config>/.prepare.lock` (`fcntl.flock`, released
  by the kernel when the holder dies in any way); a second process preparing the same config waits for it."""

  def __init__(self, dataset_builder):
    self.path = os.path.join(os.path.dirname(os.fspath(dataset_builder.data_path)), '.prepare.lock')
    self._file = None

  def __enter__(self) -> 'PreparationLock':
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._file = open(self.path, 'a+')  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.warning('Waiting for another process to finish preparing %s (it holds %s).',
                      os.path.dirname(self.path), self.path)
      fcntl.flock(self._file, fcntl.LOCK_EX)
    return self

  def __exit__(self, *exc) -> None:
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None


def prepare(config):
  """The TFDS builder of `config`, prepared: built once per data_dir, under `PreparationLock`, so two first runs
  sharing a data_dir build it once (the second waits, then reuses it). A build killed before it finished leaves
  `incomplete.*` folders and phantom scratch files; the next build deletes them. A dataset prepared from a
  manual_dir is checked against the files now there (`check_source`)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset_builder = builder(config)
  if not dataset_builder.is_prepared():
    with PreparationLock(dataset_builder):
      dataset_builder = builder(config)  # Another process may have prepared it while this one waited.
      if not dataset_builder.is_prepared():
        if config.dataset == 'ocmr':
          import tfds_ocmr  # pylint: disable=g-import-not-at-top
          for path in tfds_ocmr.ocmr.clean_interrupted(dataset_builder):
            logging.warning('Deleted %s, left by an interrupted preparation.', path)
        logging.info('Building TFDS %s/%s in %s (once).', config.dataset, dataset_builder.builder_config.name,
                     dataset_builder.data_dir)
        download_config = tfds.download.DownloadConfig(
            manual_dir=os.path.expanduser(config.manual_dir) if config.manual_dir else None)
        dataset_builder.download_and_prepare(file_format='array_record', download_config=download_config)
        return dataset_builder
  check_source(config, dataset_builder)
  return dataset_builder


def check_source(config, dataset_builder) -> None:
  """Raises StaleDatasetError unless a dataset prepared from a manual_dir was prepared from the files now in
  `config.manual_dir` (tfds_ocmr's `SOURCE_RECORD`: names, sizes, modification times, sha256) by readers of this
  version (`READER_VERSION`)."""
  if config.dataset != 'ocmr':
    return
  import tfds_ocmr  # pylint: disable=g-import-not-at-top
  if not tfds_ocmr.ocmr.layout_of(dataset_builder.builder_config).reads_manual_dir:  # e.g. the phantom
    return
  dataset_dir = os.fspath(dataset_builder.data_dir)
  recorded = tfds_ocmr.ocmr.read_source_record(dataset_dir)
  remedy = (f'Delete {os.path.dirname(dataset_dir)} to prepare it again from '
            f'{config.manual_dir or "its manual_dir"}, or set config.data_dir to another folder (a data_dir holds '
            'one preparation of each dataset config).')
  reader_version = (recorded or {}).get('reader_version', 1)  # Records before reader versions: version 1.
  if recorded and reader_version != tfds_ocmr.ocmr.READER_VERSION:
    raise StaleDatasetError(f'{dataset_dir} was prepared by readers of version {reader_version}, which serve the '
                            f'files of {recorded["manual_dir"]} differently from this version '
                            f'({tfds_ocmr.ocmr.READER_VERSION}; see READER_VERSION in tfds_ocmr/ocmr.py). ' + remedy)
  if not config.manual_dir:
    logging.info('Reusing %s, prepared from %s (config.manual_dir is empty: not checked).', dataset_dir,
                 recorded['manual_dir'] if recorded else 'unrecorded files')
    return
  manual_dir = os.path.abspath(os.path.expanduser(config.manual_dir))
  if not os.path.isdir(manual_dir):
    raise config_checks.ConfigError(f'config.manual_dir={config.manual_dir!r} does not exist (or is not a folder); '
                                    f'{dataset_dir} was prepared from '
                                    f'{recorded["manual_dir"] if recorded else "files not recorded"}.')
  if recorded is None:
    raise StaleDatasetError(f'{dataset_dir} was prepared without a record of its source files (by an older '
                            f'version), so whether it holds the files of config.manual_dir={config.manual_dir!r} '
                            f'cannot be checked. {remedy}')
  changes = tfds_ocmr.ocmr.source_changes(
      recorded, tfds_ocmr.ocmr.source_record(dataset_builder.builder_config, manual_dir, hashes=False))
  if changes:
    shown = '; '.join(changes[:8]) + (f'; and {len(changes) - 8} more' if len(changes) > 8 else '')
    raise StaleDatasetError(f'config.manual_dir={config.manual_dir!r}: the prepared dataset {dataset_dir} was built '
                            f'from the files of {recorded["manual_dir"]}, and the files now in {manual_dir} differ: '
                            f'{shown}. {remedy}')


def load_split(config, split: str):
  """Prepares (builds once) the TFDS dataset of `config` and returns the random-access source of `split`."""
  dataset_builder = prepare(config)
  sources = dataset_builder.as_data_source()
  if split not in sources:
    raise config_checks.ConfigError(
        f'config.{"eval_split" if split != config.train_split else "train_split"}={split!r} is not a split of '
        f'{config.dataset}/{dataset_builder.builder_config.name}: {sorted(sources)}')
  return sources[split]


def data_info(config) -> Dict[str, Any]:
  """The data and preprocessing description stored with every checkpoint (every field of the builder config)."""
  dataset_builder = builder(config)
  described = dataset_builder.builder_config
  if hasattr(described, 'stored_fields'):
    fields = described.stored_fields()
  else:
    fields = {k: v for k, v in vars(described).items() if isinstance(v, (int, float, str, tuple, list))}
  info = {'dataset': config.dataset, 'dataset_config': config.dataset_config, 'version': str(dataset_builder.version),
          'builder_config': fields}
  return json.loads(json.dumps(info))  # The form a checkpoint's JSON gives back (nested tuples -> lists).


def _subject(example: Mapping[str, Any]) -> Optional[str]:
  """The example's subject id as text (TFDS decodes it as bytes), or None for an example without one."""
  subject = example.get('subject_id') if hasattr(example, 'get') else None
  if isinstance(subject, np.ndarray):
    subject = subject.item()
  if isinstance(subject, bytes):
    subject = subject.decode('utf-8')
  return None if subject is None else str(subject)


def example_id(example: Mapping[str, Any], index: int) -> str:
  """The stable name of an example, `subject_id/slice/frame` (its evaluation mask's key and its row in the per-slice
  results), or its position `index` in the split for an example without a subject id (`predict --input`'s frames)."""
  subject = _subject(example)
  if subject is None:
    return str(int(index))
  return f'{subject}/{int(example.get("slice", 0))}/{int(example.get("frame", 0))}'


def mask_id(example: Mapping[str, Any], index: int) -> int:
  """The eval-mask key of an example: a CRC-32 of its `example_id`, in [0, 2**31).

  It depends on what the example is, not on where it sits in its split, so every model sees the same mask on it,
  also after the dataset is rebuilt, its split reshuffled or other subjects added. An example without a subject id
  (e.g. `predict --input`'s frames) falls back to `index`.
  """
  if _subject(example) is None:
    return int(index)
  return zlib.crc32(example_id(example, index).encode('utf-8')) & 0x7FFFFFFF


def decode(example: Mapping[str, Any], index: int) -> Dict[str, np.ndarray]:
  """One TFDS example -> the arrays the step needs."""
  image = np.asarray(example['image'])
  if not np.iscomplexobj(image):
    if image.shape[-1] != 2:
      raise ValueError(f'example {index}: image must be complex [H, W] or real [H, W, 2], got {image.shape}')
    image = image[..., 0] + 1j * image[..., 1]
  return {
      'image': image.astype(np.complex64),
      'segmentation': np.asarray(example['segmentation']).astype(np.int32),
      'index': np.int32(index),
      'mask_id': np.int32(mask_id(example, index)),
      'valid': np.float32(1.0),
  }


def image_shape(source) -> Tuple[int, int]:
  """`(H, W)` of the split's images (all examples of a split share it)."""
  return tuple(decode(source[0], 0)['image'].shape)


def epoch_seed(seed: int, epoch: int) -> int:
  """The data-order seed of one epoch: a pure function of (seed, epoch), so a resumed run sees the same order."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_batches(source, config, epoch: int) -> Iterator[Dict[str, np.ndarray]]:
  """This host's batches of one training epoch, in batches of `per_host_batch_size(config.batch_size)`.

  The epoch order is a global shuffle from (seed, epoch), trimmed to whole global batches; global batch k is the
  k-th block of `config.batch_size` examples of that order and host p loads the p-th contiguous part of it. So
  device d of the whole job sees the same examples however the devices are spread over hosts (2 hosts x 1 device
  train exactly as 1 host x 2 devices), and every host runs the same number of steps (a host with one more step
  would wait forever in the gradient pmean).
  """
  per_host = parallel.per_host_batch_size(config.batch_size)
  num_examples = len(source)
  if num_examples < config.batch_size:
    raise config_checks.ConfigError(f'config.batch_size={config.batch_size}: the {config.train_split!r} split has '
                                    f'only {num_examples} examples; use a batch of at most {num_examples}.')
  num_steps = num_train_steps_per_epoch(source, config)
  order = np.random.default_rng(epoch_seed(config.seed, epoch)).permutation(num_examples)
  mine = order[:num_steps * config.batch_size].reshape(num_steps, jax.process_count(), per_host)
  mine = mine[:, jax.process_index()].reshape(-1)
  dataset = (grain.MapDataset.source(mine)
             .map(lambda i: decode(read_example(source, int(i)), int(i)))
             .batch(per_host, drop_remainder=True))
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2 * per_host)))


def num_train_steps_per_epoch(source, config) -> int:
  """Whole global batches per epoch (the remainder of the shuffled order is dropped)."""
  return len(source) // (parallel.per_host_batch_size(config.batch_size) * jax.process_count())


def eval_batches(source, config) -> Iterator[Dict[str, np.ndarray]]:
  """This host's share of the split in order, in batches of `per_host_batch_size(config.eval_batch_size)`.

  Every host yields the same number of batches (multi-host evaluation stays in step); batches are filled up with
  copies of an example marked `valid = 0`.
  """
  per_host = parallel.per_host_batch_size(config.eval_batch_size)
  indices = np.arange(len(source))[jax.process_index()::jax.process_count()]
  num_batches = -(-len(source) // (per_host * jax.process_count()))
  for start in range(0, num_batches * per_host, per_host):
    examples = [decode(read_example(source, int(i)), int(i)) for i in indices[start:start + per_host]]
    filler = examples[-1] if examples else decode(read_example(source, 0), 0)
    examples += [dict(filler, valid=np.float32(0.0))] * (per_host - len(examples))
    yield {key: np.stack([e[key] for e in examples]) for key in examples[0]}
