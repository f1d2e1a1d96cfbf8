"""Tests for models/layers.py: `conv2d`, `Conv` and `UpConv2x2` against the stock XLA / Flax layers."""

import functools
import subprocess

import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import flax.linen as nn
from segrecon_jax.models import layers
from segrecon_jax.models import native

# (kernel_size, strides, padding, dilation, in_channels, out_channels)
CONFIGS = [
    ((3, 3), 1, 'SAME', 1, 3, 5),
    ((1, 1), 1, 'SAME', 1, 4, 2),
    ((7, 7), 1, 'SAME', 1, 2, 3),
    ((3, 3), 1, 'SAME', 2, 6, 4),
    ((3, 3), 1, ((1, 1), (1, 1)), 1, 1, 8),
    ((3, 3), 2, 'SAME', 1, 4, 6),
    ((7, 7), 2, ((3, 3), (3, 3)), 1, 2, 4),
    ((2, 3), (2, 1), 'VALID', (1, 2), 3, 3),
]


@pytest.fixture
def native_layers():
  with layers.impls(conv_impl='native'):
    yield


@pytest.fixture
def xla_layers():
  with layers.impls(conv_impl='xla', upconv_impl='xla'):
    yield


def _stock(x, kernel, bias, kernel_size, strides, padding, dilation):
  """The reference: `lax.conv_general_dilated` with its own autodiff."""
  del kernel_size
  strides, dilation = layers._pair(strides, 's'), layers._pair(dilation, 'd')  # pylint: disable=protected-access
  if not isinstance(padding, str):
    padding = tuple(tuple(p) for p in padding)
  y = lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation,
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y + bias.astype(y.dtype)


def _native(x, kernel, bias, kernel_size, strides, padding, dilation):
  del kernel_size
  return layers.conv2d(x, kernel, bias, strides=strides, padding=padding, dilation=dilation)


def _inputs(config, dtype=jnp.float32, batch=2, size=(10, 9), seed=0):
  kernel_size, _, _, _, in_channels, out_channels = config
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch,) + size + (in_channels,))
  kernel = rng.normal(size=tuple(kernel_size) + (in_channels, out_channels)) / np.sqrt(np.prod(kernel_size))
  bias = rng.normal(size=(out_channels,))
  return tuple(jnp.asarray(a, dtype) for a in (x, kernel, bias))


def _value_and_grads(conv, config, x, kernel, bias):
  """Output and the gradients wrt (x, kernel, bias) of `sum(y * w)` for a fixed random `w`."""
  kernel_size, strides, padding, dilation = config[:4]
  fn = lambda x, k, b: conv(x, k, b, kernel_size, strides, padding, dilation)
  y = fn(x, kernel, bias)
  weights = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), y.dtype)
  grads = jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * weights.astype(jnp.float32)), argnums=(0, 1, 2))(
      x, kernel, bias)
  return (y,) + grads


# Wide layers too: the kernel's register blocks are 6 input channels by 1-4 vectors of output channels, and a batch
# of 40 rows of 40 positions is cut into several chunks, so remainders and the per-worker partial sums all run.
WIDE_CONFIGS = [
    ((3, 3), 1, 'SAME', 1, 13, 80),
    ((3, 3), 2, 'SAME', 2, 64, 48),
    ((7, 7), 2, ((3, 3), (3, 3)), 1, 1, 64),
    # The native forward kernel (32+ inputs, up to 128 outputs), and for stride 1 its input gradient where that
    # pass (Cout -> Cin) qualifies too: 1 to 4 vectors of outputs, rows of 40 pixels in register blocks plus
    # remainders, asymmetric, cropping and dilated padding (implicit in the kernel; the last config has a negative
    # input-gradient pad), input channels in several L1-sized chunks (128 and 192 inputs), 1x1 and non-square kernels.
    ((3, 3), 1, 'SAME', 1, 32, 32),
    ((3, 3), 1, ((2, 0), (1, 3)), 2, 32, 16),  # Input gradient 16 -> 32: XLA's.
    ((5, 3), 1, ((1, -1), (2, 2)), (1, 2), 48, 64),
    ((3, 3), 1, 'SAME', 1, 128, 64),
    ((3, 3), 1, 'SAME', 1, 64, 192),  # XLA's forward (192 outputs); the input gradient 192 -> 64 chunked.
    ((3, 3), 1, ((3, -1), (0, 2)), 1, 64, 32),
    ((1, 1), 1, 'VALID', 1, 48, 48),
]


@pytest.mark.parametrize('config', CONFIGS + WIDE_CONFIGS)
def test_conv2d_equals_stock_float32(config):
  """Every geometry's weight gradient is the native kernel's (a few outputs, as in a reconstruction's last layer,
  included), and all four results equal XLA's."""
  args = _inputs(config, size=(40, 40) if config in WIDE_CONFIGS else (10, 9))
  x, kernel, _ = args
  kernel_size, strides, padding, dilation = config[:4]
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda k: jnp.sum(_native(x, k, None, kernel_size, strides, padding,
                                                                dilation)**2)))(kernel))
  assert 'segrecon_conv_weight_grad' in jaxpr
  expected = _value_and_grads(_stock, config, *args)
  actual = jax.jit(lambda *a: _value_and_grads(_native, config, *a))(*args)
  for name, got, want in zip(('y', 'dx', 'dkernel', 'dbias'), actual, expected):
    assert got.shape == want.shape and got.dtype == want.dtype, name
    # float32 sums over up to 3200 positions in another order: an error relative to the largest entry.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=max(1e-4, 1e-5 * float(jnp.abs(want).max())),
                               err_msg=name)


@pytest.mark.parametrize('config', [CONFIGS[0], CONFIGS[3]])
def test_conv2d_equals_stock_bfloat16(config):
  expected = _value_and_grads(_stock, config, *_inputs(config, jnp.float32))
  actual = jax.jit(lambda *a: _value_and_grads(_native, config, *a))(*_inputs(config, jnp.bfloat16))
  for name, got, want in zip(('y', 'dx', 'dkernel', 'dbias'), actual, expected):
    assert got.dtype == jnp.bfloat16, name
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0, atol=0.03 * scale, err_msg=name)


def test_conv2d_weight_gradient_is_the_native_kernel():
  """The custom VJP is in use: the kernel gradient's jaxpr calls the FFI target, XLA's own autodiff does not."""
  x, kernel, _ = _inputs(WIDE_CONFIGS[0])
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda k: jnp.sum(layers.conv2d(x, k)**2)))(kernel))
  assert 'segrecon_conv_weight_grad' in jaxpr
  stock = str(jax.make_jaxpr(jax.grad(lambda k: jnp.sum(_stock(x, k, jnp.zeros(()), None, 1, 'SAME', 1)**2)))(kernel))
  assert 'segrecon_conv_weight_grad' not in stock


def test_native_forward_against_numpy():
  """The forward kernel alone (strided, dilated, asymmetric and cropping pads) against a float64 NumPy sum."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 13, 11, 20)).astype(np.float32)
  w = rng.normal(size=(3, 2, 20, 48)).astype(np.float32)
  (sh, sw), (dh, dw), pads = (2, 1), (1, 3), ((2, 1), (-1, 4))
  xp = np.pad(x.astype(np.float64), ((0, 0), (2, 1), (0, 4), (0, 0)))[:, :, 1:]
  ho, wo = (xp.shape[1] - 2 * dh - 1) // sh + 1, (xp.shape[2] - 1 * dw - 1) // sw + 1
  want = np.zeros((2, ho, wo, 48))
  for i in range(3):
    for j in range(2):
      taps = xp[:, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw]
      want += np.einsum('byxc,co->byxo', taps, w[i, j].astype(np.float64))
  got = jax.jit(lambda a, b: native.conv_forward(a, b, (sh, sw), pads, (dh, dw)))(x, w)
  assert got.shape == want.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  for out_ch in (2, native.lanes() + 2):  # Not whole vectors: zero kernel columns, computed and sliced off.
    got = native.conv_forward(jnp.asarray(x), jnp.asarray(w[..., :out_ch]), (sh, sw), pads, (dh, dw))
    assert got.shape == want.shape[:3] + (out_ch,)
    np.testing.assert_allclose(got, want[..., :out_ch], rtol=1e-5, atol=1e-4)


def test_native_forward_is_used_where_it_pays():
  """float32 layers with 32+ inputs and up to 64 outputs (in whole vectors) take the forward kernel, and stride-1
  ones the input gradient too (the flipped convolution); wider, narrower and bfloat16 layers keep XLA's."""
  def targets(x_shape, kernel_shape, strides=1, dtype=jnp.float32):
    x, k = jnp.ones(x_shape, dtype), jnp.ones(kernel_shape, dtype)
    fwd = str(jax.make_jaxpr(lambda x_: layers.conv2d(x_, k, strides=strides))(x))
    grad = str(jax.make_jaxpr(jax.grad(lambda x_: jnp.sum(layers.conv2d(x_, k, strides=strides))))(x))
    return 'segrecon_conv_forward' in fwd, grad.count('segrecon_conv_forward')
  assert targets((1, 8, 8, 32), (3, 3, 32, 64)) == (True, 2)  # The forward and the input gradient.
  assert targets((1, 8, 8, 32), (3, 3, 32, 64), strides=2) == (True, 1)  # Strided: XLA's input gradient.
  assert targets((1, 8, 8, 64), (3, 3, 64, 256)) == (False, 1)  # Wide: XLA's forward; the gradient has 64 outputs.
  assert targets((1, 8, 8, 2), (3, 3, 2, 32)) == (False, 1)  # 2 inputs: XLA's forward; the gradient is 32 -> 2.
  assert targets((1, 8, 8, 32), (3, 3, 32, 2)) == (True, 1)  # A 2-channel head; its input gradient has 2 inputs.
  assert targets((1, 8, 8, 32), (3, 3, 32, 64), dtype=jnp.bfloat16) == (False, 0)
  for channels in ((32, 128), (256, 16), (32, 40), (64, 2)):
    assert layers.native_forward_pays(*channels, jnp.float32), channels
  for channels in ((16, 64), (16, 2), (32, 256)):
    assert not layers.native_forward_pays(*channels, jnp.float32), channels


def test_native_forward_empty_output():
  """An input smaller than the (dilated) kernel gives an empty output, as lax.conv_general_dilated does."""
  x, w = jnp.ones((2, 3, 5, 32)), jnp.ones((5, 3, 32, 16))
  got = native.conv_forward(x, w, (1, 1), ((0, 0), (0, 0)), (1, 1))
  want = lax.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  assert got.shape == want.shape == (2, 0, 3, 16)


def test_native_weight_gradient_against_numpy():
  """The kernel alone, strided and dilated, its padding implicit (asymmetric and cropping), against a float64 NumPy
  sum over the explicitly padded input."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(3, 15, 12, 7)).astype(np.float32)
  pads = ((2, 0), (-1, 4))
  xp = np.pad(x, ((0, 0), (2, 0), (0, 4), (0, 0)))[:, :, 1:]  # [3, 17, 15, 7]
  (kh, kw), (sh, sw), (dh, dw) = (3, 2), (2, 1), (1, 3)
  ho, wo = (17 - (kh - 1) * dh - 1) // sh + 1, (15 - (kw - 1) * dw - 1) // sw + 1
  g = rng.normal(size=(3, ho, wo, 20)).astype(np.float32)
  want = np.zeros((kh, kw, 7, 20))
  for i in range(kh):
    for j in range(kw):
      taps = xp[:, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw].astype(np.float64)
      want[i, j] = np.einsum('byxc,byxo->co', taps, g.astype(np.float64))
  got = jax.jit(lambda a, b: native.conv_weight_grad(a, b, (kh, kw), (sh, sw), pads, (dh, dw)))(x, g)
  assert got.shape == want.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  # Padding wider than the kernel's reach: whole rows and columns of taps fall outside the input (zero).
  x2, wide = x[:, :4, :3], ((3, 4), (5, 2))
  g2 = rng.normal(size=(3, 4 + 7 - 2, 3 + 7 - 1, 20)).astype(np.float32)
  xp2 = np.pad(x2, ((0, 0), (3, 4), (5, 2), (0, 0))).astype(np.float64)
  want2 = np.stack([np.stack([np.einsum('byxc,byxo->co', xp2[:, i:i + g2.shape[1], j:j + g2.shape[2]], g2)
                              for j in range(2)]) for i in range(3)])
  got2 = native.conv_weight_grad(jnp.asarray(x2), jnp.asarray(g2), (3, 2), (1, 1), wide, (1, 1))
  np.testing.assert_allclose(got2, want2, rtol=1e-5, atol=1e-4)
  with pytest.raises(ValueError, match='does not match'):
    native.conv_weight_grad(jnp.asarray(x), jnp.asarray(g), (kh, kw), (4, 1), pads, (dh, dw))


def test_native_weight_gradient_is_deterministic():
  """Many chunks of rows over the thread pool: the partial sums are added in a fixed order, so every run of the
  same inputs gives the same bits (and agrees with a float64 sum)."""
  rng = np.random.default_rng(4)
  x = rng.normal(size=(8, 64, 64, 16)).astype(np.float32)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  g = rng.normal(size=(8, 64, 64, 32)).astype(np.float32)
  fn = jax.jit(lambda a, b: native.conv_weight_grad(a, b, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)))
  runs = [np.asarray(fn(x, g)) for _ in range(6)]
  for run in runs[1:]:
    np.testing.assert_array_equal(run, runs[0])
  want = np.einsum('byxc,byxo->co', xp[:, 1:65, 2:66].astype(np.float64), g.astype(np.float64))
  np.testing.assert_allclose(runs[0][1, 2], want, rtol=1e-4, atol=1e-2)
  empty = fn(np.zeros((0, 64, 64, 16), np.float32), np.zeros((0, 64, 64, 32), np.float32))  # No rows: zeros.
  np.testing.assert_array_equal(empty, np.zeros((3, 3, 16, 32), np.float32))


def test_conv2d_float64_keeps_xla_weight_gradient():
  """The kernel is float32; float64 inputs take XLA's weight gradient, so check_grads holds at float64 precision."""
  with jax.enable_x64(True):
    x, kernel, bias = _inputs(CONFIGS[3], jnp.float64, batch=1, size=(6, 5))
    fn = lambda x, k, b: layers.conv2d(x, k, b, padding='SAME', dilation=2)
    assert fn(x, kernel, bias).dtype == jnp.float64
    jax.test_util.check_grads(fn, (x, kernel, bias), order=1, modes=('rev',))


def test_conv2d_vmap_and_pmap():
  config = CONFIGS[0]
  x, kernel, bias = _inputs(config, batch=4)
  grad_fn = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(layers.conv2d(x, k, bias))), argnums=(0, 1)))
  per_example = [grad_fn(x[i:i + 1], kernel) for i in range(4)]
  # vmap over a leading axis of examples (each call sees [1, H, W, C]).
  dx, dk = jax.vmap(grad_fn, in_axes=(0, None))(x[:, None], kernel)
  np.testing.assert_allclose(dx[:, 0], jnp.concatenate([g[0] for g in per_example]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, jnp.stack([g[1] for g in per_example]), rtol=1e-5, atol=1e-4)
  # pmap over the 2 fake CPU devices (tests/conftest.py), 2 examples each; the kernel gradient is summed over
  # the device axis 'devices', as a data-parallel train step does.
  assert jax.local_device_count() == 2
  def device_grads(x):
    dx, dk = grad_fn(x, kernel)
    return dx, lax.psum(dk, 'devices')

  dx_p, dk_p = jax.pmap(device_grads, axis_name='devices')(x.reshape(2, 2, *x.shape[1:]))
  dx_all, dk_all = grad_fn(x, kernel)
  np.testing.assert_allclose(dx_p.reshape(x.shape), dx_all, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dk_p[0], dk_all, rtol=1e-5, atol=1e-4)


def test_conv_module_initializes_as_nn_conv():
  """Same tree, shapes and initial values as nn.Conv: checkpoints and parameter counts carry over."""
  x = jnp.zeros((1, 8, 8, 3))
  variables = nn.Conv(5, (3, 3)).init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, layers.Conv(5, (3, 3)).init(jax.random.key(0), x), variables)


@pytest.mark.parametrize('kwargs', [
    dict(features=5, kernel_size=(3, 3)),
    dict(features=3, kernel_size=(3, 3), padding=((1, 1), (1, 1)), kernel_dilation=2, use_bias=False),
    dict(features=6, kernel_size=(7, 7), strides=2, padding=((3, 3), (3, 3))),
    dict(features=2, kernel_size=(3, 3), padding='CIRCULAR'),
])
def test_conv_module_is_a_drop_in(kwargs):
  with layers.impls(conv_impl='native'):  # Read when the module is traced (every apply below).
    _check_drop_in(kwargs)


def _check_drop_in(kwargs):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 12, 12, 3)), jnp.float32)
  stock, ours = nn.Conv(**kwargs), layers.Conv(**kwargs)
  shapes = jax.eval_shape(stock.init, jax.random.key(0), x)
  assert jax.eval_shape(ours.init, jax.random.key(0), x) == shapes
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)

  def value_and_grads(module):
    return jax.jit(jax.value_and_grad(lambda v, x: jnp.sum(jnp.tanh(module.apply(v, x))), argnums=(0, 1)))(
        variables, x)

  got, want = value_and_grads(ours), value_and_grads(stock)
  np.testing.assert_allclose(ours.apply(variables, x), stock.apply(variables, x), rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4), got, want)


@pytest.mark.usefixtures('native_layers')
def test_conv_module_bfloat16_and_extra_batch_axes():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2, 8, 8, 3)), jnp.float32)
  stock = nn.Conv(4, (3, 3), dtype=jnp.bfloat16)
  ours = layers.Conv(4, (3, 3), dtype=jnp.bfloat16)
  variables = stock.init(jax.random.key(0), x)
  y = ours.apply(variables, x)
  assert y.shape == (2, 2, 8, 8, 4) and y.dtype == jnp.bfloat16
  assert variables['params']['kernel'].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(stock.apply(variables, x), np.float32),
                             atol=0.05)
  grads = jax.grad(lambda v: jnp.sum(ours.apply(v, x).astype(jnp.float32)**2))(variables)
  want = jax.grad(lambda v: jnp.sum(nn.Conv(4, (3, 3)).apply(v, x)**2))(variables)
  assert grads['params']['kernel'].dtype == jnp.float32
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=0, atol=0.03 * float(jnp.abs(w).max())), grads,
               want)


@pytest.mark.parametrize('kernel,padding', [(2, 'VALID'), (3, 'SAME')])
def test_upconv_equals_conv_transpose(padding, kernel):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 4, 6)), jnp.float32)
  kwargs = dict(features=3, kernel_size=(kernel, kernel), strides=(kernel, kernel), padding=padding)
  stock, ours = nn.ConvTranspose(**kwargs), layers.UpConv2x2(**kwargs)
  variables = stock.init(jax.random.key(0), x)
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # A non-zero bias.
  ours_variables = ours.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours_variables) == jax.tree.map(jnp.shape, stock.init(jax.random.key(0), x))
  y = ours.apply(variables, x)
  assert y.shape == (2, 5 * kernel, 4 * kernel, 3)
  np.testing.assert_allclose(y, stock.apply(variables, x), rtol=1e-5, atol=1e-5)
  loss = lambda module: lambda v, x: jnp.sum(jnp.tanh(module.apply(v, x)))
  want = jax.grad(loss(stock), argnums=(0, 1))(variables, x)
  got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(variables, x)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5), got, want)


def test_upconv_bfloat16_vmap_pmap():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 8)), jnp.float32)
  stock = nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding='VALID')
  variables = stock.init(jax.random.key(0), x)
  ours = layers.UpConv2x2(4, dtype=jnp.bfloat16)
  y = ours.apply(variables, x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), stock.apply(variables, x), atol=0.05)
  ours = layers.UpConv2x2(4)
  want = stock.apply(variables, x)
  np.testing.assert_allclose(jax.vmap(lambda x: ours.apply(variables, x))(x[:, None])[:, 0], want, atol=1e-5)
  np.testing.assert_allclose(jax.pmap(lambda x: ours.apply(variables, x))(x[:, None])[:, 0], want, atol=1e-5)


def test_upconv_rejects_overlapping_kernels():
  with pytest.raises(ValueError, match='strides == kernel_size'):
    layers.UpConv2x2(3, (3, 3), strides=(2, 2)).init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))


@pytest.mark.parametrize('kwargs', [
    dict(features=5, kernel_size=(3, 3)),
    dict(features=6, kernel_size=(7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False),
    dict(features=2, kernel_size=(3, 3), padding='CIRCULAR', kernel_dilation=2),
])
@pytest.mark.usefixtures('xla_layers')
def test_conv_module_with_xla_impl_is_nn_conv_exactly(kwargs):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 12, 12, 3)), jnp.float32)
  stock, ours = nn.Conv(**kwargs), layers.Conv(**kwargs)
  variables = jax.tree.map(lambda v: v + 0.1, stock.init(jax.random.key(0), x))
  np.testing.assert_array_equal(ours.apply(variables, x), stock.apply(variables, x))
  loss = lambda module: jax.jit(jax.grad(lambda v, x: jnp.sum(jnp.tanh(module.apply(v, x))), argnums=(0, 1)))
  jax.tree.map(np.testing.assert_array_equal, loss(ours)(variables, x), loss(stock)(variables, x))


def test_auto_picks_native_on_cpu_and_each_pass_where_it_pays():
  assert jax.default_backend() == 'cpu' and native.available(), native.unavailable_reason()
  assert layers.resolve_conv_impl('auto') == 'native' and layers.resolve_conv_impl('native') == 'native'
  assert layers.resolve_conv_impl('xla') == 'xla'
  # What runs: the native weight gradient on every layer (an FFI call; XLA's is a convolution), the forward kernel
  # for the 32-input layers, the 2-channel head included.
  for in_ch, features, forward in ((3, 16, False), (3, 2, False), (32, 2, True), (32, 16, True)):
    x = jnp.ones((1, 8, 8, in_ch))
    module = layers.Conv(features, (3, 3))
    variables = module.init(jax.random.key(0), x)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(module.apply(v, x)**2)))(variables))
    assert 'segrecon_conv_weight_grad' in jaxpr, (in_ch, features, jaxpr)
    assert ('segrecon_conv_forward' in jaxpr) == forward, (in_ch, features, jaxpr)
  assert not layers.native_weight_grad_pays(jnp.float64) and layers.native_weight_grad_pays(jnp.bfloat16)
  with layers.impls(conv_impl='xla'):  # The runtime setting, read at trace time: XLA's convolutions only.
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(module.apply(v, x)**2)))(variables))
  assert 'segrecon_conv' not in jaxpr and 'conv_general_dilated' in jaxpr
  assert layers.current_impls() == {'conv_impl': 'auto', 'upconv_impl': 'auto'}  # Restored after the block.
  with pytest.raises(ValueError, match='conv_impl'):
    layers.set_impls(conv_impl='cudnn')
  assert layers.current_impls()['conv_impl'] == 'auto'


def test_auto_falls_back_to_xla_without_the_kernel(monkeypatch, caplog):
  monkeypatch.setattr(native, '_load', lambda: (None, 'no C++ compiler was found'))
  monkeypatch.setattr(layers, '_warned_fallback', [])
  with caplog.at_level('WARNING'):
    assert layers.resolve_conv_impl('auto') == 'xla'
    assert layers.resolve_conv_impl('auto') == 'xla'
  assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
  assert 'no C++ compiler' in caplog.records[0].getMessage()
  with pytest.raises(RuntimeError, match='no C\\+\\+ compiler'):
    layers.resolve_conv_impl('native')


def test_native_build_failure_is_reported(monkeypatch, tmp_path):
  """A compiler that fails leaves no library in the cache and a reason naming the source and the compiler's error."""
  fake = tmp_path / 'fake-cxx'
  fake.write_text('#!/bin/sh\necho "fake compiler error" >&2\nexit 1\n')
  fake.chmod(0o755)
  monkeypatch.setenv('CXX', str(fake))
  monkeypatch.setenv('SEGRECON_NATIVE_DIR', str(tmp_path / 'cache'))
  with pytest.raises(RuntimeError, match='fake compiler error'):
    native._build(str(fake))  # pylint: disable=protected-access
  assert not list((tmp_path / 'cache').glob('*.so'))


def test_upconv_selector():
  assert layers.conv_transpose_module('xla') is nn.ConvTranspose
  assert layers.conv_transpose_module('dense') is layers.UpConv2x2
  assert jax.default_backend() == 'cpu'
  assert layers.conv_transpose_module('auto') is layers.UpConv2x2
  with pytest.raises(ValueError, match='upconv_impl'):
    layers.conv_transpose_module('im2col')
  with layers.impls(upconv_impl='xla'):  # Default: the runtime setting.
    assert layers.conv_transpose_module() is nn.ConvTranspose
  assert layers.conv_transpose_module() is layers.UpConv2x2


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_max_pool_2x2_equals_nn_max_pool_ties_included(dtype):
  """Values and gradients as nn.max_pool's, on inputs with many ties (small integers) and after a ReLU."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.integers(-2, 3, size=(3, 8, 6, 5)), dtype)
  weights = jnp.asarray(rng.normal(size=(3, 4, 3, 5)), dtype)
  stock = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(layers.max_pool_2x2(x), stock(x))
  for f in (lambda v: v, nn.relu):
    loss = lambda pool, v: jnp.sum(pool(f(v)) * weights)
    np.testing.assert_array_equal(jax.grad(functools.partial(loss, layers.max_pool_2x2))(x),
                                  jax.grad(functools.partial(loss, stock))(x))
  odd = jnp.ones((1, 5, 4, 2), dtype)  # Odd sides: nn.max_pool itself.
  np.testing.assert_array_equal(layers.max_pool_2x2(odd), stock(odd))


def test_a_library_without_the_kernels_falls_back_to_xla(monkeypatch, tmp_path, caplog):
  """A stale or foreign cached library (here one with the lanes query but neither kernel) is reported, and 'auto'
  falls back to XLA's convolutions instead of raising when the kernel symbols are looked up."""
  compiler = native._compiler()  # pylint: disable=protected-access
  if compiler is None:
    pytest.skip('no C++ compiler')
  source, stale = tmp_path / 'stale.cc', tmp_path / 'stale.so'
  source.write_text('extern "C" int SegreconConvWeightGradLanes() { return 8; }\n')
  subprocess.run([compiler, '-shared', '-fPIC', str(source), '-o', str(stale)], check=True)
  monkeypatch.setattr(native, '_build', lambda compiler: str(stale))
  # A fresh cache of the loader for this test (monkeypatch restores the process's loaded kernels after it).
  fresh_load = functools.lru_cache(maxsize=None)(native._load.__wrapped__)  # pylint: disable=protected-access
  monkeypatch.setattr(native, '_load', fresh_load)
  monkeypatch.setattr(layers, '_warned_fallback', [])
  with caplog.at_level('WARNING'):
    assert not native.available()
    assert layers.resolve_conv_impl('auto') == 'xla'
  reason = native.unavailable_reason()
  assert str(stale) in reason and 'SegreconConvWeightGrad' in reason, reason
  messages = [r.getMessage() for r in caplog.records]
  assert any(str(stale) in m for m in messages) and any("conv_impl='auto' uses XLA" in m for m in messages)
  with pytest.raises(RuntimeError, match='stale.so'):
    layers.resolve_conv_impl('native')
  x = jnp.ones((1, 8, 8, 32))  # A layer the native kernels would take in both passes.
  module = layers.Conv(16, (3, 3))
  variables = module.init(jax.random.key(0), x)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(module.apply(v, x)**2)))(variables))
  assert 'segrecon_conv' not in jaxpr and 'conv_general_dilated' in jaxpr
