"""Loading an ImageNet ResNet34 checkpoint (torchvision/timm layout, .safetensors) into MANet's encoder.

smp's MAnet starts its encoder from ImageNet weights by default (`encoder_weights='imagenet'`); this module gives our
MANet the same start from a file the user supplies, without torch: `safetensors.numpy.load_file` reads it, and
`apply_pretrained(model_config, variables)` writes the converted tensors over the freshly initialised encoder.

Conversion: convolution kernels go from PyTorch's OIHW to Flax's HWIO; BatchNorm `weight`/`bias`/`running_mean`/
`running_var` become `scale`/`bias` (params) and `mean`/`var` (batch_stats); `fc.*` and `num_batches_tracked` are
ignored. When the model has fewer input channels than the file's first convolution (RGB), the kernels are combined
as smp's `patch_first_conv` does: summed over RGB for 1 channel; for 2 channels, channel i takes RGB channel i % 3,
scaled by 3 / in_channels. Stages past the model's `encoder_depth` are not built, so their tensors are not used.
"""

import os
from typing import Any, Dict, Mapping, Tuple

import flax
import numpy as np

Path = Tuple[str, ...]

# Keys of a torchvision/timm ResNet checkpoint that no MANet encoder uses.
_IGNORED_SUFFIXES = ('num_batches_tracked',)
_IGNORED_PREFIXES = ('fc.',)

_BN_NAMES = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'), 'running_mean': ('batch_stats', 'mean'),
             'running_var': ('batch_stats', 'var')}


def _torch_module_name(flax_name: str) -> str:
  """Flax module name of `resnet.ResNetEncoder` -> torchvision module path ('layer2_block0' -> 'layer2.0')."""
  if '_block' in flax_name:
    stage, block = flax_name.split('_block')
    return f'{stage}.{block}'
  return {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(flax_name, flax_name)


def resnet_torch_keys(encoder_variables: Mapping[str, Any]) -> Dict[str, Tuple[str, Path]]:
  """torchvision state-dict key -> (collection, path inside the encoder) for every array of a ResNetEncoder.

  Args:
    encoder_variables: `{'params': ..., 'batch_stats': ...}` of a `resnet.ResNetEncoder` (nested dicts).

  Returns:
    e.g. `{'layer1.0.conv1.weight': ('params', ('layer1_block0', 'conv1', 'kernel')),
    'bn1.running_var': ('batch_stats', ('bn1', 'var')), ...}`; one entry per array, no two entries alike.
  """
  keys = {}
  for collection in ('params', 'batch_stats'):
    for path in flax.traverse_util.flatten_dict(flax.core.unfreeze(encoder_variables.get(collection, {}))):
      module = '.'.join(_torch_module_name(name) for name in path[:-1])
      leaf = path[-1]
      if leaf == 'kernel':
        torch_leaf = 'weight'
      else:
        torch_leaf = {v: k for k, v in _BN_NAMES.items()}[(collection, leaf)]
      keys[f'{module}.{torch_leaf}'] = (collection, path)
  return keys


def torch_to_flax(key: str, value: np.ndarray) -> np.ndarray:
  """A checkpoint tensor in Flax layout: OIHW convolution kernels -> HWIO; vectors unchanged."""
  return np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value


def combine_input_channels(kernel_oihw: np.ndarray, in_channels: int) -> np.ndarray:
  """smp's `patch_first_conv` on pretrained OIHW kernels: RGB -> `in_channels` input channels.

  1 channel: the sum over RGB. 2 channels: channel i is RGB channel i % 3, times 3 / in_channels. More channels
  than the file's is not defined by smp for pretrained weights (it re-initialises them) and raises here.
  """
  file_channels = kernel_oihw.shape[1]
  if in_channels == file_channels:
    return kernel_oihw
  if in_channels == 1:
    return kernel_oihw.sum(axis=1, keepdims=True)
  if in_channels < file_channels:
    picked = kernel_oihw[:, [i % file_channels for i in range(in_channels)]]
    return picked * (file_channels / in_channels)
  raise ValueError(f'cannot adapt a first convolution of {file_channels} input channels to {in_channels}.')


def load_resnet_encoder(path: str, encoder_variables: Mapping[str, Any]) -> Dict[str, Any]:
  """Returns `encoder_variables` with every array replaced by the converted tensor of the .safetensors file `path`.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: a key the encoder needs is missing, the file has a key no ResNet34 encoder has, or a shape differs;
      the message names the file and the key.
  """
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise FileNotFoundError(f'encoder_weights: no such file {path!r} (expected a ResNet34 .safetensors checkpoint '
                            'in torchvision/timm layout).')
  tensors = load_file(path)
  tensors = {k: v for k, v in tensors.items()
             if not k.endswith(_IGNORED_SUFFIXES) and not k.startswith(_IGNORED_PREFIXES)}
  wanted = resnet_torch_keys(encoder_variables)
  missing = sorted(set(wanted) - set(tensors))
  if missing:
    raise ValueError(f'encoder_weights {path!r}: missing key {missing[0]!r} ({len(missing)} missing in all).')
  # Keys of deeper stages than the model builds are expected (a depth-4 MANet skips layer4); anything else is not.
  built_stages = {key.split('.')[0] for key in wanted}
  extra = sorted(k for k in set(tensors) - set(wanted)
                 if k.split('.')[0] in built_stages or not k.split('.')[0].startswith('layer'))
  if extra:
    raise ValueError(f'encoder_weights {path!r}: unexpected key {extra[0]!r} (not a torchvision/timm ResNet34 key '
                     f'of this encoder; {len(extra)} unexpected in all).')
  flat = {c: flax.traverse_util.flatten_dict(flax.core.unfreeze(encoder_variables.get(c, {})))
          for c in ('params', 'batch_stats')}
  for key, (collection, leaf_path) in wanted.items():
    value = np.asarray(tensors[key], np.float32)
    target_shape = tuple(flat[collection][leaf_path].shape)
    if key == 'conv1.weight' and value.ndim == 4:
      value = combine_input_channels(value, target_shape[2])
    value = torch_to_flax(key, value)
    if value.shape != target_shape:
      raise ValueError(f'encoder_weights {path!r}: key {key!r} has shape {tuple(tensors[key].shape)}, which does not '
                       f'fit the encoder\'s {target_shape} (Flax layout).')
    flat[collection][leaf_path] = value
  out = dict(flax.core.unfreeze(encoder_variables))
  for collection, leaves in flat.items():
    if leaves:
      out[collection] = flax.traverse_util.unflatten_dict(leaves)
  return out


def _find_manet(params: Mapping[str, Any]) -> Path:
  """Path of the MANet sub-tree in a model's params: () for 'manet', ('seg_net',)-like for a pipeline."""
  if 'encoder' in params and 'center' in params:
    return ()
  for name, sub in params.items():
    if isinstance(sub, Mapping):
      found = _find_manet(sub)
      if found is not None:
        return (name,) + found
  return None


def apply_pretrained(model_config: Any, variables: Mapping[str, Any]) -> Dict[str, Any]:
  """Loads `model_config.encoder_weights` (if set) into the MANet encoder of `variables`; a no-op otherwise.

  Args:
    model_config: the config's `model` dict; `encoder_weights` is read from it or from its `seg` dict (the MANet
      fields of 'cascade_manet').
    variables: the model's initial `{'params': ..., 'batch_stats': ...}`.

  Works for every model name: without `encoder_weights` the variables come back unchanged; the MANet sub-tree is
  found by its `encoder`/`center` children wherever the model nests it. `encoder_weights` set on a model without a
  MANet raises a ValueError.
  """
  model_config = dict(model_config)
  seg = model_config.get('seg') or {}
  weights = model_config.get('encoder_weights') or dict(seg).get('encoder_weights', '')
  if not weights:
    return variables
  variables = flax.core.unfreeze(variables)
  manet_path = _find_manet(variables['params'])
  if manet_path is None:
    raise ValueError(f'model.encoder_weights={weights!r} is set, but the model '
                     f'{model_config.get("name", "?")!r} has no MANet encoder.')

  def subtree(tree, path):
    for name in path:
      tree = tree[name]
    return tree

  encoder_path = manet_path + ('encoder',)
  encoder = {c: subtree(variables[c], encoder_path) for c in ('params', 'batch_stats') if c in variables}
  loaded = load_resnet_encoder(weights, encoder)
  for collection, tree in loaded.items():
    parent = subtree(variables[collection], encoder_path[:-1])
    parent['encoder'] = tree
  return variables
