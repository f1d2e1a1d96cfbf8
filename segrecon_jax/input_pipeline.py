"""Input pipeline: grain over the TFDS `ocmr` array_record data source, per host, batched on the host.

Examples stay on the host as fully sampled complex images; undersampling happens on the device inside the step.
Each batch is a dict of numpy arrays with a leading per-host batch axis:
  `image`: complex64 `[b, H, W]` (fully sampled, normalized), `segmentation`: int32 `[b, H, W]`,
  `index`: int32 `[b]` (position in the split), `mask_id`: int32 `[b]` (a stable id of the example, from its subject,
  slice and frame; eval masks are keyed by it), `valid`: float32 `[b]` (0 for padding).
"""

import json
import logging
import zlib
import os
from typing import Any, Dict, Iterator, Mapping

import grain
import jax
import numpy as np

from segrecon_jax import parallel


# The experiment-config fields that change the `ocmr` builder config (None keeps the dataset config's value).
DATA_FIELDS = ('image_size', 'test_fraction', 'split_seed', 'include_unlabelled', 'label_mapping', 'phase_seed')


def builder_config(config):
  """The TFDS builder config of `config`: `dataset_config` with the experiment's `DATA_FIELDS` that are set.

  For `ocmr` a changed field gives a derived config with a name of its own (`tfds_ocmr.configure`, e.g.
  `real_128x128`), so each distinct setting is prepared into its own folder; other datasets take the name only.
  """
  overrides = {f: getattr(config, f, None) for f in DATA_FIELDS if getattr(config, f, None) is not None}
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


def load_split(config, split: str):
  """Prepares (builds once) the TFDS dataset of `config` and returns the random-access source of `split`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset_builder = builder(config)
  builder_name = dataset_builder.builder_config.name
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(config.manual_dir) if config.manual_dir else None)
  if not dataset_builder.is_prepared():
    logging.info('Building TFDS %s/%s in %s (once).', config.dataset, builder_name, dataset_builder.data_dir)
  dataset_builder.download_and_prepare(file_format='array_record', download_config=download_config)
  sources = dataset_builder.as_data_source()
  if split not in sources:
    raise ValueError(f'config.{"eval_split" if split != config.train_split else "train_split"}={split!r} is '
                     f'not a split of {config.dataset}/{builder_name}: {sorted(sources)}')
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


def mask_id(example: Mapping[str, Any], index: int) -> int:
  """The eval-mask key of an example: a CRC-32 of `subject/slice/frame`, in [0, 2**31).

  It depends on what the example is, not on where it sits in its split, so every model sees the same mask on it,
  also after the dataset is rebuilt, its split reshuffled or other subjects added. An example without a subject id
  (e.g. `predict --input`'s frames) falls back to `index`.
  """
  subject = example.get('subject_id') if hasattr(example, 'get') else None
  if subject is None:
    return int(index)
  if isinstance(subject, bytes):
    subject = subject.decode('utf-8')
  if isinstance(subject, np.ndarray):
    subject = subject.item().decode('utf-8') if isinstance(subject.item(), bytes) else str(subject.item())
  key = f'{subject}/{int(example.get("slice", 0))}/{int(example.get("frame", 0))}'
  return zlib.crc32(key.encode('utf-8')) & 0x7FFFFFFF


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
    raise ValueError(f'the {config.train_split!r} split has {num_examples} examples, fewer than '
                     f'config.batch_size={config.batch_size}')
  num_steps = num_train_steps_per_epoch(source, config)
  order = np.random.default_rng(epoch_seed(config.seed, epoch)).permutation(num_examples)
  mine = order[:num_steps * config.batch_size].reshape(num_steps, jax.process_count(), per_host)
  mine = mine[:, jax.process_index()].reshape(-1)
  dataset = (grain.MapDataset.source(mine)
             .map(lambda i: decode(source[int(i)], int(i)))
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
    examples = [decode(source[int(i)], int(i)) for i in indices[start:start + per_host]]
    filler = examples[-1] if examples else decode(source[0], 0)
    examples += [dict(filler, valid=np.float32(0.0))] * (per_host - len(examples))
    yield {key: np.stack([e[key] for e in examples]) for key in examples[0]}
