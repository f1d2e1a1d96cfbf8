"""Tests of the host-side batching: per-epoch order, multi-host shares (faked process count), eval padding."""

import jax
import ml_collections
import numpy as np
import pytest

from segrecon_jax.training import input_pipeline


def fake_source(num_examples, size=4):
  return [{'image': np.full((size, size, 2), i, np.float32), 'segmentation': np.zeros((size, size), np.uint8)}
          for i in range(num_examples)]


def config(batch_size, seed=0):
  return ml_collections.ConfigDict({'batch_size': batch_size, 'eval_batch_size': batch_size, 'seed': seed,
                                    'train_split': 'train'})


def host_batches(monkeypatch, make_batches, num_hosts):
  """The batches every faked host would load, as lists of example indices."""
  per_host = []
  for host in range(num_hosts):
    monkeypatch.setattr(jax, 'process_count', lambda: num_hosts)
    monkeypatch.setattr(jax, 'process_index', lambda host=host: host)
    per_host.append([(list(b['index']), list(b['valid'])) for b in make_batches()])
  return per_host


@pytest.mark.parametrize('num_examples', [63, 64, 70])
def test_every_host_runs_the_same_number_of_disjoint_train_steps(monkeypatch, num_examples):
  source = fake_source(num_examples)
  hosts = host_batches(monkeypatch, lambda: input_pipeline.train_batches(source, config(16), epoch=3), 2)
  assert len(hosts[0]) == len(hosts[1]) == num_examples // 16
  seen = [i for batches in hosts for indices, _ in batches for i in indices]
  assert len(seen) == len(set(seen)) == 16 * (num_examples // 16)
  assert all(len(indices) == 8 for batches in hosts for indices, _ in batches)


def test_train_order_depends_on_seed_and_epoch_only():
  source = fake_source(40)
  order = lambda seed, epoch: [list(b['index']) for b in input_pipeline.train_batches(source, config(8, seed), epoch)]
  assert order(0, 1) == order(0, 1)
  assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
  images = next(input_pipeline.train_batches(source, config(8), 1))['image']
  assert images.dtype == np.complex64 and images.shape == (8, 4, 4)


def test_eval_batches_cover_the_split_once_and_keep_hosts_in_step(monkeypatch):
  source = fake_source(33)
  hosts = host_batches(monkeypatch, lambda: input_pipeline.eval_batches(source, config(16)), 2)
  assert len(hosts[0]) == len(hosts[1]) == 3  # ceil(33 / 16)
  valid = [i for batches in hosts for indices, flags in batches for i, f in zip(indices, flags) if f > 0]
  assert sorted(valid) == list(range(33))


def test_hosts_load_contiguous_parts_of_each_global_batch(monkeypatch):
  """Device d of the job sees the same examples with 2 hosts x 1 device as with 1 host x 2 devices."""
  source = fake_source(37)
  one_host = host_batches(monkeypatch, lambda: input_pipeline.train_batches(source, config(8), epoch=2), 1)[0]
  two_hosts = host_batches(monkeypatch, lambda: input_pipeline.train_batches(source, config(8), epoch=2), 2)
  assert len(one_host) == len(two_hosts[0]) == 37 // 8
  for step, (indices, _) in enumerate(one_host):
    assert indices == two_hosts[0][step][0] + two_hosts[1][step][0]


def test_experiment_data_fields_pick_a_derived_dataset_config():
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  assert input_pipeline.builder_config(config).name == 'phantom'  # every field None: the built-in config
  config.image_size, config.test_fraction = 64, 0.25
  derived = input_pipeline.builder_config(config)
  assert derived.name == 'phantom_64x64_test0.25' and derived.image_size == (64, 64)
  config.dataset_config, config.label_mapping = 'nifti', (0, 1, 2, 3)
  assert input_pipeline.builder_config(config).name == 'nifti_64x64_test0.25_map0-1-2-3'


@pytest.mark.parametrize('field,value,match', [('image_size', 4, 'square image side'),
                                               ('test_fraction', 1.5, r'in \(0, 1\)'),
                                               ('split_seed', -1, 'seeds must be integers'),
                                               ('label_mapping', (0, 7), 'ACDC .* is \\(0, 3, 2, 1\\)')])
def test_config_checks_name_bad_data_fields(field, value, match):
  from configs import default  # pylint: disable=g-import-not-at-top
  from segrecon_jax.training import config_checks  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config_checks.check_config(config)
  setattr(config, field, value)
  with pytest.raises(config_checks.ConfigError, match=f'config.{field}=.*{match}'):
    config_checks.check_config(config)
