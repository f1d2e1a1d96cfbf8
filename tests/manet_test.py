"""Tests for the ResNet34 encoder and MANet: shapes, parameter counts against smp, BatchNorm, PAB against NumPy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrecon_jax.models import manet
from segrecon_jax.models import resnet

# Reference counts: `sum(p.numel() for p in model.parameters())` (trainable parameters; BN running stats are
# buffers), computed in a scratch venv (`pip install torch segmentation-models-pytorch` from PyPI: torch 2.14.1,
# torchvision 0.29.1, segmentation-models-pytorch 0.6.0) for
#   smp.MAnet(encoder_name='resnet34', encoder_weights=None, in_channels=1, classes=4, **layout)
#   torchvision.models.resnet34()
# smp 0.6.0 builds the whole torchvision ResNet34 whatever encoder_depth is: below depth 5 its layer4 (13,114,368
# parameters), below depth 4 also its layer3 (6,822,400), are never run; we do not build them, so those are
# subtracted. Forward outputs were also compared once, with smp's weights copied in, in float64 (max logit error
# 7e-13 in eval mode, 1e-8 in train mode, depths 4 and 5).
SMP_MANET_DEFAULT_PARAMS = 31_777_796  # layout {}: encoder 21,278,400, decoder 10,498,816, head 580.
SMP_MANET_PAPER_PARAMS = 25_500_260 - 13_114_368  # encoder_depth=4, decoder_channels=(256, 128, 64, 32).
SMP_MANET_DEPTH3_PARAMS = 21_954_260 - 13_114_368 - 6_822_400  # depth 3, (64, 32, 16); layer3 unused too.
TORCHVISION_RESNET34_NO_FC_PARAMS = 21_284_672  # 21,797,672 with the 1000-class fc.


def _count(tree) -> int:
  return sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree))


def _abstract_variables(model, x):
  """Variable shapes from `init` without computing anything."""
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def _init(model, x, seed=0):
  """Random variables with the shapes of `model.init`, drawn with NumPy.

  Compiling JAX's random initialisers costs ~0.5 s per kernel shape on CPU, most of this file's run time
  otherwise; `test_init_with_flax_initialisers` covers the real `init`. Kernels are He-scaled normals, BatchNorm
  starts at identity statistics.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      return jnp.asarray(rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.dtype)
    if name in ('scale', 'var'):
      return jnp.ones(leaf.shape, leaf.dtype)
    if name == 'bias':
      return jnp.asarray(rng.normal(size=leaf.shape) * 0.1, leaf.dtype)
    return jnp.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, _abstract_variables(model, x))


def _normal(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _tiny(**overrides):
  return manet.MANet(**{**manet.MANET_PRESETS['tiny'], **overrides})


@pytest.mark.parametrize('preset,expected', [
    ('smp_default', SMP_MANET_DEFAULT_PARAMS),
    ('paper', SMP_MANET_PAPER_PARAMS),
])
def test_parameter_count_matches_smp(preset, expected):
  variables = _abstract_variables(manet.MANet(num_classes=4, **manet.MANET_PRESETS[preset]), jnp.zeros((1, 64, 64, 1)))
  assert _count(variables['params']) == expected


def test_parameter_count_depth3_matches_smp():
  model = manet.MANet(num_classes=4, encoder_depth=3, decoder_channels=(64, 32, 16))
  assert _count(_abstract_variables(model, jnp.zeros((1, 32, 32, 1)))['params']) == SMP_MANET_DEPTH3_PARAMS


def test_block_parameter_counts_match_formulas():
  params = _abstract_variables(manet.MANet(**manet.MANET_PRESETS['smp_default']), jnp.zeros((1, 64, 64, 1)))['params']
  channels, pab = 512, 64
  # PAB: two 1x1 convs to pab_channels and two 3x3 convs C -> C, all with biases.
  assert _count(params['center']) == 2 * (channels * pab + pab) + 2 * (9 * channels * channels + channels)
  # First MFAB: in 512, skip 256, out 256; Conv2dReLU = conv without bias + BN (scale, bias); SE reduction 16.
  c_in, skip, out, reduced = 512, 256, 256, 256 // 16
  hl = 9 * c_in * c_in + 2 * c_in + c_in * skip + 2 * skip
  squeeze_excite = 2 * (skip * reduced + reduced + reduced * skip + skip)
  fuse = 9 * 2 * skip * out + 2 * out + 9 * out * out + 2 * out
  assert _count(params['block0']) == hl + squeeze_excite + fuse
  # Last block has no skip: a plain DecoderBlock 32 -> 16.
  assert _count(params['block4']) == 9 * 32 * 16 + 2 * 16 + 9 * 16 * 16 + 2 * 16
  # Head: 3x3 conv 16 -> 4 with bias.
  assert _count(params['segmentation_head']) == 9 * 16 * 4 + 4


def test_resnet34_encoder_count_and_pyramid():
  x = jnp.zeros((1, 64, 64, 3))
  encoder = resnet.ResNetEncoder()
  variables = _abstract_variables(encoder, x)
  assert _count(variables['params']) == TORCHVISION_RESNET34_NO_FC_PARAMS
  features = jax.eval_shape(functools.partial(encoder.apply, train=False), variables, x)
  assert [f.shape for f in features] == [(1, 64 // 2**i, 64 // 2**i, c) for i, c in
                                         enumerate((3, 64, 64, 128, 256, 512))]


@pytest.mark.parametrize('depth,decoder_channels', [(3, (64, 32, 16)), (4, (256, 128, 64, 32)),
                                                    (5, (256, 128, 64, 32, 16))])
def test_full_width_output_shapes(depth, decoder_channels):
  x = jnp.zeros((2, 32, 32, 1))
  model = manet.MANet(num_classes=4, encoder_depth=depth, decoder_channels=decoder_channels)
  variables = _abstract_variables(model, x)
  logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  assert logits.shape == (2, 32, 32, 4)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize('depth', [3, 4, 5])
def test_tiny_forward_shapes(depth):
  model = _tiny(encoder_depth=depth, encoder_widths=(8, 8, 16, 16), decoder_channels=(16, 16, 8, 8, 8)[:depth],
                num_classes=3)
  x = _normal((2, 32, 32, 2))
  logits = jax.jit(functools.partial(model.apply, train=False))(_init(model, x), x)
  assert logits.shape == (2, 32, 32, 3)
  assert np.all(np.isfinite(logits))


def test_init_with_flax_initialisers():
  # One width everywhere and depth 3 keep the number of distinct kernel shapes (one RNG compile each) small.
  model = manet.MANet(encoder_depth=3, encoder_widths=(8, 8, 8, 8), encoder_stage_sizes=(1, 1, 1, 1), stem_width=8,
                      decoder_channels=(8, 8, 8), pab_channels=8)
  logits, variables = model.init_with_output(jax.random.key(0), _normal((1, 32, 32, 1)), train=False)
  assert logits.shape == (1, 32, 32, 4)
  assert np.all(np.isfinite(logits))
  assert set(variables) == {'params', 'batch_stats'}
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables['params']))
  # torchvision's kaiming_normal_(fan_out) for the stem: std sqrt(2 / (7 * 7 * 8)).
  np.testing.assert_allclose(np.std(variables['params']['encoder']['conv1']['kernel']), np.sqrt(2 / 392), rtol=0.2)


def test_paper_preset_output_shape():
  x = jnp.zeros((2, 64, 64, 1))
  model = manet.MANet(num_classes=4, **manet.MANET_PRESETS['paper'])
  logits = jax.eval_shape(functools.partial(model.apply, train=False), _abstract_variables(model, x), x)
  assert logits.shape == (2, 64, 64, 4)


def test_bad_inputs_raise():
  model = _tiny()
  with pytest.raises(ValueError, match=r'\(1, 24, 32, 1\)'):
    model.init(jax.random.key(0), jnp.zeros((1, 24, 32, 1)), train=False)
  with pytest.raises(ValueError, match='in_channels'):
    _tiny(in_channels=2).init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)
  with pytest.raises(ValueError, match='decoder_channels'):
    _tiny(decoder_channels=(8, 8, 8)).init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)


def test_batchnorm_train_updates_stats_and_eval_is_deterministic():
  model = _tiny()
  x = _normal((2, 32, 32, 1)) + 3.0
  variables = _init(model, x)
  apply_train = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats', 'intermediates'],
                                          capture_intermediates=lambda module, _: module.name == 'conv1'))
  train_logits, updates = apply_train(variables, x)
  stem_conv = updates.pop('intermediates')['encoder']['conv1']['__call__'][0]
  old_mean = variables['batch_stats']['encoder']['bn1']['mean']
  new_mean = updates['batch_stats']['encoder']['bn1']['mean']
  assert not np.allclose(old_mean, new_mean)
  # Flax momentum 0.9 is PyTorch momentum 0.1: new = 0.9 * old + 0.1 * batch mean.
  np.testing.assert_allclose(new_mean, 0.9 * old_mean + 0.1 * stem_conv.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
  # Same first example, a different second one (same shapes, so no recompilation).
  other = x.at[1].set(-x[1] * 2.0)
  # Eval mode uses the running averages: deterministic, and an example's logits ignore its batch-mates.
  variables = {'params': variables['params'], **updates}
  apply_eval = jax.jit(functools.partial(model.apply, train=False))
  full = apply_eval(variables, x)
  np.testing.assert_array_equal(full, apply_eval(variables, x))
  np.testing.assert_allclose(apply_eval(variables, other)[0], full[0], rtol=1e-5, atol=1e-5)
  # Train mode normalises with batch statistics, so they do not.
  train_other, _ = apply_train(variables, other)
  train_logits, _ = apply_train(variables, x)
  assert not np.allclose(train_logits[0], train_other[0], atol=1e-3)


def test_batchnorm_stats_are_averaged_across_devices_under_pmap():
  assert jax.local_device_count() >= 2, 'tests/conftest.py should force 2 host devices'
  x = _normal((2, 32, 32, 1)) * jnp.array([1.0, 3.0])[:, None, None, None]
  x = x + jnp.array([0.0, 5.0])[:, None, None, None]  # Very different data on the two devices.
  single = _tiny()
  variables = _init(single, x)
  expected_logits, expected = jax.jit(functools.partial(single.apply, train=True, mutable=['batch_stats']))(
      variables, x)

  sharded = _tiny(bn_axis_name='batch')

  def step(variables, x):
    return sharded.apply(variables, x, train=True, mutable=['batch_stats'])

  replicated = jax.tree_util.tree_map(lambda v: jnp.stack([v, v]), variables)
  logits, updates = jax.pmap(step, axis_name='batch')(replicated, x.reshape(2, 1, 32, 32, 1))
  for leaf, expected_leaf in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(leaf[0], leaf[1])  # Identical running stats on both devices ...
    np.testing.assert_allclose(leaf[0], expected_leaf, rtol=1e-4, atol=1e-5)  # ... from the full batch.
  np.testing.assert_allclose(logits.reshape(expected_logits.shape), expected_logits, rtol=1e-4, atol=1e-4)


def test_jit_float32_and_bfloat16():
  x = _normal((2, 32, 32, 1))
  for dtype in (jnp.float32, jnp.bfloat16):
    model = _tiny(dtype=dtype)
    variables = _init(model, x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables['params']))
    logits, _ = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(variables, x)
    assert logits.dtype == jnp.float32
    assert logits.shape == (2, 32, 32, 4)
    assert np.all(np.isfinite(logits))


def _conv_nchw(x, weight, bias):
  """PyTorch Conv2d (stride 1, 'same' zero padding) in NumPy: x [B, I, H, W], weight [O, I, k, k]."""
  k = weight.shape[-1]
  pad = k // 2
  height, width = x.shape[2:]
  padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  out = np.zeros((x.shape[0], weight.shape[0], height, width))
  for dy in range(k):
    for dx in range(k):
      out += np.einsum('bihw,oi->bohw', padded[:, :, dy:dy + height, dx:dx + width], weight[:, :, dy, dx])
  return out + bias[None, :, None, None]


def _smp_pab_numpy(x, weights, whole_map_softmax=True):
  """smp's PABBlock.forward, line by line, in NumPy on NCHW arrays (or with a per-row softmax, for contrast)."""
  batch, channels, height, width = x.shape
  top = _conv_nchw(x, *weights['top_conv']).reshape(batch, -1, height * width)  # flatten(2): [B, P, HW]
  center = _conv_nchw(x, *weights['center_conv']).reshape(batch, -1, height * width).transpose(0, 2, 1)
  bottom = _conv_nchw(x, *weights['bottom_conv']).reshape(batch, channels, height * width).transpose(0, 2, 1)
  sp_map = (center @ top).reshape(batch, -1) if whole_map_softmax else center @ top
  sp_map = np.exp(sp_map - sp_map.max(axis=-1, keepdims=True))
  sp_map = (sp_map / sp_map.sum(axis=-1, keepdims=True)).reshape(batch, height * width, height * width)
  sp_map = (sp_map @ bottom).reshape(batch, channels, height, width)  # No transpose, as smp.
  return _conv_nchw(x + sp_map, *weights['out_conv'])


def test_pab_matches_numpy_reference_of_smp():
  batch, height, width, channels, pab_channels = 2, 3, 4, 6, 5  # Non-square, C != P: catches any transpose slip.
  rng = np.random.default_rng(0)
  shapes = {'top_conv': (pab_channels, channels, 1), 'center_conv': (pab_channels, channels, 1),
            'bottom_conv': (channels, channels, 3), 'out_conv': (channels, channels, 3)}
  weights = {name: (rng.normal(size=(o, i, k, k)) * 0.5, rng.normal(size=o) * 0.1)
             for name, (o, i, k) in shapes.items()}
  params = {name: {'kernel': jnp.asarray(w.transpose(2, 3, 1, 0), jnp.float32), 'bias': jnp.asarray(b, jnp.float32)}
            for name, (w, b) in weights.items()}
  x_nchw = rng.normal(size=(batch, channels, height, width))
  out = manet.PAB(pab_channels=pab_channels).apply({'params': params},
                                                   jnp.asarray(x_nchw.transpose(0, 2, 3, 1), jnp.float32))
  expected = _smp_pab_numpy(x_nchw, weights).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  # The whole-map softmax matters: a per-row softmax gives a different result on the same weights.
  per_row = _smp_pab_numpy(x_nchw, weights, whole_map_softmax=False).transpose(0, 2, 3, 1)
  assert not np.allclose(out, per_row, rtol=1e-2, atol=1e-2)
