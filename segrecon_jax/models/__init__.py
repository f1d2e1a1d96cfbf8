"""Reconstruction and segmentation networks, registered by name; `get_model` builds one from a config's `model` dict.

Every top-level model is called as `model.apply(variables, zero_filled, kspace, mask, train=...)` with
`zero_filled` float32 `[B, H, W, 2]` (real, imaginary), `kspace` complex64 `[B, H, W]` (measured, zero outside the
mask) and `mask` bool `[B, 1, W]`, and returns a `ModelOutput`: solo reconstruction models ('unet', 'cascade') its
`recon` float32 `[B, H, W, 2]`; joint models also its `seg_logits` float32 `[B, H, W, num_classes]`.

The built-in models are registered below as a research user registers their own (`register`, models/registry.py:
what the training system knows of each model). Model dicts (`config.model`), by name; every field but 'name' is
optional and defaults to the module's:
  unet               features, norm, residual, normalize                        -> UNet (out_channels=2)
  cascade            num_cascades, num_layers, features, activation, dc_noise_level, learnable_noise_level
                                                                                -> CascadeNet
  multidecoder_unet  features, num_classes, norm, normalize                     -> MultiDecoderUNet
  unet_unet          recon: {UNet fields}, seg: {UNet fields but residual}, stop_gradient
                                                                                -> SegRecon(UNet, UNet)
  cascade_manet      recon: {CascadeNet fields}, seg: {preset, MANet fields}, stop_gradient
                                                                                -> SegRecon(CascadeNet, MANet)
`seg.preset` of 'cascade_manet' names a `manet.MANET_PRESETS` entry ('paper', 'smp_default', 'tiny'); fields given
next to it override the preset's. How the layers are computed (XLA or the native CPU kernels) is not a model field
but a runtime setting of models/layers.py (`layers.set_impls`, from `config.conv_impl` / `config.upconv_impl`):
every choice computes the same function with the same parameters.
"""

from typing import Mapping, Optional

from segrecon_jax.models import registry
from segrecon_jax.models.cascade import CascadeNet
from segrecon_jax.models.manet import MANET_PRESETS
from segrecon_jax.models.manet import MANet
from segrecon_jax.models.multidecoder import MultiDecoderUNet
from segrecon_jax.models.outputs import ModelOutput
from segrecon_jax.models.outputs import ReconOnly
from segrecon_jax.models.registry import JOINT
from segrecon_jax.models.registry import MODELS
from segrecon_jax.models.registry import ModelSpec
from segrecon_jax.models.registry import RECONSTRUCTION
from segrecon_jax.models.registry import SEGMENTATION
from segrecon_jax.models.registry import TASKS
from segrecon_jax.models.registry import display_name
from segrecon_jax.models.registry import get_model
from segrecon_jax.models.registry import has_upconv
from segrecon_jax.models.registry import reconstruction_params
from segrecon_jax.models.registry import register
from segrecon_jax.models.registry import segments
from segrecon_jax.models.registry import segments_reconstruction
from segrecon_jax.models.registry import spec
from segrecon_jax.models.segrecon import SegRecon
from segrecon_jax.models.segrecon import safe_magnitude
from segrecon_jax.models.unet import UNet
from segrecon_jax.models.unet import UNetDecoder
from segrecon_jax.models.unet import UNetEncoder
from segrecon_jax.models.unet import UNetRecon

_JOINT_FIELDS = ('recon', 'seg', 'stop_gradient')
_build = registry.build_module
_check_fields = registry.check_fields


def _sub(fields, key: str, where: str):
  value = fields.get(key, {})
  if not isinstance(value, Mapping):
    raise ValueError(f'{where}: field {key!r} must be a dict of sub-network fields, got {value!r}.')
  return dict(value)


def _unet_recon(fields, dtype, bn_axis_name, where="model 'unet'"):
  return _build(UNet, fields, where, dtype, bn_axis_name, defaults={'residual': True}, fixed={'out_channels': 2})


def _unet(fields, dtype, bn_axis_name):
  return ReconOnly(_unet_recon(fields, dtype, bn_axis_name), dtype=dtype, bn_axis_name=bn_axis_name)


def _cascade_net(fields, dtype, bn_axis_name, where="model 'cascade'"):
  return _build(CascadeNet, fields, where, dtype, bn_axis_name)


def _cascade(fields, dtype, bn_axis_name):
  return ReconOnly(_cascade_net(fields, dtype, bn_axis_name), dtype=dtype, bn_axis_name=bn_axis_name)


def _multidecoder_unet(fields, dtype, bn_axis_name):
  return _build(MultiDecoderUNet, fields, "model 'multidecoder_unet'", dtype, bn_axis_name)


def _segrecon(fields, dtype, bn_axis_name, recon_net, seg_net):
  return SegRecon(recon_net=recon_net, seg_net=seg_net, stop_gradient=bool(fields.get('stop_gradient', False)),
                  dtype=dtype, bn_axis_name=bn_axis_name)


def _unet_unet(fields, dtype, bn_axis_name):
  where = "model 'unet_unet'"
  recon = _unet_recon(_sub(fields, 'recon', where), dtype, bn_axis_name, where=f'{where} recon')
  seg = _build(UNet, _sub(fields, 'seg', where), f'{where} seg', dtype, bn_axis_name, defaults={'out_channels': 4},
               fixed={'residual': False})
  return _segrecon(fields, dtype, bn_axis_name, recon, seg)


def _manet(fields, dtype, bn_axis_name, where):
  fields = dict(fields)
  preset = fields.pop('preset', None)
  if preset is not None and preset not in MANET_PRESETS:
    raise ValueError(f'{where}: unknown MANet preset {preset!r}; valid presets are {sorted(MANET_PRESETS)}.')
  _check_fields(fields, set(registry.module_fields(MANet)) | {'preset'}, where)
  return _build(MANet, fields, where, dtype, bn_axis_name, defaults=MANET_PRESETS[preset] if preset else None)


def _cascade_manet(fields, dtype, bn_axis_name):
  where = "model 'cascade_manet'"
  recon = _cascade_net(_sub(fields, 'recon', where), dtype, bn_axis_name, where=f'{where} recon')
  seg = _manet(_sub(fields, 'seg', where), dtype, bn_axis_name, f'{where} seg')
  return _segrecon(fields, dtype, bn_axis_name, recon, seg)


def _size_multiple(module) -> int:
  """The factor H and W must be a multiple of: the U-Nets halve them len(features) - 1 times, MANet encoder_depth
  times; the cascades take any size."""
  multiple = 1
  if isinstance(module, (UNet, MultiDecoderUNet)):
    multiple = 2 ** (len(module.features) - 1)
  elif isinstance(module, MANet):
    multiple = 2 ** int(module.encoder_depth)
  for field in ('net', 'recon_net', 'seg_net'):
    child = getattr(module, field, None)
    if child is not None:
      multiple = max(multiple, _size_multiple(child))
  return multiple


def _segmentation_outputs(module) -> Optional[int]:
  """The number of segmentation logits a joint model outputs."""
  module = getattr(module, 'seg_net', module)
  if isinstance(module, (MANet, MultiDecoderUNet)):
    return int(module.num_classes)
  if isinstance(module, UNet):
    return int(module.out_channels)
  return None


register('unet', _unet, display_name='UNet', task=RECONSTRUCTION, upconv=True, size_multiple=_size_multiple,
         fields=tuple(f for f in registry.module_fields(UNet) if f != 'out_channels'))
register('cascade', _cascade, display_name='CascadeNet', task=RECONSTRUCTION, size_multiple=_size_multiple,
         fields=registry.module_fields(CascadeNet))
register('multidecoder_unet', _multidecoder_unet, display_name='Multi-Decoder UNet', task=JOINT, upconv=True,
         size_multiple=_size_multiple, num_classes=_segmentation_outputs, num_classes_field='num_classes',
         fields=registry.module_fields(MultiDecoderUNet))
register('unet_unet', _unet_unet, display_name='UNet -> UNet', task=JOINT, upconv=True, size_multiple=_size_multiple,
         num_classes=_segmentation_outputs, num_classes_field='seg.out_channels', fields=_JOINT_FIELDS)
register('cascade_manet', _cascade_manet, display_name='CascadeNet -> MANet', task=JOINT,
         size_multiple=_size_multiple, num_classes=_segmentation_outputs, num_classes_field='seg.num_classes',
         fields=_JOINT_FIELDS)
registry.BUILT_IN = frozenset(MODELS)


__all__ = [
    'CascadeNet', 'JOINT', 'MANet', 'MANET_PRESETS', 'MODELS', 'ModelOutput', 'ModelSpec', 'MultiDecoderUNet',
    'RECONSTRUCTION', 'ReconOnly', 'SEGMENTATION', 'SegRecon', 'TASKS', 'UNet', 'UNetDecoder', 'UNetEncoder',
    'UNetRecon', 'display_name', 'get_model', 'has_upconv', 'reconstruction_params', 'register', 'safe_magnitude',
    'segments', 'segments_reconstruction', 'spec',
]
