"""Orbax checkpoints of a workdir and the resume policy: a resume continues the same experiment or stops.

Each checkpoint stores the train state and, as JSON, the epoch, the step, the whole config and the data
description (`input_pipeline.data_info`). On resume the stored config decides what may differ: fields that change
the training (seed, model, learning rate, acceleration, schedule, ...) must be equal, and `check_resume` lists each
one that is not with its old and new value; the fields of `RESUMABLE_FIELDS` (more epochs, eval/log/checkpoint
cadence, the progress bar, where caches and data live) may change.
"""

import json
import os
from typing import Any, Callable, Dict, Optional, Tuple

import ml_collections
import orbax.checkpoint as ocp

from segrecon_jax import parallel

# Fields a resumed run may change: they do not change the optimization of the steps already taken.
RESUMABLE_FIELDS = frozenset({
    'num_epochs', 'eval_every_epochs', 'eval_batch_size', 'eval_split', 'log_every_steps',
    'checkpoint_every_epochs', 'max_checkpoints_to_keep', 'progress_bar', 'num_summary_images',
    'compilation_cache_dir', 'data_dir', 'manual_dir', 'distributed', 'coordinator_address', 'num_processes',
    'process_id', 'compile_ahead', 'compile_workers',
    'conv_impl', 'upconv_impl',  # Runtime only: how the layers are computed (models/layers.py), not what.
})
# Fields that inference (eval, predict) must share with the checkpoint: what builds the model and its inputs.
MODEL_FIELD_PREFIXES = ('model.', 'half_precision', 'num_classes')


class ResumeError(ValueError):
  """The workdir's checkpoint belongs to another experiment (or other data) than the config."""


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=config.max_checkpoints_to_keep, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
                               item_names=('state', 'meta'))


def save_checkpoint(manager, state, epoch: int, config, data_info) -> None:
  """Saves the (replicated) train state with its epoch, config and data description; every process calls it."""
  host_state = parallel.unreplicate(state)
  meta = {'epoch': epoch, 'step': int(host_state.step), 'seed': config.seed, 'config': config.to_dict(),
          'data': data_info}
  manager.save(int(host_state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(jsonable(meta))))


def restore_checkpoint(manager, template, check: Optional[Callable[[dict], None]] = None
                       ) -> Tuple[Optional[Any], Optional[dict]]:
  """The latest checkpoint as (host state, meta), or (None, None) when the workdir has none.

  `check(meta)` runs on the stored meta before the state is read, so a checkpoint of another model is refused with
  the list of differing fields rather than an array-shape error.
  """
  step = manager.latest_step()
  if step is None:
    return None, None
  if check is not None:
    check(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'])
  # A checkpoint written before the train state had `loss_state` (the loss balancing's state, `{}` with fixed
  # weights): restore its fields and keep the template's loss_state, so older workdirs still evaluate and predict.
  stored_fields = manager.item_metadata(step)['state']
  legacy = hasattr(template, 'loss_state') and stored_fields is not None and 'loss_state' not in stored_fields.keys()
  item = {k: v for k, v in vars(template).items() if k != 'loss_state'} if legacy else template
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(item), meta=ocp.args.JsonRestore()))
  state = template.replace(**restored['state']) if legacy else restored['state']
  return state, restored['meta']


def jsonable(tree):
  """`tree` as JSON would give it back (tuples as lists, arrays as lists, anything else as its str)."""
  return json.loads(json.dumps(tree, default=lambda o: o.tolist() if hasattr(o, 'tolist') else str(o)))


def flatten(tree: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  """`{'model': {'recon': {'features': 16}}}` -> `{'model.recon.features': 16}`."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_differences(stored: Dict[str, Any], config: ml_collections.ConfigDict, neutral=RESUMABLE_FIELDS,
                       only_prefixes: Optional[Tuple[str, ...]] = None) -> Dict[str, Tuple[Any, Any]]:
  """`{field: (stored value, new value)}` of the fields that differ, less `neutral` (or only `only_prefixes`).

  A field missing on one side counts as a difference: a model field added by the config changes the model.
  """
  old, new = flatten(jsonable(stored)), flatten(jsonable(config.to_dict()))
  missing = object()
  differences = {}
  for key in sorted(set(old) | set(new)):
    if key in neutral or (only_prefixes is not None and not key.startswith(only_prefixes)):
      continue
    before, after = old.get(key, missing), new.get(key, missing)
    if before != after:
      differences[key] = tuple('(absent)' if v is missing else v for v in (before, after))
  return differences


def _refuse(differences, directory, what: str, advice: str) -> None:
  lines = '\n'.join(f'  config.{key}: {old!r} in the checkpoint, {new!r} now' for key, (old, new) in
                    differences.items())
  raise ResumeError(f'the checkpoint in {directory} was {what} with other settings:\n{lines}\n{advice}')


def check_resume(meta: Dict[str, Any], config, data_info, directory: str) -> None:
  """Refuses to resume a checkpoint of another experiment; see the module docstring for what may differ."""
  check_same_data(meta, data_info, directory)
  if 'config' not in meta:
    raise ResumeError(f'the checkpoint in {directory} stores no config (written by an older version): use a new '
                      'workdir')
  # A cosine learning-rate decay spans num_epochs: more epochs would change the rate of the steps already taken.
  neutral = RESUMABLE_FIELDS - ({'num_epochs'} if config.get('lr_schedule') == 'cosine' else set())
  differences = config_differences(meta['config'], config, neutral=neutral)
  if differences:
    _refuse(differences, directory, 'trained',
            'These fields change the training, so the run would not continue the same experiment. Use a new '
            f'--workdir, or rerun with the checkpoint\'s values. Fields that may change on resume: '
            f'{", ".join(sorted(neutral))}.')


def check_inference(meta: Dict[str, Any], config, data_info, directory: str) -> None:
  """Eval and predict need the checkpoint's model and data; the acceleration, masks and metrics may differ."""
  check_same_data(meta, data_info, directory)
  differences = config_differences(meta.get('config', {}), config, neutral=frozenset(),
                                   only_prefixes=MODEL_FIELD_PREFIXES)
  if differences:
    _refuse(differences, directory, 'trained', 'Use the training configuration of this workdir.')


def check_same_data(meta, current, directory) -> None:
  """A checkpoint is resumed or used only with the data and preprocessing it was trained on."""
  if meta['data'] != current:
    raise ResumeError(f'the checkpoint in {directory} was trained on data {meta["data"]}, but the config asks '
                      f'for {current}; use the training configuration (or a new workdir)')
