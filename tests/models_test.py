"""Tests for segrecon_jax.models: shapes, parameter counts against the reference formulas, data consistency,
gradient flow between the networks, bfloat16, BatchNorm under pmap, and get_model's validation."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import cascade as cascade_config
from configs import cascade_manet as cascade_manet_config
from configs import multidecoder_unet as multidecoder_unet_config
from configs import unet as unet_config
from configs import unet_unet as unet_unet_config
from segrecon_jax import models
from segrecon_jax import mri
from segrecon_jax.models import cascade
from segrecon_jax.models import layers
from segrecon_jax.models import unet

TINY = (4, 8, 16)
TINY_CASCADE = {'num_cascades': 2, 'num_layers': 3, 'features': 4}
TINY_CONFIGS = {
    'unet': {'name': 'unet', 'features': TINY},
    'cascade': dict(name='cascade', **TINY_CASCADE),
    'multidecoder_unet': {'name': 'multidecoder_unet', 'features': TINY, 'num_classes': 4},
    'unet_unet': {'name': 'unet_unet', 'recon': {'features': TINY}, 'seg': {'features': TINY, 'out_channels': 4},
                  'stop_gradient': False},
    'cascade_manet': {'name': 'cascade_manet', 'recon': dict(TINY_CASCADE), 'seg': {'preset': 'tiny', 'num_classes': 4},
                      'stop_gradient': False},
}
JOINT = ('multidecoder_unet', 'unet_unet', 'cascade_manet')


def make_inputs(batch=2, size=32, seed=0, sampled_fraction=0.375):
  """(zero_filled float32 [B, H, W, 2], measured k-space complex64 [B, H, W], mask bool [B, 1, W])."""
  rng = np.random.default_rng(seed)
  image = (rng.standard_normal((batch, size, size)) + 1j * rng.standard_normal((batch, size, size)))
  image = jnp.asarray(image.astype(np.complex64))
  keys = jax.random.split(jax.random.PRNGKey(seed), batch)
  mask = jax.vmap(lambda key: mri.sample_mask(key, size, sampled_fraction, num_acs=4))(keys)[:, None, :]
  kspace = mri.undersample(mri.fft2c(image), mask)
  return mri.complex_to_channels(mri.ifft2c(kspace)), kspace, mask


def init(model, inputs, seed=0):
  # An 'unsafe_rbg' key: XLA compiles threefry's many initializer draws slowly on CPU (seconds per model).
  return jax.jit(functools.partial(model.init, train=False))(jax.random.key(seed, impl='unsafe_rbg'), *inputs)


@functools.lru_cache(maxsize=None)
def tiny_variables(name):
  """Float32 variables of `TINY_CONFIGS[name]` on `make_inputs()`, shared by the tests (init compiles slowly)."""
  return init(models.get_model(TINY_CONFIGS[name]), make_inputs())


def param_shapes(model, inputs):
  """Parameter shapes without computing anything (params do not depend on H, W)."""
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), *inputs)['params']


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------------------------
# Shapes, dtypes, jit.


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16], ids=['float32', 'bfloat16'])
@pytest.mark.parametrize('name', sorted(TINY_CONFIGS))
def test_every_model_runs_under_jit_with_the_train_loop_interface(name, dtype):
  inputs = make_inputs()
  model = models.get_model(TINY_CONFIGS[name], dtype=dtype)
  variables = tiny_variables(name)  # Parameters are float32 whatever the computation dtype.
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables['params']))

  @jax.jit
  def forward(variables, *inputs):
    return model.apply(variables, *inputs, train=True, mutable=['batch_stats'])

  outputs, updates = forward(variables, *inputs)
  assert isinstance(outputs, models.ModelOutput)
  assert (outputs.seg_logits is not None) == models.segments(TINY_CONFIGS[name]) == (name in JOINT)
  if name in JOINT:
    assert outputs.seg_logits.shape == (2, 32, 32, 4) and outputs.seg_logits.dtype == jnp.float32
    assert np.all(np.isfinite(outputs.seg_logits))
  recon = outputs.recon
  assert recon.shape == (2, 32, 32, 2) and recon.dtype == jnp.float32
  assert np.all(np.isfinite(recon))
  assert set(updates) <= {'batch_stats'}


def test_unet_rejects_sizes_not_divisible_by_its_downsampling():
  model = models.UNet(features=(4, 8, 16))  # 3 levels: H and W divisible by 4.
  with pytest.raises(ValueError, match=r'\(1, 18, 16, 2\)'):
    param_shapes(model, (jnp.zeros((1, 18, 16, 2)),))


def test_unet_norms_and_plain_unet_output():
  x = make_inputs(batch=1, size=16)[0]
  for norm in ('batch', 'instance', 'none'):
    model = models.UNet(features=(4, 8), out_channels=3, norm=norm)
    y, _ = jax.jit(lambda x: model.init_with_output(jax.random.key(0, impl='unsafe_rbg'), x, train=False))(x)
    assert y.shape == (1, 16, 16, 3) and np.all(np.isfinite(y))
  with pytest.raises(ValueError, match='norm'):
    init(models.UNet(features=(4, 8), norm='group'), (x,))


def test_unet_channel_statistics_match_numpy():
  x = np.random.default_rng(0).standard_normal((2, 16, 16, 2)).astype(np.float32) * [0.1, 3.0] + [0.5, -2.0]
  mean, std = unet.channel_statistics(jnp.asarray(x))
  np.testing.assert_allclose(mean, x.mean(axis=(1, 2), keepdims=True), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(std, x.std(axis=(1, 2), keepdims=True), rtol=1e-5)
  _, std = unet.channel_statistics(jnp.zeros((1, 16, 16, 2)))
  assert np.all(std > 0)  # An all-zero example maps to zero, not NaN.


@pytest.mark.parametrize('config_module', [unet_config, unet_unet_config, multidecoder_unet_config],
                         ids=['unet', 'unet_unet', 'multidecoder_unet'])
def test_config_unet_reconstruction_follows_the_scale_of_its_input(config_module):
  """The configured reconstruction U-Net works at unit scale whatever the images' scale: recon(a x + b) =
  a recon(x) + b per example and channel. Without `normalize` its output scale is fixed by the initialization, not
  by the data: the images served (max magnitude 1, std ~0.14) got an initial correction several times their own
  size, and the cpu_study UNet ended 1.6 dB above the zero-filled input instead of 4.8 dB."""
  fields = dict(config_module.get_config('x4,cpu_study').model.to_dict())
  if 'recon' in fields:
    model = models.UNet(**dict(fields['recon'], features=TINY), out_channels=2)
    recon = lambda output: output
  else:
    model = models.get_model(dict(fields, features=TINY))
    recon = lambda output: output.recon
  x, kspace, mask = make_inputs(batch=2, size=16)  # (An image-domain network: kspace and mask are ignored.)
  variables = init(model, (x, kspace, mask))
  scale, shift = jnp.asarray([[[[0.05]]], [[[3.0]]]]), jnp.asarray([[[[0.2, -0.1]]], [[[1.0, 4.0]]]])
  for train in (False, True):
    apply = jax.jit(lambda x, train=train: recon(
        model.apply(variables, x, kspace, mask, train=train, mutable=['batch_stats'])[0]))
    np.testing.assert_allclose(apply(scale * x + shift), scale * apply(x) + shift, rtol=2e-4, atol=2e-4)


# ---------------------------------------------------------------------------------------------------------------
# Parameter counts against the reference architectures.


def unet_param_count(features, in_channels, out_channels, norm='batch'):
  """Ronneberger U-Net with same padding: per 3x3 conv 9*c_in*c_out weights, plus 2*c_out for BatchNorm (scale,
  shift; the conv has no bias) or c_out conv biases with no norm or 0 with affine-free InstanceNorm; per level two
  such convs; up-sampling by a 2x2 transposed conv (with bias) to half the channels; a 1x1 head with bias."""
  extra = {'batch': 2, 'none': 1, 'instance': 0}[norm]

  def conv3(c_in, c_out):
    return 9 * c_in * c_out + extra * c_out

  total, c_in = 0, in_channels
  for width in features:  # Encoder levels and the bottleneck.
    total += conv3(c_in, width) + conv3(width, width)
    c_in = width
  total += unet_decoder_param_count(features, out_channels, norm)
  return total


def unet_decoder_param_count(features, out_channels, norm='batch'):
  extra = {'batch': 2, 'none': 1, 'instance': 0}[norm]
  total = 0
  for level in range(len(features) - 1):
    width, deeper = features[level], features[level + 1]
    total += 4 * deeper * width + width  # 2x2 transposed conv with bias.
    total += 9 * 2 * width * width + extra * width + 9 * width * width + extra * width  # Two convs on the concat.
  return total + features[0] * out_channels + out_channels


def cascade_param_count(num_cascades, num_layers, features):
  f, l = features, num_layers
  return num_cascades * (2 * 9 * f + f + (l - 2) * (9 * f * f + f) + 9 * f * 2 + 2)


PAPER_UNET = (32, 64, 128, 256)


@pytest.mark.parametrize('in_channels,out_channels', [(2, 2), (1, 4)])
@pytest.mark.parametrize('norm', ['batch', 'instance', 'none'])
def test_unet_param_count_matches_formula(in_channels, out_channels, norm):
  model = models.UNet(features=PAPER_UNET, out_channels=out_channels, norm=norm)
  params = param_shapes(model, (jnp.zeros((1, 16, 16, in_channels)),))
  assert count(params) == unet_param_count(PAPER_UNET, in_channels, out_channels, norm)


def test_paper_unet_param_counts():
  # The built models at the paper's widths (BatchNorm): 2 -> 2 reconstruction and 1 -> 4 segmentation.
  for in_channels, out_channels, want in ((2, 2, 1_926_754), (1, 4, 1_926_532)):
    model = models.UNet(features=PAPER_UNET, out_channels=out_channels)
    assert count(param_shapes(model, (jnp.zeros((1, 16, 16, in_channels)),))) == want


def test_config_models_param_counts_at_paper_settings():
  inputs = make_inputs(batch=1, size=16)
  recon = unet_param_count(PAPER_UNET, 2, 2)
  seg = unet_param_count(PAPER_UNET, 1, 4)
  encoder = recon - unet_decoder_param_count(PAPER_UNET, 2)
  expected = {
      unet_config: recon,
      cascade_config: cascade_param_count(6, 5, 64),
      multidecoder_unet_config: encoder + unet_decoder_param_count(PAPER_UNET, 2) +
                                unet_decoder_param_count(PAPER_UNET, 4),
      unet_unet_config: recon + seg,
  }
  for config_module, want in expected.items():
    model = models.get_model(config_module.get_config('x8').model)
    assert count(param_shapes(model, inputs)) == want, config_module.__name__
  # CascadeNet -> MANet: the two networks' counts add up (MANet's own count is tested in manet's tests).
  model = models.get_model(cascade_manet_config.get_config('x8').model)
  params = param_shapes(model, inputs)
  assert count(params['recon_net']) == cascade_param_count(6, 5, 64) == 678_924
  assert set(params) == {'recon_net', 'seg_net'}
  manet = models.MANet(**models.MANET_PRESETS['paper'], num_classes=4)
  assert count(params['seg_net']) == count(param_shapes(manet, (jnp.zeros((1, 16, 16, 1)),)))


def test_cascade_learnable_noise_level_adds_one_parameter_per_cascade():
  model = models.CascadeNet(dc_noise_level=0.5, learnable_noise_level=True)
  assert count(param_shapes(model, make_inputs(batch=1, size=16))) == cascade_param_count(6, 5, 64) + 6


# ---------------------------------------------------------------------------------------------------------------
# Data consistency.


def test_cascade_hard_dc_keeps_measured_kspace_at_sampled_locations():
  inputs = make_inputs()
  _, kspace, mask = inputs
  model = models.CascadeNet(num_cascades=2, num_layers=3, features=4)
  variables = init(model, inputs)
  out = jax.jit(functools.partial(model.apply, train=False))(variables, *inputs)
  k_out = np.asarray(mri.fft2c(mri.channels_to_complex(out)))
  sampled = np.broadcast_to(np.asarray(mask), k_out.shape)
  scale = np.max(np.abs(kspace))
  np.testing.assert_allclose(k_out[sampled], np.asarray(kspace)[sampled], atol=1e-5 * scale, rtol=0)
  # The network changed the unsampled part (a test of DC that could pass trivially otherwise).
  assert np.max(np.abs(k_out[~sampled])) > 1e-3 * scale


@pytest.mark.parametrize('learnable', [False, True])
def test_cascade_soft_dc_mixes_prediction_and_measurement(learnable):
  inputs = make_inputs()
  zero_filled, kspace, mask = inputs
  v = 0.5
  model = models.CascadeNet(num_cascades=1, num_layers=3, features=4, dc_noise_level=v,
                            learnable_noise_level=learnable)
  variables = init(model, inputs)
  out = model.apply(variables, *inputs, train=False)
  if learnable:
    np.testing.assert_allclose(jax.nn.softplus(variables['params']['dc0']['noise_level']), v, rtol=1e-6)
  cnn = cascade.CascadeCNN(num_layers=3, features=4)
  x_pred = zero_filled + cnn.apply({'params': variables['params']['cnn0']}, zero_filled)
  k_pred = np.asarray(mri.fft2c(mri.channels_to_complex(x_pred))).astype(np.complex128)
  k0 = np.asarray(kspace).astype(np.complex128)
  sampled = np.broadcast_to(np.asarray(mask), k_pred.shape)
  expected = np.where(sampled, (k_pred + v * k0) / (1 + v), k_pred)
  k_out = np.asarray(mri.fft2c(mri.channels_to_complex(out)))
  np.testing.assert_allclose(k_out, expected, atol=1e-5 * np.max(np.abs(k0)), rtol=0)


def test_learnable_noise_level_needs_a_positive_start():
  with pytest.raises(ValueError, match='dc_noise_level'):
    param_shapes(models.CascadeNet(learnable_noise_level=True), make_inputs(batch=1, size=16))


# ---------------------------------------------------------------------------------------------------------------
# Gradient flow from the segmentation loss into the reconstruction network.


def segmentation_loss(seg_logits):
  """A Dice-like loss: 1 - soft overlap of the class-1 probability with a fixed disc."""
  probs = jax.nn.softmax(seg_logits, axis=-1)[..., 1]
  yy, xx = jnp.mgrid[:seg_logits.shape[1], :seg_logits.shape[2]]
  disc = ((yy - 16.0)**2 + (xx - 16.0)**2 < 64.0).astype(jnp.float32)
  overlap = jnp.sum(probs * disc, axis=(1, 2))
  return 1.0 - jnp.mean(2 * overlap / (jnp.sum(probs, axis=(1, 2)) + jnp.sum(disc) + 1e-6))


@pytest.mark.parametrize('stop_gradient', [False, True])
@pytest.mark.parametrize('name', ['unet_unet', 'cascade_manet'])
def test_segmentation_loss_reaches_the_reconstruction_network_unless_stopped(name, stop_gradient):
  inputs = make_inputs()
  model = models.get_model(dict(TINY_CONFIGS[name], stop_gradient=stop_gradient))
  variables = tiny_variables(name)

  @jax.jit
  def grads(params):
    def loss(params):
      (_, seg_logits), _ = model.apply({**variables, 'params': params}, *inputs, train=True, mutable=['batch_stats'])
      return segmentation_loss(seg_logits)
    return jax.grad(loss)(params)

  g = grads(variables['params'])
  recon_norm = sum(float(jnp.sum(jnp.abs(leaf))) for leaf in jax.tree.leaves(g['recon_net']))
  seg_norm = sum(float(jnp.sum(jnp.abs(leaf))) for leaf in jax.tree.leaves(g['seg_net']))
  assert seg_norm > 0
  if stop_gradient:
    assert recon_norm == 0.0
  else:
    assert recon_norm > 0


def test_safe_magnitude_has_a_finite_gradient_at_zero():
  x = jnp.array([[0.0, 0.0], [3.0, 4.0]])
  np.testing.assert_allclose(models.safe_magnitude(x)[:, 0], [1e-6, 5.0], rtol=1e-5)
  grad = jax.grad(lambda x: jnp.sum(models.safe_magnitude(x)))(x)
  np.testing.assert_allclose(grad, [[0.0, 0.0], [0.6, 0.8]], rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# BatchNorm under pmap.


def test_unet_batch_stats_are_averaged_across_devices_under_pmap():
  assert jax.local_device_count() == 2, 'tests/conftest.py forces 2 CPU devices'
  x = make_inputs(batch=4, size=16, seed=3)[0]
  x = x * jnp.arange(1, 5, dtype=jnp.float32)[:, None, None, None]  # Different statistics on each device.
  shards = x.reshape(2, 2, 16, 16, 2)
  variables = init(models.UNet(features=(4, 8)), (x,))
  replicated = jax.tree.map(lambda a: jnp.stack([a, a]), variables)

  def batch_stats(axis_name):
    model = models.UNet(features=(4, 8), bn_axis_name=axis_name)
    apply = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[1]['batch_stats']
    return jax.pmap(apply, axis_name='batch')(replicated, shards)

  synced = batch_stats('batch')
  for leaf in jax.tree.leaves(synced):
    np.testing.assert_array_equal(leaf[0], leaf[1])
  # They equal the statistics of the whole batch on one device...
  whole = jax.jit(lambda v, x: models.UNet(features=(4, 8)).apply(v, x, train=True, mutable=['batch_stats']))(
      variables, x)[1]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-6), synced, whole['batch_stats'])
  # ...while without the axis name each device keeps its own.
  unsynced = batch_stats(None)
  assert any(not np.allclose(leaf[0], leaf[1]) for leaf in jax.tree.leaves(unsynced))


# ---------------------------------------------------------------------------------------------------------------
# get_model.


def test_get_model_accepts_config_dicts_and_mappings():
  config = unet_unet_config.get_config('x8,runlocal')
  assert isinstance(config.model, ml_collections.ConfigDict)
  model = models.get_model(config.model, bn_axis_name='batch')
  assert isinstance(model, models.SegRecon) and model.recon_net.residual and not model.seg_net.residual
  assert model.recon_net.bn_axis_name == 'batch' and model.seg_net.out_channels == 4
  model = models.get_model({'name': 'cascade_manet', 'seg': {'preset': 'paper', 'num_classes': 3}},
                           dtype=jnp.bfloat16)
  assert model.seg_net.encoder_depth == 4 and model.seg_net.num_classes == 3 and model.seg_net.dtype == jnp.bfloat16
  assert models.get_model({'name': 'cascade', 'dc_noise_level': 0.1}).net.dc_noise_level == 0.1


@pytest.mark.parametrize('config,match', [
    ({'name': 'resnet'}, r"valid names are \['cascade', 'cascade_manet', 'multidecoder_unet', 'unet', 'unet_unet'\]"),
    ({'features': (4, 8)}, 'valid names'),
    ({'name': 'unet', 'filters': (4, 8)}, r"unknown field\(s\) \['filters'\].*'features', 'norm', 'normalize', 'residual'"),
    ({'name': 'unet', 'out_channels': 3}, r"\['out_channels'\]"),
    ({'name': 'cascade', 'cascades': 3}, 'num_cascades'),
    ({'name': 'unet_unet', 'recon': {'features': (4, 8)}, 'segm': {}}, r"\['recon', 'seg', 'stop_gradient'\]"),
    ({'name': 'unet_unet', 'seg': {'num_classes': 4}}, r"seg: unknown field.*'out_channels'"),
    ({'name': 'cascade_manet', 'recon': {'depth': 3}}, r'recon: unknown field.*num_layers'),
    ({'name': 'cascade_manet', 'seg': {'preset': 'huge'}}, r"valid presets are \['paper', 'smp_default', 'tiny'\]"),
    ({'name': 'cascade_manet', 'seg': {'widths': 3}}, r"seg: unknown field.*'decoder_channels'.*'preset'"),
])
def test_get_model_rejects_unknown_names_and_fields(config, match):
  with pytest.raises(ValueError, match=match):
    models.get_model(config)


# ---------------------------------------------------------------------------------------------------------------
# Layer settings (models/layers.py): the same function and parameters whichever implementation the runtime picks.


@pytest.mark.parametrize('name,field', [(name, field) for name in models.MODELS
                                        for field in ('conv_impl', 'upconv_impl')
                                        if field == 'conv_impl' or models.has_upconv(name)])
def test_layer_settings_give_the_same_model(name, field):
  inputs = make_inputs()
  variables = tiny_variables(name)
  model = models.get_model(TINY_CONFIGS[name])  # One model; the runtime setting decides how its layers run.

  def loss(params, impl):
    with layers.impls(**{field: impl}):  # Read when the model is traced, i.e. inside value_and_grad below.
      out = model.apply({**variables, 'params': params}, *inputs, train=False)
    return sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(out))

  with layers.impls(**{field: 'xla'}):
    stock_params = param_shapes(model, inputs)
  assert jax.tree.map(lambda a: a.shape, stock_params) == jax.tree.map(lambda a: a.shape, variables['params'])
  ours_impl = 'native' if field == 'conv_impl' else 'dense'
  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)  # One compile per setting, not per operation.
  stock_value, stock_grads = value_and_grad(variables['params'], 'xla')
  ours_value, ours_grads = value_and_grad(variables['params'], ours_impl)
  np.testing.assert_allclose(ours_value, stock_value, rtol=1e-4)
  # Leaves whose true gradient is zero (a cascade's last bias: a constant image is k-space's centre, which hard
  # data consistency always replaces) hold rounding noise only, on the scale of the model's largest gradient.
  largest = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(stock_grads))
  for ours, stock in zip(jax.tree.leaves(ours_grads), jax.tree.leaves(stock_grads)):
    np.testing.assert_allclose(ours, stock, rtol=1e-3,
                               atol=1e-4 * float(jnp.max(jnp.abs(stock))) + 3e-8 * largest + 1e-6)
  with pytest.raises(ValueError, match=field):
    with layers.impls(**{field: 'cudnn'}):
      pass
