"""A real 2-process job on this machine (jax.distributed on 127.0.0.1, CPU collectives through gloo), against the
same global batch and device count in one process: same parameters, same predictions, one writer."""

import json
import logging
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from segrecon_jax.training import config_checks
from segrecon_jax.training import inference
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import parallel
from segrecon_jax.training import train
import train_test

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORKER = os.path.join(_ROOT, 'tests', 'multihost_worker.py')
_TIMEOUT_S = 420


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_job(workdir, data_dir, tmp_path, name, num_processes=2):
  """Runs the worker as every process of one job; returns each process's report (fails with their logs)."""
  coordinator = f'127.0.0.1:{_free_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  procs, logs, reports = [], [], []
  for pid in range(num_processes):
    logs.append(tmp_path / f'{name}_{pid}.log')
    reports.append(tmp_path / f'{name}_{pid}.json')
    with open(logs[-1], 'w') as log:
      procs.append(subprocess.Popen([sys.executable, _WORKER, workdir, data_dir, coordinator, str(num_processes),
                                     str(pid), str(reports[-1])], stdout=log, stderr=subprocess.STDOUT, env=env))
  try:
    codes = [p.wait(timeout=_TIMEOUT_S) for p in procs]
  except subprocess.TimeoutExpired:
    codes = None
  finally:
    for p in procs:
      p.kill()
  if codes != [0] * num_processes:
    tails = '\n'.join(f'--- process {i} (exit {c}):\n' + log.read_text()[-3000:]
                      for i, (c, log) in enumerate(zip(codes or ['timeout'] * num_processes, logs)))
    pytest.fail(f'multi-process job {name} failed:\n{tails}')
  return [json.loads(r.read_text()) for r in reports], [log.read_text() for log in logs]


def workdir_files(workdir):
  """Relative paths under a workdir: checkpoints by step folder (orbax's layout inside one differs between one
  and several processes), TensorBoard event files by folder (their names hold host and time)."""
  files = set()
  for root, _, names in os.walk(workdir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), workdir)
      if rel.startswith('checkpoints' + os.sep):
        rel = os.sep.join(rel.split(os.sep)[:2])
      files.add(os.path.join(os.path.dirname(rel), 'events.*') if 'tfevents' in name else rel)
  return files


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_the_same_devices(data_dir, two_epoch_run, tmp_path):
  assert jax.device_count() == 2  # tests/conftest.py: the 1-process reference has the job's 2 devices.
  config = train_test.two_epochs(data_dir)
  input_pipeline.load_split(config, config.train_split)  # Build the dataset once, before processes share it.

  one = two_epoch_run.copy(tmp_path / 'one_process')  # The 1-process run of the same config.
  one_results = json.load(open(os.path.join(one, 'metrics.json')))['metrics']
  inference.predict(config, one, out_dir=os.path.join(one, inference.TRAINING_PREDICTIONS_DIR))  # As main.py.

  two = str(tmp_path / 'two_processes')
  reports, logs = run_job(two, data_dir, tmp_path, 'train')
  assert [(r['process_index'], r['process_count'], r['device_count'], r['local_device_count']) for r in reports] \
      == [(0, 2, 2, 1), (1, 2, 2, 1)]

  # The same training: parameters and batch statistics of the last checkpoint, eval metrics, predictions.
  state_one, meta_one = train_test.latest_params(one, config)
  state_two, meta_two = train_test.latest_params(two, config)
  assert meta_one['step'] == meta_two['step'] > 0
  for a, b in zip(jax.tree.leaves((state_one.params, state_one.batch_stats)),
                  jax.tree.leaves((state_two.params, state_two.batch_stats))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  for report in reports:
    for key in ('psnr', 'ssim', 'dice_mean', 'num_examples'):
      np.testing.assert_allclose(report['results'][key], one_results[key], rtol=1e-4)
  for name in sorted(os.listdir(os.path.join(one, 'predictions'))):
    if name.endswith('.npy'):
      np.testing.assert_allclose(np.load(os.path.join(two, 'predictions', name)),
                                 np.load(os.path.join(one, 'predictions', name)), rtol=1e-4, atol=1e-5)

  # One writer: the same files as the 1-process run (one TensorBoard file, one table), none opened by process 1.
  assert workdir_files(two) == workdir_files(one)
  assert len([n for n in os.listdir(os.path.join(two, 'tensorboard')) if 'tfevents' in n]) == 1
  # Every process may create the workdir folder itself (whoever comes first); nothing in it but by process 0.
  assert [w for w in reports[1]['written'] if w != 'os.mkdir .'] == [], reports[1]['written']
  assert any('metrics.json' in w for w in reports[0]['written'])
  total = meta_one['step']
  assert f'step {total}/{total} ' in logs[0] and 'steps/s' not in logs[1]  # Progress lines: process 0 only.

  # Both processes restore: a rerun finds the finished checkpoint and only evaluates.
  reports, logs = run_job(two, data_dir, tmp_path, 'resume')
  assert all('Resumed from' in log for log in logs), logs[1][-2000:]
  for report in reports:
    np.testing.assert_allclose(report['results']['psnr'], one_results['psnr'], rtol=1e-4)


def test_distributed_without_a_coordinator_or_cluster_is_one_paragraph(tmp_path):
  """JAX finds no cluster to read the coordinator from (no SLURM, Open MPI or TPU environment): main.py says what to
  set, exit code 2, before any data or workdir."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'OMPI_', 'PMI_', 'TPU_', 'MEGASCALE_'))}
  run = subprocess.run([sys.executable, 'main.py', '--config=configs/unet_unet.py:x4,runlocal',
                        f'--workdir={tmp_path / "wd"}', '--config.distributed=True'],
                       cwd=_ROOT, capture_output=True, text=True, env=env, timeout=120)
  stderr = '\n'.join(l for l in run.stderr.splitlines() if 'DeprecationWarning' not in l)
  assert run.returncode == 2 and 'Traceback' not in stderr and len(stderr.strip().splitlines()) == 1, stderr
  assert stderr.startswith('main.py: config.distributed=True with config.coordinator_address empty: no cluster')
  assert '--config.coordinator_address=HOST:PORT' in stderr and '--config.num_processes=N' in stderr
  assert not (tmp_path / 'wd').exists()


def test_a_process_says_for_whom_and_how_long_it_waits_before_it_connects(monkeypatch, caplog):
  calls = []

  def connect(**kwargs):  # Stands in for jax.distributed.initialize, which blocks until every process has come.
    calls.append((kwargs, [r.getMessage() for r in caplog.records]))

  monkeypatch.setattr(jax.distributed, 'initialize', connect)
  monkeypatch.setitem(parallel._DISTRIBUTED, 'initialized', False)  # pylint: disable=protected-access
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)  # No collectives setting for this process's running backend.
  config = train_test.tiny_config('', distributed=True, coordinator_address='10.0.0.1:1234', num_processes=4,
                                  process_id=2)
  with caplog.at_level(logging.WARNING):
    parallel.setup_runtime(config)
  (kwargs, logged_before), = calls
  assert kwargs == dict(coordinator_address='10.0.0.1:1234', num_processes=4, process_id=2,
                        initialization_timeout=parallel.DISTRIBUTED_TIMEOUT_SECONDS)
  assert (f'process 2 of 4: waiting up to {parallel.DISTRIBUTED_TIMEOUT_SECONDS} s for the coordinator '
          '10.0.0.1:1234 and the other 3 process(es) to connect') in logged_before[-1]
  monkeypatch.setitem(parallel._DISTRIBUTED, 'initialized', False)  # pylint: disable=protected-access
  config.process_id = 4
  with pytest.raises(config_checks.ConfigError, match=r'config.num_processes=4, config.process_id=4: .*0 .. '
                     'num_processes - 1'):
    parallel.setup_runtime(config)
  assert len(calls) == 1
