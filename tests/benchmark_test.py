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


def test_benchmark_rejects_unknown_experiments_and_too_narrow_images():
  with pytest.raises(ValueError, match='valid are'):
    benchmark.run(benchmark.parse_args(['--experiments=unett']))
  with pytest.raises(ValueError, match='num_acs'):
    benchmark.run(benchmark.parse_args(['--experiments=unet', '--image_size=32', '--batch=2', '--steps=1',
                                        '--pipeline_config=']))
