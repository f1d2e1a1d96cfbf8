"""A workdir belongs to one run at a time: an advisory lock file naming its holder (host, pid, start time).

The lock is `fcntl.flock` on `<workdir>/.lock`, which the kernel releases when the holder exits in any way
(kill -9 included), so a killed run never blocks the next one on the same host. The file also records the holder,
so the error of a refused run names it; the record is cleared on a clean exit. A record left by a run on another
host (after a crash, on a shared filesystem) cannot be checked from here: the error says how to clear it.
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
  """`with WorkdirLock(workdir):` holds `<workdir>/.lock` for the block; raises WorkdirLockedError if taken."""

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), '.lock')
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
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.close()
      raise WorkdirLockedError(
          f'workdir {workdir} is in use by {self._describe(self._holder())}. One run at a time may write a '
          'workdir: wait for it to finish, stop it, or choose another --workdir.') from None
    holder = self._holder()
    here = socket.gethostname()
    if holder and holder.get('host') != here:
      fcntl.flock(handle, fcntl.LOCK_UN)
      handle.close()
      raise WorkdirLockedError(
          f'workdir {workdir} is recorded as in use by {self._describe(holder)}; that host is not this one '
          f'({here}), so whether the run is still alive cannot be checked from here. If no run is using the '
          f'workdir, delete {self.path} and start again.')
    # Same host: the flock succeeded, so any recorded holder is dead (killed before it could clear the record).
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({'host': here, 'pid': os.getpid(),
                             'start_time': datetime.datetime.now().isoformat(timespec='seconds'),
                             'command': ' '.join(sys.argv)[:500]}))
    handle.flush()
    self._file = handle
    return self

  def release(self) -> None:
    if self._file is None:
      return
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
