"""Pytest set-up shared by every test: 2 fake CPU devices, so pmap paths run as on a 2-device host; and the tiny
dataset and training runs that several test files read, built once per session.

XLA reads `XLA_FLAGS` when the CPU backend starts, so this must run before anything imports jax; pytest imports
conftest.py before the test modules.
"""

import atexit
import os
import shutil
import sys
import tempfile
import typing

import pytest

_FLAG = '--xla_force_host_platform_device_count=2'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
# JAX's setting for programs that cost more to optimize than to run (LLVM's cheapest code generation, without its
# expensive passes), as the tests' tiny programs do: compiling them, tens of train steps each a new program, is most of
# the suite's time. Float results may differ from an optimized build's in the last bits; the tests compare programs
# built under this same setting (the subprocesses they start inherit it), or within tolerances.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# The repository root (configs/, tfds_ocmr/) is importable without installing the project.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_configure(config):
  """One persistent XLA compilation cache, shared by this process and the main.py subprocesses the tests start (they
  inherit the environment): many tests compile the same tiny programs again (a run and its resume, the same config in
  several tests), and a cache hit replaces the compile. It lives in pytest's cache folder
  (.pytest_cache/d/xla_compilation_cache), so a later session reuses every program that has not changed since (an
  entry is keyed by the program, its compile options and the jax version; `--cache-clear` empties the folder); without
  pytest's cache (`-p no:cacheprovider`), in a folder of the session's own. Tests that set
  config.compilation_cache_dir themselves still use their own folder. (pytest calls this before it imports the test
  modules, so before anything imports jax.)"""
  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    return
  if hasattr(config, 'cache'):
    cache = str(config.cache.mkdir('xla_compilation_cache'))
  else:
    cache = tempfile.mkdtemp(prefix='segrecon_jax_tests_xla_cache_')
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = cache
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """The TFDS folder of train_test.tiny_config's phantom_tiny, for the whole session: the first test that loads the
  dataset builds it there, the others read it."""
  return str(tmp_path_factory.mktemp('tfds'))


class TrainedRun(typing.NamedTuple):
  """A finished workdir trained once for the session. Never modified: a test that writes into it works on a copy."""
  workdir: str

  def copy(self, path) -> str:
    """Copies the workdir to `path` (a new folder) and returns it as a string."""
    shutil.copytree(self.workdir, str(path))
    return str(path)


def _train_once(config, tmp_path_factory, name) -> TrainedRun:
  from segrecon_jax.training import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp(name) / 'run')
  train.train_and_evaluate(config, workdir)
  return TrainedRun(workdir)


@pytest.fixture(scope='session')
def two_epoch_run(data_dir, tmp_path_factory):
  """train_test.two_epochs trained: read by recovery_test, multihost_test (the 1-process reference) and train_test."""
  import train_test  # pylint: disable=g-import-not-at-top
  return _train_once(train_test.two_epochs(data_dir), tmp_path_factory, 'two_epoch_run')


@pytest.fixture(scope='session')
def one_epoch_run(data_dir, tmp_path_factory):
  """train_test.one_epoch trained: read by inference_test, attention_test and train_test."""
  import train_test  # pylint: disable=g-import-not-at-top
  return _train_once(train_test.one_epoch(data_dir), tmp_path_factory, 'one_epoch_run')
