"""segrecon_jax/settings.py: each config field declared once, with the role that every list of fields is read from."""

import importlib
import json
import os

import pytest

import tfds_ocmr
from segrecon_jax import settings
from segrecon_jax.data import labels
from segrecon_jax.study import runner
from segrecon_jax.training import checkpoints
from segrecon_jax.training import config_checks
from segrecon_jax.training import input_pipeline

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'switch_configs.json')


def test_every_preset_and_switch_gives_the_config_it_gave_before_the_table():
  """The fixture holds each config as the experiment files and switches built it before the fields moved into one
  table and the switches shared one body (less the removed knobs l1_weight, l2_weight, optimizer); a field added
  since then holds its declared default."""
  with open(FIXTURE) as f:
    expected = json.load(f)
  assert len(expected) == 30
  for key, want in expected.items():
    experiment, arg = key.split('.py:')
    config = checkpoints.jsonable(importlib.import_module(f'configs.{experiment}').get_config(arg).to_dict())
    added = set(config) - set(want)
    assert added <= {'field_of_view', 'init_from', 'freeze_recon', 'seg_loss'}, key
    assert {field: config.pop(field) for field in added} == {field: settings.BY_NAME[field].default
                                                             for field in added}, key
    assert config == want, key


def test_each_field_is_declared_once_with_a_known_role_and_a_comment():
  names = [field.name for field in settings.FIELDS]
  assert len(names) == len(set(names)) == len(settings.BY_NAME)
  assert all(field.role in settings.ROLES and field.doc for field in settings.FIELDS)
  assert set(settings.names(*settings.ROLES)) == set(names)
  assert set(settings.base_config().keys()) == set(names)
  for removed in ('l1_weight', 'l2_weight', 'optimizer'):
    assert removed not in settings.BY_NAME
  with pytest.raises(ValueError, match='settings.py'):
    settings.names('speed')


def test_every_list_of_fields_is_the_one_it_was_before():
  assert checkpoints.RESUMABLE_FIELDS == {
      'num_epochs', 'eval_every_epochs', 'eval_batch_size', 'eval_split', 'log_every_steps',
      'checkpoint_every_epochs', 'max_checkpoints_to_keep', 'progress_bar', 'num_summary_images',
      'compilation_cache_dir', 'data_dir', 'manual_dir', 'distributed', 'coordinator_address', 'num_processes',
      'process_id', 'compile_ahead', 'compile_workers', 'conv_impl', 'upconv_impl'}
  assert checkpoints.MODEL_FIELDS == {'model', 'half_precision', 'num_classes'}
  builder_fields = ('image_size', 'test_fraction', 'split_seed', 'include_unlabelled', 'label_mapping', 'phase_seed',
                    'field_of_view')
  assert settings.names(settings.DATA_BUILDER) == tfds_ocmr.ocmr.CONFIGURABLE_FIELDS == builder_fields  # Names folders.
  config = _runlocal_config()
  config.image_size = 32
  assert input_pipeline.builder_config(config).name == 'phantom_small_32x32'
  assert set(runner._DATA_FIELDS) == {  # pylint: disable=protected-access
      'dataset', 'dataset_config', 'data_dir', 'manual_dir', 'train_split', *builder_fields}


def _runlocal_config():
  return importlib.import_module('configs.unet').get_config('x4,runlocal')


def test_resume_ignores_stored_fields_that_no_longer_exist_and_still_refuses_changed_ones():
  config = _runlocal_config()
  data = {'name': 'phantom_small'}
  stored = dict(config.to_dict(), l1_weight=1.0, l2_weight=1.0, optimizer='adam')  # A checkpoint of an older run.
  checkpoints.check_resume({'config': stored, 'data': data}, config, data, 'DIR')
  checkpoints.check_inference({'config': stored, 'data': data}, config, data, 'DIR')
  with pytest.raises(checkpoints.ResumeError, match='config.learning_rate'):
    checkpoints.check_resume({'config': dict(stored, learning_rate=1.0), 'data': data}, config, data, 'DIR')
  model = dict(stored['model'], added_field=3)  # A model field still counts when only one side has it.
  with pytest.raises(checkpoints.ResumeError, match='config.model.added_field'):
    checkpoints.check_inference({'config': dict(stored, model=model), 'data': data}, config, data, 'DIR')
  checkpoints.check_resume({'config': dict(stored, num_epochs=1, conv_impl='xla'), 'data': data}, config, data, 'DIR')
  del stored['seg_loss']  # A checkpoint from before a field was declared: its default is the old behaviour...
  checkpoints.check_resume({'config': stored, 'data': data}, config, data, 'DIR')
  config.seg_loss = 'dice_ce'  # ... and any other value a change.
  with pytest.raises(checkpoints.ResumeError, match=r"config.seg_loss: '\(absent\)' in the checkpoint, 'dice_ce' now"):
    checkpoints.check_resume({'config': stored, 'data': data}, config, data, 'DIR')


def test_a_field_the_table_does_not_declare_is_a_config_error():
  config = _runlocal_config()
  config_checks.check_config(config)
  config.l1_weight = 1.0
  with pytest.raises(config_checks.ConfigError, match=r'config.l1_weight: not a config field.*settings.py'):
    config_checks.check_config(config)
  assert labels.NUM_CLASSES == settings.BY_NAME['num_classes'].default
