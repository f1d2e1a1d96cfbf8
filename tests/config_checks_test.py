"""Tests of the config checks that run before any dataset is built: each bad value is one ConfigError naming it."""

import os

from absl import flags
import jax
import numpy as np
import pytest
from ml_collections import config_flags

from configs import cascade_manet
from configs import unet_unet
from segrecon_jax.study import runner
from segrecon_jax.training import config_checks

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(module=unet_unet, arg='x4,runlocal', **fields):
  config = module.get_config(arg)
  for field, value in fields.items():
    if field.startswith('model.'):
      sub, name = field[len('model.'):].split('.')
      config.model[sub][name] = value
    else:
      setattr(config, field, value)
  return config


def test_the_shipped_configs_pass():
  for module in (unet_unet, cascade_manet):
    for arg in ('x4', 'x8_stab', 'x4,runlocal', 'x8_stab,demo', 'x8_stab,cpu_study'):
      config_checks.check_config(module.get_config(arg))


@pytest.mark.parametrize('fields,match', [
    # A mask keeps round(W / R) lines: 32 / 100 rounds to 0, the network would see all-zero input.
    (dict(dataset_config='phantom_tiny', acceleration=100, num_acs=0), r'config.acceleration=100 keeps .* = 0 of the 32'),
    (dict(num_acs=100), r'config.num_acs=100: more autocalibration lines than the 64'),
    (dict(acceleration=16, num_acs=8), r'config.acceleration=16 keeps 4 of .* fewer than config.num_acs=8'),
    (dict(image_size=9), r'config.image_size=9: model .unet_unet. halves the image 3 times'),
    (dict(image_size=48), None),
])
def test_masks_and_image_size_are_checked_before_any_data(fields, match):
  config = _config(**fields)
  if match is None:
    config_checks.check_config(config)
    return
  with pytest.raises(config_checks.ConfigError, match=match):
    config_checks.check_config(config)


@pytest.mark.parametrize('module,fields,match', [
    # Fewer classes than the data's labels 0..3: labels 2 and 3 would be silently dropped by the one-hot.
    (unet_unet, {'num_classes': 2, 'model.seg.out_channels': 2}, r'config.num_classes=2: .* 4 label values'),
    (unet_unet, {'num_classes': 5, 'model.seg.out_channels': 5}, r'config.num_classes=5: .* must be 4'),
    (unet_unet, {'num_classes': 5}, r'config.num_classes=5'),
    (unet_unet, {'model.seg.out_channels': 3}, r'config.model.seg.out_channels=3: .*config.num_classes=4'),
    (cascade_manet, {'model.seg.num_classes': 2}, r'config.model.seg.num_classes=2: .*config.num_classes=4'),
])
def test_the_label_set_comes_from_the_data(module, fields, match):
  with pytest.raises(config_checks.ConfigError, match=match):
    config_checks.check_config(_config(module, **fields))


@pytest.mark.parametrize('fields,match', [
    (dict(seed=-1), r'config.seed=-1: seeds must be integers >= 0'),
    (dict(eval_mask_seed=-3), r'config.eval_mask_seed=-3'),
    (dict(seed=2**32), r'config.seed=4294967296: seeds must be integers >= 0 and < 2\*\*32 = 4294967296: JAX keys '
                       r"keep only a seed's low 32 bits, so it would run with the keys of seed 0"),
    (dict(seed=2**40 + 7), r'config.seed=1099511627783: seeds must be .* the keys of seed 7'),
    (dict(seed=2**64), r'config.seed=18446744073709551616: seeds must be integers >= 0 and < 2\*\*32 = 4294967296: '
                       'JAX cannot make a key of it'),
    (dict(eval_mask_seed=2**33), r'config.eval_mask_seed=8589934592: seeds must be'),
    (dict(schedule_levels='six'), r'config.schedule_levels=.six.: expected a number'),
    (dict(schedule_levels=2.5), r'config.schedule_levels=2.5: .* integer'),
    (dict(schedule_levels=float('inf')), r'config.schedule_levels=inf: .* integer'),
    (dict(manual_dir='/nonexistent/ocmr_files'), r"config.manual_dir='/nonexistent/ocmr_files' does not exist"),
    (dict(dataset_config='realz'), r"config.dataset_config='realz'.*expected one of"),
    (dict(model={'name': 'unet_unet', 'recon': {'featurez': (8, 16)}}), r"config.model: .*unknown field.*featurez"),
])
def test_bad_values_name_their_field(fields, match):
  with pytest.raises(config_checks.ConfigError, match=match):
    config_checks.check_config(_config(**fields))


def test_the_seeds_allowed_are_those_that_give_distinct_keys():
  """JAX keeps a seed's low 32 bits: 2**32 gives seed 0's keys (why larger seeds are refused), the top seed allowed
  its own; initialization (`key(seed, impl='rbg')`) and the train and mask keys (`PRNGKey`) alike."""
  top = config_checks.KEY_SEEDS - 1
  config_checks.check_config(_config(seed=top, eval_mask_seed=top))
  for make in (jax.random.PRNGKey, lambda s: jax.random.key_data(jax.random.key(s, impl='rbg'))):
    np.testing.assert_array_equal(make(config_checks.KEY_SEEDS), make(0))
    assert not np.array_equal(make(top), make(0)) and not np.array_equal(make(top), make(top - 1))


def _parsed(overrides):
  argv = ['main.py', f'--config={_ROOT}/configs/unet_unet.py:x4,runlocal', *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values, argv


@pytest.mark.parametrize('overrides', [
    ["--config.model.seg.features=(4,8)", "--config.model.seg.features=(8,16)"],
    ["--config.model.seg.features", "(4,8)", "-config.model.seg.features=8"],  # absl's other spellings
])
def test_a_repeated_tuple_override_is_refused_not_joined(overrides):
  """ml_collections joins a repeated tuple override ((4, 8) then (8, 16) gives (4, 8, 8, 16)); main.py and the study
  refuse it, naming the field and both values."""
  flag_values, argv = _parsed(overrides)
  with pytest.raises(config_checks.ConfigError, match=r"--config.model.seg.features is given 2 times \('\(4,8\)', "
                                                      r"'.*'\), which ml_collections would join into \(4, 8, 8"):
    config_checks.check_tuple_overrides_once(flag_values, argv)
  if all('=' in o for o in overrides):  # The study's overrides are --config.<field>=<value> (plan.Settings).
    with pytest.raises(ValueError, match=r'--config.model.seg.features is given 2 times'):
      runner.run_config(('--config=configs/unet_unet.py:x4,runlocal',) + tuple(overrides))


def test_once_each_tuple_overrides_and_a_repeated_number_keeps_its_last_value():
  flag_values, argv = _parsed(['--config.model.seg.features=(8,16)', '--config.model.recon.features=(4,8)',
                               '--config.seed=1', '--config.seed=2'])
  config_checks.check_tuple_overrides_once(flag_values, argv)
  assert flag_values.config.model.seg.features == (8, 16) and flag_values.config.seed == 2


def test_manual_dir_that_is_a_file(tmp_path):
  path = tmp_path / 'fs_0001.h5'
  path.write_bytes(b'')
  with pytest.raises(config_checks.ConfigError, match='is not a directory'):
    config_checks.check_config(_config(manual_dir=str(path)))


@pytest.mark.parametrize('value,expected', [('None', None), ('4', 4)])
def test_schedule_levels_none_from_the_command_line(value, expected):
  """configs/default.py documents None (the exact eq. 1); the command line must be able to say it."""
  argv = ['main.py', f'--config={_ROOT}/configs/unet_unet.py:x8_stab,runlocal', f'--config.schedule_levels={value}']
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  assert config.schedule_levels == expected
  config_checks.check_config(config)
