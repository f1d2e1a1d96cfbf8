"""Runs the study's runs, each `main.py` in its own process, skipping finished ones, after printing the plan."""

import collections
import json
import os
import subprocess
import sys
import time
from typing import List, Optional, Sequence, Tuple

from absl import flags as absl_flags
from ml_collections import config_flags

from segrecon_jax import settings
from segrecon_jax.study import plan
from segrecon_jax.training import config_checks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_config(flags: Sequence[str]):
  """The config a run's flags give `main.py` (its config file, preset, switch and `--config.*` overrides), parsed by
  the same ml_collections flag machinery, so a typo in an override fails here, before anything trains."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)  # Config files import `configs.default`.
  path, arg = next(f for f in flags if f.startswith('--config=')).split('=', 1)[1].split(':', 1)
  argv = ['study', f'--config={os.path.join(REPO, path)}:{arg}'] + [f for f in flags if f.startswith('--config.')]
  values = absl_flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'experiment config', flag_values=values, lock_config=True,
                                  sys_argv=argv)
  try:
    values(argv)
    config_checks.check_tuple_overrides_once(values, argv)
  except (absl_flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    raise ValueError(f'the study cannot set up the run {" ".join(flags)}: {type(e).__name__} {e} (a config '
                     'override names no field of the config, or has a value of the wrong type)') from e
  return values.config


def train_split_size(config) -> Tuple[Optional[int], str]:
  """The number of training slices of `config` and how it is known: read from the prepared TFDS dataset, estimated
  from a phantom config (its slices and labelled frames times 1 - test_fraction; the real split takes whole
  subjects, so it differs by a few slices), or unknown (real or NIfTI data not prepared yet)."""
  try:
    from segrecon_jax.training import input_pipeline  # pylint: disable=g-import-not-at-top
    dataset_builder = input_pipeline.builder(config)
    name = f'{config.dataset}/{dataset_builder.builder_config.name}'
    if dataset_builder.is_prepared():
      return int(dataset_builder.info.splits[config.train_split].num_examples), f'read from the prepared {name}'
    described = dataset_builder.builder_config
  except Exception as e:  # pylint: disable=broad-except  (the plan is informational; the run reports the error)
    return None, f'unknown ({type(e).__name__}: {e})'
  if getattr(described, 'source', '') != 'phantom':
    return None, f'unknown until the first run prepares {name}'
  total = 0
  for i in range(described.num_phantom_subjects):
    frames = described.phantom_num_frames[i % len(described.phantom_num_frames)]
    labelled = frames if described.include_unlabelled or not described.phantom_labelled_frames else \
        len([f for f in set(described.phantom_labelled_frames) if f < frames])
    total += described.phantom_num_slices[i % len(described.phantom_num_slices)] * labelled
  estimate = int(round(total * (1 - described.test_fraction)))
  return estimate, (f'estimated: {name} is not prepared yet; {total} slices x (1 - test_fraction '
                    f'{described.test_fraction:.3f})')


# The fields that say which dataset a run reads, and where: runs that share them share the train split's size.
_DATA_FIELDS = settings.names(settings.DATA, settings.DATA_BUILDER, settings.DATA_PLACE)


def print_plan(todo: Sequence[plan.Run], num_done: int, seconds_per_step: Optional[float]) -> None:
  """Prints how many runs are left, the training steps of each (epochs x whole global batches of the train split)
  and, with `seconds_per_step`, the expected duration of their training steps."""
  print(f'[study] {len(todo)} runs to do ({num_done} already done).', flush=True)
  total_steps, unknown, lines, sizes = 0, 0, collections.OrderedDict(), {}
  for run in todo:
    config = run_config(run.flags)
    data = json.dumps({f: config.get(f) for f in _DATA_FIELDS}, default=str)
    if data not in sizes:  # Rows share their data: one look at each dataset.
      sizes[data] = train_split_size(config)
    size, how = sizes[data]
    if size is None:
      unknown += 1
      line = f'unknown steps ({config.num_epochs} epochs of global batch {config.batch_size}; train split {how})'
    else:
      steps = config.num_epochs * (size // config.batch_size)
      total_steps += steps
      line = (f'{steps} steps ({config.num_epochs} epochs x {size // config.batch_size} steps of global batch '
              f'{config.batch_size}; train split {size} slices, {how})')
    lines[line] = lines.get(line, 0) + 1
  for line, count in lines.items():
    print(f'[study]   {count} run(s): {line}', flush=True)
  if todo and seconds_per_step:
    duration = total_steps * seconds_per_step
    print(f'[study] expected: {total_steps} training steps x {seconds_per_step:g} s/step = {duration / 3600:.1f} h'
          f'{f" for the {len(todo) - unknown} runs of known size" if unknown else ""}; compiles, evaluations and '
          'dataset preparation come on top, and the models differ in speed (one s/step for all is a rough '
          'guide).', flush=True)
  elif todo:
    print('[study] pass --seconds_per_step=S (a run\'s train_steps_per_second in TensorBoard, inverted, or '
          'python benchmarks/train_step.py) for the expected duration.', flush=True)


def is_finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, 'metrics.json'))


def _main_command(run: plan.Run, *extra: str) -> List[str]:
  return [sys.executable, 'main.py', *run.flags, '--config.progress_bar=False', f'--workdir={run.workdir}', *extra]


def _log(run: plan.Run) -> str:
  """The run's log.txt, which every main.py process of the run appends to."""
  return os.path.join(run.workdir, 'log.txt')


def run_all(runs: Sequence[plan.Run], seconds_per_step: Optional[float] = None, jobs: int = 1) -> None:
  """Prints the plan, then trains and evaluates every run without metrics.json, one `main.py` process each (an
  interrupted run resumes from its workdir's checkpoint), `jobs` processes at a time (more than one shares an
  accelerator or the CPU cores between runs; on a GPU, set XLA_PYTHON_CLIENT_PREALLOCATE=false so that each process
  takes only the memory it uses). With several jobs every run is tried, with one the first failure stops the rest;
  the error names each failed run and its log."""
  if jobs < 1:
    raise ValueError(f'jobs must be at least 1, not {jobs}')
  for run in runs:
    run_config(run.flags)  # Every override checked before the first run starts.
  todo = [run for run in runs if not is_finished(run.workdir)]
  print_plan(todo, len(runs) - len(todo), seconds_per_step)
  waiting, running, failed = list(todo), [], []
  while waiting or running:
    while waiting and len(running) < jobs:
      run = waiting.pop(0)
      command = _main_command(run)
      print(f'[study] {run.label}: {" ".join(command[1:])}', flush=True)
      os.makedirs(run.workdir, exist_ok=True)
      with open(_log(run), 'a') as log:
        running.append((run, subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)))
    finished = [(run, process) for run, process in running if process.poll() is not None]
    if not finished:
      time.sleep(0.2)
    for run, process in finished:
      running.remove((run, process))
      if process.returncode:
        failed.append(run)
        print(f'[study] FAILED (exit {process.returncode}): {run.label}; see {_log(run)}', flush=True)
        if jobs == 1:
          waiting.clear()  # One at a time: stop at the first failure, as before.
  if failed:
    raise RuntimeError(f'{len(failed)} run(s) failed: ' + '; '.join(
        f'{run.label} (log: {_log(run)})' for run in failed))


def attention_all(runs: Sequence[plan.Run]) -> None:
  """`main.py --mode=attention` on every finished run of `runs` without attention/attention.json."""
  finished = [run for run in runs if is_finished(run.workdir)]
  todo = [run for run in finished if not os.path.exists(os.path.join(run.workdir, 'attention', 'attention.json'))]
  print(f'[study] pseudo-attention: {len(todo)} run(s) to do ({len(finished) - len(todo)} already done).', flush=True)
  for run in todo:
    command = _main_command(run, '--mode=attention')
    print(f'[study] attention of {run.label}: {" ".join(command[1:])}', flush=True)
    with open(_log(run), 'a') as log:
      subprocess.run(command, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
