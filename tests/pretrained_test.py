"""Tests for models/pretrained.py: a ResNet34 .safetensors checkpoint loaded into MANet's encoder."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from segrecon_jax.models import manet
from segrecon_jax.models import pretrained
import golden_weights

# A small MANet (BasicBlock stages of one block) keeps the test fast; the key layout is ResNet34's.
_LAYOUT = dict(encoder_depth=3, encoder_widths=(8, 16, 32, 64), encoder_stage_sizes=(1, 1, 1, 1), stem_width=8,
               decoder_channels=(16, 8, 8), pab_channels=4)


def _variables(in_channels):
  model = manet.MANet(num_classes=2, in_channels=in_channels, **_LAYOUT)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, 16, 16, in_channels)))
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _checkpoint(tmp_path, variables, extra=None, drop=None):
  """A torchvision-layout RGB checkpoint for `variables`' encoder, with fc and num_batches_tracked as torch has."""
  encoder = {c: variables[c]['encoder'] for c in variables}
  tensors = {}
  for key, (collection, path) in pretrained.resnet_torch_keys(encoder).items():
    leaf = encoder[collection]
    for name in path:
      leaf = leaf[name]
    shape = leaf.shape
    if leaf.ndim == 4:
      shape = (shape[3], 3 if key == 'conv1.weight' else shape[2], shape[0], shape[1])  # HWIO -> OIHW.
    tensors[key] = golden_weights.golden_tensor(key, shape)
    if key.endswith('running_var'):
      tensors[key.replace('running_var', 'num_batches_tracked')] = np.array(7, np.int64)
  tensors['fc.weight'] = np.ones((10, 64), np.float32)
  tensors['fc.bias'] = np.ones((10,), np.float32)
  tensors['layer4.0.conv1.weight'] = np.ones((2, 2, 3, 3), np.float32)  # A stage past encoder_depth: ignored.
  tensors.update(extra or {})
  for key in drop or ():
    del tensors[key]
  path = str(tmp_path / 'resnet34.safetensors')
  save_file(tensors, path)
  return path, tensors


@pytest.mark.parametrize('in_channels', [1, 2, 3])
def test_loads_every_tensor_and_combines_rgb_as_smp(tmp_path, in_channels):
  variables = _variables(in_channels)
  path, tensors = _checkpoint(tmp_path, variables)
  loaded = pretrained.apply_pretrained({'name': 'cascade_manet', 'seg': {'encoder_weights': path}},
                                       {c: {'seg_net': v} for c, v in variables.items()})
  encoder = {c: loaded[c]['seg_net']['encoder'] for c in loaded}
  np.testing.assert_array_equal(encoder['params']['layer2_block0']['conv1']['kernel'],
                                tensors['layer2.0.conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(encoder['params']['layer2_block0']['downsample_bn']['scale'],
                                tensors['layer2.0.downsample.1.weight'])
  np.testing.assert_array_equal(encoder['batch_stats']['bn1']['var'], tensors['bn1.running_var'])
  rgb = tensors['conv1.weight']  # [O, 3, 7, 7]
  expected = {1: rgb.sum(axis=1, keepdims=True), 2: rgb[:, :2] * 1.5, 3: rgb}[in_channels]
  np.testing.assert_allclose(encoder['params']['conv1']['kernel'], expected.transpose(2, 3, 1, 0), rtol=1e-6)
  # The decoder keeps its initial values.
  assert not np.any(loaded['params']['seg_net']['center']['top_conv']['kernel'])


def test_no_weights_is_a_noop_and_weights_without_manet_raise(tmp_path):
  variables = {'params': {'cnn0': {'conv0': {'kernel': np.zeros((3, 3, 2, 4))}}}}
  assert pretrained.apply_pretrained({'name': 'cascade'}, variables) is variables
  assert pretrained.apply_pretrained({'name': 'cascade_manet', 'seg': {'encoder_weights': ''}}, variables) is variables
  with pytest.raises(ValueError, match='no MANet encoder'):
    pretrained.apply_pretrained({'name': 'cascade', 'encoder_weights': str(tmp_path / 'x.safetensors')}, variables)


def test_bad_files_name_the_file_and_key(tmp_path):
  variables = _variables(1)
  config = lambda p: {'name': 'manet', 'encoder_weights': p}
  with pytest.raises(FileNotFoundError, match='missing.safetensors'):
    pretrained.apply_pretrained(config(str(tmp_path / 'missing.safetensors')), variables)
  path, _ = _checkpoint(tmp_path, variables, drop=['layer1.0.bn2.running_mean'])
  with pytest.raises(ValueError, match=r"resnet34.safetensors.*missing key 'layer1.0.bn2.running_mean'"):
    pretrained.apply_pretrained(config(path), variables)
  path, _ = _checkpoint(tmp_path, variables, extra={'layer1.0.conv3.weight': np.ones((1,), np.float32)})
  with pytest.raises(ValueError, match=r"unexpected key 'layer1.0.conv3.weight'"):
    pretrained.apply_pretrained(config(path), variables)
  path, _ = _checkpoint(tmp_path, variables, extra={'layer1.0.conv2.weight': np.ones((8, 4, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"key 'layer1.0.conv2.weight' has shape \(8, 4, 3, 3\)"):
    pretrained.apply_pretrained(config(path), variables)
