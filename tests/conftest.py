"""Pytest set-up shared by every test: 2 fake CPU devices, so pmap paths run as on a 2-device host.

XLA reads `XLA_FLAGS` when the CPU backend starts, so this must run before anything imports jax; pytest imports
conftest.py before the test modules.
"""

import os
import sys

_FLAG = '--xla_force_host_platform_device_count=2'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# The repository root (configs/, tfds_ocmr/) is importable without installing the project.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
