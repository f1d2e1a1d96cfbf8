"""Inference from a workdir: evaluation over a split, restore for inference, `evaluate` and `predict`.

`evaluate` and `predict` read the workdir under its shared lock (`workdir.WorkdirLock(shared=True)`: never while
it trains) and write under their own names, `eval/<split>_x<R>/` and `predict/<split or file>_x<R>/`, so the
training's record (`metrics.json`, `per_slice.json`, `results.md`, `predictions/` at the workdir root) stays as
training wrote it.
"""

import collections
import contextlib
import functools
import logging
import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np

from segrecon_jax.training import checkpoints
from segrecon_jax.training import config_checks
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import parallel
from segrecon_jax.training import prediction_io
from segrecon_jax.training import reporting
from segrecon_jax.training import steps
from segrecon_jax.training import workdir as workdir_lib

EVAL_DIR = 'eval'  # --mode=eval writes eval/<split>_x<R>/ under the workdir.
PREDICT_DIR = 'predict'  # --mode=predict writes predict/<split or file stem>_x<R>/ under the workdir.
TRAINING_PREDICTIONS_DIR = 'predictions'  # The predictions of --mode=train, part of the training's record.


def log_results(what: str, results: Dict[str, float]) -> None:
  """One line of the headline metrics (and the zero-filled input's) on process 0."""
  if jax.process_index() != 0:
    return
  keys = ('psnr', 'ssim', 'mse_x1e3', 'f_psnr', 'f_ssim', 'dice_mean')
  shown = ' '.join(f'{k} {results[k]:.4f}' for k in keys if k in results)
  logging.info('%s: %s | zero-filled psnr %.4f f_psnr %.4f | %d slices', what, shown,
               results.get('zero_filled_psnr', float('nan')), results.get('zero_filled_f_psnr', float('nan')),
               int(results.get('num_examples', 0)))


class EmptyReferenceError(ValueError):
  """The split holds an example whose fully sampled image is all zero: its PSNR and SSIM are undefined."""


class EvalResults(dict):
  """The means of an evaluation (metric name -> float, as before), with `per_slice` holding every slice's values.

  `per_slice` is `{'ids': [str], 'index': [int], 'metrics': {name: float64 [n]}}` sorted by id, every valid
  example of the split once (all hosts' shares) on process 0, None on the other processes; focused metrics
  (`f_*`, `zero_filled_f_*`) are NaN on slices without heart labels.
  """
  per_slice: Optional[Dict[str, Any]] = None


class _IdRecordingSource:
  """A random-access source that notes `input_pipeline.example_id` of every example read through it, so the eval loop
  knows its examples' ids without reading them twice."""

  def __init__(self, source):
    self._source = source
    self.ids: Dict[int, str] = {}

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    example = self._source[index]
    self.ids[int(index)] = input_pipeline.example_id(example, int(index))
    return example


def _is_focused(key: str) -> bool:
  return key.startswith(('f_', 'zero_filled_f_'))


def evaluate_state(p_eval_step, state, eval_source, config) -> Tuple[EvalResults, Optional[Dict[str, np.ndarray]]]:
  """Means over the eval split (F- metrics over examples with heart labels), every slice's metrics
  (`EvalResults.per_slice`) and a few examples for summaries.

  Raises `EmptyReferenceError`, naming the examples, when a fully sampled image of the split is all zero: their PSNR
  and SSIM are undefined (NaN, see `metrics`), so no mean over the split can be given.
  """
  sums, counts, images = collections.defaultdict(float), collections.defaultdict(float), None
  source = _IdRecordingSource(eval_source)
  collected = collections.defaultdict(list)
  for batch in input_pipeline.eval_batches(source, config):
    results, outputs = p_eval_step(state, parallel.shard(batch))
    results = parallel.unshard(results)
    valid = batch['valid'] > 0
    has_heart = valid & (results['has_heart'] > 0)
    for key, values in results.items():
      collected[key].append(np.where(has_heart, values, np.nan) if _is_focused(key) else np.asarray(values))
      if key == 'has_heart':
        continue
      weight = has_heart if _is_focused(key) else valid
      sums[key] += float(np.sum(np.where(weight, values, 0.0)))
      counts[key] += float(np.sum(weight))
    collected['index'].append(batch['index'])
    collected['valid'].append(batch['valid'])
    collected['empty_reference'].append(np.max(np.abs(batch['image']), axis=(-2, -1)) == 0)
    if images is None:
      images = dict(parallel.unshard(outputs), image=batch['image'], segmentation=batch['segmentation'])
  sums, counts = _allgather_sums(sums, counts)
  results = EvalResults({k: sums[k] / counts[k] if counts[k] else float('nan') for k in sorted(sums)})
  results['num_examples'] = counts['mse']
  # Every host's share to every host (a collective: all hosts take part), kept on process 0.
  gathered = parallel.gather_to_host({k: np.concatenate(v) for k, v in collected.items()})
  _check_no_empty_reference(gathered.pop('empty_reference'), gathered, source.ids, eval_source, config)
  if jax.process_index() == 0:
    results.per_slice = _per_slice(gathered, source.ids, eval_source)
  return results, images


def _check_no_empty_reference(empty: np.ndarray, gathered: Dict[str, np.ndarray], ids: Dict[int, str], eval_source,
                              config) -> None:
  """Raises `EmptyReferenceError` naming the valid examples whose fully sampled image is all zero (on every host:
  `gathered` holds every host's share)."""
  indices = [int(i) for i in np.asarray(gathered['index'])[(np.asarray(gathered['valid']) > 0) & empty]]
  if not indices:
    return
  names = sorted(ids[i] if i in ids else input_pipeline.example_id(eval_source[i], i) for i in indices)
  shown = ', '.join(names[:5]) + (f' and {len(names) - 5} more' if len(names) > 5 else '')
  raise EmptyReferenceError(
      f'the {config.eval_split} split of {config.dataset}/{config.dataset_config} holds {len(names)} example(s) whose '
      f'fully sampled image is all zero ({shown}): PSNR and SSIM are relative to the image\'s peak, undefined '
      'there, so no mean over the split can be given. An image with nothing in it is an input error: remove it '
      'from the data and prepare the dataset again.')


def _per_slice(gathered: Dict[str, np.ndarray], ids: Dict[int, str], eval_source) -> Dict[str, Any]:
  """The valid examples of `gathered` (flat `[n]` arrays with `index` and `valid`) sorted by id; examples another
  host evaluated have their ids read from the source here."""
  valid = np.asarray(gathered['valid']) > 0
  indices = [int(i) for i in np.asarray(gathered['index'])[valid]]
  names = [ids[i] if i in ids else input_pipeline.example_id(eval_source[i], i) for i in indices]
  order = sorted(range(len(names)), key=lambda j: names[j])
  metrics = {k: np.asarray(v, np.float64)[valid][order] for k, v in sorted(gathered.items())
             if k not in ('index', 'valid')}
  return {'ids': [names[j] for j in order], 'index': [indices[j] for j in order], 'metrics': metrics}


def _allgather_sums(sums, counts):
  if jax.process_count() == 1:
    return sums, counts
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  keys = sorted(sums)
  totals = multihost_utils.process_allgather(np.array([[sums[k] for k in keys], [counts[k] for k in keys]]))
  totals = np.asarray(totals).sum(0)
  return ({k: float(v) for k, v in zip(keys, totals[0])}, {k: float(v) for k, v in zip(keys, totals[1])})


def output_dir(workdir: str, mode_dir: str, name: str, config) -> str:
  """`<workdir>/<mode_dir>/<name>_x<R>`: an inference's own folder, by what it read and the acceleration."""
  return os.path.join(os.path.abspath(workdir), mode_dir, f'{name}_x{config.acceleration:g}')


def reading_lock(workdir: str):
  """The shared workdir lock on process 0 (eval and predict never run while the workdir trains)."""
  if jax.process_index() != 0:
    return contextlib.nullcontext()
  return workdir_lib.WorkdirLock(workdir_lib.prepare(workdir), shared=True)


def restore_for_inference(config, workdir: str):
  """Model, replicated state and the stored meta of the latest intact checkpoint of `workdir` (a step that fails
  its integrity check is named and skipped, see `checkpoints.restore_checkpoint`)."""
  parallel.setup_runtime(config)
  manager = checkpoints.checkpoint_manager(workdir, config)
  if manager.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint in {manager.directory}: train first (--mode=train)')
  eval_source = input_pipeline.load_split(config, config.eval_split)
  model, tx = steps.create_model(config), steps.create_optimizer(config)
  shape = input_pipeline.image_shape(eval_source)
  config_checks.check_masks_fit(config, shape[-1], f'{config.dataset}/{config.dataset_config}')
  template = steps.initial_state(config, model, tx, shape)  # Its values are replaced by the checkpoint's.
  data_info = input_pipeline.data_info(config)
  state, meta = checkpoints.restore_checkpoint(
      manager, template, check=lambda meta: checkpoints.check_inference(meta, config, data_info, manager.directory))
  return model, parallel.replicate(state), eval_source, meta


def evaluate(config, workdir: str) -> EvalResults:
  """Restores the latest intact checkpoint and writes metrics.json, per_slice.json and results.md to
  `eval_dir(workdir, config)`; returns the results."""
  parallel.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  with reading_lock(workdir):
    model, state, eval_source, meta = restore_for_inference(config, workdir)
    p_eval_step = parallel.pmap(functools.partial(steps.eval_step, model=model, config=config))
    results, _ = evaluate_state(p_eval_step, state, eval_source, config)
    reporting.write_results(eval_dir(workdir, config), config, results, extra={'checkpoint_step': meta['step']},
                            per_slice=results.per_slice)
  return results


def eval_dir(workdir: str, config) -> str:
  """Where `evaluate` writes: `<workdir>/eval/<eval split>_x<R>`."""
  return output_dir(workdir, EVAL_DIR, config.eval_split, config)


def _predict_arrays(p_eval_step, state, source, config) -> Dict[str, np.ndarray]:
  """The eval step's outputs (`recon`, `zero_filled`, `masks`, optionally `seg`), `image` and `segmentation` of every
  example of `source`, in source order, on every host."""
  collected = collections.defaultdict(list)
  for batch in input_pipeline.eval_batches(source, config):
    _, outputs = p_eval_step(state, parallel.shard(batch))
    outputs = dict(parallel.unshard(outputs), image=batch['image'], segmentation=batch['segmentation'],
                   valid=batch['valid'], index=batch['index'])
    for key, value in parallel.gather_to_host(outputs).items():  # Every host's share, on every host.
      collected[key].append(value)
  arrays = {k: np.concatenate(v) for k, v in collected.items()}
  valid = arrays.pop('valid') > 0
  order = np.argsort(arrays.pop('index')[valid], kind='stable')  # Hosts hold strided shares: back to split order.
  return {k: v[valid][order] for k, v in arrays.items()}


def predict(config, workdir: str, input_path: str = '', out_dir: str = '') -> str:
  """Reconstructs and segments the eval split, or the files of `input_path`, with the latest intact checkpoint.

  `input_path` is one file or a folder of them (`prediction_io.input_files`): OCMR k-space files, and NIfTI or HDF5
  magnitude files (simulated single-coil k-space, as the `nifti` config serves them), labels optional.
  Writes `.npy` arrays and Fig. 2-like PNGs to `out_dir`, by default `<workdir>/predict/<eval split>_x<R>` (the
  eval split; training passes `<workdir>/predictions`, its own record), `<workdir>/predict/<file stem>_x<R>` (a
  file) or `<workdir>/predict/<folder name>_x<R>/<file's path in the folder without suffix>` (each file of a
  folder; every frame; without its labels the reference segmentation maps are all background and the figures have
  no focus box), and for each file `recon.nii.gz` and `seg.nii.gz` on the file's voxel grid, the segmentation in the
  file's own label values (`prediction_io.write_nifti`). For a model that segments, a layout with label files of its
  own also writes the predicted segmentation as one (`Layout.write_predicted_labels`; OCMR: `<that folder>/labels/
  <stem>.h5` in the project's format with every frame unlabelled), to start labelling from. Returns the prediction
  folder (of the split, the file, or the folder holding the files' folders).
  """
  parallel.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  if input_path and jax.process_count() > 1:
    raise ValueError('predict --input reads files on one host: run it on a single host')
  with reading_lock(workdir):
    return _predict(config, workdir, input_path, out_dir)


def _predict(config, workdir: str, input_path: str, out_dir: str) -> str:
  model, state, eval_source, meta = restore_for_inference(config, workdir)
  p_eval_step = parallel.pmap(functools.partial(steps.eval_step, model=model, config=config))
  if not input_path:
    arrays = _predict_arrays(p_eval_step, state, eval_source, config)
    if jax.process_index() != 0:
      return ''
    return reporting.write_predictions(out_dir or output_dir(workdir, PREDICT_DIR, config.eval_split, config),
                                       config, arrays)
  image_size = input_pipeline.image_shape(eval_source)
  items = prediction_io.input_files(input_path)
  one_file = os.path.isfile(input_path)
  name = items[0].name if one_file else os.path.basename(os.path.normpath(input_path))
  out_root = out_dir or output_dir(workdir, PREDICT_DIR, name, config)
  out_dirs = []
  for item in items:
    loaded = prediction_io.load_file(item, image_size, config)
    source = [dict(image=e['image'], segmentation=e['segmentation']) for e in loaded.examples]
    arrays = _predict_arrays(p_eval_step, state, source, config)
    file_dir = reporting.write_predictions(out_root if one_file else os.path.join(out_root, item.name), config,
                                           arrays)
    written = prediction_io.write_nifti(file_dir, loaded, arrays)
    logging.info('%s: predictions in %s (NIfTI: %s)', item.path, file_dir, ', '.join(map(os.path.basename, written)))
    label_path = None
    if 'seg' in arrays:
      label_path = item.layout.write_predicted_labels(file_dir, item.path, loaded.examples, arrays['seg'],
                                                      loaded.geometry, model=reporting.method_name(config),
                                                      checkpoint_step=int(meta['step']))
    if label_path:
      logging.info('%s: predicted labels written to %s (every frame unlabelled until a person accepts it; see '
                   'tfds_ocmr/README.md, Labels)', item.path, label_path)
    out_dirs.append(file_dir)
  return out_dirs[0] if one_file else out_root
