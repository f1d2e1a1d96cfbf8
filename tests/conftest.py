"""Pytest set-up shared by every test: 2 fake CPU devices, so pmap paths run as on a 2-device host.

XLA reads `XLA_FLAGS` when the CPU backend starts, so this must run before anything imports jax; pytest imports
conftest.py before the test modules.
"""

import atexit
import os
import shutil
import sys
import tempfile

_FLAG = '--xla_force_host_platform_device_count=2'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# One persistent XLA compilation cache for the session, shared by this process and the main.py subprocesses the tests
# start (they inherit the environment): many tests compile the same tiny programs again (a run and its resume, the
# same config in several tests), and a cache hit replaces the compile. Tests that set config.compilation_cache_dir
# themselves still use their own folder.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='segrecon_jax_tests_xla_cache_')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

# The repository root (configs/, tfds_ocmr/) is importable without installing the project.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
