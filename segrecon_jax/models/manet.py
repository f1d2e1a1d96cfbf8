"""MANet (multi-scale attention network, Fan et al. 2020) on a ResNet34 encoder, as segmentation_models_pytorch's MAnet.

The structure matches smp's `MAnet(encoder_name='resnet34')` layer for layer, so parameter counts agree exactly:

- Encoder: `resnet.ResNetEncoder` (torchvision ResNet34), features at strides 1 (the input), 2, 4, ..., 2**depth.
- Decoder: the input feature is dropped; a position attention block (`PAB`) runs on the deepest feature; then one
  block per entry of `decoder_channels`, each upsampling x2 (nearest): an `MFAB` (multi-scale fusion attention) where
  an encoder skip exists at the new stride, and a plain `DecoderBlock` for the last block, which reaches stride 1
  where smp passes no skip. Every `Conv2dReLU` is conv (no bias) -> BatchNorm -> ReLU (smp's default
  `decoder_use_norm='batchnorm'`); the PAB and squeeze-and-excitation convolutions have biases; SE reduction is 16.
- Head: 3x3 convolution (with bias) to `num_classes` logits; no activation, no upsampling.

Paper preset. Acar et al. (2021, sec. 2.3): "We used ResNet34 in the encoder with a depth of 4 and filter sizes
(32, 64, 128, 256)". We read this as smp's `MAnet(encoder_name='resnet34', encoder_depth=4,
decoder_channels=(256, 128, 64, 32))`: `encoder_depth=4` keeps the stem and the first three ResNet34 stages
(BasicBlocks 3, 4, 6; features of widths 64, 64, 128, 256 at strides 2..16), and the four filter sizes are the four
decoder widths, listed shallow to deep as the paper lists its U-Net filters. Why this reading: "ResNet34" names a
fixed network (stem 64, stages 64..512); the widely used PyTorch MANet with a ResNet34 encoder (smp's; the paper's
models are PyTorch) exposes exactly two size knobs, `encoder_depth` and `decoder_channels`, whose depth-4 form takes
four filter numbers, while narrowing ResNet34 itself to (32, 64, 128, 256) is not possible there; and the project
config (configs/cascade_manet.py) already uses this reading. The narrower-encoder reading stays expressible through
`encoder_widths`/`stem_width`. With 1 input channel and 4 classes the preset holds 12,385,892 parameters (smp counts
25,500,260 because it also builds ResNet34's unused fourth stage; the default depth-5 layout holds 31,777,796, as
in smp). The paper also mentions dilated convolutions in the decoder;
smp's MAnet has none, and neither does this one.

Arrays are NHWC. Computation runs in `dtype` (bfloat16 works); parameters are float32; the PAB softmax is taken in
float32; logits are returned as float32 whatever `dtype` is. BatchNorm's `bn_momentum=0.9` is PyTorch's
`momentum=0.1`; with `bn_axis_name` set (e.g. 'batch' under pmap), batch statistics are averaged across devices.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segrecon_jax.models import layers
from segrecon_jax.models import resnet

Array = Any
Dtype = Any

# smp's initialize_decoder: kaiming_uniform_(mode='fan_in', nonlinearity='relu') convolutions, zero biases;
# initialize_head: xavier_uniform_ weights, zero biases.
_decoder_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'uniform')
_head_init = nn.initializers.xavier_uniform()


def _upsample2x(x: Array) -> Array:
  """Nearest-neighbour x2 upsampling of `[B, H, W, C]` (PyTorch's `F.interpolate(scale_factor=2, mode='nearest')`)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Conv2dReLU(nn.Module):
  """smp's `Conv2dReLU` with BatchNorm: conv (no bias, 'same' zero padding) -> BatchNorm -> ReLU."""
  features: int
  kernel_size: int = 3
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_momentum: float = 0.9  # PyTorch momentum 0.1.
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    pad = self.kernel_size // 2
    x = layers.Conv(self.features, (self.kernel_size, self.kernel_size), padding=((pad, pad), (pad, pad)),
                    use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_decoder_init,
                    name='conv')(x)
    x = resnet.batch_norm(train, self.bn_axis_name, self.bn_momentum, self.bn_epsilon, self.dtype, name='bn')(x)
    return nn.relu(x)


class PAB(nn.Module):
  """smp's position attention block on `[B, H, W, C]`: spatial self-attention added to the input, then a 3x3 conv.

  Two smp details are kept on purpose, since they define the reference model: the softmax is taken over the WHOLE
  flattened `[HW, HW]` attention map of each example (`F.softmax(map.view(B, -1), dim=-1)`), not per query row; and
  the `[B, HW, C]` attention output is reshaped to `[B, C, H, W]` WITHOUT a transpose, i.e. its memory is
  reinterpreted channel-major. Both are reproduced exactly.
  """
  pab_channels: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    batch, height, width, channels = x.shape
    conv = functools.partial(layers.Conv, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_decoder_init)
    top = conv(self.pab_channels, (1, 1), name='top_conv')(x).reshape(batch, height * width, self.pab_channels)
    center = conv(self.pab_channels, (1, 1), name='center_conv')(x).reshape(batch, height * width, self.pab_channels)
    bottom = conv(channels, (3, 3), padding=((1, 1), (1, 1)), name='bottom_conv')(x).reshape(
        batch, height * width, channels)
    # Row-major NHWC flattening orders positions as torch's NCHW `flatten(2)` does (h * W + w).
    attention = jnp.einsum('bqp,bkp->bqk', center, top).astype(jnp.float32)  # [B, HW, HW]
    # smp: softmax over all HW * HW entries of an example at once.
    attention = jax.nn.softmax(attention.reshape(batch, -1), axis=-1).reshape(batch, height * width, height * width)
    attended = jnp.einsum('bqk,bkc->bqc', attention.astype(self.dtype), bottom)  # [B, HW, C]
    # smp: `reshape(B, C, H, W)` of the [B, HW, C] product, no transpose; then to NHWC.
    attended = attended.reshape(batch, channels, height, width).transpose(0, 2, 3, 1)
    return conv(channels, (3, 3), padding=((1, 1), (1, 1)), name='out_conv')(x + attended)


class SqueezeExcite(nn.Module):
  """smp MFAB's channel attention: global average pool -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid (biases on)."""
  features: int
  reduction: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    reduced = max(1, self.features // self.reduction)
    conv = functools.partial(layers.Conv, kernel_size=(1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=_decoder_init)
    y = jnp.mean(x, axis=(1, 2), keepdims=True)
    y = nn.relu(conv(reduced, name='reduce')(y))
    return nn.sigmoid(conv(self.features, name='expand')(y))


class MFAB(nn.Module):
  """smp's multi-scale fusion attention block: fuse the x2-upsampled decoder path with an encoder skip.

  hl = Conv2dReLU 3x3 (in -> in) -> Conv2dReLU 1x1 (in -> skip) -> upsample x2; the hl features are scaled by
  SE(hl) + SE(skip) and concatenated with the skip; then two Conv2dReLU 3x3 to `features`.
  """
  features: int
  reduction: int = 16
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_momentum: float = 0.9  # PyTorch momentum 0.1.
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, skip: Array, *, train: bool) -> Array:
    conv_relu = functools.partial(Conv2dReLU, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                                  bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
    skip_channels = skip.shape[-1]
    x = conv_relu(x.shape[-1], 3, name='hl_conv1')(x, train=train)
    x = conv_relu(skip_channels, 1, name='hl_conv2')(x, train=train)
    x = _upsample2x(x)
    attention = SqueezeExcite(skip_channels, self.reduction, self.dtype, name='se_hl')(x)
    attention = attention + SqueezeExcite(skip_channels, self.reduction, self.dtype, name='se_ll')(skip)
    x = jnp.concatenate([x * attention, skip.astype(self.dtype)], axis=-1)
    x = conv_relu(self.features, 3, name='conv1')(x, train=train)
    return conv_relu(self.features, 3, name='conv2')(x, train=train)


class DecoderBlock(nn.Module):
  """smp's plain decoder block: upsample x2 (nearest), concatenate the skip if any, two Conv2dReLU 3x3."""
  features: int
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_momentum: float = 0.9  # PyTorch momentum 0.1.
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, skip: Optional[Array] = None, *, train: bool) -> Array:
    conv_relu = functools.partial(Conv2dReLU, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                                  bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
    x = _upsample2x(x)
    if skip is not None:
      x = jnp.concatenate([x, skip.astype(self.dtype)], axis=-1)
    x = conv_relu(self.features, 3, name='conv1')(x, train=train)
    return conv_relu(self.features, 3, name='conv2')(x, train=train)


class MANet(nn.Module):
  """MANet segmentation network: `[B, H, W, C]` image -> `[B, H, W, num_classes]` float32 logits.

  H and W must be divisible by `2**encoder_depth`. `in_channels=None` takes C from the input; if set, C must match.
  """
  num_classes: int = 4
  in_channels: Optional[int] = None
  encoder_depth: int = 5
  encoder_widths: Sequence[int] = (64, 128, 256, 512)
  encoder_stage_sizes: Sequence[int] = (3, 4, 6, 3)  # BasicBlocks per stage: ResNet34; (2, 2, 2, 2) is ResNet18.
  stem_width: int = 64
  decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
  pab_channels: int = 64
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None  # Set to the pmap axis ('batch') to average batch statistics across devices.
  bn_momentum: float = 0.9  # Flax convention (weight of the old average): PyTorch momentum 0.1.
  bn_epsilon: float = 1e-5
  # A ResNet34 ImageNet checkpoint (.safetensors, torchvision/timm layout) for the encoder, loaded after init by
  # `pretrained.apply_pretrained`; '' = random init. Not used by the forward pass.
  encoder_weights: str = ''

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if x.ndim != 4:
      raise ValueError(f'MANet expects [B, H, W, C] input, got shape {x.shape}.')
    if self.in_channels is not None and x.shape[-1] != self.in_channels:
      raise ValueError(f'MANet built for in_channels={self.in_channels}, got input of shape {x.shape}.')
    if self.encoder_depth not in (3, 4, 5):
      raise ValueError(f'encoder_depth must be 3, 4 or 5, got {self.encoder_depth}.')
    if len(self.decoder_channels) != self.encoder_depth:
      raise ValueError(f'decoder_channels {tuple(self.decoder_channels)} must have encoder_depth='
                       f'{self.encoder_depth} entries.')
    stride = 2**self.encoder_depth
    if x.shape[1] % stride or x.shape[2] % stride:
      raise ValueError(f'MANet with encoder_depth={self.encoder_depth} needs H and W divisible by {stride}; '
                       f'got input of shape {x.shape} (H={x.shape[1]}, W={x.shape[2]}).')
    bn = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name, bn_momentum=self.bn_momentum,
              bn_epsilon=self.bn_epsilon)
    features = resnet.ResNetEncoder(stage_sizes=tuple(self.encoder_stage_sizes), widths=tuple(self.encoder_widths),
                                    stem_width=self.stem_width, depth=self.encoder_depth, name='encoder',
                                    **bn)(x, train=train)
    # smp drops the input feature; the deepest feature is the head, the others are skips, deepest first.
    features = features[1:][::-1]
    y = PAB(self.pab_channels, self.dtype, name='center')(features[0])
    skips = features[1:]
    for i, channels in enumerate(self.decoder_channels):
      if i < len(skips):
        y = MFAB(channels, name=f'block{i}', **bn)(y, skips[i], train=train)
      else:
        y = DecoderBlock(channels, name=f'block{i}', **bn)(y, train=train)
    logits = layers.Conv(self.num_classes, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                         param_dtype=jnp.float32, kernel_init=_head_init, name='segmentation_head')(y)
    return logits.astype(jnp.float32)


# Named layouts (keyword arguments for MANet); see the module docstring for the paper mapping.
MANET_PRESETS = {
    # smp's MAnet defaults: ResNet34, encoder_depth 5, decoder (256, 128, 64, 32, 16).
    'smp_default': {'encoder_depth': 5, 'decoder_channels': (256, 128, 64, 32, 16)},
    # Acar et al. 2021: ResNet34 of depth 4, filters (32, 64, 128, 256) read as the decoder widths.
    'paper': {'encoder_depth': 4, 'decoder_channels': (256, 128, 64, 32)},
    # Narrow, shallow network (one BasicBlock a stage) for tests and CPU smoke runs; not ResNet34.
    'tiny': {'encoder_depth': 4, 'encoder_widths': (8, 8, 16, 32), 'encoder_stage_sizes': (1, 1, 1, 1), 'stem_width': 8,
             'decoder_channels': (32, 16, 8, 8), 'pab_channels': 8},
}
