"""Tests for segrecon_jax.losses against float64 NumPy references."""

import functools

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from segrecon_jax import losses

NUM_CLASSES = 4


def np_l1_l2(pred, target, l1_weight, l2_weight):
  error = pred.astype(np.float64) - target.astype(np.float64)
  return l1_weight * np.abs(error).mean(axis=(1, 2, 3)) + l2_weight * (error**2).mean(axis=(1, 2, 3))


def np_generalized_dice(logits, labels, num_classes, eps=1e-5):
  """MONAI GeneralizedDiceLoss(softmax=True, to_onehot_y=True, batch=False), written out in float64."""
  logits = logits.astype(np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  onehot = np.eye(num_classes)[labels]
  intersection = (onehot * probs).sum(axis=(1, 2))
  label_volume = onehot.sum(axis=(1, 2))
  denominator = label_volume + probs.sum(axis=(1, 2))
  with np.errstate(divide='ignore'):
    weights = 1.0 / label_volume**2
  infinite = np.isinf(weights)
  weights[infinite] = 0.0
  weights += infinite * weights.max(axis=1, keepdims=True)
  return 1.0 - (2.0 * (weights * intersection).sum(1) + eps) / ((weights * denominator).sum(1) + eps)


def random_logits(shape, seed=0, scale=2.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def heart_labels(batch=2, size=16, seed=0):
  """Background with a random patch of foreground classes in the middle, so every class is present."""
  labels = np.zeros((batch, size, size), np.int32)
  rng = np.random.default_rng(seed)
  start, stop = size // 4, size // 4 + size // 2
  labels[:, start:stop, start:stop] = rng.integers(1, NUM_CLASSES, (batch, size // 2, size // 2))
  labels[:, start, start:start + 3] = [1, 2, 3]
  return labels


def test_l1_l2_matches_numpy():
  pred, target = random_logits((2, 16, 12, 2), 1), random_logits((2, 16, 12, 2), 2)
  for l1_weight, l2_weight in [(1.0, 1.0), (0.3, 2.0), (0.0, 1.0)]:
    loss = jax.jit(functools.partial(losses.l1_l2_loss, l1_weight=l1_weight, l2_weight=l2_weight))(pred, target)
    assert loss.shape == (2,) and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, np_l1_l2(pred, target, l1_weight, l2_weight), rtol=1e-5)


def test_l1_l2_is_zero_at_target_and_accepts_bfloat16():
  target = random_logits((2, 16, 16, 2), 3)
  np.testing.assert_allclose(losses.l1_l2_loss(target, target), 0.0)
  pred = jnp.asarray(random_logits((2, 16, 16, 2), 4), jnp.bfloat16)
  loss = losses.l1_l2_loss(pred, target)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, np_l1_l2(np.asarray(pred, np.float32), target, 1.0, 1.0), rtol=1e-5)


def test_generalized_dice_matches_numpy():
  logits, labels = random_logits((2, 16, 16, NUM_CLASSES)), heart_labels()
  loss = jax.jit(losses.generalized_dice_loss, static_argnums=2)(logits, labels, NUM_CLASSES)
  assert loss.shape == (2,) and loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, np_generalized_dice(logits, labels, NUM_CLASSES), rtol=1e-5, atol=1e-6)
  assert np.all((np.asarray(loss) >= 0) & (np.asarray(loss) <= 1))


def test_generalized_dice_weights_are_per_example():
  logits, labels = random_logits((2, 16, 16, NUM_CLASSES), 5), heart_labels(seed=5)
  labels[1, 8:, :] = 0  # Different class volumes in the second example.
  loss = losses.generalized_dice_loss(logits, labels, NUM_CLASSES)
  alone = [losses.generalized_dice_loss(logits[i:i + 1], labels[i:i + 1], NUM_CLASSES)[0] for i in range(2)]
  np.testing.assert_allclose(loss, alone, rtol=1e-6)


def test_generalized_dice_is_zero_for_perfect_logits():
  labels = heart_labels()
  logits = 30.0 * np.eye(NUM_CLASSES, dtype=np.float32)[labels]
  np.testing.assert_allclose(losses.generalized_dice_loss(logits, labels, NUM_CLASSES), 0.0, atol=1e-5)
  # The worst prediction (every pixel a wrong class) is close to 1.
  wrong = 30.0 * np.eye(NUM_CLASSES, dtype=np.float32)[(labels + 1) % NUM_CLASSES]
  assert np.all(np.asarray(losses.generalized_dice_loss(wrong, labels, NUM_CLASSES)) > 0.99)


@pytest.mark.parametrize('case', ['absent_class', 'no_heart'])
def test_generalized_dice_is_finite_with_absent_classes(case):
  labels = heart_labels()
  if case == 'absent_class':
    labels[labels == 2] = 1  # Example 0 and 1 lose the myocardium.
  else:
    labels[1] = 0  # Example 1 is all background.
  logits = random_logits((2, 16, 16, NUM_CLASSES), 6)
  loss_fn = functools.partial(losses.generalized_dice_loss, num_classes=NUM_CLASSES)
  loss = loss_fn(logits, labels)
  np.testing.assert_allclose(loss, np_generalized_dice(logits, labels, NUM_CLASSES), rtol=1e-5, atol=1e-6)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(loss_fn(x, labels))))(logits)
  assert np.all(np.isfinite(grad)) and np.any(np.asarray(grad) != 0)
  # An absent class takes the largest present weight: predicting it everywhere costs almost everything.
  absent = 2 if case == 'absent_class' else 1
  all_absent = 30.0 * np.eye(NUM_CLASSES, dtype=np.float32)[np.full_like(labels, absent)]
  assert np.asarray(loss_fn(all_absent, labels))[1] > 0.9


def test_generalized_dice_gradient_matches_finite_differences():
  logits, labels = random_logits((1, 8, 8, NUM_CLASSES), 7, scale=1.0), heart_labels(1, 8)
  check_grads(lambda x: losses.generalized_dice_loss(x, labels, NUM_CLASSES), (logits,), order=1, modes=['rev'],
              atol=1e-2, rtol=1e-2)


def test_generalized_dice_accepts_bfloat16_logits():
  logits, labels = jnp.asarray(random_logits((2, 16, 16, NUM_CLASSES), 8), jnp.bfloat16), heart_labels()
  loss = losses.generalized_dice_loss(logits, labels, NUM_CLASSES)
  assert loss.dtype == jnp.float32
  expected = np_generalized_dice(np.asarray(logits, np.float32), labels, NUM_CLASSES)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Explicit focus and loss balancing (config.focus_weight, config.loss_balancing).


def np_box(labels, margin):
  """The heart box of every example, enlarged by `margin` and clipped (whole image without heart), in NumPy."""
  region = np.zeros(labels.shape, bool)
  for i, example in enumerate(labels):
    rows, cols = np.nonzero(example > 0)
    if rows.size == 0:
      region[i] = True
      continue
    size_y, size_x = example.shape
    region[i, max(rows.min() - margin, 0):min(rows.max() + 1 + margin, size_y),
           max(cols.min() - margin, 0):min(cols.max() + 1 + margin, size_x)] = True
  return region


def np_focus_weights(region, focus_weight):
  raw = 1.0 + focus_weight * region.astype(np.float64)
  return raw / raw.mean(axis=(1, 2), keepdims=True)


def test_cross_entropy_and_the_dice_ce_loss_match_numpy():
  logits, labels = random_logits((2, 16, 16, NUM_CLASSES), 7), heart_labels(seed=7)
  log_probs = logits.astype(np.float64) - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  np_ce = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0].mean(axis=(1, 2))
  np.testing.assert_allclose(losses.cross_entropy_loss(logits, labels), np_ce, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(losses.segmentation_loss, static_argnums=(0, 3))('dice_ce', logits, labels,
                                                                                      NUM_CLASSES),
                             np_generalized_dice(logits, labels, NUM_CLASSES) + np_ce, rtol=1e-5)
  np.testing.assert_allclose(losses.segmentation_loss('dice', logits, labels, NUM_CLASSES),
                             np_generalized_dice(logits, labels, NUM_CLASSES), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="'ce'.*expected one of"):
    losses.segmentation_loss('ce', logits, labels, NUM_CLASSES)


def test_a_collapsed_class_keeps_a_gradient_only_with_cross_entropy():
  """A class whose softmax probability is ~0 everywhere (the right ventricle of most ACDC runs): the Dice term's
  gradient on its logits vanishes with the softmax's derivative, cross-entropy's (p - r per pixel) does not."""
  logits, labels = random_logits((1, 16, 16, NUM_CLASSES), 8, scale=0.5), heart_labels(batch=1, seed=8)
  logits[..., 3] -= 30.0  # Class 3 collapsed.
  def class_3_gradient(name):
    grad = jax.grad(lambda x: losses.segmentation_loss(name, x, labels, NUM_CLASSES).sum())(logits)
    return float(np.abs(np.asarray(grad)[..., 3][labels == 3]).max())
  assert class_3_gradient('dice') < 1e-9
  assert class_3_gradient('dice_ce') > 1e-3


def test_weighted_l1_l2_matches_numpy_and_unit_weights_change_nothing():
  pred, target = random_logits((2, 16, 12, 2), 11), random_logits((2, 16, 12, 2), 12)
  weights = np.random.default_rng(13).uniform(0.1, 3.0, (2, 16, 12)).astype(np.float32)
  loss = jax.jit(functools.partial(losses.l1_l2_loss, l1_weight=0.3, l2_weight=2.0))(pred, target,
                                                                                      pixel_weights=weights)
  error = pred.astype(np.float64) - target
  expected = (0.3 * (weights[..., None] * np.abs(error)).mean(axis=(1, 2, 3))
              + 2.0 * (weights[..., None] * error**2).mean(axis=(1, 2, 3)))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  plain = losses.l1_l2_loss(pred, target, 0.3, 2.0)
  np.testing.assert_array_equal(losses.l1_l2_loss(pred, target, 0.3, 2.0, pixel_weights=np.ones((2, 16, 12))), plain)
  assert not np.allclose(loss, plain, rtol=1e-3)


def test_focus_pixel_weights_match_numpy_and_keep_the_mean_at_one():
  labels = heart_labels()
  labels[1] = 0  # No heart: the box is the whole image and the weights are 1.
  region = np_box(labels, margin=1)
  assert 0 < region[0].mean() < 1
  for focus_weight in (0.0, 1.0, 9.0):
    weights = np.asarray(losses.focus_pixel_weights(jnp.asarray(region), focus_weight))
    np.testing.assert_allclose(weights, np_focus_weights(region, focus_weight), rtol=1e-6)
    np.testing.assert_allclose(weights.mean(axis=(1, 2)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(weights[1], 1.0, rtol=1e-6)
  share = region[0].mean()
  weights = np.asarray(losses.focus_pixel_weights(jnp.asarray(region), 9.0))[0]
  np.testing.assert_allclose(weights[region[0]], 10.0 / (1 + 9.0 * share), rtol=1e-6)
  np.testing.assert_allclose(weights[~region[0]], 1.0 / (1 + 9.0 * share), rtol=1e-6)


def test_uncertainty_weighted_loss_and_its_log_variance_gradient_match_numpy():
  term_losses, log_variances = (0.03, 0.4), (-1.5, 0.7)
  loss = losses.uncertainty_weighted_loss([jnp.float32(v) for v in term_losses],
                                          [jnp.float32(s) for s in log_variances])
  expected = sum(np.exp(-s) * value + s for value, s in zip(term_losses, log_variances))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  grads = losses.uncertainty_log_variance_grads(term_losses, [jnp.float32(s) for s in log_variances])
  autodiff = jax.grad(lambda s: losses.uncertainty_weighted_loss(term_losses, s))(
      [jnp.float32(s) for s in log_variances])
  np.testing.assert_allclose(grads, [1 - np.exp(-s) * v for v, s in zip(term_losses, log_variances)], rtol=1e-6)
  np.testing.assert_allclose(grads, autodiff, rtol=1e-6)
  # At s_i = log L_i each term contributes exp(-s_i) L_i = 1 and its s-gradient is 0.
  at_minimum = [jnp.log(jnp.float32(v)) for v in term_losses]
  np.testing.assert_allclose(losses.uncertainty_log_variance_grads(term_losses, at_minimum), 0.0, atol=1e-6)
  with pytest.raises(ValueError, match='2 losses but 1 log-variances'):
    losses.uncertainty_weighted_loss(term_losses, log_variances[:1])


def test_grad_norm_seg_weight_follows_the_norms():
  def weight(recon_norm, seg_norm, previous=0.5, first=False, ratio=1.0, momentum=0.9):
    return float(losses.grad_norm_seg_weight(jnp.float32(recon_norm), jnp.float32(seg_norm), jnp.float32(previous),
                                             jnp.asarray(first), ratio, momentum))

  # First step: the target itself, ratio * recon / seg; a recon gradient 10x larger makes it 10x larger.
  assert weight(0.03, 0.24, first=True) == pytest.approx(0.125, rel=1e-6)
  assert weight(0.3, 0.24, first=True) == pytest.approx(1.25, rel=1e-6)
  assert weight(0.03, 0.24, first=True, ratio=2.0) == pytest.approx(0.25, rel=1e-6)
  # Later steps: the moving average.
  assert weight(0.03, 0.24) == pytest.approx(0.9 * 0.5 + 0.1 * 0.125, rel=1e-6)
  assert weight(0.03, 0.24, momentum=0.0) == pytest.approx(0.125, rel=1e-6)
  # No Dice gradient on the reconstruction network: the previous weight stays.
  assert weight(0.03, 0.0) == pytest.approx(0.5) and weight(0.03, 0.0, first=True) == pytest.approx(0.5)
  assert weight(np.inf, 0.24) == pytest.approx(0.5)
