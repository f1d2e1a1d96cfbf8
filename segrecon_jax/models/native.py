"""The project's one native CPU kernel: a convolution weight gradient, built on first use and called through XLA's FFI.

XLA:CPU computes a convolution's weight gradient as a convolution with a `Ho x Wo` window and a `kh x kw` output,
which runs at 6 to 30 GFLOP/s on this project's 2-core machines (about a tenth of their matmul rate), where
PyTorch's oneDNN runs a direct kernel. `csrc/conv_weight_grad.cc` is such a direct kernel: register-blocked outer
products of input channels and output channels, accumulated over the output positions of cache-sized chunks of rows,
without materializing im2col patches, spread over XLA's intra-op thread pool (`xla::ffi::ThreadPool`). It is
compiled once per machine with the system's C++ compiler (`$CXX`, else `g++` or `c++`; `-O3 -march=native`)
against jaxlib's FFI headers (`jax.ffi.include_dir()`), cached as a shared library under `$SEGRECON_NATIVE_DIR`
(default `~/.cache/segrecon_jax/native`) keyed by the source, the compiler, jaxlib and the CPU, and registered as the
FFI target `segrecon_conv_weight_grad` for the CPU platform.

`conv_weight_grad(xp, g, ...)` calls it; `available()` says whether it could be built here (and `unavailable_reason()`
why not). `layers.Conv(impl='auto')` takes it on CPU when it is available and falls back to XLA's own weight gradient,
with one warning that names the reason, when it is not.
"""

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'conv_weight_grad.cc')
_TARGET = 'segrecon_conv_weight_grad'
_FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-w')


def _compiler() -> Optional[str]:
  for name in (os.environ.get('CXX'), 'g++', 'c++'):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _cpu_signature() -> str:
  """The CPU model and feature flags (`-march=native` depends on them), so a shared cache never serves another CPU."""
  try:
    with open('/proc/cpuinfo') as f:
      lines = [line for line in f if line.startswith(('model name', 'flags', 'Features', 'CPU part'))]
    return ''.join(sorted(set(lines)))
  except OSError:
    return platform.processor() or platform.machine()


def cache_dir() -> str:
  return os.environ.get('SEGRECON_NATIVE_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'segrecon_jax',
                                                               'native')


def _build(compiler: str) -> str:
  """Compiles the kernel (or finds it in the cache) and returns the shared library's path."""
  with open(_SOURCE, 'rb') as f:
    source = f.read()
  version = subprocess.run([compiler, '--version'], capture_output=True, text=True, check=False).stdout
  key = hashlib.sha256(b'\0'.join([source, version.encode(), ' '.join(_FLAGS).encode(), jax.__version__.encode(),
                                   _cpu_signature().encode()])).hexdigest()[:16]
  directory = cache_dir()
  path = os.path.join(directory, f'conv_weight_grad_{key}.so')
  if os.path.exists(path):
    return path
  os.makedirs(directory, exist_ok=True)
  # Compile to a private name, then rename: concurrent processes never load a half-written library.
  handle, tmp = tempfile.mkstemp(suffix='.so', dir=directory)
  os.close(handle)
  command = [compiler, *_FLAGS, f'-I{jax.ffi.include_dir()}', _SOURCE, '-o', tmp]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    os.unlink(tmp)
    raise RuntimeError(f'{" ".join(command)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}')
  os.replace(tmp, path)
  logging.info('Built the native convolution weight gradient: %s', path)
  return path


@functools.lru_cache(maxsize=None)
def _load() -> Tuple[Optional[int], Optional[str]]:
  """(vector lanes, None) once the target is registered, or (None, why not)."""
  if os.environ.get('SEGRECON_NATIVE', '1') == '0':
    return None, 'SEGRECON_NATIVE=0 is set'
  compiler = _compiler()
  if compiler is None:
    return None, 'no C++ compiler was found ($CXX, g++ or c++)'
  try:
    library = ctypes.cdll.LoadLibrary(_build(compiler))
  except (OSError, RuntimeError, subprocess.SubprocessError) as e:
    return None, f'building {_SOURCE} failed: {e}'
  jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(library.SegreconConvWeightGrad), platform='cpu')
  library.SegreconConvWeightGradLanes.restype = ctypes.c_int
  return int(library.SegreconConvWeightGradLanes()), None


def available() -> bool:
  """Whether the kernel is built and registered on this machine (builds it on the first call)."""
  return _load()[0] is not None


def unavailable_reason() -> Optional[str]:
  return _load()[1]


def conv_weight_grad(xp: jax.Array, cotangent: jax.Array, kernel_shape: Sequence[int], strides: Sequence[int],
                     dilation: Sequence[int]) -> jax.Array:
  """Weight gradient `[kh, kw, Cin, Cout]` (float32) of a 2D convolution, on the CPU.

  Args:
    xp: the convolution's input, already padded, `[B, Hp, Wp, Cin]` (cast to float32).
    cotangent: the output cotangent `[B, Ho, Wo, Cout]` (cast to float32).
    kernel_shape, strides, dilation: `(kh, kw)`, `(sh, sw)`, `(dh, dw)` of the forward convolution.

  Returns:
    `dw[i, j, c, o] = sum_{b, y, x} xp[b, y*sh + i*dh, x*sw + j*dw, c] * cotangent[b, y, x, o]`, float32.
  """
  lanes, reason = _load()
  if lanes is None:
    raise RuntimeError(f'The native convolution weight gradient is not available: {reason}.')
  if xp.ndim != 4 or cotangent.ndim != 4 or xp.shape[0] != cotangent.shape[0]:
    raise ValueError(f'conv_weight_grad needs xp [B, Hp, Wp, Cin] and cotangent [B, Ho, Wo, Cout], got {xp.shape} '
                     f'and {cotangent.shape}.')
  (kh, kw), (sh, sw), (dh, dw) = tuple(kernel_shape), tuple(strides), tuple(dilation)
  _, ho, wo, out_channels = cotangent.shape
  if (ho - 1) * sh + (kh - 1) * dh >= xp.shape[1] or (wo - 1) * sw + (kw - 1) * dw >= xp.shape[2]:
    raise ValueError(f'conv_weight_grad: padded input {xp.shape} is too small for output {cotangent.shape} with '
                     f'kernel {(kh, kw)}, strides {(sh, sw)}, dilation {(dh, dw)}.')
  # The kernel takes whole vectors of output channels: pad the cotangent with zero channels, drop them after.
  padded_out = -(-out_channels // lanes) * lanes
  g = cotangent.astype(jnp.float32)
  if padded_out != out_channels:
    g = jnp.pad(g, ((0, 0), (0, 0), (0, 0), (0, padded_out - out_channels)))
  call = jax.ffi.ffi_call(_TARGET, jax.ShapeDtypeStruct((kh, kw, xp.shape[-1], padded_out), jnp.float32),
                          vmap_method='sequential')
  grad = call(xp.astype(jnp.float32), g, kh=np.int64(kh), kw=np.int64(kw), sh=np.int64(sh), sw=np.int64(sw),
              dh=np.int64(dh), dw=np.int64(dw))
  return grad[..., :out_channels]
