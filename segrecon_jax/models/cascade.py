"""Deep Cascade of CNNs (Schlemper et al. 2018): CNN blocks interleaved with k-space data consistency.

Layer for layer as the reference `DnCn` of js3611/Deep-MRI-Reconstruction (`cascadenet_pytorch/model_pytorch.py`,
`conv_block` and `DataConsistencyInKspace(norm='ortho')`), with the paper's setting of 6 cascades of 5 layers of 64
filters (Acar et al. 2021, sec. 2.3). Each cascade:

- CNN of `num_layers` 3x3 convolutions, all with bias and zero padding of 1: the first `num_layers - 1` have
  `features` filters and a ReLU, the last is linear to the 2 image channels (real, imaginary);
- residual connection from the cascade input: `x = x + cnn(x)`;
- data consistency in k-space: `x = ifft2c(DC(fft2c(x), k_measured, mask))` with `mri.data_consistency`.

Per cascade `2*9*F + F + (L-2)*(9*F*F + F) + 9*F*2 + 2` parameters (F = `features`, L = `num_layers`).

Choices (all fields):
- `activation='relu'` as in Schlemper et al.'s paper; the reference code's `conv_block` defaults to
  `nl='lrelu'` (LeakyReLU, slope 0.01), available as 'leaky_relu'.
- Initialization is PyTorch's `Conv2d` default (weights and biases uniform in `+-1/sqrt(fan_in)`), which the
  reference trains with, so the residual CNNs start small.
- Data consistency is hard (measured samples replace predicted ones) when `dc_noise_level` is None. A value `v`
  mixes them as `(k_pred + v * k_measured) / (1 + v)` on sampled lines (see `mri.data_consistency`; larger `v`
  trusts the measurement more). `learnable_noise_level=True` makes `v` a learnable scalar per cascade, stored as
  `softplus^-1(v)` (parameter `noise_level`) so `v = softplus(param) >= 0`, starting at `dc_noise_level`
  (which must then be positive).

The CNNs run in `dtype` (bfloat16 works; parameters stay float32). The running image, the FFTs and data consistency
are always float32/complex64, and the output is float32.
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segrecon_jax import mri
from segrecon_jax.models import layers

Array = Any
Dtype = Any

ACTIVATIONS = {'relu': nn.relu, 'leaky_relu': functools.partial(nn.leaky_relu, negative_slope=0.01)}

# PyTorch's Conv2d default: kaiming_uniform_(a=sqrt(5)) gives weights uniform in +-1/sqrt(fan_in).
_torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _torch_bias_init(fan_in: int):
  """PyTorch's Conv2d bias init: uniform in +-1/sqrt(fan_in)."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _inverse_softplus(v: float) -> float:
  return float(np.log(np.expm1(v)))


class CascadeCNN(nn.Module):
  """The regularization block of one cascade: `num_layers` 3x3 convolutions, ReLU after all but the last."""
  num_layers: int = 5
  features: int = 64
  out_channels: int = 2
  activation: str = 'relu'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.num_layers < 2:
      raise ValueError(f'num_layers must be >= 2, got {self.num_layers}.')
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}.')
    x = x.astype(self.dtype)
    for layer in range(self.num_layers):
      last = layer == self.num_layers - 1
      x = layers.Conv(self.out_channels if last else self.features, (3, 3), padding=((1, 1), (1, 1)),
                      dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_torch_kernel_init,
                      bias_init=_torch_bias_init(9 * x.shape[-1]), name=f'conv{layer}')(x)
      if not last:
        x = ACTIVATIONS[self.activation](x)
    return x


class DataConsistency(nn.Module):
  """k-space data consistency on `[B, H, W, 2]` images; owns the (optionally learnable) noise level."""
  noise_level: Optional[float] = None
  learnable: bool = False

  @nn.compact
  def __call__(self, x: Array, kspace: Array, mask: Array) -> Array:
    v = self.noise_level
    if self.learnable:
      if v is None or v <= 0:
        raise ValueError(f'learnable_noise_level needs a positive initial dc_noise_level, got {v}.')
      raw = self.param('noise_level', nn.initializers.constant(_inverse_softplus(v)), (), jnp.float32)
      v = jax.nn.softplus(raw)
    k_pred = mri.fft2c(mri.channels_to_complex(x.astype(jnp.float32)))
    k = mri.data_consistency(k_pred, kspace.astype(jnp.complex64), mask, v)
    return mri.complex_to_channels(mri.ifft2c(k))


class CascadeNet(nn.Module):
  """DnCn reconstruction: zero-filled `[B, H, W, 2]`, k-space complex `[B, H, W]`, mask `[B, 1, W]` -> float32
  `[B, H, W, 2]`.

  Args of `__call__`:
    x: zero-filled image channels (real, imaginary) float `[B, H, W, 2]`.
    kspace: measured k-space (zero outside the mask), complex64 `[B, H, W]`.
    mask: bool, broadcastable to `kspace` (e.g. `[B, 1, W]`).
    train: unused (no BatchNorm or dropout); keyword for a uniform model interface.
  """
  num_cascades: int = 6
  num_layers: int = 5
  features: int = 64
  activation: str = 'relu'
  dc_noise_level: Optional[float] = None
  learnable_noise_level: bool = False
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None  # Unused (no BatchNorm); accepted like every model's.

  @nn.compact
  def __call__(self, x: Array, kspace: Array, mask: Array, *, train: bool) -> Array:
    del train
    if x.ndim != 4 or x.shape[-1] != 2:
      raise ValueError(f'CascadeNet expects image channels [B, H, W, 2], got shape {x.shape}.')
    if kspace.shape != x.shape[:-1]:
      raise ValueError(f'CascadeNet: kspace shape {kspace.shape} does not match the image {x.shape[:-1]}.')
    x = x.astype(jnp.float32)
    for cascade in range(self.num_cascades):
      residual = CascadeCNN(self.num_layers, self.features, 2, self.activation, self.dtype, name=f'cnn{cascade}')(x)
      x = x + residual.astype(jnp.float32)
      x = DataConsistency(self.dc_noise_level, self.learnable_noise_level, name=f'dc{cascade}')(x, kspace, mask)
    return x
