"""Warm starts (training/warm_start.py): a joint model initialised from a solo reconstruction run, frozen (two-stage)
or fine-tuned, and what is refused."""

import jax
import numpy as np
import pytest

from segrecon_jax.training import config_checks
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import steps
from segrecon_jax.training import train
from segrecon_jax.training import warm_start
from tests import train_test


def _solo(data_dir):
  config = train_test.tiny_config(data_dir, experiment='unet', preset='x4', num_epochs=2, eval_every_epochs=2)
  config.model.features = (4, 8)
  return config


def _joint(data_dir, init_from, **overrides):
  config = train_test.tiny_config(data_dir, experiment='unet_unet', preset='x4', num_epochs=2, eval_every_epochs=2,
                                  init_from=init_from, **overrides)
  return config


@pytest.fixture(name='solo', scope='module')
def fixture_solo(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('solo'))
  config = _solo(data_dir)
  train.train_and_evaluate(config, workdir)
  state, _ = train_test.latest_params(workdir, config)
  return workdir, state


def _initial_state(config):
  shape = input_pipeline.image_shape(input_pipeline.load_split(config, config.train_split))
  return steps.initial_state(config, steps.create_model(config), steps.create_optimizer(config), shape)


def _leaves(tree):
  return jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.asarray, tree))


def test_graft_places_a_solo_network_in_the_joint_model():
  target = {'recon_net': {'conv': {'kernel': np.zeros((3, 3, 2, 4))}}, 'seg_net': {'conv': {'kernel': np.zeros(2)}}}
  source = {'conv': {'kernel': np.ones((3, 3, 2, 4))}}
  grafted, where = warm_start.graft(target, source, 'run A')
  assert where == 'recon_net' and grafted['recon_net']['conv']['kernel'].sum() == 72
  assert grafted['seg_net'] is target['seg_net']
  with pytest.raises(warm_start.WarmStartError, match='run A: its networks fit neither'):
    warm_start.graft(target, {'conv': {'kernel': np.ones((3, 3, 2, 8))}}, 'run A')


def test_two_stage_trains_the_segmentation_on_the_frozen_reconstruction(tmp_path, data_dir, solo):
  solo_dir, solo_state = solo
  config = _joint(data_dir, solo_dir, freeze_recon=True)
  config.model.stop_gradient = True
  results = train.train_and_evaluate(config, str(tmp_path))
  state, _ = train_test.latest_params(str(tmp_path), config)
  for got, want in zip(_leaves(state.params['recon_net']), _leaves(solo_state.params)):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(_leaves(state.batch_stats['recon_net']), _leaves(solo_state.batch_stats)):
    np.testing.assert_array_equal(got, want)
  seg_init = _initial_state(config).params['seg_net']  # the segmentation network did train
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(state.params['seg_net']), _leaves(seg_init)))
  assert np.isfinite(results['dice_mean']) and np.isfinite(results['psnr'])


def test_fine_tuning_starts_from_the_solo_network(tmp_path, data_dir, solo):
  solo_dir, solo_state = solo
  config = _joint(data_dir, solo_dir)
  fresh = _initial_state(config)
  shape = input_pipeline.image_shape(input_pipeline.load_split(config, config.train_split))
  template_of = lambda c: steps.initial_state(c, steps.create_model(c), steps.create_optimizer(c), shape)
  started = warm_start.initialize(config, fresh, input_pipeline.data_info(config), steps.create_optimizer(config),
                                  template_of)
  for got, want in zip(_leaves(started.params['recon_net']), _leaves(solo_state.params)):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(_leaves(started.params['seg_net']), _leaves(fresh.params['seg_net'])):
    np.testing.assert_array_equal(got, want)
  train.train_and_evaluate(config, str(tmp_path))
  tuned, _ = train_test.latest_params(str(tmp_path), config)
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(tuned.params['recon_net']), _leaves(solo_state.params)))


def test_refused_before_any_data(tmp_path, data_dir):
  with pytest.raises(config_checks.ConfigError, match='init_from=.*no such folder'):
    config_checks.check_config(_joint(data_dir, str(tmp_path / 'nowhere')))
  with pytest.raises(config_checks.ConfigError, match='freeze_recon=True without config.init_from'):
    config_checks.check_config(_joint(data_dir, '', freeze_recon=True))
  with pytest.raises(warm_start.WarmStartError, match='no checkpoint in'):
    train.train_and_evaluate(_joint(data_dir, str(tmp_path)), str(tmp_path / 'run'))
