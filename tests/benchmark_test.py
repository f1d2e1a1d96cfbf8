"""Smoke test of the benchmark's plumbing (no figure is checked: tests never time anything)."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import pytest

from benchmarks import train_step as benchmark
from segrecon_jax.models import layers
from segrecon_jax.training import steps


@pytest.mark.slow
def test_benchmark_runs_over_one_and_two_devices_and_writes_json(tmp_path):
  out = tmp_path / 'bench.json'
  args = benchmark.parse_args(['--experiments=unet', '--image_size=64', '--batch=2', '--steps=1', '--devices=2',
                               '--pipeline_config=', f'--json={out}'])
  result = benchmark.run(args)
  rows = json.loads(out.read_text())['rows']
  assert [r['devices'] for r in rows] == [1, 2] == [r['devices'] for r in result['rows']]
  for row in rows:
    assert row['flops_per_step'] > 0 and row['step_median_s'] > 0
    assert row['schedule_compiles'] == 2  # The update and one mask sampler (no stabilization).
    assert row['compile_s'] == row['update_compile_s'] + row['masks_compile_s'] > 0
  assert 0 < rows[1]['scaling_efficiency']


def test_benchmark_times_each_layer_choice_of_each_model(monkeypatch):
  defaults = benchmark.parse_args([])
  # The config's runtime setting (not the model) carries the choice; the model is the same for every choice.
  for name in benchmark.EXPERIMENTS:
    config = benchmark.experiment_config(name, 'x8_stab', defaults, conv_impl='xla', upconv_impl='dense')
    assert benchmark.layer_setting(config) == {'conv_impl': 'xla', 'upconv_impl': 'dense'}
    default = benchmark.experiment_config(name, 'x8_stab', defaults)
    assert steps.create_model(config) == steps.create_model(default)
  with pytest.raises(ValueError, match='unknown layer setting'):
    benchmark.set_layer_choices(config, im2col='xla')
  # What each row traces: the setting is applied around the step's trace and compiles (the update compiles on
  # TrainSteps' background thread), then restored.
  seen = []
  real_train_update = steps.train_update

  def recording_update(*args, **kwargs):
    seen.append(layers.resolve_conv_impl())
    return real_train_update(*args, **kwargs)

  monkeypatch.setattr(steps, 'train_update', recording_update)

  paper_config = benchmark.experiment_config

  def narrow_config(*args, **kwargs):  # A 2x3x4 CascadeNet, so the test compiles in seconds.
    config = paper_config(*args, **kwargs)
    config.model.num_cascades, config.model.num_layers, config.model.features = 2, 3, 4
    config.num_acs = 4
    return config

  monkeypatch.setattr(benchmark, 'experiment_config', narrow_config)
  result = benchmark.run(benchmark.parse_args(['--experiments=cascade', '--image_size=32', '--batch=2', '--steps=1',
                                               '--pipeline_config=', '--conv_impl=xla,native']))
  assert [r['conv_impl'] for r in result['rows']] == ['xla', 'native']
  # Each row's step traced with its own layers (update_flops traces with XLA's, after the step's compiles).
  assert seen == ['xla', 'xla', 'native', 'xla'], seen
  assert layers.current_impls() == {'conv_impl': 'auto', 'upconv_impl': 'auto'}
  assert all(r['step_median_s'] > 0 for r in result['rows'])
  # FLOPs count the model's arithmetic whichever layers compute it (XLA's cost analysis sees an FFI call as no
  # work): at least each convolution's forward and weight gradient, over the positions a 'VALID' 3x3 visits.
  conv_flops = 2 * 2 * 30 * 30 * 9 * (2 * 4 + 4 * 4 + 4 * 2) * 2  # batch 2, 30x30, 2 cascades of 2->4->4->2.
  flops = [r['flops_per_step'] for r in result['rows']]
  assert flops[0] == flops[1] > 2 * conv_flops, flops
  with pytest.raises(ValueError, match='--conv_impl'):
    benchmark.run(benchmark.parse_args(['--experiments=unet', '--conv_impl=cudnn']))
  with pytest.raises(ValueError, match='--upconv_impl'):
    benchmark.run(benchmark.parse_args(['--experiments=unet', '--upconv_impl=native']))


def test_benchmark_rejects_unknown_experiments_and_too_narrow_images():
  with pytest.raises(ValueError, match='valid are'):
    benchmark.run(benchmark.parse_args(['--experiments=unett']))
  with pytest.raises(ValueError, match='num_acs'):
    benchmark.run(benchmark.parse_args(['--experiments=unet', '--image_size=32', '--batch=2', '--steps=1',
                                        '--pipeline_config=']))


@pytest.mark.slow
def test_compile_levels_script_prints_whole_and_split_compiles(capfd):
  """benchmarks/compile_levels.py on a small stabilized config: one whole step per level before, the update once
  and a mask sampler per level after (each mode in a subprocess of its own)."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks', 'compile_levels.py')
  spec = importlib.util.spec_from_file_location('compile_levels', path)
  compile_levels = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(compile_levels)
  compile_levels.main(['--experiment=multidecoder_unet', '--preset=x4_stab,runlocal', '--image_size=32', '--batch=2',
                       '--levels=2'])
  rows = [line for line in capfd.readouterr().out.splitlines() if line.startswith('| whole') or
          line.startswith('| split')]
  assert sum('step, fraction' in row for row in rows) == 2 and sum('masks, fraction' in row for row in rows) == 2
  assert sum('| split | update |' in row for row in rows) == 1
  assert any('all 2 programs' in row for row in rows) and any('all 3 programs' in row for row in rows)
  with pytest.raises(ValueError, match='--modes'):
    compile_levels.main(['--modes=fused'])


def test_benchmark_passes_torch_modes_and_tf32_to_pytorch_and_sets_jax_precision(monkeypatch, tmp_path):
  """--torch_modes, --torch_compile_mode and --tf32 reach the PyTorch command line; JAX times its step under the
  matching matmul precision (restored after), and the compiled PyTorch column joins the table (no torch needed:
  the subprocess is replaced by one that writes torch_reference.py's JSON)."""
  paper_config = benchmark.experiment_config

  def narrow_config(*args, **kwargs):  # A 2x3x4 CascadeNet, so the test compiles in seconds.
    config = paper_config(*args, **kwargs)
    config.model.num_cascades, config.model.num_layers, config.model.features = 2, 3, 4
    config.num_acs = 4
    return config

  precisions, commands = [], []
  time_train_step = benchmark.time_train_step

  def recording_time_train_step(*args, **kwargs):
    precisions.append(jax.config.jax_default_matmul_precision)
    return time_train_step(*args, **kwargs)

  real_run = subprocess.run

  def fake_torch(command, *args, **kwargs):  # subprocess.run is also the native kernels' compiler call.
    if not any(str(c).endswith('torch_reference.py') for c in command):
      return real_run(command, *args, **kwargs)
    commands.append(command)
    out = next(c for c in command if c.startswith('--json=')).split('=', 1)[1]
    rows = [{'experiment': 'cascade', 'mode': 'eager', 'step_s_median': 2.0},
            {'experiment': 'cascade', 'mode': 'compile', 'step_s_median': 1.0}]
    with open(out, 'w') as f:
      json.dump({'rows': rows}, f)

  monkeypatch.setattr(benchmark, 'experiment_config', narrow_config)
  monkeypatch.setattr(benchmark, 'time_train_step', recording_time_train_step)
  monkeypatch.setattr(benchmark.subprocess, 'run', fake_torch)
  before = jax.config.jax_default_matmul_precision
  out = tmp_path / 'bench.json'
  result = benchmark.run(benchmark.parse_args([
      '--experiments=cascade', '--image_size=32', '--batch=2', '--steps=1', '--pipeline_config=',
      f'--torch_python={sys.executable}', '--torch_modes=eager,compile', '--torch_compile_mode=reduce-overhead',
      '--tf32=off', f'--json={out}']))
  assert precisions == ['highest'] and jax.config.jax_default_matmul_precision == before
  command = commands[0]
  assert '--modes=eager,compile' in command and '--compile_mode=reduce-overhead' in command
  assert '--tf32=off' in command and '--batch=2' in command
  row = result['rows'][0]
  assert row['torch_step_s'] == 2.0 and row['torch_compile_step_s'] == 1.0
  assert row['speed_vs_torch_compile'] == pytest.approx(1.0 / row['step_median_s'])
  saved = json.loads(out.read_text())
  assert saved['tf32'] == 'off' and saved['rows'][0]['torch_compile_step_s'] == 1.0
  header = benchmark.format_table(result['rows'], result['matmul_ceiling_flops_per_s']).splitlines()[0]
  assert 'PyTorch compiled step s' in header and 'speed vs compiled' in header

  benchmark.run(benchmark.parse_args(['--experiments=cascade', '--image_size=32', '--batch=2', '--steps=1',
                                      '--pipeline_config=', '--tf32=on']))
  assert precisions[-1] == 'tensorfloat32' and jax.config.jax_default_matmul_precision == before
  with pytest.raises(ValueError, match='--torch_modes'):
    benchmark.run(benchmark.parse_args(['--experiments=cascade', '--torch_modes=graph']))
  with pytest.raises(SystemExit):
    benchmark.parse_args(['--tf32=maybe'])


def test_gpu_scripts_parse():
  """The device scripts are valid bash, and torch_reference.py is valid Python (it needs torch to import)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for script in ('gpu_checks.sh', 'prepare_gpu_data.sh'):
    subprocess.run(['bash', '-n', os.path.join(root, 'benchmarks', script)], check=True)
  path = os.path.join(root, 'benchmarks', 'torch_reference.py')
  with open(path) as f:
    compile(f.read(), path, 'exec')
