"""Differentiable MRI physics: centered FFTs, Cartesian masks, data consistency, coil combination.

Every function here is pure `jnp` on native complex arrays and works under `jit`, `vmap`, `grad` and `pmap`.
Image and k-space arrays put the two spatial axes last: `[..., H, W]`, where W (the last axis) is the
phase-encode direction. Undersampling masks select phase-encode lines, so a 1-D mask `[W]` (or `[..., 1, W]`)
broadcasts against k-space.

Conventions (as in fastMRI's `fftc.py`): k-space is centred (k = 0 at index `n // 2`) and the transforms are
orthonormal, so `ifft2c(fft2c(x)) == x` and `fft2c` preserves the l2 norm.
"""

from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_SPATIAL_AXES = (-2, -1)


def fft2c(x: Array) -> Array:
  """Centered, orthonormal 2-D FFT over the last two axes.

  Args:
    x: complex image `[..., H, W]`.

  Returns:
    Centred k-space `[..., H, W]`, same dtype.
  """
  x = jnp.fft.ifftshift(x, axes=_SPATIAL_AXES)
  k = jnp.fft.fft2(x, axes=_SPATIAL_AXES, norm='ortho')
  return jnp.fft.fftshift(k, axes=_SPATIAL_AXES)


def ifft2c(k: Array) -> Array:
  """Centered, orthonormal 2-D inverse FFT over the last two axes (the adjoint and inverse of `fft2c`).

  Args:
    k: centred complex k-space `[..., H, W]`.

  Returns:
    Complex image `[..., H, W]`, same dtype.
  """
  k = jnp.fft.ifftshift(k, axes=_SPATIAL_AXES)
  x = jnp.fft.ifft2(k, axes=_SPATIAL_AXES, norm='ortho')
  return jnp.fft.fftshift(x, axes=_SPATIAL_AXES)


def complex_to_channels(x: Array) -> Array:
  """Complex `[..., H, W]` -> real `[..., H, W, 2]` holding (real, imaginary)."""
  return jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)


def channels_to_complex(x: Array) -> Array:
  """Real `[..., H, W, 2]` holding (real, imaginary) -> complex `[..., H, W]`.

  The result is complex64 for float32 or lower-precision inputs and complex128 for float64.
  """
  if x.shape[-1] != 2:
    raise ValueError(f'channels_to_complex expects a last axis of size 2 (real, imag), got shape {x.shape}')
  real_dtype = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
  return jax.lax.complex(x[..., 0].astype(real_dtype), x[..., 1].astype(real_dtype))


def num_sampled_lines(num_cols: int, sampled_fraction: float) -> int:
  """Lines kept by `sample_mask`: `round(sampled_fraction * num_cols)`, ACS lines included."""
  return int(round(float(sampled_fraction) * num_cols))


def mask_density(num_cols: int, sampled_fraction: float, num_acs: int = 8) -> np.ndarray:
  """Sampling density of the non-ACS lines used by `sample_mask` (Schlemper et al. 2018's `cartesian_mask`).

  A Gaussian centred on k = 0 (index `num_cols // 2`) with standard deviation `num_cols / 10`, plus a uniform
  floor of `sampled_fraction / 2` (their `lmda / Nx` with `lmda = Nx / (2 R)`); ACS lines get zero density and the
  result is normalised to sum to 1.

  Returns:
    float64 `[num_cols]`.
  """
  k = np.arange(num_cols) - num_cols // 2
  pdf = np.exp(-0.5 * (k / (num_cols / 10.0))**2) + float(sampled_fraction) / 2.0
  start = num_cols // 2 - num_acs // 2
  pdf[start:start + num_acs] = 0.0
  return pdf / pdf.sum()


def sample_mask(key: Array, num_cols: int, sampled_fraction: float, num_acs: int = 8) -> Array:
  """Random 1-D Cartesian phase-encode mask with Gaussian variable density and central ACS lines.

  Convention: the mask keeps exactly `round(sampled_fraction * num_cols)` lines in total, the `num_acs`
  autocalibration lines included; the remaining lines are drawn without replacement from `mask_density`
  (as in Schlemper et al. 2018). Acceleration R means `sampled_fraction = 1 / R`. The mask is centred like the
  k-space of `fft2c`: the ACS block is `[num_cols // 2 - num_acs // 2, ... + num_acs)`.

  Args:
    key: PRNG key; the same key gives the same mask.
    num_cols: number of phase-encode lines W (static).
    sampled_fraction: fraction of lines kept, in (0, 1] (static).
    num_acs: number of fully sampled central lines (static).

  Returns:
    bool `[num_cols]`.
  """
  if not 0.0 < sampled_fraction <= 1.0:
    raise ValueError(f'sampled_fraction must be in (0, 1], got {sampled_fraction}')
  if not 0 <= num_acs <= num_cols:
    raise ValueError(f'num_acs must be in [0, num_cols={num_cols}], got {num_acs}')
  total = num_sampled_lines(num_cols, sampled_fraction)
  if total < num_acs:
    raise ValueError(f'sampled_fraction={sampled_fraction} keeps {total} of {num_cols} lines, fewer than the '
                     f'num_acs={num_acs} autocalibration lines')
  start = num_cols // 2 - num_acs // 2
  acs = jnp.zeros((num_cols,), bool).at[start:start + num_acs].set(True)
  num_random = total - num_acs
  if num_random == 0:
    return acs
  pdf = jnp.asarray(mask_density(num_cols, sampled_fraction, num_acs), jnp.float32)
  lines = jax.random.choice(key, num_cols, shape=(num_random,), replace=False, p=pdf)
  return acs.at[lines].set(True)


def undersample(kspace: Array, mask: Array) -> Array:
  """Zero the k-space samples outside `mask`.

  Args:
    kspace: complex `[..., H, W]`.
    mask: bool broadcastable to `kspace` (e.g. `[W]` or `[B, 1, W]`).
  """
  return jnp.where(mask, kspace, jnp.zeros((), kspace.dtype))


def zero_filled(kspace: Array, mask: Array) -> Array:
  """Zero-filled reconstruction: the image of the masked k-space, complex `[..., H, W]`."""
  return ifft2c(undersample(kspace, mask))


def data_consistency(k_pred: Array, k_measured: Array, mask: Array,
                     noise_level: Optional[Union[float, Array]] = None) -> Array:
  """Data-consistency step of the Deep Cascade (Schlemper et al. 2018, js3611's `data_consistency`).

  On sampled locations the prediction is replaced by the measurement (noise-free, `noise_level` None or 0) or
  mixed with it as `(k_pred + v * k_measured) / (1 + v)` with `v = noise_level`; unsampled locations keep
  `k_pred`. `v` follows the reference code's `noise_lvl`: a larger `v` trusts the measurement more, and `v = 0`
  means hard replacement there too. `v` may be a traced (learnable) array; a module owns it, this op stays pure.

  Args:
    k_pred: predicted k-space, complex `[..., H, W]`.
    k_measured: measured k-space (zero outside the mask), complex `[..., H, W]`.
    mask: bool broadcastable to `k_pred`.
    noise_level: None, or a non-negative scalar (or array broadcastable to `k_pred`).

  Returns:
    complex `[..., H, W]`.
  """
  if noise_level is None:
    return jnp.where(mask, k_measured, k_pred)
  v = jnp.asarray(noise_level, dtype=jnp.real(k_pred).dtype)
  mixed = (k_pred + v * k_measured) / (1 + v)
  mixed = jnp.where(v == 0, k_measured, mixed)
  return jnp.where(mask, mixed, k_pred)


def rss(coil_images: Array, coil_axis: int = -3) -> Array:
  """Root-sum-of-squares coil combination (magnitude only): real `[..., H, W]`."""
  return jnp.sqrt(jnp.sum(jnp.abs(coil_images)**2, axis=coil_axis))


def estimate_sensitivities(coil_images: Array, coil_axis: int = -3, calibration_size: int = 24) -> Array:
  """Coil sensitivities from the low-resolution (ACS) region of fully sampled data.

  The central `calibration_size` x `calibration_size` block of each coil's k-space, under a Hann window, gives
  low-resolution coil images `L_c`; the sensitivities are `L_c / sqrt(sum_c |L_c|^2)` (the ACS-based estimate used
  for instance by fastMRI's VarNet `SensitivityModel` before refinement), with the phase of the strongest coil's
  low-resolution image removed so the combined image keeps a smooth phase. Sensitivities have unit l2 norm over
  coils at every pixel, so the combination is defined everywhere.

  Args:
    coil_images: complex `[..., C, H, W]` (coil axis given by `coil_axis`).
    coil_axis: axis of the coils.
    calibration_size: side of the central k-space block used (static).

  Returns:
    complex `[..., C, H, W]` on the same axes as `coil_images`.
  """
  x = jnp.moveaxis(coil_images, coil_axis, -3)
  h, w = x.shape[-2:]
  window = jnp.outer(_centred_hann(h, calibration_size), _centred_hann(w, calibration_size))
  low = ifft2c(fft2c(x) * window.astype(x.dtype))
  norm = jnp.sqrt(jnp.sum(jnp.abs(low)**2, axis=-3, keepdims=True))
  tiny = 1e-12 * jnp.max(norm, axis=(-3, -2, -1), keepdims=True) + jnp.finfo(norm.dtype).tiny
  sens = low / (norm + tiny)
  reference = jnp.argmax(jnp.sum(jnp.abs(low)**2, axis=(-2, -1)), axis=-1)
  ref_low = jnp.take_along_axis(low, reference[..., None, None, None], axis=-3)
  phase = jnp.exp(-1j * jnp.angle(ref_low)).astype(x.dtype)
  return jnp.moveaxis(sens * phase, -3, coil_axis)


def _centred_hann(n: int, width: int) -> Array:
  """Hann window of `min(width, n)` samples centred at index `n // 2` of an `n`-long axis, zero elsewhere."""
  width = min(width, n)
  taper = np.hanning(width + 2)[1:-1]
  start = n // 2 - width // 2
  window = np.zeros(n)
  window[start:start + width] = taper
  return jnp.asarray(window, jnp.float32)


def coil_combine(coil_images: Array, sensitivities: Optional[Array] = None, coil_axis: int = -3) -> Array:
  """Complex, sensitivity-weighted coil combination `sum_c conj(S_c) x_c / sum_c |S_c|^2`.

  Args:
    coil_images: complex `[..., C, H, W]` (coil axis given by `coil_axis`).
    sensitivities: complex, same shape; estimated with `estimate_sensitivities` from `coil_images` (which must
      then be fully sampled) when None.
    coil_axis: axis of the coils.

  Returns:
    complex `[..., H, W]`.
  """
  if sensitivities is None:
    sensitivities = estimate_sensitivities(coil_images, coil_axis)
  if sensitivities.shape != coil_images.shape:
    raise ValueError(f'sensitivities shape {sensitivities.shape} does not match coil_images {coil_images.shape}')
  numerator = jnp.sum(jnp.conj(sensitivities) * coil_images, axis=coil_axis)
  energy = jnp.sum(jnp.abs(sensitivities)**2, axis=coil_axis)
  tiny = jnp.finfo(energy.dtype).tiny
  return numerator / jnp.maximum(energy, tiny).astype(numerator.dtype)


def stabilization_schedule(epoch: int, target_fraction: float, patience: int, eps: float,
                           num_levels: Optional[int] = None) -> float:
  """Sampled fraction for an epoch under the paper's stabilization curriculum (eq. 1).

  `r_i = (1 - eps) * (r / (1 - eps)) ** ((i - 1) / P)` for `1 <= i <= P` and `r` for `i > P`, where `i` is the
  epoch counted from 1, `r = target_fraction` (1 / R), `P = patience`. The fraction starts near fully sampled and
  falls exponentially. Each distinct value compiles the train step once, so `num_levels` quantizes the schedule:
  the exponent `(i - 1) / P` is rounded to the nearest of `num_levels` evenly spaced points of [0, 1], giving at
  most `num_levels` distinct fractions on the same geometric curve (`num_levels = P + 1` is exact; the target
  itself is always one of them).

  Args:
    epoch: epoch number, counted from 1.
    target_fraction: the final sampled fraction `1 / R`, in (0, 1].
    patience: P, the number of epochs of the ramp; 0 disables stabilization.
    eps: the start offset from fully sampled, in [0, 1).
    num_levels: None for the exact schedule, else an integer >= 2.

  Returns:
    The sampled fraction, a Python float (a static argument of the train step).
  """
  if epoch < 1:
    raise ValueError(f'epoch is counted from 1, got {epoch}')
  if not 0.0 < target_fraction <= 1.0:
    raise ValueError(f'target_fraction must be in (0, 1], got {target_fraction}')
  if not 0.0 <= eps < 1.0:
    raise ValueError(f'eps must be in [0, 1), got {eps}')
  if patience < 0:
    raise ValueError(f'patience must be >= 0, got {patience}')
  if num_levels is not None and num_levels < 2:
    raise ValueError(f'num_levels must be None or >= 2, got {num_levels}')
  if patience == 0 or epoch > patience:
    return float(target_fraction)
  exponent = (epoch - 1) / patience
  if num_levels is not None:
    exponent = round(exponent * (num_levels - 1)) / (num_levels - 1)
  start = 1.0 - eps
  return float(start * (target_fraction / start)**exponent)
