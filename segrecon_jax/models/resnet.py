"""ResNet34 feature encoder (torchvision layout, as wrapped by segmentation_models_pytorch) for MANet.

The layout follows torchvision's `resnet34` without `avgpool`/`fc`: a 7x7 stride-2 stem convolution (no bias) with
BatchNorm and ReLU, a 3x3 stride-2 max-pool, then four stages of `BasicBlock`s (3, 4, 6, 3) of widths
(64, 128, 256, 512); the first block of a stage downsamples its shortcut with a 1x1 convolution (no bias) and
BatchNorm whenever the stride or the width changes. As in segmentation_models_pytorch's `ResNetEncoder`, the encoder
returns a feature pyramid: the input itself (stride 1), the stem output (stride 2), and the outputs of stages 1..4
(strides 4, 8, 16, 32; stage 1 runs after the max-pool). `depth` d keeps the first d + 1 of those features, so the
stages past d are never built (they hold no parameters).

Padding is explicit and symmetric, as in PyTorch (Flax's 'SAME' pads stride-2 convolutions asymmetrically), so the
outputs correspond one to one with torchvision's for the same weights. Arrays are NHWC: `[B, H, W, C]`.
"""

import functools
from typing import Any, List, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from segrecon_jax.models import layers

Array = Any
Dtype = Any

# torchvision's init for ResNet convolutions: kaiming_normal_(mode='fan_out', nonlinearity='relu').
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def batch_norm(train: bool, axis_name: Optional[str], momentum: float, epsilon: float, dtype: Dtype,
               name: Optional[str] = None, scale_init=nn.initializers.ones) -> nn.BatchNorm:
  """BatchNorm as PyTorch's `nn.BatchNorm2d`, averaging batch statistics over `axis_name` (e.g. 'batch' under pmap).

  Flax's `momentum` is the weight of the old running average: 0.9 here is PyTorch's `momentum=0.1`. One difference
  remains: PyTorch updates `running_var` with the unbiased batch variance, Flax with the biased one.
  """
  return nn.BatchNorm(use_running_average=not train, axis_name=axis_name, momentum=momentum, epsilon=epsilon,
                      dtype=dtype, param_dtype=jnp.float32, scale_init=scale_init, name=name)


class BasicBlock(nn.Module):
  """ResNet basic block: conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the (projected) shortcut, then ReLU."""
  features: int = 64
  strides: int = 1
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_momentum: float = 0.9  # PyTorch momentum 0.1.
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    conv = functools.partial(layers.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=_conv_init)
    norm = functools.partial(batch_norm, train, self.bn_axis_name, self.bn_momentum, self.bn_epsilon, self.dtype)
    residual = x
    y = conv(self.features, (3, 3), strides=self.strides, padding=((1, 1), (1, 1)), name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name='conv2')(y)
    y = norm(name='bn2')(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      residual = conv(self.features, (1, 1), strides=self.strides, padding='VALID', name='downsample_conv')(x)
      residual = norm(name='downsample_bn')(residual)
    return nn.relu(y + residual)


class ResNetEncoder(nn.Module):
  """ResNet feature encoder returning the smp feature pyramid `[x, stride 2, 4, 8, 16, 32][:depth + 1]`.

  Defaults are ResNet34: `stage_sizes=(3, 4, 6, 3)`, `widths=(64, 128, 256, 512)`, `stem_width=64`; with 3 input
  channels and depth 5 it holds 21,284,672 parameters, torchvision's resnet34 less its 1000-class `fc`.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_width: int = 64
  depth: int = 5
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_momentum: float = 0.9  # PyTorch momentum 0.1.
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> List[Array]:
    """Encodes `x` `[B, H, W, C]` into `depth + 1` features; feature i has stride 2**i (feature 0 is `x` itself)."""
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(f'stage_sizes {tuple(self.stage_sizes)} and widths {tuple(self.widths)} differ in length.')
    if not 1 <= self.depth <= len(self.widths) + 1:
      raise ValueError(f'depth must be in [1, {len(self.widths) + 1}], got {self.depth}.')
    features = [x]
    y = x.astype(self.dtype)
    y = layers.Conv(self.stem_width, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                    param_dtype=jnp.float32, kernel_init=_conv_init, name='conv1')(y)
    y = batch_norm(train, self.bn_axis_name, self.bn_momentum, self.bn_epsilon, self.dtype, name='bn1')(y)
    y = nn.relu(y)
    features.append(y)
    for stage in range(self.depth - 1):
      if stage == 0:
        # Max-pool padding is -inf (reduce_window's init value), as PyTorch's MaxPool2d(3, 2, padding=1).
        y = nn.max_pool(y, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
      for block in range(self.stage_sizes[stage]):
        y = BasicBlock(features=self.widths[stage], strides=2 if stage > 0 and block == 0 else 1, dtype=self.dtype,
                       bn_axis_name=self.bn_axis_name, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                       name=f'layer{stage + 1}_block{block}')(y, train=train)
      features.append(y)
    return features
