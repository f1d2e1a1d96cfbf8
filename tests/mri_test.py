"""Tests for segrecon_jax.mri against NumPy references."""

import functools

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from segrecon_jax import mri

AXES = (-2, -1)


def np_fft2c(x):
  return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=AXES), axes=AXES, norm='ortho'), axes=AXES)


def np_ifft2c(k):
  return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=AXES), axes=AXES, norm='ortho'), axes=AXES)


def random_complex(shape, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.mark.parametrize('shape', [(16, 16), (2, 15, 20), (1, 3, 32, 17)])
def test_fft2c_matches_numpy(shape):
  x = random_complex(shape)
  np.testing.assert_allclose(mri.fft2c(x), np_fft2c(x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mri.ifft2c(x), np_ifft2c(x), rtol=1e-5, atol=1e-5)


def test_fft2c_is_unitary_and_ifft2c_is_its_adjoint():
  x, y = random_complex((2, 24, 18), 1), random_complex((2, 24, 18), 2)
  np.testing.assert_allclose(mri.ifft2c(mri.fft2c(x)), x, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(mri.fft2c(x)), np.linalg.norm(x), rtol=1e-5)
  lhs = np.vdot(np.asarray(mri.fft2c(x)), y)
  rhs = np.vdot(x, np.asarray(mri.ifft2c(y)))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


def test_fft2c_centres_dc_at_half_size():
  x = np.ones((8, 6), np.complex64)
  k = np.asarray(mri.fft2c(x))
  assert np.argmax(np.abs(k)) == np.ravel_multi_index((4, 3), k.shape)
  np.testing.assert_allclose(k[4, 3], np.sqrt(48), rtol=1e-6)


def test_channels_round_trip():
  x = random_complex((2, 5, 7))
  channels = mri.complex_to_channels(x)
  assert channels.shape == (2, 5, 7, 2) and channels.dtype == jnp.float32
  np.testing.assert_array_equal(channels[..., 0], x.real)
  np.testing.assert_array_equal(channels[..., 1], x.imag)
  back = mri.channels_to_complex(channels)
  assert back.dtype == jnp.complex64
  np.testing.assert_array_equal(back, x)
  with pytest.raises(ValueError, match='last axis of size 2'):
    mri.channels_to_complex(jnp.zeros((4, 4, 3)))


@pytest.mark.parametrize('num_cols', [16, 33, 64, 128, 157, 256])
@pytest.mark.parametrize('sampled_fraction', [1 / 8, 1 / 4, 0.5, 0.9, 1.0])
def test_mask_line_count_and_acs(num_cols, sampled_fraction):
  num_acs = 8
  expected = round(sampled_fraction * num_cols)
  if expected < num_acs:
    with pytest.raises(ValueError, match='fewer than'):
      mri.sample_mask(jax.random.PRNGKey(0), num_cols, sampled_fraction, num_acs)
    return
  for seed in range(3):
    mask = np.asarray(mri.sample_mask(jax.random.PRNGKey(seed), num_cols, sampled_fraction, num_acs))
    assert mask.dtype == bool and mask.shape == (num_cols,)
    assert mask.sum() == expected
    start = num_cols // 2 - num_acs // 2
    assert mask[start:start + num_acs].all()


def test_mask_is_deterministic_per_key_and_varies_across_keys():
  sample = jax.jit(mri.sample_mask, static_argnums=(1, 2, 3))
  a = sample(jax.random.PRNGKey(3), 96, 0.25, 8)
  b = sample(jax.random.PRNGKey(3), 96, 0.25, 8)
  c = sample(jax.random.PRNGKey(4), 96, 0.25, 8)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_mask_density_favours_the_centre():
  keys = jax.random.split(jax.random.PRNGKey(0), 400)
  masks = np.asarray(jax.vmap(lambda k: mri.sample_mask(k, 128, 0.125))(keys))
  frequency = masks.mean(0)
  centre = 64
  near = np.r_[frequency[centre - 14:centre - 4], frequency[centre + 4:centre + 14]].mean()
  far = np.r_[frequency[:20], frequency[-20:]].mean()
  assert near > 2 * far > 0  # Gaussian density plus a floor: edges are rarer but still sampled


def test_mask_rejects_bad_fractions():
  with pytest.raises(ValueError, match='sampled_fraction'):
    mri.sample_mask(jax.random.PRNGKey(0), 64, 0.0)
  with pytest.raises(ValueError, match='sampled_fraction'):
    mri.sample_mask(jax.random.PRNGKey(0), 64, 1.5)


def test_undersample_and_zero_filled_match_numpy():
  k = random_complex((2, 12, 16))
  mask = np.asarray(mri.sample_mask(jax.random.PRNGKey(1), 16, 0.75, 4))
  np.testing.assert_array_equal(mri.undersample(k, mask), k * mask)
  np.testing.assert_allclose(mri.zero_filled(k, mask), np_ifft2c(k * mask), atol=1e-5)


def test_hard_data_consistency_keeps_measured_samples_exactly():
  k_pred, k_true = random_complex((2, 8, 16), 1), random_complex((2, 8, 16), 2)
  mask = np.asarray(mri.sample_mask(jax.random.PRNGKey(0), 16, 0.5, 4))[None, None, :]
  k_measured = k_true * mask
  for noise_level in (None, 0.0):
    out = np.asarray(mri.data_consistency(k_pred, k_measured, mask, noise_level))
    np.testing.assert_array_equal(out[..., mask[0, 0]], k_true[..., mask[0, 0]])
    np.testing.assert_array_equal(out[..., ~mask[0, 0]], k_pred[..., ~mask[0, 0]])


def test_soft_data_consistency_matches_formula():
  k_pred, k_measured = random_complex((8, 16), 1), random_complex((8, 16), 2)
  mask = np.zeros(16, bool)
  mask[::3] = True
  v = 0.7
  expected = np.where(mask, (k_pred + v * k_measured) / (1 + v), k_pred)
  np.testing.assert_allclose(mri.data_consistency(k_pred, k_measured * mask, mask, v),
                             np.where(mask, (k_pred + v * k_measured * mask) / (1 + v), k_pred), rtol=1e-6)
  np.testing.assert_allclose(mri.data_consistency(k_pred, k_measured, mask, jnp.float32(v)), expected, rtol=1e-6)


def test_rss_matches_numpy():
  x = random_complex((2, 4, 8, 8))
  np.testing.assert_allclose(mri.rss(x), np.sqrt((np.abs(x)**2).sum(1)), rtol=1e-5)
  np.testing.assert_allclose(mri.rss(np.moveaxis(x, 1, -1), coil_axis=-1), np.sqrt((np.abs(x)**2).sum(1)),
                             rtol=1e-5)


def smooth_sensitivities(num_coils, h, w, seed=0):
  """Smooth complex coil profiles with unit l2 norm over coils at every pixel."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing='ij')
  profiles = []
  for c in range(num_coils):
    angle = 2 * np.pi * c / num_coils
    cy, cx = 1.5 * np.sin(angle), 1.5 * np.cos(angle)
    magnitude = np.exp(-((yy - cy)**2 + (xx - cx)**2) / 2.0)
    phase = rng.uniform(-np.pi, np.pi) + 0.5 * (yy * rng.standard_normal() + xx * rng.standard_normal())
    profiles.append(magnitude * np.exp(1j * phase))
  sens = np.stack(profiles)
  return (sens / np.sqrt((np.abs(sens)**2).sum(0, keepdims=True))).astype(np.complex64)


def disc_object(h, w):
  yy, xx = np.meshgrid(np.arange(h) - h / 2, np.arange(w) - w / 2, indexing='ij')
  obj = (yy**2 + xx**2 < (0.35 * h)**2) * (1.0 + 0.5 * np.cos(xx / 3.0))
  return (obj * np.exp(1j * 0.3 * yy / h)).astype(np.complex64)


def test_coil_combine_with_true_sensitivities_is_exact():
  sens = smooth_sensitivities(6, 32, 32)
  obj = disc_object(32, 32)
  coil_images = sens * obj
  np.testing.assert_allclose(mri.coil_combine(coil_images, sens), obj, atol=1e-5)
  # The coil axis may sit elsewhere.
  np.testing.assert_allclose(mri.coil_combine(np.moveaxis(coil_images, 0, -1), np.moveaxis(sens, 0, -1), -1),
                             obj, atol=1e-5)


def test_coil_combine_with_estimated_sensitivities_recovers_magnitude():
  sens = smooth_sensitivities(8, 48, 48, seed=3)
  obj = disc_object(48, 48)
  coil_images = np.stack([sens * obj, sens * obj * 0.5])  # a batch axis in front
  combined = np.asarray(mri.coil_combine(coil_images))
  assert combined.shape == (2, 48, 48)
  inside = np.abs(obj) > 0.5
  relative_error = np.abs(np.abs(combined[0]) - np.abs(obj))[inside] / np.abs(obj)[inside]
  assert np.median(relative_error) < 0.02
  np.testing.assert_allclose(combined[1], 0.5 * combined[0], atol=1e-5)  # per-example estimate, linear in scale
  estimated = np.asarray(mri.estimate_sensitivities(coil_images))
  np.testing.assert_allclose((np.abs(estimated)**2).sum(1), 1.0, rtol=1e-4)


def test_coil_combine_rejects_mismatched_sensitivities():
  with pytest.raises(ValueError, match='does not match'):
    mri.coil_combine(random_complex((4, 8, 8)), random_complex((3, 8, 8)))


def test_gradients_of_the_ops():
  x = random_complex((6, 8), 5)
  k_measured = random_complex((6, 8), 6)
  mask = np.array([True, False, True, True, False, False, True, False])
  sens = smooth_sensitivities(3, 6, 8)
  with jax.enable_x64(True):
    x64, k64, sens64 = (jnp.asarray(a, jnp.complex128) for a in (x, k_measured, sens))
    check_grads(mri.fft2c, (x64,), order=2, modes=('fwd', 'rev'))
    check_grads(mri.ifft2c, (x64,), order=2, modes=('fwd', 'rev'))
    check_grads(lambda a: mri.zero_filled(a, mask), (x64,), order=1, modes=('fwd', 'rev'))
    check_grads(lambda a: mri.data_consistency(a, k64, mask), (x64,), order=1, modes=('fwd', 'rev'))
    check_grads(lambda a, v: mri.data_consistency(a, k64, mask, v), (x64, jnp.float64(0.3)), order=1,
                modes=('fwd', 'rev'))
    check_grads(lambda a: mri.coil_combine(sens64 * a, sens64), (x64,), order=1, modes=('fwd', 'rev'))
    check_grads(lambda a: mri.channels_to_complex(mri.complex_to_channels(a)), (x64,), order=1,
                modes=('fwd', 'rev'))


def test_stabilization_schedule_follows_equation_1():
  target, patience, eps = 1 / 8, 10, 0.01
  values = [mri.stabilization_schedule(i, target, patience, eps) for i in range(1, 16)]
  assert values[0] == pytest.approx(1 - eps)
  for i in range(1, patience + 1):
    assert values[i - 1] == pytest.approx((1 - eps) * (target / (1 - eps))**((i - 1) / patience))
  assert all(v == target for v in values[patience:])
  assert all(a > b for a, b in zip(values[:patience], values[1:patience + 1]))
  assert mri.stabilization_schedule(1, target, 0, eps) == target


@pytest.mark.parametrize('num_levels', [2, 3, 5])
def test_quantized_schedule_bounds_distinct_values(num_levels):
  target, patience, eps = 1 / 4, 12, 0.02
  values = [mri.stabilization_schedule(i, target, patience, eps, num_levels) for i in range(1, 20)]
  assert len(set(values)) <= num_levels
  assert values[0] == pytest.approx(1 - eps) and values[-1] == target
  assert all(a >= b for a, b in zip(values, values[1:]))
  exact = [mri.stabilization_schedule(i, target, patience, eps) for i in range(1, 20)]
  assert [mri.stabilization_schedule(i, target, patience, eps, patience + 1) for i in range(1, 20)] == \
      pytest.approx(exact)


def test_schedule_rejects_bad_arguments():
  with pytest.raises(ValueError, match='epoch'):
    mri.stabilization_schedule(0, 0.25, 10, 0.01)
  with pytest.raises(ValueError, match='num_levels'):
    mri.stabilization_schedule(1, 0.25, 10, 0.01, num_levels=1)
  with pytest.raises(ValueError, match='eps'):
    mri.stabilization_schedule(1, 0.25, 10, 1.0)


def test_physics_under_pmap_on_two_devices():
  assert jax.local_device_count() >= 2, 'tests/conftest.py should force 2 host devices'
  num_devices = 2
  images = random_complex((num_devices, 2, 16, 16), 7)

  @functools.partial(jax.pmap, axis_name='batch', static_broadcasted_argnums=(2,))
  def step(image, rng, sampled_fraction):
    rng = jax.random.fold_in(rng, jax.lax.axis_index('batch'))
    keys = jax.random.split(rng, image.shape[0])
    masks = jax.vmap(lambda key: mri.sample_mask(key, 16, sampled_fraction, 4))(keys)[:, None, :]
    measured = mri.undersample(mri.fft2c(image), masks)
    # A stand-in network output that differs from the measurement on every line.
    k_pred = mri.fft2c(0.5 * mri.zero_filled(mri.fft2c(image), masks) + 0.1)
    hard = mri.data_consistency(k_pred, measured, masks)
    soft = mri.data_consistency(k_pred, measured, masks, 0.7)
    error = jax.lax.pmean(jnp.mean(jnp.abs(mri.ifft2c(hard) - image)**2), 'batch')
    return k_pred, hard, soft, masks, error

  rngs = jnp.stack([jax.random.PRNGKey(0)] * num_devices)
  k_pred, hard, soft, masks, error = map(np.asarray, step(images, rngs, 0.5))
  assert masks.shape == (num_devices, 2, 1, 16)
  assert (masks.sum(-1) == 8).all()
  assert not np.array_equal(masks[0], masks[1])  # each device folds in its own index
  measured = np_fft2c(images) * masks
  assert np.abs(k_pred - measured)[np.broadcast_to(masks, k_pred.shape)].min() > 1e-3  # DC has work to do.
  sampled = np.broadcast_to(masks, hard.shape)
  np.testing.assert_allclose(hard[sampled], measured[sampled], atol=1e-5)  # measured lines replaced
  np.testing.assert_array_equal(hard[~sampled], k_pred[~sampled])  # unmeasured lines untouched
  np.testing.assert_allclose(soft, np.where(sampled, (k_pred + 0.7 * measured) / 1.7, k_pred), atol=1e-5)
  np.testing.assert_allclose(error, np.mean(np.abs(np_ifft2c(hard) - images)**2), rtol=1e-5)
