"""How the layers are computed is a runtime setting (config.conv_impl / upconv_impl), never part of a model.

A checkpoint trained with XLA's layers restores, resumes and evaluates with the native kernels, with the same outputs.
"""

import dataclasses
import importlib
import inspect

import flax.linen as nn
import jax
import numpy as np
import pytest

from segrecon_jax import models
from segrecon_jax.models import layers
from segrecon_jax.models import native
from segrecon_jax.training import checkpoints
from segrecon_jax.training import config_checks
from segrecon_jax.training import inference
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import parallel
from segrecon_jax.training import train

import train_test

MODEL_MODULES = ('cascade', 'layers', 'manet', 'multidecoder', 'outputs', 'resnet', 'segrecon', 'unet')
RUNTIME_FIELDS = ('conv_impl', 'upconv_impl', 'impl')


@pytest.fixture(autouse=True)
def restore_layer_setting():
  with layers.impls():  # setup_runtime sets the process-wide setting: put it back for the next tests.
    yield


def test_no_model_or_layer_dataclass_has_an_implementation_field():
  checked = 0
  for name in MODEL_MODULES:
    module = importlib.import_module(f'segrecon_jax.models.{name}')
    for _, cls in inspect.getmembers(module, inspect.isclass):
      if issubclass(cls, nn.Module) and cls.__module__ == module.__name__:
        fields = {f.name for f in dataclasses.fields(cls)}
        assert not fields & set(RUNTIME_FIELDS), (cls.__name__, sorted(fields & set(RUNTIME_FIELDS)))
        checked += 1
  assert checked >= 19  # Every network, block and layer of models/.
  for experiment in models.MODELS:  # Nor does any experiment's model dict or registry entry.
    config = importlib.import_module(f'configs.{experiment}').get_config('x4')
    flat = checkpoints.flatten(config.model.to_dict())
    assert not [k for k in flat if k.rsplit('.', 1)[-1] in RUNTIME_FIELDS], flat
    assert config.conv_impl == config.upconv_impl == 'auto'
    assert not [f.name for f in dataclasses.fields(models.spec(experiment)) if 'impl' in f.name or 'layer' in f.name]


def test_setup_runtime_sets_the_layers_and_bad_values_are_config_errors():
  config = importlib.import_module('configs.unet').get_config('x4')
  config.compilation_cache_dir = ''
  config.conv_impl, config.upconv_impl = 'xla', 'dense'
  parallel.setup_runtime(config)
  assert layers.current_impls() == {'conv_impl': 'xla', 'upconv_impl': 'dense'}
  assert layers.resolve_conv_impl() == 'xla' and layers.conv_transpose_module() is layers.UpConv2x2
  config.conv_impl = 'cudnn'
  with pytest.raises(config_checks.ConfigError, match=r"config.conv_impl='cudnn'.*'native'"):
    config_checks.check_config(config)


def tiny_config(data_dir, conv_impl, upconv_impl):
  """One epoch of train_test's UNet -> UNet on phantom_tiny (32x32), wide enough (32 -> 64 channels) that the native
  forward kernel takes some of its layers."""
  config = train_test.tiny_config(data_dir, preset='x4', num_epochs=1, eval_every_epochs=1, checkpoint_every_epochs=1,
                                  conv_impl=conv_impl, upconv_impl=upconv_impl)
  config.model.recon.features = config.model.seg.features = (32, 64)
  return config


def _outputs(config, workdir):
  """The restored model's eval outputs on the first eval batch, and whether the native forward kernel ran."""
  model, state, eval_source, _ = inference.restore_for_inference(config, workdir)  # Applies config's setting.
  state = parallel.unreplicate(state)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  batch = next(iter(input_pipeline.eval_batches(eval_source, config)))
  image = np.asarray(batch['image'][:2])
  zero_filled = np.stack([image.real, image.imag], -1).astype(np.float32)
  mask = np.ones((2, 1, image.shape[-1]), bool)
  model = model.clone(bn_axis_name=None)
  apply = lambda v, x, k, m: model.apply(v, x, k, m, train=False)
  jaxpr = str(jax.make_jaxpr(apply)(variables, zero_filled, image, mask))
  out = jax.jit(apply)(variables, zero_filled, image, mask)
  return jax.tree.map(np.asarray, out), 'segrecon_conv_forward' in jaxpr


@pytest.mark.slow
def test_a_checkpoint_trained_with_xla_layers_evaluates_and_resumes_with_native_ones(tmp_path):
  if not native.available():
    pytest.skip(native.unavailable_reason())
  data_dir, workdir = str(tmp_path / 'tfds'), str(tmp_path / 'run')
  xla = tiny_config(data_dir, 'xla', 'xla')
  train.train_and_evaluate(xla, workdir)
  ours = tiny_config(data_dir, 'native', 'dense')
  results = inference.evaluate(ours, workdir)  # Restored and evaluated (checks: the stored config's model).
  assert results['num_examples'] > 0 and np.isfinite(results['psnr'])
  stock_out, stock_native = _outputs(xla, workdir)
  ours_out, ours_native = _outputs(ours, workdir)
  assert ours_native and not stock_native  # Each ran the layers its config asked for.
  for got, want in zip(jax.tree.leaves(ours_out), jax.tree.leaves(stock_out)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
  # A resume may change the setting: the stored config (written with 'xla') accepts the native run.
  manager = checkpoints.checkpoint_manager(workdir, ours)
  meta = manager.restore(manager.latest_step(), args=checkpoints.ocp.args.Composite(
      meta=checkpoints.ocp.args.JsonRestore()))['meta']
  assert meta['config']['conv_impl'] == 'xla' and 'conv_impl' not in meta['config']['model']['recon']
  checkpoints.check_resume(meta, ours, input_pipeline.data_info(ours), manager.directory)
