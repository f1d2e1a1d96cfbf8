"""Orbax checkpoints of a workdir and the resume policy: a resume continues the same experiment or stops.

Each checkpoint stores the train state and, as JSON, the epoch, the step, the whole config and the data
description (`input_pipeline.data_info`). On resume the stored config decides what may differ: fields that change
the training (seed, model, learning rate, acceleration, schedule, ...) must be equal, and `check_resume` lists each
one that is not with its old and new value; the fields of `RESUMABLE_FIELDS` (more epochs, eval/log/checkpoint
cadence, the progress bar, where caches and data live: their roles in `segrecon_jax/settings.py`) may change. A
stored field that `settings.py` no longer declares (a knob removed since the checkpoint was written) is ignored.

Each checkpoint also stores an integrity record: the SHA-256 of every array of the state (with its dtype and
shape), computed from the arrays being saved and written in the meta item, which orbax commits together with the
state (both appear at once, when the step's folder is renamed into place). A restore recomputes the hashes of what
it read, so bytes changed on disk (a bad disk, a partial copy, an edit) are caught: that step is named and the
previous intact step is used instead, or, with none intact, `CorruptCheckpointError` stops the run. Training moves
the bad steps aside (`<workdir>/corrupt_checkpoints/<step>`), so it never writes over them or resumes them later.
A checkpoint is written only when every array of the state is finite (`non_finite_arrays`, checked by the loop).
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from segrecon_jax import settings


# Fields a resumed run may change: they do not change the optimization of the steps already taken.
RESUMABLE_FIELDS = frozenset(settings.names(settings.RESUMABLE, settings.DATA_PLACE, settings.RUNTIME))
# Fields that inference (eval, predict) must share with the checkpoint: what builds the model and its inputs.
MODEL_FIELDS = frozenset(settings.names(settings.MODEL))


class ResumeError(ValueError):
  """The workdir's checkpoint belongs to another experiment (or other data) than the config."""


class CorruptCheckpointError(ResumeError):
  """No checkpoint of the workdir passes its integrity check, so there is none to resume or evaluate."""


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  """The orbax manager of `<workdir>/checkpoints`. Saves write their arrays in the background, but create their
  folders in the caller's thread: a folder that cannot be made (a read-only or forbidden checkpoints/) fails the
  `save` call itself. Made in the background, its failure left orbax's writer threads waiting for a folder that
  never came (orbax's 300 s coordination timeout), and the process could not exit while they waited."""
  options = ocp.CheckpointManagerOptions(max_to_keep=config.max_checkpoints_to_keep, create=True,
                                         async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
                               item_names=('state', 'meta'))


def array_digests(tree) -> Dict[str, str]:
  """`{path in the tree: SHA-256 of the array's dtype, shape and bytes}` of every leaf of `tree`."""
  digests = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = np.ascontiguousarray(np.asarray(leaf))
    digest = hashlib.sha256(f'{array.dtype.str}{array.shape}'.encode())
    digest.update(array.reshape(-1).view(np.uint8))
    digests[jax.tree_util.keystr(path)] = digest.hexdigest()
  return digests


def non_finite_arrays(tree) -> List[str]:
  """The paths of the floating-point leaves of `tree` that hold a NaN or an infinity."""
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = np.asarray(leaf)
    if np.issubdtype(array.dtype, np.inexact) and not np.all(np.isfinite(array)):
      bad.append(jax.tree_util.keystr(path))
  return bad


# TensorStore (orbax's array writer) reports a failure of the machine (a full disk, a read-only or forbidden folder)
# as a ValueError whose text carries the errno, not as an OSError.
_OS_ERROR_CODE = re.compile(r"\[os_error_code='?(\d+)'?\]")
_FAILED_FILE = re.compile(r'(?:local file|Failed writing:) "([^"]+)"')


@contextlib.contextmanager
def _writing(what: str):
  """Turns TensorStore's report of a failed write into the OSError it stands for, naming the file."""
  try:
    yield
  except ValueError as e:
    code = _OS_ERROR_CODE.search(str(e))
    if code is None:
      raise
    failed = _FAILED_FILE.findall(str(e))
    number = int(code.group(1))
    raise OSError(number, os.strerror(number), failed[-1] if failed else what) from e


def wait(manager) -> None:
  """Waits for the checkpoint being written in the background; a write the machine refused is an OSError."""
  with _writing(str(manager.directory)):
    manager.wait_until_finished()


def save_checkpoint(manager, host_state, epoch: int, config, data_info, steps_into_epoch: int = 0) -> None:
  """Saves the host train state (`parallel.unreplicate` of the replicated one) with its epoch, config, data
  description and integrity record; every process calls it.

  `epoch` is the last whole epoch trained; `steps_into_epoch` counts the steps of the next epoch already taken
  (a run stopped by a signal between two steps), which a resume skips.
  """
  meta = {'epoch': epoch, 'steps_into_epoch': steps_into_epoch, 'step': int(host_state.step), 'seed': config.seed,
          'config': config.to_dict(), 'data': data_info, 'integrity': {'sha256': array_digests(host_state)}}
  with _writing(os.path.join(str(manager.directory), str(int(host_state.step)))):
    manager.save(int(host_state.step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(jsonable(meta))))


def integrity_problem(state, meta: Dict[str, Any]) -> Optional[str]:
  """What is wrong with a restored state, or None: arrays whose hashes differ from the record, non-finite values.

  Checkpoints written before integrity records existed are checked for finiteness only.
  """
  record = (meta.get('integrity') or {}).get('sha256')
  if record is not None:
    digests = array_digests(state)
    changed = [key for key in sorted(set(record) | set(digests)) if record.get(key) != digests.get(key)]
    if changed:
      return (f'fails its integrity check: {len(changed)} of {len(record)} arrays differ from the SHA-256 '
              f'written with them ({", ".join(changed[:3])}{", ..." if len(changed) > 3 else ""})')
  bad = non_finite_arrays(state)
  if bad:
    return f'holds non-finite values ({", ".join(bad[:3])}{", ..." if len(bad) > 3 else ""})'
  return None


def _unreadable(error: Exception) -> str:
  """One line for a step that cannot be read: TensorStore's errors carry a many-line spec after the cause."""
  first = str(error).strip().split('\n', 1)[0]
  first = first.split(' See full TensorStore details', 1)[0]
  if len(first) > 300:
    first = first[:300] + '...'
  return f'cannot be read ({type(error).__name__}: {first})'


def restore_checkpoint(manager, template, check: Optional[Callable[[dict], None]] = None,
                       set_aside_corrupt: bool = False) -> Tuple[Optional[Any], Optional[dict]]:
  """The latest intact checkpoint as (host state, meta), or (None, None) when the workdir has none.

  `check(meta)` runs on the stored meta before the state is read, so a checkpoint of another model is refused with
  the list of differing fields rather than an array-shape error. A step that cannot be read or fails its
  integrity check (`integrity_problem`) is logged by name and the previous step is tried; with none intact,
  `CorruptCheckpointError`. With `set_aside_corrupt` (training, which holds the workdir), the failed steps are
  moved to `<workdir>/corrupt_checkpoints/`.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None, None
  directory = str(manager.directory)
  failed = []
  for step in steps:
    try:
      meta = read_meta(manager, step)
    except Exception as e:  # pylint: disable=broad-except
      failed.append((step, _unreadable(e)))
      logging.error('checkpoint step %d in %s %s', step, directory, failed[-1][1])
      continue
    if check is not None:
      check(meta)  # A checkpoint of another experiment is refused, not skipped.
    try:
      state = _restore_state(manager, step, template)
      problem = integrity_problem(state, meta)
    except Exception as e:  # pylint: disable=broad-except
      problem = _unreadable(e)
    if problem is None:
      if failed:
        logging.warning('using checkpoint step %d of %s instead of the later step(s) %s, which failed their checks',
                        step, directory, ', '.join(str(s) for s, _ in failed))
        if set_aside_corrupt:
          _set_aside(manager, [s for s, _ in failed])
      return state, meta
    failed.append((step, problem))
    logging.error('checkpoint step %d in %s %s', step, directory, problem)
  lines = '\n'.join(f'  step {step}: {problem}' for step, problem in failed)
  raise CorruptCheckpointError(
      f'no intact checkpoint in {directory}; every step failed its check:\n{lines}\nNothing was trained or '
      'evaluated on them. Restore the folder from a copy, or move it away to train again from the start.')


class _PartialRestoreFilter(logging.Filter):
  """Drops orbax's warning that a composite checkpoint's other items were not restored: reading a step's meta alone,
  or its metadata, is intended here, never a partial restore by mistake (every restore of the state checks it)."""

  def filter(self, record):
    return 'was found in the checkpoint, but could not' not in record.getMessage()


logging.getLogger('absl').addFilter(_PartialRestoreFilter())  # orbax logs through absl.


def read_meta(manager, step: int) -> Dict[str, Any]:
  """The JSON meta of checkpoint `step` (epoch, step, config, data, integrity record), without its arrays."""
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def _set_aside(manager, steps: List[int]) -> None:
  """Moves the step folders `steps` out of the manager's directory (process 0), so training never writes over or
  resumes them, and makes the manager forget them."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('checkpoints checked')
  if jax.process_index() == 0:
    aside = os.path.join(os.path.dirname(str(manager.directory)), 'corrupt_checkpoints')
    os.makedirs(aside, exist_ok=True)
    for step in steps:
      target = os.path.join(aside, str(step))
      suffix = 1
      while os.path.exists(target):
        target, suffix = os.path.join(aside, f'{step}.{suffix}'), suffix + 1
      shutil.move(os.path.join(str(manager.directory), str(step)), target)
      logging.warning('moved the failed checkpoint step %d to %s', step, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('checkpoints set aside')
  manager.reload()


def _restore_state(manager, step: int, template):
  """The state of `step`. A checkpoint written before the train state had `loss_state` (the loss balancing's
  state, `{}` with fixed weights): its fields are restored and the template's loss_state kept, so older workdirs
  still evaluate and predict."""
  stored_fields = manager.item_metadata(step)['state']
  legacy = hasattr(template, 'loss_state') and stored_fields is not None and 'loss_state' not in stored_fields.keys()
  item = {k: v for k, v in vars(template).items() if k != 'loss_state'} if legacy else template
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(item)))['state']
  return template.replace(**restored) if legacy else restored


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
                       only: Optional[frozenset] = None) -> Dict[str, Tuple[Any, Any]]:
  """`{field: (stored value, new value)}` of the fields that differ, less the top-level fields `neutral` (or of
  the top-level fields `only` alone).

  A field missing on one side counts as a difference (a model field added by the config changes the model), except
  a stored top-level field that `settings.py` no longer declares (a removed knob, which the run no longer reads) and
  a top-level field declared since the checkpoint was written that is at its declared default (a new knob's default
  keeps the behaviour it was added to).
  """
  old, new = flatten(jsonable(stored)), flatten(jsonable(config.to_dict()))
  missing = object()
  differences = {}
  for key in sorted(set(old) | set(new)):
    top = key.split('.')[0]
    if top in neutral or (only is not None and top not in only):
      continue
    if top not in settings.BY_NAME and key not in new:
      continue
    before, after = old.get(key, missing), new.get(key, missing)
    if before is missing and key == top and after == jsonable(settings.BY_NAME[top].default):
      continue
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
                                   only=MODEL_FIELDS)
  if differences:
    _refuse(differences, directory, 'trained', 'Use the training configuration of this workdir.')


def check_same_data(meta, current, directory) -> None:
  """A checkpoint is resumed or used only with the data and preprocessing it was trained on."""
  if meta['data'] != current:
    raise ResumeError(f'the checkpoint in {directory} was trained on data {meta["data"]}, but the config asks '
                      f'for {current}; use the training configuration (or a new workdir)')
