"""Speed of convolution forward+backward: Flax/XLA layers against `segrecon_jax.models.layers` (native kernels).

  python benchmarks/conv_bench.py                      # every layer case and the 6x5x64 Deep Cascade conv stack
  python benchmarks/conv_bench.py --no_stack --repeats=3
  python benchmarks/conv_bench.py --cases=cascade
  python benchmarks/conv_bench.py --forward            # the forward kernel alone against XLA's convolution
  XLA_FLAGS=--xla_cpu_use_thunk_runtime=false python benchmarks/conv_bench.py

Each case times one jitted `jax.value_and_grad` of `sum(layer(x)**2)` with respect to the input and the parameters
(median of `--repeats` runs after a warm-up run, the two implementations timed alternately so that load
from other processes hits both alike) and reports GFLOP/s counted as 3 convolution passes (forward,
input gradient, weight gradient) of `2*B*Ho*Wo*kh*kw*Cin*Cout` FLOPs each (for the up-convolution, `B*H*W` input
positions). The stack is a Deep Cascade's CNNs without data consistency: `cascades` x [conv 2->F, (layers-2) x conv
F->F, conv F->2] with ReLUs and a residual per cascade, in the layout of `models/cascade.py`.

`--forward` times one convolution pass alone, `native.conv_forward` against `lax.conv_general_dilated`, for the
3x3 and 1x1 shapes the models run forward and, for stride 1, as input gradients (a layer Cin->Cout's input gradient
is a Cout->Cin convolution), and says which one `layers.native_forward_pays` picks: the measurement behind that rule.
"""

import argparse
import os
import sys
import time
from typing import Callable, List, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from segrecon_jax.models import layers  # pylint: disable=g-import-not-at-top
from segrecon_jax.models import native  # pylint: disable=g-import-not-at-top


class Case(NamedTuple):
  name: str
  group: str
  batch: int
  size: int
  in_channels: int
  out_channels: int
  kernel: int = 3
  stride: int = 1
  dilation: int = 1
  transpose: bool = False


CASES = (
    Case('cascade 64->64 3x3', 'cascade', 16, 128, 64, 64),
    Case('cascade 2->64 3x3', 'cascade', 16, 128, 2, 64),
    Case('cascade 64->2 3x3', 'cascade', 16, 128, 64, 2),
    Case('unet 32->32 3x3', 'unet', 16, 128, 32, 32),
    Case('unet 64->64 3x3', 'unet', 16, 64, 64, 64),
    Case('unet 128->128 3x3', 'unet', 16, 32, 128, 128),
    Case('unet 256->256 3x3', 'unet', 16, 16, 256, 256),
    Case('unet dec 64->32 3x3', 'unet', 16, 128, 64, 32),
    Case('unet head 32->2 1x1', 'unet', 16, 128, 32, 2, kernel=1),
    Case('up 256->128 2x2/2', 'upconv', 16, 16, 256, 128, kernel=2, stride=2, transpose=True),
    Case('up 128->64 2x2/2', 'upconv', 16, 32, 128, 64, kernel=2, stride=2, transpose=True),
    Case('up 64->32 2x2/2', 'upconv', 16, 64, 64, 32, kernel=2, stride=2, transpose=True),
    Case('manet 64->64 3x3 d2', 'other', 16, 64, 64, 64, dilation=2),
    Case('resnet stem 2->64 7x7/2', 'other', 16, 128, 2, 64, kernel=7, stride=2),
    Case('resnet 64->128 3x3/2', 'other', 16, 64, 64, 128, stride=2),
)


# (batch, size, in_channels, out_channels, kernel, dilation): the U-Nets' (fastMRI widths 32-256 from 128x128), the
# Deep Cascade's and MANet's (ResNet34 layer1 at 32x32, decoder blocks, the 1x1 attention/skip convolutions) passes,
# and the heads: the cascade's 64 -> 2 (also the input gradient of its 2 -> 64 first layer), the U-Nets' 1x1
# reconstruction (2) and segmentation (4 classes) outputs, and MANet's 3x3 segmentation head (32 -> 4).
FORWARD_CASES = (
    (16, 128, 32, 32, 3, 1), (16, 128, 64, 32, 3, 1), (16, 128, 32, 64, 3, 1), (16, 128, 64, 64, 3, 1),
    (16, 64, 32, 64, 3, 1), (16, 64, 64, 64, 3, 1), (16, 64, 128, 64, 3, 1), (16, 64, 64, 128, 3, 1),
    (16, 32, 64, 64, 3, 1), (16, 32, 64, 128, 3, 1), (16, 32, 128, 128, 3, 1), (16, 32, 256, 128, 3, 1),
    (16, 32, 128, 256, 3, 1), (16, 16, 256, 256, 3, 1), (16, 16, 256, 128, 3, 1), (16, 64, 64, 64, 3, 2),
    (16, 128, 16, 16, 3, 1), (16, 128, 32, 16, 3, 1), (16, 128, 64, 32, 1, 1), (16, 64, 64, 64, 1, 1),
    (16, 128, 64, 2, 3, 1), (16, 128, 32, 2, 1, 1), (16, 128, 32, 4, 1, 1), (16, 128, 32, 4, 3, 1),
)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=5, help='timed runs per case (median reported)')
  parser.add_argument('--cases', default='cascade,unet,upconv,other', help='comma-separated case groups')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--no_stack', action='store_true', help='skip the Deep Cascade conv stack')
  parser.add_argument('--stack_repeats', type=int, default=3, help='timed runs of the stack')
  parser.add_argument('--cascades', type=int, default=6)
  parser.add_argument('--layers', type=int, default=5)
  parser.add_argument('--features', type=int, default=64)
  parser.add_argument('--stack_batch', type=int, default=16)
  parser.add_argument('--stack_size', type=int, default=128)
  parser.add_argument('--forward', action='store_true', help='time the forward kernel alone (FORWARD_CASES)')
  return parser.parse_args(argv)


def interleaved_medians(fns: Sequence[Callable[[], object]], repeats: int) -> List[float]:
  """Median seconds of each function, timed in turn (A B A B ...) so that load from other processes hits all alike."""
  for fn in fns:
    jax.block_until_ready(fn())  # Warm-up: compile and first run.
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, fn_times in zip(fns, times):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      fn_times.append(time.perf_counter() - start)
  return [float(np.median(t)) for t in times]


def compiled_under(impl: str, step: Callable, *args) -> Callable[[], object]:
  """`step(*args)` jitted and compiled now under the runtime layer setting `impl` ('xla': XLA's convolutions and
  nn.ConvTranspose; 'native': the native kernels' weight gradient, and forward and input gradient where
  `layers.native_forward_pays`, and UpConv2x2), which a layer reads when it is traced."""
  with layers.impls(conv_impl=impl, upconv_impl='dense' if impl == 'native' else 'xla'):
    compiled = jax.jit(step).lower(*args).compile()
  return lambda: compiled(*args)


def layer_for(case: Case, dtype) -> nn.Module:
  if case.transpose:
    return layers.conv_transpose_module('dense')(case.out_channels, (case.kernel, case.kernel),
                                                 strides=(case.stride, case.stride), dtype=dtype)
  return layers.Conv(case.out_channels, (case.kernel, case.kernel), strides=case.stride, padding='SAME',
                     kernel_dilation=case.dilation, dtype=dtype)


def layer_step(case: Case, impl: str, dtype) -> Callable[[], object]:
  module = layer_for(case, dtype)
  x = jax.random.normal(jax.random.key(0), (case.batch, case.size, case.size, case.in_channels), dtype)
  params = module.init(jax.random.key(1), x)
  if case.transpose and impl == 'xla':  # The stock layer (same parameters).
    module = nn.ConvTranspose(case.out_channels, (case.kernel, case.kernel), strides=(case.stride, case.stride),
                              dtype=dtype)

  def step(params, x):
    return jax.value_and_grad(lambda p, x: jnp.sum(module.apply(p, x).astype(jnp.float32)**2), argnums=(0, 1))(
        params, x)

  return compiled_under(impl, step, params, x)


def layer_flops(case: Case) -> float:
  if case.transpose:
    positions = case.batch * case.size * case.size
  else:
    out_size = -(-case.size // case.stride)
    positions = case.batch * out_size * out_size
  return 3 * 2 * positions * case.kernel**2 * case.in_channels * case.out_channels


class ConvStack(nn.Module):
  """A Deep Cascade's CNNs without data consistency: `[B, H, W, 2]` -> `[B, H, W, 2]`."""
  cascades: int
  num_layers: int
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for cascade in range(self.cascades):
      y = x.astype(self.dtype)
      for layer in range(self.num_layers):
        last = layer == self.num_layers - 1
        y = layers.Conv(2 if last else self.features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                        name=f'cascade{cascade}_conv{layer}')(y)
        if not last:
          y = nn.relu(y)
      x = x + y.astype(x.dtype)
    return x


def stack_flops(args) -> float:
  f, positions = args.features, args.stack_batch * args.stack_size**2
  per_cascade = 9 * (2 * f + (args.layers - 2) * f * f + f * 2)
  return 3 * 2 * positions * per_cascade * args.cascades


def stack_step(args, impl: str, dtype) -> Callable[[], object]:
  model = ConvStack(args.cascades, args.layers, args.features, dtype)
  x = jax.random.normal(jax.random.key(0), (args.stack_batch, args.stack_size, args.stack_size, 2), jnp.float32)
  params = model.init(jax.random.key(1), x)

  def step(params, x):
    return jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x) - x)**2))(params)

  return compiled_under(impl, step, params, x)


def forward_table(repeats: int) -> None:
  """One convolution pass: XLA's against the native forward kernel, and the one `native_forward_pays` picks."""
  header = (f"{'forward pass':30s} {'xla ms':>8s} {'GF/s':>6s} {'native ms':>9s} {'GF/s':>6s} {'speed-up':>8s} "
            f"{'rule':>6s}")
  print(header)
  print('-' * len(header))
  rng = np.random.default_rng(0)
  for batch, size, cin, cout, k, d in FORWARD_CASES:
    x = jnp.asarray(rng.normal(size=(batch, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
    pads = (((k - 1) * d // 2,) * 2,) * 2
    xla_fn = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), pads, rhs_dilation=(d, d),
                                                           dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    native_fn = jax.jit(lambda x, w: native.conv_forward(x, w, (1, 1), pads, (d, d)))
    xla, ours = interleaved_medians([lambda: xla_fn(x, w), lambda: native_fn(x, w)], repeats)
    flops = 2 * batch * size * size * k * k * cin * cout
    rule = 'native' if layers.native_forward_pays(cin, cout, jnp.float32) else 'xla'
    name = f'{batch}x{size}x{size} {cin}->{cout} {k}x{k}' + (f' d{d}' if d > 1 else '')
    print(f'{name:30s} {xla * 1e3:8.1f} {flops / xla / 1e9:6.1f} {ours * 1e3:9.1f} {flops / ours / 1e9:6.1f} '
          f'{xla / ours:7.2f}x {rule:>6s}', flush=True)


def main(argv: Optional[List[str]] = None) -> None:
  args = parse_args(argv)
  dtype = jnp.dtype(args.dtype)
  if args.forward:
    print(f'jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, float32')
    forward_table(args.repeats)
    return
  print(f'jax {jax.__version__}, jaxlib {jax.lib.__version__}, backend {jax.default_backend()}, '
        f'device {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} CPUs, dtype {args.dtype}, '
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  up = layers.conv_transpose_module('auto')
  print(f"conv_impl='auto' is {layers.resolve_conv_impl('auto')!r} here (on CPU the native weight gradient, "
        f'the forward kernel where native_forward_pays); '
        f"upconv_impl='auto' is {up.__module__}.{up.__name__}")
  groups = set(args.cases.split(','))
  header = (f"{'case':26s} {'B':>3s} {'HxW':>7s} {'xla ms':>9s} {'GF/s':>6s} {'native ms':>9s} {'GF/s':>6s} "
            f"{'speed-up':>8s}")
  print(header)
  print('-' * len(header))
  for case in CASES:
    if case.group not in groups:
      continue
    flops = layer_flops(case)
    xla, ours = interleaved_medians([layer_step(case, impl, dtype) for impl in ('xla', 'native')],
                                      args.repeats)
    print(f'{case.name:26s} {case.batch:3d} {case.size:3d}x{case.size:<3d} {xla * 1e3:9.1f} {flops / xla / 1e9:6.1f} '
          f'{ours * 1e3:9.1f} {flops / ours / 1e9:6.1f} {xla / ours:7.2f}x', flush=True)
  if not args.no_stack:
    flops = stack_flops(args)
    name = f'stack {args.cascades}x{args.layers}x{args.features}'
    xla, ours = interleaved_medians([stack_step(args, impl, dtype) for impl in ('xla', 'native')],
                                      args.stack_repeats)
    size = args.stack_size
    print(f'{name:26s} {args.stack_batch:3d} {size:3d}x{size:<3d} {xla * 1e3:9.1f} {flops / xla / 1e9:6.1f} '
          f'{ours * 1e3:9.1f} {flops / ours / 1e9:6.1f} {xla / ours:7.2f}x  ({flops / 1e12:.2f} TFLOP/step, '
          f'median of {args.stack_repeats})', flush=True)


if __name__ == '__main__':
  main()
