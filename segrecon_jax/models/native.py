"""The project's native CPU kernels, built on first use and called through XLA's FFI: a convolution's weight
gradient, and a direct convolution (the forward pass, and a stride-1 convolution's input gradient).

XLA:CPU computes a convolution's weight gradient as a convolution with a `Ho x Wo` window and a `kh x kw` output,
which runs far below the machine's matmul rate, where PyTorch's oneDNN runs a direct kernel.
`csrc/conv_weight_grad.cc` is such a direct kernel: register-blocked outer products of input channels and output
channels, accumulated over the output positions of cache-sized chunks of rows, without materializing im2col patches
or a padded copy of the input (the padding is implicit). `csrc/conv_forward.cc` computes a convolution as a GEMM of
output pixels x output channels x (tap, input channel) with register blocks of 24 accumulators and L1-sized weight
panels, the zero padding implicit; `layers.native_forward_pays` says which layers it takes (docs/benchmarks.md has
the measurements behind both). Both spread their work over XLA's intra-op thread pool
(`xla::ffi::ThreadPool`, `csrc/native_common.h`) and give the same bits on every run. They are compiled once per
machine with the system's C++ compiler (`$CXX`, else `g++` or `c++`; `-O3 -march=native`) against jaxlib's FFI
headers (`jax.ffi.include_dir()`) into one shared library, cached under `$SEGRECON_NATIVE_DIR` (default
`~/.cache/segrecon_jax/native`) keyed by the sources, the compiler, jaxlib and the CPU, and registered as the FFI
targets `segrecon_conv_weight_grad` and `segrecon_conv_forward` for the CPU platform.

`conv_weight_grad(x, g, ...)` and `conv_forward(x, kernel, ...)` call them; `available()` says whether they could be
built here (and `unavailable_reason()` why not). `layers.Conv` takes them on CPU under the runtime setting
conv_impl='auto' when they are available, and falls back to XLA's convolutions, with one warning that names the
reason, when they are not: no compiler, a failed build, or a cached library that cannot be loaded or lacks a
kernel's symbol.
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

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc')
_SOURCES = tuple(os.path.join(_CSRC, name) for name in ('conv_weight_grad.cc', 'conv_forward.cc'))
_HEADERS = (os.path.join(_CSRC, 'native_common.h'),)  # Part of the cache key; found next to the sources.
_TARGET = 'segrecon_conv_weight_grad'
_FORWARD_TARGET = 'segrecon_conv_forward'
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
  sources = []
  for name in _SOURCES + _HEADERS:
    with open(name, 'rb') as f:
      sources.append(f.read())
  version = subprocess.run([compiler, '--version'], capture_output=True, text=True, check=False).stdout
  key = hashlib.sha256(b'\0'.join([*sources, version.encode(), ' '.join(_FLAGS).encode(), jax.__version__.encode(),
                                   _cpu_signature().encode()])).hexdigest()[:16]
  directory = cache_dir()
  path = os.path.join(directory, f'segrecon_conv_{key}.so')
  if os.path.exists(path):
    return path
  os.makedirs(directory, exist_ok=True)
  # Compile to a private name, then rename: concurrent processes never load a half-written library.
  handle, tmp = tempfile.mkstemp(suffix='.so', dir=directory)
  os.close(handle)
  command = [compiler, *_FLAGS, f'-I{jax.ffi.include_dir()}', *_SOURCES, '-o', tmp]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    os.unlink(tmp)
    raise RuntimeError(f'{" ".join(command)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}')
  os.replace(tmp, path)
  logging.info('Built the native convolution kernels: %s', path)
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
    path = _build(compiler)
  except (OSError, RuntimeError, subprocess.SubprocessError) as e:
    return None, f'building {" and ".join(_SOURCES)} failed: {e}'
  try:  # Every symbol is looked up before anything is registered: a stale or foreign library falls back whole.
    library = ctypes.cdll.LoadLibrary(path)
    weight_grad, forward = library.SegreconConvWeightGrad, library.SegreconConvForward
    lanes_function = library.SegreconConvWeightGradLanes
  except (OSError, AttributeError) as e:
    reason = f'the cached library {path} cannot be used ({e}); delete it to rebuild'
    logging.warning('Native convolution kernels: %s.', reason)
    return None, reason
  jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(weight_grad), platform='cpu')
  jax.ffi.register_ffi_target(_FORWARD_TARGET, jax.ffi.pycapsule(forward), platform='cpu')
  lanes_function.restype = ctypes.c_int
  return int(lanes_function()), None  # Both kernels take kLanes from native_common.h.


def available() -> bool:
  """Whether the kernel is built and registered on this machine (builds it on the first call)."""
  return _load()[0] is not None


def unavailable_reason() -> Optional[str]:
  return _load()[1]


def conv_weight_grad(x: jax.Array, cotangent: jax.Array, kernel_shape: Sequence[int], strides: Sequence[int],
                     pads: Sequence[Tuple[int, int]], dilation: Sequence[int]) -> jax.Array:
  """Weight gradient `[kh, kw, Cin, Cout]` (float32) of a 2D convolution, on the CPU.

  Of `lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation)` in NHWC/HWIO, with the zero padding
  applied inside the kernel (no padded copy of `x`).

  Args:
    x: the convolution's input `[B, H, W, Cin]` (cast to float32).
    cotangent: the output cotangent `[B, Ho, Wo, Cout]` (cast to float32).
    kernel_shape, strides, dilation: `(kh, kw)`, `(sh, sw)`, `(dh, dw)` of the forward convolution.
    pads: `((top, bottom), (left, right))` of the forward convolution; negative values crop.

  Returns:
    `dw[i, j, c, o] = sum_{b, y, x} x[b, y*sh + i*dh - top, x*sw + j*dw - left, c] * cotangent[b, y, x, o]` (`x`
    zero outside its bounds), float32.
  """
  lanes, reason = _load()
  if lanes is None:
    raise RuntimeError(f'The native convolution weight gradient is not available: {reason}.')
  if x.ndim != 4 or cotangent.ndim != 4 or x.shape[0] != cotangent.shape[0]:
    raise ValueError(f'conv_weight_grad needs x [B, H, W, Cin] and cotangent [B, Ho, Wo, Cout], got {x.shape} '
                     f'and {cotangent.shape}.')
  (kh, kw), (sh, sw), (dh, dw) = tuple(kernel_shape), tuple(strides), tuple(dilation)
  (top, bottom), (left, right) = (tuple(p) for p in pads)
  _, ho, wo, out_channels = cotangent.shape
  want_h = max((x.shape[1] + top + bottom - (kh - 1) * dh - 1) // sh + 1, 0)
  want_w = max((x.shape[2] + left + right - (kw - 1) * dw - 1) // sw + 1, 0)
  if (ho, wo) != (want_h, want_w):
    raise ValueError(f'conv_weight_grad: cotangent {cotangent.shape} does not match the output {(want_h, want_w)} '
                     f'of input {x.shape} with kernel {(kh, kw)}, strides {(sh, sw)}, pads {tuple(pads)}, '
                     f'dilation {(dh, dw)}.')
  if 0 in x.shape[1:3]:  # No input positions (all padding): nothing to sum.
    return jnp.zeros((kh, kw, x.shape[-1], out_channels), jnp.float32)
  # The kernel takes whole vectors of output channels: pad the cotangent with zero channels, drop them after.
  padded_out = -(-out_channels // lanes) * lanes
  g = cotangent.astype(jnp.float32)
  if padded_out != out_channels:
    g = jnp.pad(g, ((0, 0), (0, 0), (0, 0), (0, padded_out - out_channels)))
  call = jax.ffi.ffi_call(_TARGET, jax.ShapeDtypeStruct((kh, kw, x.shape[-1], padded_out), jnp.float32),
                          vmap_method='sequential')
  grad = call(x.astype(jnp.float32), g, kh=np.int64(kh), kw=np.int64(kw), sh=np.int64(sh), sw=np.int64(sw),
              dh=np.int64(dh), dw=np.int64(dw), pt=np.int64(top), pl=np.int64(left))
  return grad[..., :out_channels]


def lanes() -> int:
  """The vector width (float32 lanes) the kernels were built with; `conv_forward` computes output channels in
  multiples of it. Raises when the kernels are not available."""
  value, reason = _load()
  if value is None:
    raise RuntimeError(f'The native convolution kernels are not available: {reason}.')
  return value


def conv_forward(x: jax.Array, kernel: jax.Array, strides: Sequence[int], pads: Sequence[Tuple[int, int]],
                 dilation: Sequence[int]) -> jax.Array:
  """A 2D convolution `[B, H, W, Cin] x [kh, kw, Cin, Cout] -> [B, Ho, Wo, Cout]` (float32) on the CPU.

  The same function as `lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation)` in NHWC/HWIO,
  with zero padding applied inside the kernel (no padded copy of `x`). The kernel computes output channels in whole
  vectors of `lanes()`: other counts (a reconstruction's 2-channel head) get zero kernel columns up to the next
  multiple, computed and sliced off, so they cost as much as that multiple.

  Args:
    x: `[B, H, W, Cin]` (cast to float32).
    kernel: `[kh, kw, Cin, Cout]` (cast to float32).
    strides, dilation: `(sh, sw)`, `(dh, dw)`.
    pads: `((top, bottom), (left, right))`; negative values crop, as in `lax.conv_general_dilated`.

  Returns:
    `out[b, y, x, o] = sum_{i, j, c} x[b, y*sh + i*dh - top, x*sw + j*dw - left, c] * kernel[i, j, c, o]`, float32.
  """
  width = lanes()
  if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
    raise ValueError(f'conv_forward needs x [B, H, W, Cin] and kernel [kh, kw, Cin, Cout], got {x.shape} and '
                     f'{kernel.shape}.')
  (kh, kw), (sh, sw), (dh, dw) = tuple(kernel.shape[:2]), tuple(strides), tuple(dilation)
  (top, bottom), (left, right) = (tuple(p) for p in pads)
  out_h = (x.shape[1] + top + bottom - (kh - 1) * dh - 1) // sh + 1
  out_w = (x.shape[2] + left + right - (kw - 1) * dw - 1) // sw + 1
  out_ch = kernel.shape[-1]
  shape = (x.shape[0], max(out_h, 0), max(out_w, 0), out_ch)
  if 0 in shape or 0 in x.shape[1:]:  # Nothing to compute (an input smaller than the kernel gives an empty output).
    return jnp.zeros(shape, jnp.float32)
  kernel = kernel.astype(jnp.float32)
  if out_ch % width:
    kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 0), (0, -out_ch % width)))
  call = jax.ffi.ffi_call(_FORWARD_TARGET, jax.ShapeDtypeStruct(shape[:3] + kernel.shape[-1:], jnp.float32),
                          vmap_method='sequential')
  out = call(x.astype(jnp.float32), kernel, sh=np.int64(sh), sw=np.int64(sw), dh=np.int64(dh), dw=np.int64(dw),
             pt=np.int64(top), pl=np.int64(left))
  return out if out.shape[-1] == out_ch else out[..., :out_ch]
