"""Golden tests: our MANet and CascadeNet against the PyTorch references (smp MAnet, js3611's DnCn) on seeded weights.

The fixtures (tests/fixtures/*.npz) were written by benchmarks/make_golden.py; torch is not needed here.
"""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrecon_jax.models import cascade
from segrecon_jax.models import manet
from segrecon_jax.models import pretrained
import golden_weights

_FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
SEED = 0  # benchmarks/make_golden.py's.

# MFAB/DecoderBlock/PAB children: ours -> smp's.
_DECODER_NAMES = {'hl_conv1': 'hl_conv.0', 'hl_conv2': 'hl_conv.1', 'se_hl': 'SE_hl', 'se_ll': 'SE_ll',
                  'reduce': '1', 'expand': '3', 'conv': '0', 'bn': '1'}
_LEAF_NAMES = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias', ('params', 'scale'): 'weight',
               ('batch_stats', 'mean'): 'running_mean', ('batch_stats', 'var'): 'running_var'}


def manet_torch_keys(variables):
  """smp MAnet state-dict key -> (collection, path) for every array of our MANet; the one place for this mapping."""
  keys = {f'encoder.{k}': (c, ('encoder',) + p)
          for k, (c, p) in pretrained.resnet_torch_keys({c: variables[c]['encoder'] for c in variables}).items()}
  for collection in ('params', 'batch_stats'):
    for path in flax.traverse_util.flatten_dict(flax.core.unfreeze(variables[collection])):
      top = path[0]
      if top == 'encoder':
        continue
      if top == 'center':
        module = ['decoder.center', path[1]]
      elif top.startswith('block'):
        module = ['decoder.blocks', top[len('block'):]] + [_DECODER_NAMES.get(n, n) for n in path[1:-1]]
      elif top == 'segmentation_head':
        module = ['segmentation_head.0']
      else:
        raise AssertionError(f'no smp name for {path}')
      keys['.'.join(module + [_LEAF_NAMES[(collection, path[-1])]])] = (collection, path)
  return keys


def cascade_torch_keys(variables):
  """DnCn (make_golden.py) key -> (collection, path): cnn{c}/conv{l} is cascades.{c}.{l}."""
  keys = {}
  for path in flax.traverse_util.flatten_dict(flax.core.unfreeze(variables['params'])):
    cnn, conv, leaf = path
    keys[f'cascades.{cnn[3:]}.{conv[4:]}.{_LEAF_NAMES[("params", leaf)]}'] = ('params', path)
  return keys


def golden_variables(variables, key_map, fixture, prefix, unused_prefixes=()):
  """`variables` with every array set from the golden generator by its PyTorch name; checks the key map is 1:1."""
  torch_shapes = {k: tuple(int(d) for d in s.split(',') if d) for k, s in
                  zip(fixture[f'{prefix}keys'], fixture[f'{prefix}shapes'])}
  used = {k for k in torch_shapes if not k.startswith(unused_prefixes)}
  assert len(set(key_map.values())) == len(key_map)  # No two torch keys on one array.
  assert set(key_map) == used, (sorted(set(key_map) - used)[:5], sorted(used - set(key_map))[:5])
  flat = {c: flax.traverse_util.flatten_dict(flax.core.unfreeze(variables[c])) for c in variables}
  assert sum(len(v) for v in flat.values()) == len(key_map)  # Every array of ours has a torch key.
  for key, (collection, path) in key_map.items():
    value = golden_weights.golden_tensor(key, torch_shapes[key], SEED)
    value = pretrained.torch_to_flax(key, value)
    assert value.shape == flat[collection][path].shape, key
    flat[collection][path] = value
  return {c: flax.traverse_util.unflatten_dict(v) for c, v in flat.items()}


@pytest.mark.parametrize('preset', ['paper', 'smp_default'])
def test_manet_matches_smp_manet(preset):
  fixture = np.load(os.path.join(_FIXTURES, 'manet_golden.npz'))
  x = fixture['input'].transpose(0, 2, 3, 1)  # NCHW -> NHWC, 1x64x96x1.
  model = manet.MANet(num_classes=4, in_channels=1, **manet.MANET_PRESETS[preset])
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), train=False))
  # smp builds ResNet34's fourth stage even at encoder_depth=4, where the forward never uses it.
  unused = ('encoder.layer4.',) if model.encoder_depth == 4 else ()
  variables = golden_variables(shapes, manet_torch_keys(shapes), fixture, f'{preset}_', unused)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  expected = fixture[f'{preset}_logits'].transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_cascade_matches_dncn():
  fixture = np.load(os.path.join(_FIXTURES, 'cascade_golden.npz'))
  x = fixture['zero_filled'].transpose(0, 2, 3, 1)
  kspace = (fixture['kspace_real'] + 1j * fixture['kspace_imag']).astype(np.complex64)
  mask = fixture['mask']
  model = cascade.CascadeNet()  # The paper's 6 cascades x 5 layers x 64 filters, hard DC, ReLU.
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, kspace, mask, train=False))
  variables = golden_variables(shapes, cascade_torch_keys(shapes), fixture, '')
  recon = jax.jit(lambda v, *a: model.apply(v, *a, train=False))(variables, x, kspace, mask)
  expected = fixture['recon'].transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(recon), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
