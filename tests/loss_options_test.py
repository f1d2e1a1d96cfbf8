"""End-to-end tests of the loss options (config.loss_balancing, focus_weight, focus_source): each trains a tiny joint
model through `train.train_and_evaluate` and resumes exactly; their config checks name the field."""


import jax
import numpy as np
import pytest

from segrecon_jax.training import config_checks
from segrecon_jax.training import train
import train_test


def options_config(data_dir, num_epochs, **overrides):
  """train_test's tiny UNet -> UNet at one sampled fraction (no stabilization), checkpointed every epoch; the three
  runs of a test share their programs through the session's compilation cache (tests/conftest.py)."""
  return train_test.tiny_config(data_dir, preset='x4', num_epochs=num_epochs, eval_every_epochs=2,
                                checkpoint_every_epochs=1, compile_ahead=False, **overrides)


@pytest.mark.slow
@pytest.mark.parametrize('overrides', [
    {'loss_balancing': 'grad_norm', 'focus_weight': 3.0, 'focus_source': 'reference'},
    {'loss_balancing': 'uncertainty', 'focus_weight': 3.0, 'focus_source': 'prediction'},
], ids=['grad_norm+reference', 'uncertainty+prediction'])
def test_each_option_trains_and_resumes_exactly(data_dir, tmp_path, overrides):
  straight = options_config(data_dir, 2, **overrides)
  results = train.train_and_evaluate(straight, str(tmp_path / 'straight'))
  assert np.isfinite(results['psnr']) and np.isfinite(results['dice_mean'])
  train.train_and_evaluate(options_config(data_dir, 1, **overrides), str(tmp_path / 'resumed'))
  train.train_and_evaluate(options_config(data_dir, 2, **overrides), str(tmp_path / 'resumed'))
  a, meta_a = train_test.latest_params(str(tmp_path / 'straight'), straight)
  b, meta_b = train_test.latest_params(str(tmp_path / 'resumed'), straight)
  assert meta_a['epoch'] == meta_b['epoch'] == 2 and int(a.step) == int(b.step) > 0
  assert a.loss_state and jax.tree.leaves(a.loss_state)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(b), jax.device_get(a))
  if overrides['loss_balancing'] == 'grad_norm':
    assert float(a.loss_state['seg_weight']) != straight.seg_loss_weight
  else:
    assert all(float(s) != 0.0 for s in jax.tree.leaves(a.loss_state['log_variances']))
  # The balancing weights are logged with the other train scalars, every log step.
  scalars = train_test.read_scalars(str(tmp_path / 'straight'))
  logged = ['train_seg_weight_effective'] + (['train_log_variance_recon', 'train_log_variance_seg']
                                             if overrides['loss_balancing'] == 'uncertainty' else [])
  for tag in logged:
    assert len(scalars[tag]) == len(scalars['train_loss']) == int(a.step) and np.all(np.isfinite(
        [v for _, v in scalars[tag]])), tag


@pytest.mark.parametrize('experiment, overrides, match', [
    ('unet_unet', {'loss_balancing': 'gradnorm'}, r"config.loss_balancing='gradnorm': expected 'none'"),
    ('cascade', {'loss_balancing': 'grad_norm'}, r"config.loss_balancing='grad_norm' .* reconstructs only"),
    ('cascade', {'loss_balancing': 'uncertainty'}, r"config.loss_balancing='uncertainty' .* reconstructs only"),
    ('unet_unet', {'loss_balancing': 'grad_norm', 'stop_gradient': True}, r'stop_gradient=True cuts'),
    ('unet_unet', {'loss_balancing': 'grad_norm', 'balance_ratio': 0.0}, r'config.balance_ratio=0.0'),
    ('unet_unet', {'loss_balancing': 'grad_norm', 'balance_momentum': 1.0}, r'config.balance_momentum=1.0'),
    ('unet_unet', {'loss_balancing': 'uncertainty', 'uncertainty_learning_rate': 0.0},
     r'config.uncertainty_learning_rate=0.0'),
    ('unet_unet', {'focus_weight': -1.0}, r'config.focus_weight=-1.0'),
    ('unet_unet', {'focus_source': 'labels'}, r"config.focus_source='labels': expected 'reference'"),
    ('cascade', {'focus_weight': 2.0, 'focus_source': 'prediction'}, r"focus_source='prediction' .* reconstructs"),
])
def test_config_checks_name_bad_loss_fields(data_dir, experiment, overrides, match):
  config = train_test.tiny_config(data_dir, experiment, preset='x4')
  config_checks.check_config(config)
  for key, value in overrides.items():
    if key == 'stop_gradient':
      config.model.stop_gradient = value
    else:
      setattr(config, key, value)
  with pytest.raises(config_checks.ConfigError, match=match):
    config_checks.check_config(config)


@pytest.mark.parametrize('experiment, overrides', [
    ('cascade', {'focus_weight': 2.0}),  # Reference focus needs no segmentation network.
    ('unet_unet', {'loss_balancing': 'uncertainty', 'stop_gradient': True}),
    ('multidecoder_unet', {'loss_balancing': 'grad_norm', 'focus_weight': 1.0, 'focus_source': 'prediction'}),
])
def test_config_checks_accept_valid_loss_options(data_dir, experiment, overrides):
  config = train_test.tiny_config(data_dir, experiment, preset='x4')
  for key, value in overrides.items():
    if key == 'stop_gradient':
      config.model.stop_gradient = value
    else:
      setattr(config, key, value)
  config_checks.check_config(config)


def test_a_checkpoint_without_loss_state_still_restores(tmp_path):
  """Workdirs trained before `TrainState.loss_state` existed restore (for eval and predict) with an empty one."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from typing import Any  # pylint: disable=g-import-not-at-top
  from segrecon_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  from segrecon_jax.training import steps  # pylint: disable=g-import-not-at-top

  @flax.struct.dataclass
  class OldTrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

  tx = optax.adam(1e-3)
  params = {'w': jnp.arange(3.0)}
  old = OldTrainState(step=jnp.int32(7), params=params, batch_stats={}, opt_state=tx.init(params))
  manager = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(create=True),
                                  item_names=('state', 'meta'))
  manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(old), meta=ocp.args.JsonSave({'epoch': 1})))
  manager.wait_until_finished()
  zeros = {'w': jnp.zeros(3)}
  template = steps.TrainState(step=jnp.int32(0), params=zeros, batch_stats={}, opt_state=tx.init(zeros))
  state, meta = checkpoints.restore_checkpoint(manager, template)
  assert isinstance(state, steps.TrainState) and int(state.step) == 7 and state.loss_state == {}
  assert meta == {'epoch': 1}
  np.testing.assert_array_equal(state.params['w'], [0.0, 1.0, 2.0])
  jax.tree.map(np.testing.assert_array_equal, state.opt_state, old.opt_state)
