"""Evaluation metrics: MSE, PSNR, SSIM on magnitude images, their focused (F-) versions and per-class Dice.

Every function is pure `jnp`, works under `jit`, `vmap` and `pmap`, returns one float32 value per example (`[B]`)
and casts its inputs to float32 first, so bfloat16 outputs are scored like float32 ones. Training logs and the
final evaluation (`steps.eval_step`) call the same functions, so their numbers follow the same conventions:

- Images are compared as magnitudes, `|recon|` against `|target|`.
- `data_range` (the peak of PSNR and the `L` of SSIM's constants) is the maximum of the fully sampled magnitude
  of each slice (fastMRI takes the volume's maximum; here every slice stands alone). The focused metrics use the
  same per-slice value, not the maximum inside the box, so F-PSNR and F-SSIM are comparable with their global
  counterparts. An all-zero slice has no peak: its PSNR, SSIM, F-PSNR and F-SSIM are undefined and come out NaN,
  never a number that could enter a mean (the readers refuse such images, and `inference.evaluate_state` refuses a
  split that still holds one); its MSE stays defined.
- PSNR = 10 log10(data_range^2 / MSE), capped at `MAX_PSNR_DB` so that an exact reconstruction of a slice with
  signal (e.g. the zero-filled input at sampled fraction 1) gives a finite number instead of inf.
- SSIM is Wang et al. 2004 exactly as scikit-image's default `structural_similarity(im1, im2, data_range=R)`: a
  7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance (49 / 48), and the mean of the SSIM map over the
  pixels whose window lies inside the image (skimage crops 3 pixels from every border).
- Focused metrics use the bounding box of the ground-truth heart labels (every label > 0: LV blood pool, LV
  myocardium, RV blood pool) enlarged by `margin` pixels per side and clipped to the image, the same box that
  `reporting.heart_box` draws. The box is a mask, so its data-dependent size never changes shapes under `jit`.
"""

from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from segrecon_jax.data import labels as labels_format

Array = jax.Array

SSIM_WIN_SIZE = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# PSNR of an exact reconstruction; its MSE floor (1e-10 data_range^2) is far below float32 image noise.
MAX_PSNR_DB = 100.0
# Class names of the 4-class OCMR labels; other label sets are named `class{c}`.
CLASS_NAMES = labels_format.CLASS_NAMES


def magnitude(image: Array) -> Array:
  """float32 magnitude of a complex image (or of a real one, e.g. an image that already is a magnitude)."""
  return jnp.abs(image).astype(jnp.float32)


def data_range(target_magnitude: Array) -> Array:
  """Per-slice peak: max over `[..., H, W]` of the fully sampled magnitude; NaN where the slice is all zero (no
  peak, so the metrics relative to it are undefined).

  Returns:
    float32 `[...]`.
  """
  peak = jnp.max(target_magnitude.astype(jnp.float32), axis=(-2, -1))
  return jnp.where(peak > 0, peak, jnp.nan)


def psnr_from_mse(mse: Array, peak: Array) -> Array:
  """10 log10(peak^2 / mse) in dB, capped at `MAX_PSNR_DB`; NaN where `peak` is NaN; `mse` and `peak` broadcast."""
  normalized = jnp.maximum(mse / peak / peak, 10.0 ** (-MAX_PSNR_DB / 10.0))
  return -10.0 * jnp.log10(normalized)


def _box_filter(x: Array) -> Array:
  """Mean over every 7x7 window lying inside the image: `[..., H, W]` -> `[..., H - 6, W - 6]`."""
  window = (1,) * (x.ndim - 2) + (SSIM_WIN_SIZE, SSIM_WIN_SIZE)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1,) * x.ndim, 'VALID')
  return total / SSIM_WIN_SIZE**2


def ssim_map(x: Array, y: Array, peak: Array) -> Array:
  """SSIM of every 7x7 window lying inside the image (skimage's map without its reflected border strip).

  Entry `[..., i, j]` belongs to the window centred on pixel `(i + 3, j + 3)` and equals skimage's
  `structural_similarity(x, y, data_range=peak, full=True)[1][..., i + 3, j + 3]`.

  Args:
    x, y: real images `[..., H, W]` with H, W >= 7.
    peak: data_range `[...]` (broadcast against the leading axes).

  Returns:
    float32 `[..., H - 6, W - 6]`.
  """
  if min(x.shape[-2:]) < SSIM_WIN_SIZE:
    raise ValueError(f'SSIM needs images of at least {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE}, got shape {x.shape}')
  # Scale to data_range 1 first: SSIM is unchanged (C1, C2 scale with peak^2) and float32 keeps its precision
  # for the variance differences E[x^2] - E[x]^2 whatever units the images come in.
  scale = jnp.asarray(peak, jnp.float32)[..., None, None]
  x = x.astype(jnp.float32) / scale
  y = y.astype(jnp.float32) / scale
  mean_x, mean_y = _box_filter(x), _box_filter(y)
  cov_norm = SSIM_WIN_SIZE**2 / (SSIM_WIN_SIZE**2 - 1)  # Sample covariance, as skimage's default.
  var_x = cov_norm * (_box_filter(x * x) - mean_x * mean_x)
  var_y = cov_norm * (_box_filter(y * y) - mean_y * mean_y)
  cov_xy = cov_norm * (_box_filter(x * y) - mean_x * mean_y)
  c1, c2 = SSIM_K1**2, SSIM_K2**2
  numerator = (2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
  denominator = (mean_x * mean_x + mean_y * mean_y + c1) * (var_x + var_y + c2)
  return numerator / denominator


def ssim(x: Array, y: Array, peak: Array) -> Array:
  """Mean SSIM of real images `[..., H, W]`, equal to skimage's default `structural_similarity`; float32 `[...]`."""
  return jnp.mean(ssim_map(x, y, peak), axis=(-2, -1))


def has_heart(segmentation: Array) -> Array:
  """bool `[...]`: whether labels `[..., H, W]` contain any heart class (label > 0)."""
  return jnp.any(segmentation > 0, axis=(-2, -1))


def heart_box(segmentation: Array, margin: int) -> Tuple[Array, Array, Array, Array]:
  """Bounding box of the heart labels enlarged by `margin` pixels per side and clipped to the image.

  Matches `reporting.heart_box` on slices with heart; a slice without heart gets the whole image.

  Args:
    segmentation: int labels `[..., H, W]`.
    margin: pixels added on every side.

  Returns:
    (row0, row1, col0, col1), int32 `[...]` each, end-exclusive.
  """
  height, width = segmentation.shape[-2:]
  heart = segmentation > 0
  rows, cols = jnp.any(heart, axis=-1), jnp.any(heart, axis=-2)  # [..., H], [..., W]

  def extent(occupied, size):
    first = jnp.argmax(occupied, axis=-1)
    last = size - 1 - jnp.argmax(occupied[..., ::-1], axis=-1)
    found = jnp.any(occupied, axis=-1)
    start = jnp.where(found, jnp.maximum(first - margin, 0), 0)
    stop = jnp.where(found, jnp.minimum(last + 1 + margin, size), size)
    return start.astype(jnp.int32), stop.astype(jnp.int32)

  row0, row1 = extent(rows, height)
  col0, col1 = extent(cols, width)
  return row0, row1, col0, col1


def box_mask(segmentation: Array, margin: int) -> Array:
  """bool `[..., H, W]`: True inside `heart_box(segmentation, margin)` (everywhere for a slice without heart)."""
  height, width = segmentation.shape[-2:]
  row0, row1, col0, col1 = (b[..., None] for b in heart_box(segmentation, margin))
  row_ids, col_ids = jnp.arange(height), jnp.arange(width)
  rows = (row_ids >= row0) & (row_ids < row1)  # [..., H]
  cols = (col_ids >= col0) & (col_ids < col1)  # [..., W]
  return rows[..., :, None] & cols[..., None, :]


def reconstruction_metrics(recon: Array, target: Array, segmentation: Array, margin: int) -> Dict[str, Array]:
  """Global and focused (heart box) MSE, PSNR and SSIM of magnitude images.

  Focused metrics: F-MSE is the mean squared error over the box pixels and F-PSNR follows from it with the slice's
  data_range. F-SSIM is the mean of the whole-image SSIM map over the box pixels whose 7x7 window lies inside the
  image; it equals skimage's SSIM of the cropped box except near the box edges, where our windows see the real
  image around the box instead of being dropped. A slice without heart labels (`has_heart = 0`) gets its focused
  metrics computed on the whole image (so they equal the global ones and stay finite); `inference.evaluate_state`
  averages focused metrics over slices with heart only.

  Args:
    recon: reconstruction, complex `[B, H, W]` (or real, taken as signed intensities).
    target: fully sampled image, complex `[B, H, W]`.
    segmentation: ground-truth labels, int `[B, H, W]`.
    margin: pixels added to every side of the heart box.

  Returns:
    Dict of float32 `[B]`: `mse`, `mse_x1e3` (the paper's Table 2 scale), `psnr` (dB), `ssim`, the focused
    `f_mse`, `f_mse_x1e3`, `f_psnr`, `f_ssim`, and `has_heart` (1.0 or 0.0).
  """
  recon_mag, target_mag = magnitude(recon), magnitude(target)
  peak = data_range(target_mag)
  squared_error = jnp.square(recon_mag - target_mag)
  mse = jnp.mean(squared_error, axis=(-2, -1))
  inside = box_mask(segmentation, margin).astype(jnp.float32)
  # The box always holds at least one pixel (the whole image without heart), so the division is safe.
  f_mse = jnp.sum(squared_error * inside, axis=(-2, -1)) / jnp.sum(inside, axis=(-2, -1))

  similarity = ssim_map(recon_mag, target_mag, peak)
  global_ssim = jnp.mean(similarity, axis=(-2, -1))
  pad = (SSIM_WIN_SIZE - 1) // 2
  inside_valid = inside[..., pad:inside.shape[-2] - pad, pad:inside.shape[-1] - pad]
  count = jnp.sum(inside_valid, axis=(-2, -1))
  # A box lying entirely in the 3-pixel border strip has no valid window: fall back to the global SSIM.
  f_ssim = jnp.where(count > 0, jnp.sum(similarity * inside_valid, axis=(-2, -1)) / jnp.maximum(count, 1.0),
                     global_ssim)
  return {
      'mse': mse,
      'mse_x1e3': 1e3 * mse,
      'psnr': psnr_from_mse(mse, peak),
      'ssim': global_ssim,
      'f_mse': f_mse,
      'f_mse_x1e3': 1e3 * f_mse,
      'f_psnr': psnr_from_mse(f_mse, peak),
      'f_ssim': f_ssim,
      'has_heart': has_heart(segmentation).astype(jnp.float32),
  }


def dice_per_class(predicted: Array, labels: Array, num_classes: int) -> Array:
  """Dice of hard label maps for every foreground class.

  A class absent from both the prediction and the ground truth scores 1.0 (nothing to find, nothing found); a
  class present in only one of them scores 0.0.

  Args:
    predicted: int labels `[B, H, W]`.
    labels: ground-truth int labels `[B, H, W]`.
    num_classes: C, background (0) included.

  Returns:
    float32 `[B, C - 1]` for classes 1 .. C - 1.
  """
  classes = jnp.arange(1, num_classes)
  pred_onehot = (predicted[..., None] == classes).astype(jnp.float32)
  true_onehot = (labels[..., None] == classes).astype(jnp.float32)
  spatial = tuple(range(1, pred_onehot.ndim - 1))
  intersection = jnp.sum(pred_onehot * true_onehot, axis=spatial)
  total = jnp.sum(pred_onehot, axis=spatial) + jnp.sum(true_onehot, axis=spatial)
  return jnp.where(total > 0, 2.0 * intersection / jnp.maximum(total, 1.0), 1.0)


def class_names(num_classes: int) -> Tuple[str, ...]:
  """Names of all classes, background first: the OCMR names for 4 classes, `class{c}` otherwise."""
  if num_classes == len(CLASS_NAMES):
    return CLASS_NAMES
  return tuple(f'class{c}' for c in range(num_classes))


def segmentation_metrics(logits: Array, labels: Array, num_classes: int) -> Dict[str, Array]:
  """Dice of the argmax segmentation per foreground class and their mean.

  Args:
    logits: float `[B, H, W, C]` (any float dtype).
    labels: ground-truth int labels `[B, H, W]`.
    num_classes: C >= 2, background included.

  Returns:
    Dict of float32 `[B]`: `dice_<name>` per foreground class (`dice_lv_pool`, `dice_myocardium`, `dice_rv_pool`
    for 4 classes; `dice_class<c>` otherwise) and `dice_mean` over those classes (see `dice_per_class` for
    classes absent from both maps).
  """
  if num_classes < 2:
    raise ValueError(f'segmentation_metrics needs a background and at least one foreground class, got {num_classes}')
  predicted = jnp.argmax(logits.astype(jnp.float32), axis=-1)
  dice = dice_per_class(predicted, labels, num_classes)
  results = {f'dice_{name}': dice[..., c - 1] for c, name in enumerate(class_names(num_classes)) if c > 0}
  results['dice_mean'] = jnp.mean(dice, axis=-1)
  return results
