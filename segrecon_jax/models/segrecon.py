"""Segmentation-aware reconstruction (Acar et al. 2021): a reconstruction network followed by a segmentation network.

The segmentation network sees the magnitude of the reconstruction (the paper: "Magnitude images for the resulting
reconstructions are used to generate segmentation map predictions"), one channel `[B, H, W, 1]`. The magnitude is
computed as `sqrt(re^2 + im^2 + tiny)` in float32 with `tiny = 1e-12`: the plain `sqrt(re^2 + im^2)` has a 0/0
(NaN) gradient at 0, which zero-filled backgrounds and exact zeros do reach, while this form has a finite gradient
everywhere (zero at 0) and differs from `|z|` by at most 1e-6.

Trained end to end, the segmentation loss back-propagates through the segmentation network into the reconstruction
network, which is the paper's point. `stop_gradient=True` cuts that path (the solo/detached baselines): the
segmentation loss then trains only the segmentation network.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from segrecon_jax.models.outputs import ModelOutput

Array = Any
Dtype = Any

MAGNITUDE_EPSILON = 1e-12  # Added under the square root of the magnitude: a finite gradient at 0.


def safe_magnitude(x: Array) -> Array:
  """Magnitude of (real, imaginary) channels `[..., 2]` as float32 `[..., 1]`, differentiable at 0."""
  x = x.astype(jnp.float32)
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + MAGNITUDE_EPSILON)


class SegRecon(nn.Module):
  """`recon_net` then `seg_net` on the reconstruction's magnitude: returns `ModelOutput(recon, seg_logits)`.

  `recon_net` is called as `recon_net(x, kspace, mask, train=train)` and returns `[B, H, W, 2]`; `seg_net` as
  `seg_net(magnitude [B, H, W, 1], train=train)` and returns `[B, H, W, num_classes]` logits. Both outputs are
  float32.
  """
  recon_net: nn.Module
  seg_net: nn.Module
  stop_gradient: bool = False
  dtype: Dtype = jnp.float32  # Informational: the submodules carry their own dtype.
  bn_axis_name: Optional[str] = None  # Informational: the submodules carry their own.

  @nn.compact
  def __call__(self, x: Array, kspace: Array, mask: Array, *, train: bool) -> ModelOutput:
    recon = self.recon_net(x, kspace, mask, train=train).astype(jnp.float32)
    seg_input = jax.lax.stop_gradient(recon) if self.stop_gradient else recon
    return ModelOutput(recon=recon, seg_logits=self.segment(seg_input, train=train))

  def segment(self, recon: Array, *, train: bool) -> Array:
    """`seg_net` on the magnitude of reconstructions `[B, H, W, 2]`: float32 logits `[B, H, W, num_classes]` (the
    registry's segmentation of a given reconstruction, which the pseudo-attention differentiates)."""
    return self.seg_net(safe_magnitude(recon), train=train).astype(jnp.float32)

  @nn.nowrap
  def reconstruction_params(self, params):
    """The parameters that compute the reconstruction: `recon_net`'s (models/registry.py)."""
    return {'recon_net': params['recon_net']}
