"""Phantom acquisition physics: receive-coil sensitivities, correlated receiver noise and multi-coil k-space.

k-space is per coil `fft2c(coil image [2H, W])`, centred (k = 0 at index n // 2) and orthonormal, as
`segrecon_jax.mri.fft2c`; the readout is 2x oversampled, the recon image occupying rows `H // 2 : H // 2 + H` of the
encoded grid (the outer half is air, noise only).
"""

import math
from typing import Optional, Tuple

import numpy as np
import scipy.fft

from segrecon_jax.data.phantom_anatomy import STREAM_NOISE, Subject, body_grid, lv_cavity, subject_anatomy, subject_rng


def coil_sensitivities(subject: Subject) -> np.ndarray:
  """Receive sensitivities on the oversampled grid, normalised so their root-sum-of-squares is 1 at the LV centre.

  Each coil is a loop of radius R at (u, v, z) (z out of the slice plane) with the on-axis loop profile
  `(R^2 / (R^2 + d^2))^(3/2)` of the 3-D distance d and a constant plus linear phase.

  Returns:
    complex64 `[num_coils, 2H, W]`; rows `H // 2 : H // 2 + H` cover the recon image.
  """
  rows = subject.encoded_size[0]
  u, v = body_grid(subject, rows, 1)
  cavity_u, cavity_front, _ = lv_cavity(subject.anatomy)
  lv = (subject.anatomy['lv_u'] * cavity_u, subject.anatomy['lv_v'] * cavity_front)

  def profile(uu, vv):
    out = []
    for (cu, cv, cz), radius, phase0, grad in zip(subject.coils['position'], subject.coils['radius'],
                                                  subject.coils['phase'], subject.coils['phase_gradient']):
      distance2 = (uu - cu)**2 + (vv - cv)**2 + cz**2
      magnitude = (radius**2 / (radius**2 + distance2))**1.5
      out.append(magnitude * np.exp(1j * (phase0 + grad[0] * (uu - cu) + grad[1] * (vv - cv))))
    return np.stack(out)

  norm = np.sqrt(np.sum(np.abs(profile(np.array(lv[0]), np.array(lv[1])))**2))
  return (profile(u, v) / norm).astype(np.complex64)


def noise_covariance(subject: Subject) -> np.ndarray:
  """Receiver noise covariance (per complex sample, image and k-space alike): complex128 `[C, C]`.

  Neighbouring coils couple a little (off-diagonals ~0.1) and gains differ by up to ~25%; the mean per-coil noise
  variance is about `1 / snr^2`, so with sensitivities normalised at the heart the combined blood SNR is ~`snr`.
  """
  if math.isinf(subject.snr):
    return np.zeros((subject.num_coils, subject.num_coils), np.complex128)
  mixing = subject.coils['noise_mixing']
  b = np.eye(subject.num_coils) + mixing[..., 0] + 1j * mixing[..., 1]
  psi = b @ b.conj().T
  scale = subject.coils['noise_scale'] / np.sqrt(np.real(np.diag(psi)))
  return psi * np.outer(scale, scale) / subject.snr**2


def fft2c(x: np.ndarray) -> np.ndarray:
  """Centred orthonormal 2-D FFT over the last two axes, as `segrecon_jax.mri.fft2c`, in single precision."""
  x = np.fft.ifftshift(x, axes=(-2, -1))
  return np.fft.fftshift(scipy.fft.fft2(x, axes=(-2, -1), norm='ortho'), axes=(-2, -1))


def ifft2c(k: np.ndarray) -> np.ndarray:
  k = np.fft.ifftshift(k, axes=(-2, -1))
  return np.fft.fftshift(scipy.fft.ifft2(k, axes=(-2, -1), norm='ortho'), axes=(-2, -1))


def _complex_noise(rng: np.random.Generator, covariance: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
  """Complex Gaussian noise `[..., C, N]` with `E[n n^H] = covariance` over the C axis."""
  white = rng.standard_normal((2,) + shape, dtype=np.float32)
  white = (white[0] + 1j * white[1]).astype(np.complex64) * np.float32(math.sqrt(0.5))
  chol = np.linalg.cholesky(covariance).astype(np.complex64)
  return np.matmul(chol, white)


def subject_kspace(subject: Subject, anatomy: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Multi-coil k-space of every slice and frame, and one noise-scan line.

  Args:
    subject: the `Subject`.
    anatomy: `subject_anatomy(subject)[0]` if already computed.

  Returns:
    kspace: complex64 `[num_slices, num_frames, C, 2H, W]`, centred, the readout 2x oversampled.
    noise_scan: complex64 `[C, 2H]`, noise only (zeros when `snr` is infinite).
  """
  if anatomy is None:
    anatomy = subject_anatomy(subject)[0]
  h, w = subject.recon_size
  sensitivities = coil_sensitivities(subject)
  covariance = noise_covariance(subject)
  noisy = not math.isinf(subject.snr)
  kspace = np.empty((subject.num_slices, subject.num_frames, subject.num_coils, 2 * h, w), np.complex64)
  padded = np.zeros((subject.num_frames, 1, 2 * h, w), np.complex64)
  for k in range(subject.num_slices):
    padded[:, 0, h // 2:h // 2 + h] = anatomy[k]
    kspace[k] = fft2c(padded * sensitivities)
    if noisy:
      rng = subject_rng(subject.seed, subject.subject, STREAM_NOISE, k)
      noise = _complex_noise(rng, covariance, (subject.num_frames, subject.num_coils, 2 * h * w))
      kspace[k] += noise.reshape(kspace[k].shape)
  noise_scan = np.zeros((subject.num_coils, 2 * h), np.complex64)
  if noisy:
    rng = subject_rng(subject.seed, subject.subject, STREAM_NOISE, subject.num_slices + 1000)
    noise_scan = _complex_noise(rng, covariance, (subject.num_coils, 2 * h))
  return kspace, noise_scan
