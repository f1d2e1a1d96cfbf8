"""Pytest set-up shared by every test: 2 fake CPU devices, so pmap paths run as on a 2-device host.

XLA reads `XLA_FLAGS` when the CPU backend starts, so this must run before anything imports jax; pytest imports
conftest.py before the test modules.
"""

import atexit
import os
import shutil
import sys
import tempfile

# 2 fake CPU devices; and XLA:CPU's quickest compiles (LLVM's cheapest code generation, fusions by the loop emitters
# rather than the MLIR fusion emitters): the tests' programs are tiny, so compiling them (tens of train steps, each a
# new program) is most of the suite's time and running them little of it. Float results may then differ from an
# optimized build's in the last bits: the tests compare programs built under these same flags (the subprocesses they
# start inherit them), or within tolerances. A flag already in XLA_FLAGS is left as set there.
_FLAGS = ('--xla_force_host_platform_device_count=2', '--xla_backend_optimization_level=0',
          '--xla_cpu_use_fusion_emitters=false')
for _flag in _FLAGS:
  if _flag.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _flag).strip()
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
