"""The typed output every top-level model returns, and the wrapper that gives solo reconstruction networks it."""

from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax.numpy as jnp

Array = Any
Dtype = Any


class ModelOutput(NamedTuple):
  """`recon`: float32 `[B, H, W, 2]` (real, imaginary), or None for a segmentation model (registry.SEGMENTATION);
  `seg_logits`: float32 `[B, H, W, num_classes]`, or None for a reconstruction model.

  A NamedTuple, so it is a pytree (it passes through `jit`, `pmap` and `grad`) and a joint model's output still
  unpacks as `recon, seg_logits = model.apply(...)`.
  """
  recon: Optional[Array] = None
  seg_logits: Optional[Array] = None


class ReconOnly(nn.Module):
  """A solo reconstruction network (`net(x, kspace, mask, train=...)` -> `[B, H, W, 2]`) returning a ModelOutput.

  The wrapped network shares this module's scope, so its parameters sit at the top of the tree exactly as when the
  network is used alone (and inside `SegRecon` under 'recon_net').
  """
  net: nn.Module
  dtype: Dtype = jnp.float32  # Informational: the network carries its own dtype.
  bn_axis_name: Optional[str] = None  # Informational: the network carries its own.

  def setup(self):
    nn.share_scope(self, self.net)

  def __call__(self, x: Array, kspace: Array, mask: Array, *, train: bool) -> ModelOutput:
    return ModelOutput(recon=self.net(x, kspace, mask, train=train).astype(jnp.float32))
