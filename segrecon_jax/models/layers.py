"""The convolution layers every model uses, and the runtime choice of how they are computed.

`Conv` is a drop-in for Flax's `nn.Conv` on 2D NHWC inputs (same fields, parameter names, shapes and initial
values). How it is computed is a runtime setting of this process, never a field of a model, so parameter trees,
checkpoints and stored configs are the same whichever runs (`set_impls`, the context manager `impls`, and
`parallel.setup_runtime`, which sets them from `config.conv_impl` / `config.upconv_impl` at start-up):

- conv_impl 'xla': exactly `nn.Conv` (`lax.conv_general_dilated`, XLA's forward and backward);
- conv_impl 'native': `conv2d`: the project's direct CPU kernels (`models/native.py`, `csrc/`, called through XLA's
  FFI in a `jax.custom_vjp`) for the passes where they beat XLA:CPU, XLA's convolutions for the rest: the weight
  gradient of every layer that is not float64 (`native_weight_grad_pays`; XLA:CPU computes it as another
  convolution far below its forward rate, where PyTorch's oneDNN runs a direct kernel), the forward pass and
  (stride 1) the input gradient of float32 layers with 32+ inputs and at most 128 outputs (`native_forward_pays`);
- conv_impl 'auto' (the default): 'native' on CPU when the kernels could be built here, else 'xla' (with one
  warning naming the reason). On GPU/TPU 'auto' is 'xla' (cuDNN / the TPU compiler); 'native' there is an error.

`UpConv2x2` replaces a transposed convolution whose kernel equals its stride (the U-Net's 2x2, stride-2
up-convolution) by a dense layer and a depth-to-space; with the same `kernel [2, 2, Cin, Cout]` it is numerically
the same function as `nn.ConvTranspose`. upconv_impl picks it (`conv_transpose_module`): 'dense' (`UpConv2x2`),
'xla' (`nn.ConvTranspose`) or 'auto' (`UpConv2x2` on CPU, where XLA's transposed convolution is the slower of the
two, `nn.ConvTranspose` elsewhere).

`max_pool_2x2` is `nn.max_pool(x, (2, 2), strides=(2, 2))` (the U-Nets' pooling) as an elementwise maximum of the
four window elements, with the same gradient (to the first maximum of each window in row-major order, as
XLA's select-and-scatter and PyTorch's MaxPool2d give it): XLA:CPU differentiates `reduce_window` max with four
index arrays the size of the input and a scatter.

The setting is read when a model is traced: a function compiled earlier keeps the layers it was traced with, so
set it before building the steps (it is process-wide, so the ahead-of-time compiles on background threads of
`parallel.AheadOfTimeSteps` see it too). `python benchmarks/train_step.py --conv_impl=... --upconv_impl=...` and
`benchmarks/conv_bench.py` time the choices; their figures are in docs/benchmarks.md. Arrays are NHWC, kernels HWIO.
"""

import contextlib
import functools
import logging
from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from segrecon_jax.models import native

Array = Any
Dtype = Any
PaddingLike = Union[str, int, Sequence[Union[int, Tuple[int, int]]]]
Pads = Tuple[Tuple[int, int], Tuple[int, int]]

CONV_IMPLS = ('auto', 'xla', 'native')  # The runtime setting conv_impl: how every `Conv` is computed.
UPCONV_IMPLS = ('auto', 'xla', 'dense')  # The runtime setting upconv_impl: `conv_transpose_module`'s class.

# The process-wide runtime setting (see the module docstring): module-level rather than thread-local, so the
# background compile threads trace with the value the main thread set.
_IMPLS = {'conv_impl': 'auto', 'upconv_impl': 'auto'}
_VALID_IMPLS = {'conv_impl': CONV_IMPLS, 'upconv_impl': UPCONV_IMPLS}

# 'native' computes a float32 convolution (and a stride-1 one's input gradient) with the native forward kernel when
# it has at least NATIVE_FORWARD_MIN_IN input and at most NATIVE_FORWARD_MAX_OUT output channels
# (`native_forward_pays`).
NATIVE_FORWARD_MIN_IN = 32
NATIVE_FORWARD_MAX_OUT = 128

_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def _check_impl(field: str, value: str) -> str:
  if value not in _VALID_IMPLS[field]:
    raise ValueError(f'{field} must be one of {_VALID_IMPLS[field]}, got {value!r}.')
  return value


def set_impls(conv_impl: Optional[str] = None, upconv_impl: Optional[str] = None) -> None:
  """Sets how this process computes the layers from now on (None leaves a setting as it is).

  Functions traced before keep the layers they were traced with: set it at start-up, before building the steps.
  """
  new = {'conv_impl': conv_impl, 'upconv_impl': upconv_impl}
  for field, value in new.items():
    if value is not None:
      _check_impl(field, value)
  _IMPLS.update({field: value for field, value in new.items() if value is not None})


def current_impls() -> dict:
  """`{'conv_impl': ..., 'upconv_impl': ...}`: the runtime setting as set (before 'auto' is resolved)."""
  return dict(_IMPLS)


@contextlib.contextmanager
def impls(conv_impl: Optional[str] = None, upconv_impl: Optional[str] = None):
  """`set_impls` for the body of a `with` block (tests, benchmarks timing each choice), restored after it.

  The setting is process-wide: do not enter this with different values on threads that trace at the same time.
  """
  before = current_impls()
  set_impls(conv_impl, upconv_impl)
  try:
    yield
  finally:
    _IMPLS.update(before)


def _pair(value: Union[int, Sequence[int]], what: str) -> Tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  value = tuple(int(v) for v in value)
  if len(value) != 2:
    raise ValueError(f'{what} must be an int or a pair for a 2D convolution, got {value}.')
  return value


def explicit_padding(padding: PaddingLike, spatial_shape: Sequence[int], kernel_shape: Sequence[int],
                     strides: Tuple[int, int], dilation: Tuple[int, int]) -> Pads:
  """Turns 'SAME', 'SAME_LOWER', 'VALID', an int or per-axis ints/pairs into `((top, bottom), (left, right))`."""
  if isinstance(padding, str):
    dilated_kernel = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilation)]
    pads = lax.padtype_to_pads(tuple(spatial_shape), dilated_kernel, strides, padding.upper())
  elif isinstance(padding, int):
    pads = [(padding, padding)] * 2
  else:
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if len(pads) != 2 or any(len(p) != 2 for p in pads):
    raise ValueError(f'padding must give (low, high) for the 2 spatial axes, got {padding!r}.')
  return pads


def _accumulation_dtype(dtype: Dtype) -> Dtype:
  """float32 for bfloat16/float16/float32 inputs, float64 for float64."""
  return jnp.promote_types(dtype, jnp.float32)


def _stock_conv(x: Array, kernel: Array, strides: Tuple[int, int], pads: Pads, dilation: Tuple[int, int],
                precision: Any) -> Array:
  return lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation,
                                  dimension_numbers=_DIMENSION_NUMBERS, precision=precision)


def native_forward_pays(in_channels: int, out_channels: int, dtype: Dtype) -> bool:
  """Whether the native forward kernel computes a float32 layer `in_channels -> out_channels` (and its input gradient,
  the `out -> in` pass).

  The rule (at least `NATIVE_FORWARD_MIN_IN` input and at most `NATIVE_FORWARD_MAX_OUT` output channels; outputs that
  are not whole vectors are padded to them) is where `python benchmarks/conv_bench.py --forward` found the kernel
  ahead of XLA:CPU's convolution on this project's machines: XLA's own convolution keeps the layers with many outputs
  or few inputs (docs/benchmarks.md has the figures)."""
  return (jnp.dtype(dtype) == jnp.float32 and in_channels >= NATIVE_FORWARD_MIN_IN and
          out_channels <= NATIVE_FORWARD_MAX_OUT and native.available())


def native_weight_grad_pays(dtype: Dtype) -> bool:
  """Whether the native kernel computes the weight gradient of a layer in `dtype`.

  Every layer that is not float64: the kernel computes in float32, and float64 keeps XLA's precision. With the
  outputs as its inner loop the kernel wastes most of a vector on a 2-output layer, and still beats XLA's weight
  gradient there, which lays the input out as [C, H, W, B] for it (`python benchmarks/conv_bench.py
  --cases=cascade`; docs/benchmarks.md)."""
  return jnp.dtype(dtype) != jnp.float64 and native.available()


def _forward(x: Array, kernel: Array, strides: Tuple[int, int], pads: Pads, dilation: Tuple[int, int],
             precision: Any) -> Array:
  """The convolution, by the native forward kernel where it pays, else by XLA."""
  if native_forward_pays(kernel.shape[2], kernel.shape[3], x.dtype) and jnp.dtype(kernel.dtype) == jnp.float32:
    return native.conv_forward(x, kernel, strides, pads, dilation)
  return _stock_conv(x, kernel, strides, pads, dilation, precision)


def _input_gradient(x: Array, kernel: Array, cotangent: Array, strides: Tuple[int, int], pads: Pads,
                    dilation: Tuple[int, int], precision: Any) -> Array:
  """The convolution's gradient with respect to `x`.

  For stride 1 it is again a convolution, of the cotangent with the kernel flipped in space and its channel axes
  swapped, padded by `(k - 1) * d - pad` on each side: the native forward kernel computes it where that pays.
  Otherwise it is XLA's transposed convolution (the forward in the VJP is dead and removed by the compiler)."""
  if strides == (1, 1) and native_forward_pays(kernel.shape[3], kernel.shape[2], cotangent.dtype):
    flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
    grad_pads = tuple(((k - 1) * d - lo, (k - 1) * d - hi) for k, d, (lo, hi) in zip(kernel.shape[:2], dilation, pads))
    return native.conv_forward(cotangent, flipped, (1, 1), grad_pads, dilation).astype(x.dtype)
  _, input_vjp = jax.vjp(lambda x_: _stock_conv(x_, kernel, strides, pads, dilation, precision), x)
  return input_vjp(cotangent)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _native_conv(x: Array, kernel: Array, bias: Optional[Array], strides: Tuple[int, int], pads: Pads,
                 dilation: Tuple[int, int], precision: Any) -> Array:
  y = _forward(x, kernel, strides, pads, dilation, precision)
  return y if bias is None else y + bias.reshape((1, 1, 1, -1))


def _native_conv_fwd(x, kernel, bias, strides, pads, dilation, precision):
  y = _native_conv(x, kernel, bias, strides, pads, dilation, precision)
  return y, (x, kernel, bias)


def _native_conv_bwd(strides, pads, dilation, precision, residuals, cotangent):
  x, kernel, bias = residuals
  x_grad = _input_gradient(x, kernel, cotangent, strides, pads, dilation, precision)
  if not native_weight_grad_pays(x.dtype):
    _, kernel_vjp = jax.vjp(lambda k_: _stock_conv(x, k_, strides, pads, dilation, precision), kernel)
    (kernel_grad,) = kernel_vjp(cotangent)
  else:
    kernel_grad = native.conv_weight_grad(x, cotangent, kernel.shape[:2], strides, pads, dilation)
  bias_grad = None
  if bias is not None:
    bias_grad = jnp.sum(cotangent, axis=(0, 1, 2), dtype=_accumulation_dtype(cotangent.dtype)).astype(bias.dtype)
  return x_grad, kernel_grad.astype(kernel.dtype), bias_grad


_native_conv.defvjp(_native_conv_fwd, _native_conv_bwd)


def conv2d(x: Array, kernel: Array, bias: Optional[Array] = None, *, strides: Union[int, Sequence[int]] = 1,
           padding: PaddingLike = 'SAME', dilation: Union[int, Sequence[int]] = 1, precision: Any = None) -> Array:
  """2D convolution computed by the native CPU kernels where they pay, else by XLA (CPU only).

  The same function as `lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation)` in NHWC/HWIO
  (plus `bias`), for any kernel size, stride, dilation and padding; only the way it is computed differs: the weight
  gradient by the native kernel where `native_weight_grad_pays` (in float32, cast back to the kernel's dtype), the
  forward pass and a stride-1 input gradient by the native forward kernel where `native_forward_pays` (float32), the
  rest by XLA. The bias gradient is
  the sum of the cotangent over batch and space, accumulated in float32.

  Args:
    x: `[B, H, W, Cin]`; the same dtype as `kernel`.
    kernel: `[kh, kw, Cin, Cout]`.
    bias: optional `[Cout]`, cast to the dtype of `x` (its gradient comes back in the bias's own dtype).
    strides: int or `(sh, sw)`.
    padding: 'SAME', 'SAME_LOWER', 'VALID', an int, or per-axis ints / `(low, high)` pairs.
    dilation: kernel dilation, int or `(dh, dw)`.
    precision: passed to the XLA convolutions.

  Returns:
    `[B, Ho, Wo, Cout]` in the dtype of `x`.
  """
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(f'conv2d needs x [B, H, W, Cin] and kernel [kh, kw, Cin, Cout], got {x.shape} and '
                     f'{kernel.shape}.')
  if x.shape[-1] != kernel.shape[2]:
    raise ValueError(f'conv2d: x has {x.shape[-1]} channels but kernel {kernel.shape} expects {kernel.shape[2]}.')
  strides, dilation = _pair(strides, 'strides'), _pair(dilation, 'dilation')
  pads = explicit_padding(padding, x.shape[1:3], kernel.shape[:2], strides, dilation)
  if bias is not None:
    bias = bias.astype(x.dtype)
  return _native_conv(x, kernel, bias, strides, pads, dilation, precision)


_warned_fallback = []


def resolve_conv_impl(impl: Optional[str] = None) -> str:
  """'xla' or 'native': how a `Conv` is computed on the default backend under `impl` (default: the runtime setting).

  'auto' falls back to 'xla' (with one warning naming the reason) when the native kernels cannot be built here; an
  explicit 'native' off the CPU, or where the kernels cannot be built, is an error.
  """
  impl = _check_impl('conv_impl', _IMPLS['conv_impl'] if impl is None else impl)
  cpu = jax.default_backend() == 'cpu'
  if impl == 'native':
    if not cpu:
      raise ValueError(f"conv_impl='native' is a CPU kernel; the default backend is {jax.default_backend()!r}: "
                       "use 'auto' or 'xla'.")
    if not native.available():
      raise RuntimeError(f"conv_impl='native': {native.unavailable_reason()}. Use 'auto' or 'xla'.")
  if impl == 'auto':
    if not cpu:
      return 'xla'
    if not native.available():
      if not _warned_fallback:
        _warned_fallback.append(True)
        logging.warning("conv_impl='auto' uses XLA's convolutions and their weight gradient (slower on CPU): the "
                        'native kernels are not available: %s.', native.unavailable_reason())
      return 'xla'
    return 'native'
  return impl


class Conv(nn.Module):
  """Drop-in for `nn.Conv` on 2D NHWC inputs, computed by XLA or the native CPU kernels as the runtime setting says.

  Same fields, defaults, parameter names (`kernel [kh, kw, Cin, features]`, `bias [features]`) and initial values as
  `nn.Conv`; `feature_group_count`, `input_dilation`, `mask` and 'CAUSAL' padding are not supported. Inputs with
  more than one leading batch axis are flattened into one, as `nn.Conv` does. Circular and reflect padding pad the
  input first, as `nn.Conv` does. With conv_impl 'xla' it computes what `nn.Conv` computes, op for op; the
  choice is read when the module is traced (`resolve_conv_impl`), never stored in it.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Union[None, int, Sequence[int]] = 1
  padding: PaddingLike = 'SAME'
  kernel_dilation: Union[None, int, Sequence[int]] = 1
  use_bias: bool = True
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    """`inputs [..., H, W, Cin]` -> `[..., Ho, Wo, features]`."""
    if isinstance(self.kernel_size, int) or len(self.kernel_size) != 2:
      raise ValueError(f'Conv is 2D: kernel_size must be a pair, got {self.kernel_size!r}.')
    impl = resolve_conv_impl()
    kernel_size = tuple(self.kernel_size)
    strides = _pair(1 if self.strides is None else self.strides, 'strides')
    dilation = _pair(1 if self.kernel_dilation is None else self.kernel_dilation, 'kernel_dilation')
    batch_shape = inputs.shape[:-3]
    x = inputs.reshape((-1,) + inputs.shape[-3:])
    padding = self.padding
    if isinstance(padding, str) and padding.upper() in ('CIRCULAR', 'REFLECT'):
      dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
      mode = {'CIRCULAR': 'wrap', 'REFLECT': 'reflect'}[padding.upper()]
      x = jnp.pad(x, [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)], mode=mode)
      padding = 'VALID'
    elif isinstance(padding, str) and padding.upper() == 'CAUSAL':
      raise ValueError("Conv does not support 'CAUSAL' padding (1D only in nn.Conv).")
    kernel = self.param('kernel', self.kernel_init, kernel_size + (x.shape[-1], self.features), self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if impl == 'xla':
      pads = explicit_padding(padding, x.shape[1:3], kernel_size, strides, dilation)
      y = _stock_conv(x, kernel, strides, pads, dilation, self.precision)
      if bias is not None:
        y = y + bias.reshape((1, 1, 1, -1))
    else:
      y = conv2d(x, kernel, bias, strides=strides, padding=padding, dilation=dilation, precision=self.precision)
    return y.reshape(batch_shape + y.shape[1:])


class UpConv2x2(nn.Module):
  """Drop-in for `nn.ConvTranspose(features, (s, s), strides=(s, s))` (the U-Net's 2x2 up-convolution, s = 2).

  A transposed convolution whose kernel equals its stride writes non-overlapping `s x s` blocks, so it is a dense
  layer `[B, H, W, Cin] x [Cin, s*s*Cout]` followed by a depth-to-space to `[B, s*H, s*W, Cout]`. The parameter is
  `nn.ConvTranspose`'s `kernel [s, s, Cin, Cout]` (and `bias [Cout]`); since `nn.ConvTranspose` does not flip its
  kernel (`transpose_kernel=False`), output pixel `(s*i + a, s*j + b)` gets `x[i, j] @ kernel[s-1-a, s-1-b]`.
  'VALID' and 'SAME' padding give the same result for kernel == stride (both are accepted).
  """
  features: int
  kernel_size: Sequence[int] = (2, 2)
  strides: Optional[Sequence[int]] = None  # None: equal to kernel_size.
  padding: PaddingLike = 'SAME'
  use_bias: bool = True
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    """`inputs [..., H, W, Cin]` -> `[..., s*H, s*W, features]`."""
    kernel_size = _pair(self.kernel_size, 'kernel_size')
    strides = kernel_size if self.strides is None else _pair(self.strides, 'strides')
    if strides != kernel_size:
      raise ValueError(f'UpConv2x2 needs strides == kernel_size, got {strides} and {kernel_size}.')
    if not (isinstance(self.padding, str) and self.padding.upper() in ('SAME', 'VALID')):
      raise ValueError(f"UpConv2x2 supports padding 'SAME' or 'VALID', got {self.padding!r}.")
    kernel = self.param('kernel', self.kernel_init, kernel_size + (inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    # [..., H, W, Cin] x [sh, sw, Cin, Cout] -> [..., H, sh, W, sw, Cout]: one GEMM, then a reshape.
    y = jnp.einsum('...hwc,abco->...hawbo', x, kernel[::-1, ::-1], precision=self.precision,
                   preferred_element_type=_accumulation_dtype(x.dtype)).astype(x.dtype)
    height, width = x.shape[-3:-1]
    y = y.reshape(x.shape[:-3] + (height * kernel_size[0], width * kernel_size[1], self.features))
    if bias is not None:
      y = y + bias
    return y


def conv_transpose_module(impl: Optional[str] = None) -> type:
  """The 2x2 stride-2 up-convolution class under `impl` (default: the runtime setting upconv_impl): 'dense' ->
  `UpConv2x2`, 'xla' -> `nn.ConvTranspose`, 'auto' -> `UpConv2x2` on CPU (faster there in forward+backward:
  benchmarks/conv_bench.py), `nn.ConvTranspose` elsewhere. Both have the same parameters; give the module a `name`,
  so the parameter tree does not depend on the class. Call the result with `strides` equal to `kernel_size` (what
  `UpConv2x2` supports)."""
  impl = _check_impl('upconv_impl', _IMPLS['upconv_impl'] if impl is None else impl)
  if impl == 'auto':
    impl = 'dense' if jax.default_backend() == 'cpu' else 'xla'
  return UpConv2x2 if impl == 'dense' else nn.ConvTranspose


def _pool_windows(x: Array):
  """The four elements of every 2x2 window of `[B, H, W, C]`, each `[B, H/2, W/2, C]`, in row-major window order."""
  b, h, w, c = x.shape
  x6 = x.reshape(b, h // 2, 2, w // 2, 2, c)
  return [x6[:, :, i, :, j, :] for i in (0, 1) for j in (0, 1)]


@jax.custom_vjp
def _max_pool_2x2(x: Array) -> Array:
  return functools.reduce(jnp.maximum, _pool_windows(x))


def _max_pool_2x2_fwd(x):
  return _max_pool_2x2(x), x


def _max_pool_2x2_bwd(x, cotangent):
  parts = _pool_windows(x)
  pooled = functools.reduce(jnp.maximum, parts)
  taken = jnp.zeros(pooled.shape, bool)
  grads = []
  for part in parts:  # The gradient goes to the first maximum of each window only.
    hit = (part == pooled) & ~taken
    grads.append(jnp.where(hit, cotangent, jnp.zeros_like(cotangent)))
    taken = taken | hit
  rows = [jnp.stack(grads[0:2], axis=3), jnp.stack(grads[2:4], axis=3)]  # [B, H/2, W/2, 2, C] each.
  return (jnp.stack(rows, axis=2).reshape(x.shape),)


_max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def max_pool_2x2(x: Array) -> Array:
  """`nn.max_pool(x, (2, 2), strides=(2, 2))` on `[B, H, W, C]` with even H and W (other shapes take
  `nn.max_pool`), with the same values and gradient; see the module docstring."""
  if x.ndim != 4 or x.shape[1] % 2 or x.shape[2] % 2:
    return nn.max_pool(x, (2, 2), strides=(2, 2))
  return _max_pool_2x2(x)
