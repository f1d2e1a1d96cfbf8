"""Multi-Decoder U-Net (after Amyar et al. 2020): one shared U-Net encoder, a reconstruction and a segmentation decoder.

Acar et al. (2021, sec. 2.3): "a common encoder of depth 4 with filter configuration (32, 64, 128, 256) is created
for reconstruction and segmentation tasks, taking the undersampled images as input", its features "fed to the first
decoder head to reconstruct the underlying image and to the second decoder to create the segmentation map".

Built from the same `unet.UNetEncoder` / `unet.UNetDecoder` as `UNet`, so each branch is layer for layer the
U-Net of `unet.py` (see its docstring for the level layout, norms and padding). Both decoders take their skip
connections from the shared encoder. The reconstruction decoder outputs 2 channels added to the zero-filled input
(`recon = x + decoder(x)`, the convention of `UNetRecon`); the segmentation decoder outputs `num_classes` logits.
With `normalize`, the encoder sees the input standardized per example and channel and the reconstruction is mapped
back, as `UNet(normalize=True)` (see unet.py).
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from segrecon_jax.models import unet
from segrecon_jax.models.outputs import ModelOutput

Array = Any
Dtype = Any


class MultiDecoderUNet(nn.Module):
  """Zero-filled `[B, H, W, 2]` -> `ModelOutput(recon [B, H, W, 2], seg_logits [B, H, W, num_classes])`, float32.

  `kspace` and `mask` are accepted and ignored (an image-domain network called like every top-level model).
  """
  features: Sequence[int] = (32, 64, 128, 256)
  num_classes: int = 4
  norm: str = 'batch'
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None  # Set to the pmap axis ('batch') to average batch statistics across devices.
  normalize: bool = False  # Standardize the input per example and channel, un-standardize the recon (unet.UNet).

  @nn.compact
  def __call__(self, x: Array, kspace: Optional[Array] = None, mask: Optional[Array] = None, *,
               train: bool) -> ModelOutput:
    del kspace, mask
    if x.shape[-1] != 2:
      raise ValueError(f'MultiDecoderUNet expects image channels [B, H, W, 2], got shape {x.shape}.')
    features = tuple(self.features)
    x = x.astype(jnp.float32)
    if self.normalize:
      mean, std = unet.channel_statistics(x)
      x = (x - mean) / std
    bottleneck, skips = unet.UNetEncoder(features, self.norm, self.dtype, self.bn_axis_name, name='encoder')(
        x, train=train)
    correction = unet.UNetDecoder(features, 2, self.norm, self.dtype, self.bn_axis_name,
                                  name='recon_decoder')(bottleneck, skips, train=train)
    seg_logits = unet.UNetDecoder(features, self.num_classes, self.norm, self.dtype, self.bn_axis_name,
                                  name='seg_decoder')(bottleneck, skips, train=train)
    recon = x + correction.astype(jnp.float32)
    if self.normalize:
      recon = recon * std + mean
    return ModelOutput(recon=recon, seg_logits=seg_logits.astype(jnp.float32))

  @nn.nowrap
  def reconstruction_params(self, params):
    """The parameters that compute the reconstruction (models/registry.py): the shared `encoder` and the
    `recon_decoder` (the segmentation term reaches only the encoder, so its gradient is zero on the decoder)."""
    return {'encoder': params['encoder'], 'recon_decoder': params['recon_decoder']}
