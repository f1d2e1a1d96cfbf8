"""Tests for segrecon_jax.metrics against NumPy and scikit-image references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import metrics as skmetrics

from segrecon_jax import metrics
from segrecon_jax.training import reporting

PAD = (metrics.SSIM_WIN_SIZE - 1) // 2
RECON_KEYS = ('mse', 'mse_x1e3', 'psnr', 'ssim', 'f_mse', 'f_mse_x1e3', 'f_psnr', 'f_ssim', 'has_heart')


def phantom_pair(batch, height, width, seed=0, noise=0.05):
  """A smooth complex target (a bright ellipse on a dim ramp, random phase) and a noisy reconstruction of it."""
  rng = np.random.default_rng(seed)
  rows, cols = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing='ij')
  target = np.empty((batch, height, width), np.complex64)
  for b in range(batch):
    ellipse = ((rows - 0.2 * b) / 0.6)**2 + (cols / 0.4)**2 < 1
    phase = np.exp(1j * rng.uniform(0, np.pi) * (rows + cols))
    target[b] = (0.3 + 0.2 * cols + 3.0 * ellipse) * phase
  error = noise * 3.0 * (rng.standard_normal(target.shape) + 1j * rng.standard_normal(target.shape))
  return (target + error).astype(np.complex64), target


def labels_with_heart(batch, height, width, boxes):
  """Labels with one (row0, row1, col0, col1) patch of classes 1..3 per example (None: no heart)."""
  labels = np.zeros((batch, height, width), np.int32)
  for b, box in enumerate(boxes):
    if box is not None:
      row0, row1, col0, col1 = box
      labels[b, row0:row1, col0:col1] = 1 + (np.add.outer(np.arange(row1 - row0), np.arange(col1 - col0)) % 3)
  return labels


def np_reconstruction_metrics(recon, target, segmentation, margin):
  """float64 references: skimage PSNR/SSIM on magnitudes, focused metrics on the box crop."""
  results = {k: [] for k in RECON_KEYS}
  for x, y, labels in zip(np.abs(recon).astype(np.float64), np.abs(target).astype(np.float64), segmentation):
    peak = y.max()
    box = reporting.heart_box(labels, margin) or (0, y.shape[0], 0, y.shape[1])
    crop = np.s_[box[0]:box[1], box[2]:box[3]]
    ssim, ssim_map = skmetrics.structural_similarity(x, y, data_range=peak, full=True)
    # F-SSIM: skimage's map averaged over the box pixels outside its 3-pixel border strip.
    valid = np.zeros(y.shape, bool)
    valid[PAD:-PAD, PAD:-PAD] = True
    inside = np.zeros(y.shape, bool)
    inside[crop] = True
    mse, f_mse = np.mean((x - y)**2), np.mean((x[crop] - y[crop])**2)
    values = dict(mse=mse, mse_x1e3=1e3 * mse, psnr=skmetrics.peak_signal_noise_ratio(y, x, data_range=peak),
                  ssim=ssim, f_mse=f_mse, f_mse_x1e3=1e3 * f_mse,
                  f_psnr=skmetrics.peak_signal_noise_ratio(y[crop], x[crop], data_range=peak),
                  f_ssim=ssim_map[inside & valid].mean(), has_heart=float(np.any(labels > 0)))
    for key, value in values.items():
      results[key].append(value)
  return {k: np.array(v) for k, v in results.items()}


def assert_metrics_close(actual, expected):
  assert set(actual) == set(RECON_KEYS)
  for key in RECON_KEYS:
    assert actual[key].dtype == jnp.float32, key
    rtol = 1e-4 if 'mse' in key else 1e-5
    np.testing.assert_allclose(actual[key], expected[key], rtol=rtol, atol=1e-4, err_msg=key)


@pytest.mark.parametrize('shape', [(16, 16), (23, 37), (64, 48)])
def test_ssim_and_psnr_match_skimage(shape):
  recon, target = phantom_pair(2, *shape, seed=sum(shape))
  x, y = np.abs(recon), np.abs(target)
  peak = y.max(axis=(1, 2))
  ssim = jax.jit(metrics.ssim)(x, y, peak)
  for b in range(2):
    expected = skmetrics.structural_similarity(x[b].astype(np.float64), y[b].astype(np.float64), data_range=peak[b])
    np.testing.assert_allclose(ssim[b], expected, atol=1e-5)
    mse = np.mean((x[b].astype(np.float64) - y[b])**2)
    np.testing.assert_allclose(metrics.psnr_from_mse(mse, peak[b]),
                               skmetrics.peak_signal_noise_ratio(y[b], x[b], data_range=peak[b]), rtol=1e-5)


def test_ssim_map_matches_skimage_map_inside_border():
  recon, target = phantom_pair(1, 20, 18, seed=3)
  x, y = np.abs(recon[0]).astype(np.float64), np.abs(target[0]).astype(np.float64)
  _, expected = skmetrics.structural_similarity(x, y, data_range=y.max(), full=True)
  np.testing.assert_allclose(metrics.ssim_map(x, y, y.max()), expected[PAD:-PAD, PAD:-PAD], atol=1e-5)


def test_ssim_is_one_for_identical_images_and_rejects_tiny_images():
  _, target = phantom_pair(1, 16, 16)
  np.testing.assert_allclose(metrics.ssim(np.abs(target), np.abs(target), 3.5), 1.0, atol=1e-6)
  with pytest.raises(ValueError, match='at least 7x7'):
    metrics.ssim(np.ones((1, 6, 16)), np.ones((1, 6, 16)), 1.0)


def test_heart_box_matches_reporting_and_clips_at_the_border():
  labels = labels_with_heart(3, 20, 24, [(8, 12, 10, 15), (0, 3, 20, 24), None])
  margin = 2
  boxes = np.stack(jax.jit(metrics.heart_box, static_argnums=1)(labels, margin), axis=-1)
  np.testing.assert_array_equal(boxes[0], [6, 14, 8, 17])
  np.testing.assert_array_equal(boxes[1], [0, 5, 18, 24])  # Top and right edges clipped.
  np.testing.assert_array_equal(boxes[2], [0, 20, 0, 24])  # No heart: the whole image.
  for b in range(2):
    np.testing.assert_array_equal(boxes[b], reporting.heart_box(labels[b], margin))
  mask = np.asarray(metrics.box_mask(labels, margin))
  for b, (row0, row1, col0, col1) in enumerate(boxes):
    expected = np.zeros((20, 24), bool)
    expected[row0:row1, col0:col1] = True
    np.testing.assert_array_equal(mask[b], expected)
  np.testing.assert_array_equal(metrics.has_heart(labels), [True, True, False])


@pytest.mark.parametrize('margin', [0, 3, 10])
def test_reconstruction_metrics_match_reference(margin):
  recon, target = phantom_pair(2, 32, 40, seed=margin)
  # Example 0: heart in the middle; example 1: heart at the bottom-left corner, so the margin hits the border.
  segmentation = labels_with_heart(2, 32, 40, [(12, 20, 15, 24), (26, 32, 0, 5)])
  compute = jax.jit(metrics.reconstruction_metrics, static_argnames='margin')
  results = compute(recon, target, segmentation, margin=margin)
  assert_metrics_close(results, np_reconstruction_metrics(recon, target, segmentation, margin))
  assert results['f_mse'][0] != results['mse'][0]


def test_reconstruction_metrics_without_heart_are_finite_and_global():
  recon, target = phantom_pair(2, 24, 24, seed=4)
  segmentation = labels_with_heart(2, 24, 24, [(10, 14, 10, 14), None])
  results = metrics.reconstruction_metrics(recon, target, segmentation, margin=4)
  assert_metrics_close(results, np_reconstruction_metrics(recon, target, segmentation, 4))
  np.testing.assert_array_equal(results['has_heart'], [1.0, 0.0])
  for key in ('mse', 'psnr', 'ssim'):
    assert np.all(np.isfinite(results[f'f_{key}']))
    np.testing.assert_allclose(results[f'f_{key}'][1], results[key][1], rtol=1e-6)


def test_exact_reconstructions_are_capped_and_an_all_zero_reference_is_undefined():
  """An exact reconstruction of a slice with signal scores MAX_PSNR_DB and SSIM 1; an all-zero reference has no peak,
  so its PSNR and SSIM (and F- versions) are NaN, never a number that would enter a mean; its MSE is defined."""
  _, target = phantom_pair(1, 16, 16)
  target = np.concatenate([target, np.zeros_like(target)])
  segmentation = labels_with_heart(2, 16, 16, [(5, 9, 5, 9), (5, 9, 5, 9)])
  results = metrics.reconstruction_metrics(target, target, segmentation, margin=2)
  for key, values in results.items():
    assert np.isfinite(values[0]), key
  for key in ('psnr', 'f_psnr'):
    np.testing.assert_allclose(results[key][0], metrics.MAX_PSNR_DB, rtol=1e-6)
  for key in ('ssim', 'f_ssim'):
    np.testing.assert_allclose(results[key][0], 1.0, atol=1e-6)
  for key in ('psnr', 'ssim', 'f_psnr', 'f_ssim'):
    assert np.isnan(results[key][1]), key
  np.testing.assert_array_equal([results['mse'][1], results['f_mse'][1]], [0.0, 0.0])


def test_reconstruction_metrics_accept_bfloat16_magnitudes():
  recon, target = phantom_pair(2, 16, 16, seed=5)
  recon = jnp.asarray(np.abs(recon), jnp.bfloat16)
  segmentation = labels_with_heart(2, 16, 16, [(5, 9, 5, 9), None])
  results = metrics.reconstruction_metrics(recon, target, segmentation, margin=1)
  expected = np_reconstruction_metrics(np.asarray(recon, np.float32), target, segmentation, 1)
  assert_metrics_close(results, expected)


def test_reconstruction_metrics_under_pmap_match_single_device():
  recon, target = phantom_pair(2, 16, 16, seed=6)
  segmentation = labels_with_heart(2, 16, 16, [(5, 9, 5, 9), (0, 4, 12, 16)])
  compute = functools.partial(metrics.reconstruction_metrics, margin=2)
  mapped = jax.pmap(compute)(recon[:, None], target[:, None], segmentation[:, None])
  single = compute(recon, target, segmentation)
  for key in RECON_KEYS:
    np.testing.assert_allclose(mapped[key][:, 0], single[key], rtol=1e-6, err_msg=key)


def np_dice(predicted, labels, num_classes):
  dice = np.zeros((len(labels), num_classes - 1))
  for b in range(len(labels)):
    for c in range(1, num_classes):
      p, t = predicted[b] == c, labels[b] == c
      total = p.sum() + t.sum()
      dice[b, c - 1] = 1.0 if total == 0 else 2.0 * (p & t).sum() / total
  return dice


def test_segmentation_metrics_match_numpy():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, (2, 16, 16)).astype(np.int32)
  predicted = np.where(rng.uniform(size=labels.shape) < 0.7, labels, rng.integers(0, 4, labels.shape))
  labels[1][labels[1] == 3] = 0  # Example 1: class 3 absent from the labels ...
  predicted[1][predicted[1] == 3] = 0  # ... and from the prediction: Dice 1.
  labels[0][labels[0] == 2] = 0  # Example 0: class 2 absent from the labels but predicted: Dice 0.
  logits = (5.0 * np.eye(4)[predicted] + 0.1 * rng.standard_normal(predicted.shape + (4,))).astype(np.float32)
  results = jax.jit(metrics.segmentation_metrics, static_argnums=2)(logits, labels, 4)
  assert set(results) == {'dice_lv_pool', 'dice_myocardium', 'dice_rv_pool', 'dice_mean'}
  expected = np_dice(predicted, labels, 4)
  np.testing.assert_allclose(results['dice_myocardium'][0], 0.0)
  np.testing.assert_allclose(results['dice_rv_pool'][1], 1.0)
  for c, name in enumerate(('lv_pool', 'myocardium', 'rv_pool')):
    assert results[f'dice_{name}'].dtype == jnp.float32
    np.testing.assert_allclose(results[f'dice_{name}'], expected[:, c], rtol=1e-6)
  np.testing.assert_allclose(results['dice_mean'], expected.mean(axis=1), rtol=1e-6)


def test_segmentation_metrics_other_class_counts_and_bfloat16():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, (2, 16, 16)).astype(np.int32)
  logits = jnp.asarray(rng.standard_normal((2, 16, 16, 3)), jnp.bfloat16)
  results = metrics.segmentation_metrics(logits, labels, 3)
  assert set(results) == {'dice_class1', 'dice_class2', 'dice_mean'}
  expected = np_dice(np.argmax(np.asarray(logits, np.float32), -1), labels, 3)
  np.testing.assert_allclose(results['dice_class2'], expected[:, 1], rtol=1e-6)
  assert results['dice_mean'].dtype == jnp.float32
  perfect = metrics.segmentation_metrics(np.eye(3, dtype=np.float32)[labels], labels, 3)
  np.testing.assert_allclose(perfect['dice_mean'], 1.0)
  with pytest.raises(ValueError, match='foreground'):
    metrics.segmentation_metrics(logits[..., :1], labels, 1)
