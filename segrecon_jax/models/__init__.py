"""Reconstruction and segmentation networks, and `get_model`, which builds one from a config's `model` dict.

Every top-level model is called as `model.apply(variables, zero_filled, kspace, mask, train=...)` with
`zero_filled` float32 `[B, H, W, 2]` (real, imaginary), `kspace` complex64 `[B, H, W]` (measured, zero outside the
mask) and `mask` bool `[B, 1, W]`. Solo reconstruction models ('unet', 'cascade') return `recon` float32
`[B, H, W, 2]`; joint models return `(recon, seg_logits float32 [B, H, W, num_classes])`.

Model dicts (`config.model`), by name; every field but 'name' is optional and defaults to the module's:
  unet               features, norm, residual                                   -> UNet (out_channels=2)
  cascade            num_cascades, num_layers, features, activation, dc_noise_level, learnable_noise_level
                                                                                -> CascadeNet
  multidecoder_unet  features, num_classes, norm                                -> MultiDecoderUNet
  unet_unet          recon: {UNet fields}, seg: {UNet fields but residual}, stop_gradient
                                                                                -> SegRecon(UNet, UNet)
  cascade_manet      recon: {CascadeNet fields}, seg: {preset, MANet fields}, stop_gradient
                                                                                -> SegRecon(CascadeNet, MANet)
`seg.preset` of 'cascade_manet' names a `manet.MANET_PRESETS` entry ('paper', 'smp_default', 'tiny'); fields given
next to it override the preset's. How the layers are computed (XLA or the native CPU kernels) is not a model field
but a runtime setting of models/layers.py (`layers.set_impls`, from `config.conv_impl` / `config.upconv_impl`):
every choice computes the same function with the same parameters.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping

import flax.linen as nn
import jax.numpy as jnp

from segrecon_jax.models.cascade import CascadeNet
from segrecon_jax.models.manet import MANET_PRESETS
from segrecon_jax.models.manet import MANet
from segrecon_jax.models.multidecoder import MultiDecoderUNet
from segrecon_jax.models.outputs import ModelOutput
from segrecon_jax.models.outputs import ReconOnly
from segrecon_jax.models.segrecon import SegRecon
from segrecon_jax.models.segrecon import safe_magnitude
from segrecon_jax.models.unet import UNet
from segrecon_jax.models.unet import UNetDecoder
from segrecon_jax.models.unet import UNetEncoder
from segrecon_jax.models.unet import UNetRecon

# Module fields that get_model sets itself (never from the config dict).
_MANAGED_FIELDS = ('parent', 'name', 'dtype', 'bn_axis_name')
_JOINT_FIELDS = ('recon', 'seg', 'stop_gradient')


def _module_fields(cls) -> tuple:
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _MANAGED_FIELDS)


def _check_fields(fields: Mapping[str, Any], valid, where: str) -> None:
  unknown = sorted(set(fields) - set(valid))
  if unknown:
    raise ValueError(f'{where}: unknown field(s) {unknown}; valid fields are {sorted(valid)}.')


def _hashable(value):
  return tuple(value) if isinstance(value, list) else value


def _build(cls, fields: Mapping[str, Any], where: str, dtype, bn_axis_name, defaults=None, fixed=None) -> nn.Module:
  """`cls(**defaults, **fields, **fixed)` after checking `fields` against the module's fields less `fixed`."""
  fixed = dict(fixed or {})
  _check_fields(fields, set(_module_fields(cls)) - set(fixed), where)
  kwargs = dict(defaults or {})
  kwargs.update({k: _hashable(v) for k, v in fields.items()})
  kwargs.update(fixed)
  return cls(**kwargs, dtype=dtype, bn_axis_name=bn_axis_name)


def _sub(fields: Mapping[str, Any], key: str, where: str) -> Dict[str, Any]:
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


def _segrecon(fields, dtype, bn_axis_name, recon_net, seg_net, where):
  _check_fields(fields, _JOINT_FIELDS, where)
  return SegRecon(recon_net=recon_net, seg_net=seg_net, stop_gradient=bool(fields.get('stop_gradient', False)),
                  dtype=dtype, bn_axis_name=bn_axis_name)


def _unet_unet(fields, dtype, bn_axis_name):
  where = "model 'unet_unet'"
  recon = _unet_recon(_sub(fields, 'recon', where), dtype, bn_axis_name, where=f'{where} recon')
  seg = _build(UNet, _sub(fields, 'seg', where), f'{where} seg', dtype, bn_axis_name, defaults={'out_channels': 4},
               fixed={'residual': False})
  return _segrecon(fields, dtype, bn_axis_name, recon, seg, where)


def _manet(fields, dtype, bn_axis_name, where):
  fields = dict(fields)
  preset = fields.pop('preset', None)
  if preset is not None and preset not in MANET_PRESETS:
    raise ValueError(f'{where}: unknown MANet preset {preset!r}; valid presets are {sorted(MANET_PRESETS)}.')
  _check_fields(fields, set(_module_fields(MANet)) | {'preset'}, where)
  return _build(MANet, fields, where, dtype, bn_axis_name, defaults=MANET_PRESETS[preset] if preset else None)


def _cascade_manet(fields, dtype, bn_axis_name):
  where = "model 'cascade_manet'"
  recon = _cascade_net(_sub(fields, 'recon', where), dtype, bn_axis_name, where=f'{where} recon')
  seg = _manet(_sub(fields, 'seg', where), dtype, bn_axis_name, f'{where} seg')
  return _segrecon(fields, dtype, bn_axis_name, recon, seg, where)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the registry knows of a model: its builder and what it can do."""
  build: Callable[..., nn.Module]  # (fields without 'name', dtype, bn_axis_name) -> module.
  display_name: str  # The method's name in the paper's tables.
  segments: bool  # Has a segmentation output (trained with the Dice term, evaluated with Dice).
  upconv: bool = False  # Has U-Net up-convolutions (the runtime setting upconv_impl changes how they run).


MODELS: Dict[str, ModelSpec] = {
    'unet': ModelSpec(_unet, 'UNet', segments=False, upconv=True),
    'cascade': ModelSpec(_cascade, 'CascadeNet', segments=False),
    'multidecoder_unet': ModelSpec(_multidecoder_unet, 'Multi-Decoder UNet', segments=True, upconv=True),
    'unet_unet': ModelSpec(_unet_unet, 'UNet -> UNet', segments=True, upconv=True),
    'cascade_manet': ModelSpec(_cascade_manet, 'CascadeNet -> MANet', segments=True),
}


def spec(model_config) -> ModelSpec:
  """The registry entry of `model_config` (a name, a Mapping or a ConfigDict with 'name')."""
  if isinstance(model_config, str) or model_config is None:
    name = model_config
  else:
    name = dict(model_config).get('name')
  if name not in MODELS:
    raise ValueError(f'unknown model name {name!r}; valid names are {sorted(MODELS)}.')
  return MODELS[name]


def segments(model_config) -> bool:
  """Whether the model has a segmentation output."""
  return spec(model_config).segments


def display_name(model_config) -> str:
  """The method's name as the paper's tables print it (without the '(S)' of stabilization)."""
  return spec(model_config).display_name


def has_upconv(model_config) -> bool:
  """Whether the model has U-Net up-convolutions (so the runtime setting upconv_impl applies to it)."""
  return spec(model_config).upconv


def get_model(model_config, dtype=jnp.float32, bn_axis_name=None) -> nn.Module:
  """The model named by `model_config['name']`, built from the other fields (see the module docstring).

  Args:
    model_config: a Mapping or an ml_collections ConfigDict with 'name' and the model's fields.
    dtype: computation dtype of every network (e.g. jnp.bfloat16); parameters stay float32.
    bn_axis_name: the pmap axis name over which BatchNorm averages batch statistics ('batch'), or None.

  Raises:
    ValueError: unknown name or field, listing the valid ones.
  """
  if hasattr(model_config, 'to_dict'):
    model_config = model_config.to_dict()
  fields = dict(model_config)
  entry = spec(fields.pop('name', None))
  return entry.build(fields, dtype, bn_axis_name)


__all__ = [
    'CascadeNet', 'MANet', 'MANET_PRESETS', 'MODELS', 'ModelOutput', 'ModelSpec', 'MultiDecoderUNet',
    'ReconOnly', 'SegRecon', 'UNet', 'UNetDecoder', 'UNetEncoder', 'UNetRecon',
    'display_name', 'get_model', 'has_upconv', 'safe_magnitude', 'segments', 'spec',
]
