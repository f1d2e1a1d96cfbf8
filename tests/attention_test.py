"""Tests of segrecon_jax.study.attention: the segmentation-loss gradient on the reconstruction against a direct gradient
through the whole model, the energy and area shares against NumPy, and a run on a tiny trained workdir."""

import importlib
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from segrecon_jax import losses
from segrecon_jax.study import attention
from segrecon_jax.training import config_checks
from segrecon_jax.training import steps

import train_test

SIZE = 16


def tiny_model_config(**overrides):
  config = importlib.import_module('configs.unet_unet').get_config('x4,runlocal')
  config.model = ml_collections.ConfigDict({'name': 'unet_unet', 'recon': {'features': (4, 8)},
                                            'seg': {'features': (4, 8), 'out_channels': 4}, 'stop_gradient': False})
  config.num_acs = 2
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def tiny_batch(batch=2, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE - 0.5
  radius = np.sqrt(yy**2 + xx**2)
  images = (rng.standard_normal((batch, SIZE, SIZE)) + 1j * rng.standard_normal((batch, SIZE, SIZE))) * 0.3
  images = (images + np.clip(1.0 - 1.5 * radius, 0, 1)).astype(np.complex64)
  labels = np.zeros((batch, SIZE, SIZE), np.int32)
  labels[:, radius < 0.15] = 1
  labels[:, (radius >= 0.15) & (radius < 0.25)] = 2
  labels[1, :, :3] = 3  # The two slices differ.
  return {'image': images, 'segmentation': labels, 'mask_id': np.array([7, 11], np.int32)}


def test_gradient_matches_a_direct_grad_through_the_whole_model():
  config = tiny_model_config()
  model = steps.create_model(config, bn_axis_name=None)
  state = steps.initial_state(config, model, steps.create_optimizer(config), (SIZE, SIZE))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  batch = tiny_batch()
  got = jax.jit(lambda v, b: attention.attention_step(v, b, model=model, config=config))(variables, batch)

  # Reference: a perturbation added to the reconstruction network's output inside the full model, differentiated
  # through the model's own forward pass (the eval masks drawn here as eval_step draws them).
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(config.eval_mask_seed), i))(batch['mask_id'])
  inputs = steps.undersample_batch(jnp.asarray(batch['image']), keys, 1.0 / config.acceleration, config.num_acs)

  def slice_loss(delta, i):
    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      return out + delta if context.module.name == 'recon_net' and context.method_name == '__call__' else out
    with nn.intercept_methods(add_delta):
      outputs = model.apply(variables, *inputs, train=False)
    return losses.generalized_dice_loss(outputs.seg_logits, batch['segmentation'], config.num_classes)[i]

  delta = jnp.zeros((2, SIZE, SIZE, 2), jnp.float32)
  # Jitted: one compile each for both slices, not one per operation.
  slice_grad, slice_value = jax.jit(jax.grad(slice_loss)), jax.jit(slice_loss)
  for i in range(2):
    expected = slice_grad(delta, i)
    assert np.abs(expected[i]).max() > 0
    np.testing.assert_allclose(got['grad'][i], expected[i], rtol=1e-5, atol=1e-5 * np.abs(expected[i]).max())
    np.testing.assert_array_equal(expected[1 - i], 0.0)  # Eval mode: one slice's loss ignores the other slice.
    np.testing.assert_allclose(got['seg_loss'][i], slice_value(delta, i), rtol=1e-6)
  margin = steps.focus_margin_pixels(config, SIZE)
  rows = np.flatnonzero(np.any(batch['segmentation'][0] > 0, axis=1))
  assert got['box'][0].sum(axis=1).max() > 0 and got['has_heart'].all()
  np.testing.assert_array_equal(np.flatnonzero(got['box'][0].any(axis=1)),
                                np.arange(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, SIZE)))


def test_energy_and_area_shares_match_numpy_on_a_hand_made_map():
  grad = np.zeros((4, 5, 2))
  grad[1, 1] = (3.0, 4.0)  # |g| = 5 inside the box.
  grad[2, 3] = (0.0, 2.0)  # |g| = 2 inside.
  grad[0, 4] = (1.0, 0.0)  # |g| = 1 outside.
  box = np.zeros((4, 5), bool)
  box[1:3, 1:4] = True  # 6 of 20 pixels.
  magnitude = attention.gradient_magnitude(grad)
  np.testing.assert_allclose(magnitude[[1, 2, 0], [1, 3, 4]], [5.0, 2.0, 1.0])
  np.testing.assert_allclose(attention.energy_share(magnitude, box), 29.0 / 30.0)
  np.testing.assert_allclose(attention.area_share(box), 6.0 / 20.0)
  both = attention.energy_share(np.stack([magnitude, np.zeros_like(magnitude)]), np.stack([box, box]))
  assert both[0] == pytest.approx(29.0 / 30.0) and np.isnan(both[1])  # A zero gradient has no share.

  summary = attention.bootstrap_summary(np.array([0.2, 0.4, 0.6, 0.8]), np.array([0.1, 0.1, 0.1, 0.1]))
  assert summary['energy_share']['mean'] == pytest.approx(0.5)
  assert 0.2 <= summary['energy_share']['low'] < 0.5 < summary['energy_share']['high'] <= 0.8
  assert summary['area_share'] == pytest.approx({'mean': 0.1, 'low': 0.1, 'high': 0.1})
  assert summary['share_to_area_ratio']['mean'] == pytest.approx(5.0)


@pytest.mark.parametrize('experiment', ['unet', 'multidecoder_unet'])
def test_models_whose_segmentation_does_not_see_the_reconstruction_are_refused(experiment, tmp_path):
  config = importlib.import_module(f'configs.{experiment}').get_config('x4,runlocal')
  with pytest.raises(config_checks.ConfigError, match=experiment):
    attention.pseudo_attention(config, str(tmp_path))


def test_trained_workdir_writes_json_and_figure(data_dir, one_epoch_run, tmp_path):
  config = train_test.one_epoch(data_dir)
  workdir = one_epoch_run.copy(tmp_path / 'run')

  record = attention.pseudo_attention(config, workdir)
  assert record['json_path'] == os.path.join(workdir, 'attention', 'attention.json')
  assert os.path.getsize(record['figure_path']) > 0
  with open(record['json_path']) as f:
    stored = json.load(f)
  per_slice = stored['per_slice']
  assert stored['num_slices'] == len(per_slice['ids']) == len(per_slice['energy_share']) > 0
  assert stored['num_slices'] + len(stored['skipped']['no_heart']) + len(stored['skipped']['zero_gradient']) == 4
  assert per_slice['ids'] == sorted(per_slice['ids']) and all('/' in name for name in per_slice['ids'])
  for key in ('energy_share', 'area_share'):
    assert stored[key]['mean'] == pytest.approx(np.mean(per_slice[key]))
    assert stored[key]['low'] <= stored[key]['mean'] <= stored[key]['high']
    assert all(0 < v <= 1 for v in per_slice[key])
  assert stored['share_to_area_ratio']['mean'] == pytest.approx(stored['energy_share']['mean'] /
                                                                stored['area_share']['mean'])
  assert stored['checkpoint_step'] > 0 and stored['margin_pixels'] == steps.focus_margin_pixels(config, 32)
