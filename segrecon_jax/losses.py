"""Training losses: the l1-l2 reconstruction term and the generalized Dice segmentation term (paper, Sect. 3).

Both are pure `jnp` functions that return one value per example (`[B]`), compute in float32 whatever the input
dtype, and work under `jit`, `grad`, `vmap` and `pmap`.
"""

import jax
import jax.numpy as jnp

Array = jax.Array


def l1_l2_loss(pred: Array, target: Array, l1_weight: float = 1.0, l2_weight: float = 1.0) -> Array:
  """The paper's "l1-l2" reconstruction term, per example.

  The paper gives no formula, so we take the plain sum `l1_weight * mean|pred - target| + l2_weight *
  mean (pred - target)^2` with equal weights by default, on the complex image held as two real channels: the mean
  runs over pixels and both channels, so the l1 part is the mean absolute error of the real and imaginary parts
  (not of the complex modulus) and the l2 part is the mean squared complex error divided by 2.

  Args:
    pred: reconstruction, real `[B, H, W, 2]` (real, imag); any float dtype.
    target: fully sampled image, real `[B, H, W, 2]`.
    l1_weight: weight of the mean absolute error.
    l2_weight: weight of the mean squared error.

  Returns:
    float32 `[B]`.
  """
  error = pred.astype(jnp.float32) - target.astype(jnp.float32)
  axes = tuple(range(1, error.ndim))
  return l1_weight * jnp.mean(jnp.abs(error), axis=axes) + l2_weight * jnp.mean(jnp.square(error), axis=axes)


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
