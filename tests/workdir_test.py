"""Tests of the workdir lock (training exclusive, eval and predict shared) and of atomic result files."""

import json
import os

import pytest

from segrecon_jax.training import workdir as workdir_lib


def test_shared_holders_read_together_and_exclude_training(tmp_path):
  workdir = str(tmp_path)
  with workdir_lib.WorkdirLock(workdir, shared=True), workdir_lib.WorkdirLock(workdir, shared=True):
    with pytest.raises(workdir_lib.WorkdirLockedError, match=rf'{workdir} is being read by an eval or predict run'):
      workdir_lib.WorkdirLock(workdir).acquire()
  with workdir_lib.WorkdirLock(workdir):  # Free again once the readers are gone.
    record = json.loads(open(os.path.join(workdir, '.lock')).read())
    assert record['pid'] == os.getpid()
  assert open(os.path.join(workdir, '.lock')).read() == ''


def test_training_excludes_shared_holders(tmp_path):
  workdir = str(tmp_path)
  with workdir_lib.WorkdirLock(workdir):
    with pytest.raises(workdir_lib.WorkdirLockedError,
                       match=rf'{workdir} is being trained by pid {os.getpid()} on host .*wait for it to finish'):
      workdir_lib.WorkdirLock(workdir, shared=True).acquire()
    with pytest.raises(workdir_lib.WorkdirLockedError, match=rf'{workdir} is in use by pid {os.getpid()}'):
      workdir_lib.WorkdirLock(workdir).acquire()
  with workdir_lib.WorkdirLock(workdir, shared=True):
    pass


def test_shared_holder_refuses_a_record_of_another_host(tmp_path):
  workdir = str(tmp_path)
  with open(os.path.join(workdir, '.lock'), 'w') as f:
    json.dump({'host': 'elsewhere', 'pid': 1, 'start_time': 'then', 'command': 'main.py'}, f)
  with pytest.raises(workdir_lib.WorkdirLockedError, match=r'in use by pid 1 on host elsewhere.*delete'):
    workdir_lib.WorkdirLock(workdir, shared=True).acquire()


def test_write_text_atomic_replaces_whole_or_keeps_the_old_file(tmp_path):
  path = str(tmp_path / 'sub' / 'metrics.json')
  assert workdir_lib.write_text_atomic(path, '{"a": 1}') == path
  assert open(path).read() == '{"a": 1}'
  with pytest.raises(TypeError):
    workdir_lib.write_text_atomic(path, 12345)  # Fails while writing: the old file stays whole.
  assert open(path).read() == '{"a": 1}'
  assert os.listdir(tmp_path / 'sub') == ['metrics.json']  # No temporary file left.
