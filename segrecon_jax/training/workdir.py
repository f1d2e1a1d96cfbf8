"""A workdir belongs to one training run at a time: an advisory lock file naming its holder; atomic result files.

The lock is `fcntl.flock` on `<workdir>/.lock`, which the kernel releases when the holder exits in any way
(kill -9 included), so a killed run never blocks the next one on the same host. Training takes it exclusively;
eval and predict take it shared, so any number of them may read a workdir together, but never while it trains
(they would read checkpoints that training deletes). The file records the exclusive holder (host, pid, start time),
so the error of a refused run names it; the record is cleared on a clean exit. A record left by a run on another
host (after a crash, on a shared filesystem) cannot be checked from here: the error says how to clear it.

`write_text_atomic` writes a result file through a temporary file and a rename, so a reader (or a run killed while
writing) sees the old file or the new one, never a part of one.
"""

import datetime
import fcntl
import json
import os
import socket
import sys
from typing import Optional


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir."""


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds `<workdir>/.lock` for the block; raises WorkdirLockedError if taken.

  `shared=False` (training) excludes every other holder; `shared=True` (eval, predict) excludes only an exclusive
  one. A shared holder leaves the record alone (it names the training run that last held the workdir, if any).
  """

  def __init__(self, workdir: str, shared: bool = False):
    self.path = os.path.join(os.path.abspath(workdir), '.lock')
    self.shared = shared
    self._file = None

  def _holder(self) -> dict:
    try:
      with open(self.path) as f:
        text = f.read().strip()
      return json.loads(text) if text else {}
    except (OSError, ValueError):
      return {}

  @staticmethod
  def _describe(holder: dict) -> str:
    if not holder:
      return 'a run that left no record'
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('start_time')} "
            f"({holder.get('command', '?')})")

  def acquire(self) -> 'WorkdirLock':
    workdir = os.path.dirname(self.path)
    handle = open(self.path, 'a+')  # pylint: disable=consider-using-with
    try:
      fcntl.flock(handle, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.close()
      raise WorkdirLockedError(self._refusal(workdir)) from None
    holder = self._holder()
    here = socket.gethostname()
    if holder and holder.get('host') != here:
      fcntl.flock(handle, fcntl.LOCK_UN)
      handle.close()
      raise WorkdirLockedError(
          f'workdir {workdir} is recorded as in use by {self._describe(holder)}; that host is not this one '
          f'({here}), so whether the run is still alive cannot be checked from here. If no run is using the '
          f'workdir, delete {self.path} and start again.')
    if self.shared:
      self._file = handle
      return self
    # Same host: the flock succeeded, so any recorded holder is dead (killed before it could clear the record).
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({'host': here, 'pid': os.getpid(),
                             'start_time': datetime.datetime.now().isoformat(timespec='seconds'),
                             'command': ' '.join(sys.argv)[:500]}))
    handle.flush()
    self._file = handle
    return self

  def _refusal(self, workdir: str) -> str:
    """Why the lock is taken: an exclusive holder (training) is recorded; shared holders (eval, predict) are not."""
    if self.shared:
      return (f'workdir {workdir} is being trained by {self._describe(self._holder())}. Eval and predict read a '
              'workdir only when no training writes it (training replaces and deletes checkpoints): wait for it '
              'to finish or stop it.')
    probe = open(self.path, 'a+')  # pylint: disable=consider-using-with
    try:
      fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
      readers = True  # A shared lock was granted: only eval or predict runs hold the workdir.
    except BlockingIOError:
      readers = False
    finally:
      probe.close()
    if readers:
      return (f'workdir {workdir} is being read by an eval or predict run (--mode=eval or --mode=predict). '
              'Training would replace the checkpoints it reads: wait for it to finish, stop it, or choose another '
              '--workdir.')
    return (f'workdir {workdir} is in use by {self._describe(self._holder())}. One run at a time may write a '
            'workdir: wait for it to finish, stop it, or choose another --workdir.')

  def release(self) -> None:
    if self._file is None:
      return
    if not self.shared:
      self._file.seek(0)
      self._file.truncate()
      self._file.flush()
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> Optional[bool]:
    self.release()
    return None


def prepare(workdir: str) -> str:
  """The absolute workdir, created if needed; a clear error if it is a file or cannot be created."""
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(f'--workdir={workdir}: {path} exists and is not a directory; the workdir must be a '
                             'directory (it will be created if it does not exist).')
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise OSError(f'--workdir={workdir}: cannot create {path} ({e.strerror}).') from e
  return path


def write_text_atomic(path: str, text: str) -> str:
  """Writes `text` to `path` through a temporary file in the same folder and a rename; returns `path`."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  temporary = os.path.join(folder, f'.{os.path.basename(path)}.{os.getpid()}.tmp')  # The umask's permissions.
  try:
    with open(temporary, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise
  return path
