"""Training losses: the l1-l2 reconstruction term and the generalized Dice segmentation term (paper, Sect. 3), the
focus weights of the reconstruction term and the two automatic balancings of the terms (`config.loss_balancing`).

The losses are pure `jnp` functions that return one value per example (`[B]`), compute in float32 whatever the
input dtype, and work under `jit`, `grad`, `vmap` and `pmap`.
"""

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


def l1_l2_loss(pred: Array, target: Array, l1_weight: float = 1.0, l2_weight: float = 1.0,
               pixel_weights: Optional[Array] = None) -> Array:
  """The paper's "l1-l2" reconstruction term, per example.

  The paper gives no formula, so we take the plain sum `l1_weight * mean|pred - target| + l2_weight *
  mean (pred - target)^2` with equal weights by default, on the complex image held as two real channels: the mean
  runs over pixels and both channels, so the l1 part is the mean absolute error of the real and imaginary parts
  (not of the complex modulus) and the l2 part is the mean squared complex error divided by 2. With
  `pixel_weights` (explicit focus, `focus_pixel_weights`) each pixel's errors are multiplied by its weight inside
  both means; weights of 1 everywhere give exactly the unweighted loss.

  Args:
    pred: reconstruction, real `[B, H, W, 2]` (real, imag); any float dtype.
    target: fully sampled image, real `[B, H, W, 2]`.
    l1_weight: weight of the mean absolute error.
    l2_weight: weight of the mean squared error.
    pixel_weights: optional float `[B, H, W]`, the weight of each pixel (both channels).

  Returns:
    float32 `[B]`.
  """
  error = pred.astype(jnp.float32) - target.astype(jnp.float32)
  axes = tuple(range(1, error.ndim))
  absolute, squared = jnp.abs(error), jnp.square(error)
  if pixel_weights is not None:
    weights = pixel_weights.astype(jnp.float32)[..., None]
    absolute, squared = weights * absolute, weights * squared
  return l1_weight * jnp.mean(absolute, axis=axes) + l2_weight * jnp.mean(squared, axis=axes)


def focus_pixel_weights(region: Array, focus_weight: float) -> Array:
  """Per-pixel weights of the reconstruction term that favour `region` (explicit focus), normalised to mean 1.

  `w = (1 + focus_weight * region) / mean(1 + focus_weight * region)` per example. The normalisation keeps the
  total weight of every slice at its pixel count, so the focused loss has the plain loss's scale (equal for an
  error spread evenly over the image) and its balance against the Dice term and the optimizer's step size stay as
  without focus: focus only moves weight from outside the region to inside it. A region covering a share `a` of the
  slice gives its pixels `(1 + focus_weight) / (1 + focus_weight * a)` and the others `1 / (1 + focus_weight * a)`;
  a slice whose region is the whole image (no heart found) gets 1 everywhere.

  Args:
    region: bool or {0, 1} `[B, H, W]` (e.g. `metrics.box_mask`, the F- metrics' heart box).
    focus_weight: extra weight of the region's pixels, >= 0.

  Returns:
    float32 `[B, H, W]`, mean 1 over each example's pixels.
  """
  raw = 1.0 + focus_weight * region.astype(jnp.float32)
  return raw / jnp.mean(raw, axis=(-2, -1), keepdims=True)


def uncertainty_weighted_loss(term_losses: Sequence[Array], log_variances: Sequence[Array]) -> Array:
  """Kendall, Gal & Cipolla 2018's homoscedastic-uncertainty weighting: `sum_i exp(-s_i) L_i + s_i`.

  `s_i = log sigma_i^2` is a learned log-variance per task. This is the form common to multi-task implementations
  (the paper's regression term is `L / (2 sigma^2) + log sigma`, i.e. half of it, and its classification term
  differs by constants; the halving scales every gradient alike). The minimum over `s_i` is at `s_i = log L_i`, where
  `exp(-s_i) L_i = 1`: each term is weighted by the inverse of its current size, so large terms do not dominate.

  Args:
    term_losses: the task losses `L_i` (scalars or broadcastable arrays).
    log_variances: the `s_i`, one per loss.

  Returns:
    float32, the shape of the broadcast `L_i`.
  """
  if len(term_losses) != len(log_variances):
    raise ValueError(f'{len(term_losses)} losses but {len(log_variances)} log-variances')
  return sum(jnp.exp(-s) * loss + s for loss, s in zip(term_losses, log_variances))


def uncertainty_log_variance_grads(term_losses: Sequence[Array], log_variances: Sequence[Array]) -> Tuple[Array, ...]:
  """d/ds_i of `uncertainty_weighted_loss`: `1 - exp(-s_i) L_i` (zero where `s_i = log L_i`)."""
  return tuple(1.0 - jnp.exp(-s) * loss for loss, s in zip(term_losses, log_variances))


def grad_norm_seg_weight(recon_grad_norm: Array, unit_seg_grad_norm: Array, previous: Array, first: Array,
                         ratio: float, momentum: float) -> Array:
  """The Dice term's weight of gradient-norm balancing, an exponential moving average over steps.

  This step's target is the weight that makes the weighted Dice term's gradient norm on the reconstruction network
  `ratio` times the reconstruction term's: `ratio * recon_grad_norm / unit_seg_grad_norm`. The weight is
  `momentum * previous + (1 - momentum) * target`, or the target itself on the first step (`first`). A step whose
  Dice gradient is zero or whose target is not finite keeps `previous`.

  Args:
    recon_grad_norm: norm of the (weighted) reconstruction term's gradient on the reconstruction network, `[]`.
    unit_seg_grad_norm: the same for the Dice term with weight 1, `[]`.
    previous: the weight of the previous step, `[]`.
    first: bool `[]`, whether this is the first step (no average yet).
    ratio: wanted `||grad (w * dice)|| / ||grad recon||` (1 = equal norms).
    momentum: the average's momentum in [0, 1).

  Returns:
    float32 `[]`.
  """
  target = ratio * recon_grad_norm / jnp.where(unit_seg_grad_norm > 0, unit_seg_grad_norm, 1.0)
  usable = (unit_seg_grad_norm > 0) & jnp.isfinite(target)
  target = jnp.where(usable, target, previous)
  return jnp.where(first, target, momentum * previous + (1.0 - momentum) * target).astype(jnp.float32)


def generalized_dice_loss(logits: Array, labels: Array, num_classes: int, eps: float = 1e-5) -> Array:
  """Generalized Dice loss (Sudre et al. 2017, the paper's ref. [17]) on softmax probabilities, per example.

  `loss = 1 - (2 sum_c w_c sum_i r_ci p_ci + eps) / (sum_c w_c sum_i (r_ci + p_ci) + eps)` with one-hot labels `r`,
  probabilities `p` and class weights `w_c = 1 / (sum_i r_ci)^2`. This follows MONAI's `GeneralizedDiceLoss`
  defaults (`include_background=True`, `w_type='square'`, `batch=False`, `smooth_nr = smooth_dr = eps`):
  - Weights are computed per example (`batch=False`), so each slice balances its own class sizes; slices without
    heart are not diluted by the batch's other slices.
  - The background class is part of the sums (the paper only says "Dice term"); its weight is tiny since it covers
    most pixels.
  - A class absent from an example's labels would get an infinite weight; like MONAI, it gets the largest weight of
    that example's present classes instead, so predicting an absent class is penalised as strongly as missing the
    rarest present one. The weights depend on the labels only, so no gradient flows through them, and the value
    and gradient stay finite when classes (or the whole heart) are absent.

  Args:
    logits: float `[B, H, W, C]` (any float dtype), `C == num_classes`.
    labels: int `[B, H, W]` in `[0, num_classes)`.
    num_classes: C.
    eps: smoothing added to numerator and denominator.

  Returns:
    float32 `[B]` in [0, 1]; 0 for a perfect prediction.
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  spatial = tuple(range(1, probs.ndim - 1))
  intersection = jnp.sum(onehot * probs, axis=spatial)  # [B, C]
  label_volume = jnp.sum(onehot, axis=spatial)  # [B, C]
  pred_volume = jnp.sum(probs, axis=spatial)  # [B, C]
  present = label_volume > 0
  # Double `where`: the untaken 1/0 branch must not exist, or its inf would poison the weights and gradients.
  weights = jnp.where(present, 1.0 / jnp.square(jnp.where(present, label_volume, 1.0)), 0.0)
  max_present = jnp.max(weights, axis=-1, keepdims=True)
  weights = jax.lax.stop_gradient(jnp.where(present, weights, max_present))
  numerator = 2.0 * jnp.sum(weights * intersection, axis=-1) + eps
  denominator = jnp.sum(weights * (label_volume + pred_volume), axis=-1) + eps
  return 1.0 - numerator / denominator


def cross_entropy_loss(logits: Array, labels: Array) -> Array:
  """Pixel-mean softmax cross-entropy per example: float32 `[B]` from logits `[B, H, W, C]` and int labels
  `[B, H, W]`."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return -jnp.mean(picked, axis=tuple(range(1, picked.ndim)))


# The segmentation term (`config.seg_loss`): 'dice' is the paper's (its ref. [17]); 'dice_ce' adds the pixel-mean
# cross-entropy, as nnU-Net and most cardiac segmentation do. A Dice term alone has no gradient left for a class
# whose softmax probability has collapsed to 0 everywhere (the softmax's derivative vanishes there), which on ACDC
# left the right ventricle unlearned in most runs (docs/results.md); cross-entropy's gradient p - r does not vanish.
SEG_LOSSES = ('dice', 'dice_ce')


def segmentation_loss(name: str, logits: Array, labels: Array, num_classes: int) -> Array:
  """The segmentation term `name` (SEG_LOSSES) per example, float32 `[B]`."""
  if name not in SEG_LOSSES:
    raise ValueError(f'segmentation loss {name!r}: expected one of {SEG_LOSSES}')
  loss = generalized_dice_loss(logits, labels, num_classes)
  if name == 'dice_ce':
    loss = loss + cross_entropy_loss(logits, labels)
  return loss
