"""Extending the training system from outside the package (docs/usage.md, Extending): a model registered here trains,
evaluates and draws the pseudo-attention; a segmentation-only model trains and evaluates; a loss-balancing scheme
registered here, with a config field of its own, trains; the docs' examples run as written."""

import os
import re
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from segrecon_jax import models
from segrecon_jax import settings
from segrecon_jax.study import attention
from segrecon_jax.training import balancing
from segrecon_jax.training import config_checks
from segrecon_jax.training import inference
from segrecon_jax.training import steps
from segrecon_jax.training import train
import train_test

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def restore_registries(monkeypatch):
  """A test's registrations are undone after it: other tests see the package's own models, schemes and fields."""
  models_before, schemes_before = dict(models.MODELS), dict(balancing.SCHEMES)
  monkeypatch.setattr(settings, 'FIELDS', settings.FIELDS)  # settings.declare rebinds it ...
  monkeypatch.setattr(settings, 'BY_NAME', dict(settings.BY_NAME))  # ... and adds to this copy.
  yield
  models.MODELS.clear()
  models.MODELS.update(models_before)
  balancing.SCHEMES.clear()
  balancing.SCHEMES.update(schemes_before)


# ---------------------------------------------------------------------------------------------------------------
# A model.


class TinyJoint(nn.Module):
  """A two-layer reconstruction network, then a two-layer segmentation network on the reconstruction's magnitude."""
  features: int = 4
  num_classes: int = 4
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None  # No BatchNorm here; declared so the module is built like the built-in ones.

  def setup(self):
    self.recon_hidden = nn.Conv(self.features, (3, 3), dtype=self.dtype)
    self.recon_out = nn.Conv(2, (3, 3), dtype=self.dtype)
    self.seg_hidden = nn.Conv(self.features, (3, 3), dtype=self.dtype)
    self.seg_out = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype)

  def __call__(self, x, kspace, mask, *, train):
    del kspace, mask
    recon = x + self.recon_out(nn.relu(self.recon_hidden(x))).astype(jnp.float32)
    return models.ModelOutput(recon=recon, seg_logits=self.segment(recon, train=train))

  def segment(self, recon, *, train):
    del train
    return self.seg_out(nn.relu(self.seg_hidden(models.safe_magnitude(recon)))).astype(jnp.float32)

  @nn.nowrap
  def reconstruction_params(self, params):
    return {name: params[name] for name in ('recon_hidden', 'recon_out')}


class TinySegmenter(nn.Module):
  """Segments the zero-filled image's magnitude; reconstructs nothing."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, kspace, mask, *, train):
    del kspace, mask, train
    return models.ModelOutput(seg_logits=nn.Conv(self.num_classes, (3, 3))(models.safe_magnitude(x)))


def register_tiny_joint(**overrides):
  fields = dict(display_name='Tiny joint net', task=models.JOINT, num_classes=lambda model: model.num_classes)
  fields.update(overrides)
  return models.register('tiny_joint', TinyJoint, **fields)


def tiny_config(data_dir, model=None, **overrides):
  """train_test's tiny config (32x32 phantom, 2 fake devices, UNet -> UNet) at x4 for 1 epoch, with `model` as
  config.model where given."""
  config = train_test.tiny_config(data_dir, preset='x4', num_epochs=1, eval_every_epochs=1,
                                  checkpoint_every_epochs=1, **overrides)
  if model is not None:
    config.model = ml_collections.ConfigDict(model)
  return config


def test_a_registered_model_trains_evaluates_and_draws_the_pseudo_attention(data_dir, tmp_path):
  register_tiny_joint()
  config = tiny_config(data_dir, {'name': 'tiny_joint', 'features': 4}, log_loss_grad_norms=True)
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert np.isfinite(results['psnr']) and np.isfinite(results['dice_mean'])
  assert '| Tiny joint net |' in open(os.path.join(workdir, 'results.md')).read()
  # The Dice term reaches the reconstruction layers the module names as its reconstruction network.
  scalars = train_test.read_scalars(workdir)
  assert all(v > 0 for tag in ('train_recon_grad_norm', 'train_seg_grad_norm') for _, v in scalars[tag])
  evaluated = inference.evaluate(config, workdir)  # From the checkpoint, as --mode=eval.
  assert evaluated['psnr'] == pytest.approx(results['psnr'], rel=1e-6)
  record = attention.pseudo_attention(config, workdir)
  assert record['model'] == 'Tiny joint net' and record['num_slices'] > 0


def test_a_registered_segmentation_model_trains_on_dice_and_its_image_is_the_zero_filled_one(data_dir, tmp_path):
  models.register('tiny_segmenter', TinySegmenter, display_name='Tiny segmenter', task=models.SEGMENTATION,
                  num_classes=lambda model: model.num_classes)
  config = tiny_config(data_dir, {'name': 'tiny_segmenter'})
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert np.isfinite(results['dice_mean'])
  assert results['psnr'] == results['zero_filled_psnr'] and results['ssim'] == results['zero_filled_ssim']
  scalars = train_test.read_scalars(workdir)
  assert 'train_recon_loss' not in scalars and 'train_seg_weight_effective' not in scalars
  np.testing.assert_allclose([v for _, v in scalars['train_loss']], [v for _, v in scalars['train_seg_loss']],
                             rtol=1e-6)  # seg_loss_weight 1.


@pytest.mark.parametrize('registration, model, fields, match', [
    ({}, {'featurez': 4}, {},
     r"config.model: model 'tiny_joint': unknown field\(s\) \['featurez'\]; valid fields are \['features', "
     r"'num_classes'\]"),
    ({}, {'num_classes': 3}, {},
     r'config.model.num_classes=3: the model outputs 3 segmentation logits, but config.num_classes=4'),
    ({'size_multiple': lambda model: 64}, {}, {}, r'halves the image 6 times, so H and W must be multiples of 64'),
    ({'task': models.SEGMENTATION}, {}, {'loss_balancing': 'grad_norm'},
     r"config.loss_balancing='grad_norm' balances .* 'tiny_joint' segments only and has one term"),
    ({'task': models.SEGMENTATION}, {}, {'focus_weight': 2.0},
     r"config.focus_weight=2.0 weighs the pixels of the reconstruction term; 'tiny_joint' segments only"),
])
def test_the_config_checks_ask_the_registration(data_dir, registration, model, fields, match):
  register_tiny_joint(**registration)
  config = tiny_config(data_dir, {'name': 'tiny_joint', **model}, **fields)
  with pytest.raises(config_checks.ConfigError, match=match):
    config_checks.check_config(config)


def test_registrations_are_checked_and_outputs_must_match_the_task(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"models.register\('unet'\): a built-in model"):
    models.register('unet', TinyJoint, display_name='mine', task=models.RECONSTRUCTION)
  with pytest.raises(ValueError, match=r"task='both'; expected one of \['reconstruction', 'segmentation', 'joint'\]"):
    models.register('tiny_joint', TinyJoint, display_name='mine', task='both')
  register_tiny_joint()
  with pytest.raises(ValueError, match=r"unknown model name 'tiny_jiont'; valid names are .*'tiny_joint'"):
    models.get_model({'name': 'tiny_jiont'})
  # A model registered as JOINT must return both outputs; the step says so when it is traced.
  config = tiny_config(data_dir, {'name': 'tiny_joint'})
  with pytest.raises(ValueError, match=r"registered with task='joint', but its ModelOutput holds recon: "):
    steps.model_outputs(config, models.ModelOutput(recon=jnp.zeros((1, 8, 8, 2))))
  assert steps.model_outputs(config, models.ModelOutput(jnp.zeros(1), jnp.ones(1)))[1] is not None
  # A joint model without `segment` has no segmentation of a given reconstruction: no pseudo-attention.
  models.register('tiny_no_segment', lambda fields, dtype, bn_axis_name: TinySegmenter(**fields),
                  display_name='No segment', task=models.JOINT)
  config.model = ml_collections.ConfigDict({'name': 'tiny_no_segment'})
  with pytest.raises(config_checks.ConfigError, match=r"'tiny_no_segment' \(No segment\).*segment\(recon"):
    attention.pseudo_attention(config, str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# A loss-balancing scheme.


class DiceWarmup(balancing.Scheme):
  """The Dice weight ramped linearly from 0 to seg_loss_weight over the first warmup_steps steps."""
  summary = 'the Dice weight ramped up from 0'
  fields = (settings.Field('warmup_steps', 100, settings.TRAINING, 'dice_warmup: steps of the Dice weight ramp.'),)

  def check(self, config):
    balancing.check_number(config, 'warmup_steps', lambda v: v >= 1, 'the ramp needs at least 1 step')

  def init(self, config):
    return {'seg_weight': jnp.zeros((), jnp.float32)}

  def weights(self, config, state):
    return config.recon_loss_weight, state['seg_weight']

  def update(self, config, state, step, terms):
    del state, terms
    return {'seg_weight': config.seg_loss_weight * jnp.minimum(1.0, (step + 1) / config.warmup_steps)}


def test_a_registered_balancing_scheme_with_its_own_field_trains(data_dir, tmp_path):
  balancing.register('dice_warmup', DiceWarmup())
  config = tiny_config(data_dir, loss_balancing='dice_warmup', warmup_steps=4, seg_loss_weight=2.0)
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert np.isfinite(results['psnr']) and np.isfinite(results['dice_mean'])
  logged = [v for _, v in train_test.read_scalars(workdir)['train_seg_weight_effective']]
  assert len(logged) >= 3
  np.testing.assert_allclose(logged, [2.0 * min(1.0, step / 4) for step in range(len(logged))], rtol=1e-6)
  state, _ = train_test.latest_params(workdir, config)
  np.testing.assert_allclose(state.loss_state['seg_weight'], 2.0 * min(1.0, len(logged) / 4), rtol=1e-6)


def test_a_registered_scheme_is_checked_once_by_name(data_dir):
  with pytest.raises(ValueError, match=r"balancing.register\('grad_norm'\): a built-in scheme"):
    balancing.register('grad_norm', DiceWarmup())
  with pytest.raises(ValueError, match=r'reads config.warmup_stepz, which is not a config field'):
    balancing.register('typo', type('Typo', (DiceWarmup,), {'fields': ('warmup_stepz',)})())
  balancing.register('dice_warmup', DiceWarmup())
  config = train_test.tiny_config(data_dir, preset='x4', loss_balancing='dice_warmup', warmup_steps=0)
  with pytest.raises(config_checks.ConfigError, match=r'config.warmup_steps=0: the ramp needs at least 1 step'):
    config_checks.check_config(config)
  config.loss_balancing = 'dice_warmpu'
  with pytest.raises(config_checks.ConfigError, match=r"config.loss_balancing='dice_warmpu': expected 'none' .* or "
                     r"'dice_warmup' \(the Dice weight ramped up from 0\)"):
    config_checks.check_config(config)


# ---------------------------------------------------------------------------------------------------------------
# The examples of docs/usage.md.


def _extending_example(registration: str) -> str:
  """The ```python block of docs/usage.md's Extending section that calls `registration`: a config file."""
  with open(os.path.join(_ROOT, 'docs', 'usage.md')) as f:
    text = f.read()
  section = text[text.index('\n## Extending\n') + 1:]
  section = section[:section.find('\n## ')] if '\n## ' in section else section
  blocks = [b for b in re.findall(r'```python\n(.*?)```', section, re.S) if registration in b]
  assert len(blocks) == 1, registration
  return blocks[0]


@pytest.mark.parametrize('registration', ['models.register(', 'balancing.register('])
def test_the_docs_examples_register_and_pass_the_config_checks(registration, tmp_path):
  """Each example is a config file: run from outside the package, its get_config gives a config that passes the
  checks, and its model builds and returns the outputs of its task."""
  example = _extending_example(registration)
  path = tmp_path / 'my_experiment.py'
  path.write_text(example)
  namespace = {'__name__': 'my_experiment', '__file__': str(path)}
  exec(compile(example, str(path), 'exec'), namespace)  # pylint: disable=exec-used
  config = namespace['get_config']('x4,runlocal')
  config_checks.check_config(config)
  model, tx = steps.create_model(config, bn_axis_name=None), steps.create_optimizer(config)
  state = steps.initial_state(config, model, tx, (64, 64))
  outputs = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, jnp.zeros((1, 64, 64, 2)),
                        jnp.zeros((1, 64, 64), jnp.complex64), jnp.ones((1, 1, 64), bool), train=False)
  recon, seg_logits = steps.model_outputs(config, outputs)
  assert recon is not None or seg_logits is not None
