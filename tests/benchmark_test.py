"""Smoke test of the benchmark's plumbing (no figure is checked: tests never time anything)."""

import json

import pytest

from segrecon_jax import benchmark


def test_benchmark_runs_over_one_and_two_devices_and_writes_json(tmp_path):
  out = tmp_path / 'bench.json'
  args = benchmark.parse_args(['--experiments=unet', '--image_size=64', '--batch=2', '--steps=1', '--devices=2',
                               '--pipeline_config=', f'--json={out}'])
  result = benchmark.run(args)
  rows = json.loads(out.read_text())['rows']
  assert [r['devices'] for r in rows] == [1, 2] == [r['devices'] for r in result['rows']]
  for row in rows:
    assert row['flops_per_step'] > 0 and row['step_median_s'] > 0 and row['schedule_compiles'] == 1
  assert 0 < rows[1]['scaling_efficiency']


def test_benchmark_times_each_layer_choice_of_each_model(monkeypatch):
  defaults = benchmark.parse_args([])
  for experiment, paths in benchmark._CONV_IMPL_FIELDS.items():  # pylint: disable=protected-access
    model = benchmark.experiment_config(experiment, 'x8_stab', defaults, conv_impl='im2col').model
    for sub, field in paths:
      assert (model[sub] if sub else model)[field] == 'im2col'

  paper_config = benchmark.experiment_config

  def narrow_config(*args, **kwargs):  # A 2x3x4 CascadeNet, so the test compiles in seconds.
    config = paper_config(*args, **kwargs)
    config.model.num_cascades, config.model.num_layers, config.model.features = 2, 3, 4
    config.num_acs = 4
    return config

  monkeypatch.setattr(benchmark, 'experiment_config', narrow_config)
  result = benchmark.run(benchmark.parse_args(['--experiments=cascade', '--image_size=32', '--batch=2', '--steps=1',
                                               '--pipeline_config=', '--conv_impl=xla,im2col']))
  assert [r['conv_impl'] for r in result['rows']] == ['xla', 'im2col']
  assert all(r['step_median_s'] > 0 and r['flops_per_step'] > 0 for r in result['rows'])
  with pytest.raises(ValueError, match='--conv_impl'):
    benchmark.run(benchmark.parse_args(['--experiments=unet', '--conv_impl=cudnn']))
