"""The user's errors: what ends `main.py` with one paragraph and exit code 2 instead of a traceback.

Each is raised where the file or field is in hand, with the paragraph as its message: a config check
(`ConfigError`), a checkpoint of another experiment or a damaged one, a locked workdir, a missing or malformed input
file, a stale or damaged prepared dataset, a non-finite loss. A failure of the machine (a full disk, a read-only or
forbidden folder; `checkpoints` turns TensorStore's reports of them into the OSError they stand for) is an OSError,
whose paragraph names the file that failed and what to do. Anything else is a bug, and keeps its traceback.
"""

import errno
from typing import Optional

from segrecon_jax.data import layouts
from segrecon_jax.training import checkpoints
from segrecon_jax.training import config_checks
from segrecon_jax.training import inference
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import parallel
from segrecon_jax.training import train
from segrecon_jax.training import warm_start
from segrecon_jax.training import workdir

USER_ERRORS = (config_checks.ConfigError, checkpoints.ResumeError, workdir.WorkdirLockedError, NotADirectoryError,
               FileNotFoundError, *layouts.FORMAT_ERRORS, parallel.BatchSizeError,
               train.NonFiniteError, input_pipeline.StaleDatasetError, input_pipeline.CorruptDatasetError,
               warm_start.WarmStartError, inference.EmptyReferenceError)
OS_HINTS = {errno.ENOSPC: 'the disk is full: free space, or choose a --workdir / config.data_dir on another disk',
            errno.EDQUOT: 'the disk quota is exceeded: free space, or choose another --workdir / config.data_dir',
            errno.EROFS: 'a read-only file system: choose a writable --workdir / config.data_dir',
            errno.EACCES: 'permission denied: choose a --workdir / config.data_dir you may write',
            errno.EPERM: 'operation not permitted: choose a --workdir / config.data_dir you may write'}


def os_error_message(error: OSError) -> str:
  """The outermost message, with the innermost OSError that names a file (the one that failed) and a hint."""
  chain, cause = [], error
  while cause is not None and cause not in chain:
    chain.append(cause)
    cause = cause.__cause__ or cause.__context__
  failed = next((e for e in reversed(chain) if isinstance(e, OSError) and e.filename), error)
  message = str(error) if not error.filename else f'{error.filename}: {error.strerror or error}'
  if failed is not error and str(failed.filename) not in message:
    message += f' ({failed.filename}: {failed.strerror or failed})'
  hint = OS_HINTS.get(failed.errno) or OS_HINTS.get(error.errno)
  if isinstance(error, FileExistsError) and 'rename' in str(error):
    hint = 'another process prepared the same dataset at the same time; run again to reuse it'
  return message.rstrip('.') + (f'; {hint}.' if hint else '')


def user_message(error: BaseException) -> Optional[str]:
  """The one paragraph for an error of the user's input or machine; None for anything else (a bug)."""
  text = str(error).strip()
  if isinstance(error, USER_ERRORS):
    return text
  if isinstance(error, ValueError) and text.startswith('config.'):  # A check of a field, made where its data is known.
    return text
  if isinstance(error, OSError):
    return os_error_message(error)
  return None
