"""U-Net (Ronneberger et al. 2015) as used by Acar et al. (2021) for reconstruction and segmentation, in pieces.

The paper: "U-Net architecture with depth of 4 and filter configuration of (32, 64, 128, 256) with kernel size 3x3
across all layers". We read "depth 4" as four resolution levels of widths `features = (32, 64, 128, 256)`: three
encoder levels (two convolutions each, then a 2x2 max-pool) and a bottleneck at the 256 level; the decoder mirrors
them with three levels. Layer for layer, as in Ronneberger et al.:

- Encoder level i: two [conv 3x3 -> norm -> ReLU] with `features[i]` filters, then 2x2 max-pool (stride 2).
- Bottleneck: two [conv 3x3 -> norm -> ReLU] with `features[-1]` filters.
- Decoder level i (deepest first): 2x2 transposed convolution of stride 2 to `features[i]` channels (halving them;
  with bias, no norm or activation, Ronneberger's "up-convolution"), concatenation with the encoder skip of level i,
  two [conv 3x3 -> norm -> ReLU] with `features[i]` filters.
- Head: 1x1 convolution (with bias) to `out_channels`; no activation (regression output or logits).

Choices where the paper is silent (all fields):
- `norm='batch'` (default): BatchNorm after every 3x3 convolution, as in the segmentation U-Nets of that time;
  'instance' (InstanceNorm without affine parameters, as fastMRI's U-Net) and 'none' (Ronneberger's original) are
  also available. Convolutions followed by a norm carry no bias (the norm's shift or the mean removal makes it
  redundant); with `norm='none'` they have one. BatchNorm uses PyTorch's momentum 0.1 (Flax `momentum=0.9`),
  epsilon 1e-5, and averages its batch statistics over `bn_axis_name` (e.g. 'batch' under pmap).
- Padding is 'SAME' (zero padding of 1 for 3x3), as fastMRI's U-Net, so the output has the input's size;
  Ronneberger et al. used valid convolutions and cropped the skips. H and W must then be divisible by
  `2**(len(features) - 1)`.
- Reconstruction (`residual=True`, the `UNetRecon` variant): the network maps the zero-filled image `[B, H, W, 2]`
  (real, imaginary) to a correction that is added to it, `recon = x + unet(x)`, returned as float32.

Computation runs in `dtype` (bfloat16 works); parameters stay float32. Arrays are NHWC.
"""

import functools
from typing import Any, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from segrecon_jax.models import layers

Array = Any
Dtype = Any

NORMS = ('batch', 'instance', 'none')


def check_divisible(shape: Sequence[int], num_levels: int, what: str) -> None:
  """Raises a ValueError naming `shape` unless H and W (axes 1, 2) are divisible by `2**(num_levels - 1)`."""
  factor = 2**(num_levels - 1)
  if len(shape) != 4 or shape[1] % factor or shape[2] % factor:
    raise ValueError(f'{what} with {num_levels} levels needs [B, H, W, C] input with H and W divisible by {factor}; '
                     f'got shape {tuple(shape)}.')


class ConvNormReLU(nn.Module):
  """3x3 convolution ('SAME' padding) -> normalization (`norm`) -> ReLU."""
  features: int
  norm: str = 'batch'
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_momentum: float = 0.9  # Flax convention (weight of the old average): PyTorch momentum 0.1.
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if self.norm not in NORMS:
      raise ValueError(f'norm must be one of {NORMS}, got {self.norm!r}.')
    x = layers.Conv(self.features, (3, 3), padding='SAME', use_bias=self.norm == 'none', dtype=self.dtype,
                    param_dtype=jnp.float32, name='conv')(x)
    if self.norm == 'batch':
      x = nn.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=jnp.float32, name='bn')(x)
    elif self.norm == 'instance':
      x = nn.InstanceNorm(epsilon=self.bn_epsilon, use_scale=False, use_bias=False, dtype=self.dtype,
                          param_dtype=jnp.float32, name='instance_norm')(x)
    return nn.relu(x)


class DoubleConv(nn.Module):
  """Two `ConvNormReLU` with `features` filters: one U-Net level."""
  features: int
  norm: str = 'batch'
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    block = functools.partial(ConvNormReLU, self.features, self.norm, self.dtype, self.bn_axis_name)
    x = block(name='conv1')(x, train=train)
    return block(name='conv2')(x, train=train)


class UNetEncoder(nn.Module):
  """Contracting path: returns `(bottleneck, skips)`, skips shallow first (level i has `features[i]` channels)."""
  features: Sequence[int] = (32, 64, 128, 256)
  norm: str = 'batch'
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Tuple[Array, List[Array]]:
    check_divisible(x.shape, len(self.features), 'UNetEncoder')
    x = x.astype(self.dtype)
    skips = []
    for level, width in enumerate(self.features[:-1]):
      x = DoubleConv(width, self.norm, self.dtype, self.bn_axis_name, name=f'down{level}')(
          x, train=train)
      skips.append(x)
      x = layers.max_pool_2x2(x)  # nn.max_pool's 2x2, stride 2, with a faster backward on CPU.
    x = DoubleConv(self.features[-1], self.norm, self.dtype, self.bn_axis_name, name='bottleneck')(
        x, train=train)
    return x, skips


class UNetDecoder(nn.Module):
  """Expanding path from `(bottleneck, skips)` of a `UNetEncoder` with the same `features`, then a 1x1 head."""
  features: Sequence[int] = (32, 64, 128, 256)
  out_channels: int = 2
  norm: str = 'batch'
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, skips: Sequence[Array], *, train: bool) -> Array:
    if len(skips) != len(self.features) - 1:
      raise ValueError(f'UNetDecoder with features {tuple(self.features)} needs {len(self.features) - 1} skips, '
                       f'got {len(skips)}.')
    for level in reversed(range(len(self.features) - 1)):
      width = self.features[level]
      # nn.ConvTranspose or its CPU equivalent layers.UpConv2x2 (the runtime setting upconv_impl), same parameters.
      upconv = layers.conv_transpose_module()
      x = upconv(width, (2, 2), strides=(2, 2), padding='VALID', dtype=self.dtype, param_dtype=jnp.float32,
                 name=f'upconv{level}')(x)
      x = jnp.concatenate([x, skips[level].astype(self.dtype)], axis=-1)
      x = DoubleConv(width, self.norm, self.dtype, self.bn_axis_name, name=f'up{level}')(
          x, train=train)
    return layers.Conv(self.out_channels, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name='head')(x)


class UNet(nn.Module):
  """U-Net `[B, H, W, C]` -> `[B, H, W, out_channels]` float32 (logits, or with `residual` a reconstruction).

  `residual=True` adds the input to the output (image reconstruction: `x + unet(x)`, needs `out_channels == C`).
  `kspace` and `mask` are accepted and ignored, so every reconstruction model is called the same way.
  """
  features: Sequence[int] = (32, 64, 128, 256)
  out_channels: int = 2
  norm: str = 'batch'
  residual: bool = False
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None  # Set to the pmap axis ('batch') to average batch statistics across devices.

  @nn.compact
  def __call__(self, x: Array, kspace: Optional[Array] = None, mask: Optional[Array] = None, *,
               train: bool) -> Array:
    del kspace, mask  # An image-domain network.
    if self.residual and x.shape[-1] != self.out_channels:
      raise ValueError(f'a residual UNet needs out_channels ({self.out_channels}) equal to the input channels; '
                       f'got input of shape {x.shape}.')
    features = tuple(self.features)
    bottleneck, skips = UNetEncoder(features, self.norm, self.dtype, self.bn_axis_name, name='encoder')(
        x, train=train)
    decoder = UNetDecoder(features, self.out_channels, self.norm, self.dtype, self.bn_axis_name,
                          name='decoder')
    y = decoder(bottleneck, skips, train=train)
    y = y.astype(jnp.float32)
    if self.residual:
      y = x.astype(jnp.float32) + y
    return y


# Reconstruction: (real, imaginary) channels in and out, a residual on the zero-filled input.
UNetRecon = functools.partial(UNet, out_channels=2, residual=True)
