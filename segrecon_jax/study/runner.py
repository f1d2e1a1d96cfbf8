"""Runs the study's runs, each `main.py` in its own process, skipping finished ones, after printing the plan."""

import collections
import json
import os
import signal
import subprocess
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

from absl import flags as absl_flags
from ml_collections import config_flags

from segrecon_jax import settings
from segrecon_jax.study import plan
from segrecon_jax.training import config_checks
from segrecon_jax.training import signals

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
    raise plan.StudyError(f'the study cannot set up the run {" ".join(flags)}: {type(e).__name__}: {e} (a config '
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


class StudyInterrupted(Exception):
  """SIGINT, SIGTERM or SIGHUP stopped the study: the running runs were sent it (`ForwardedSignals`) and waited for;
  `exit_code` is the shell's code for the signal (128 + its number)."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


class ForwardedSignals(signals.SignalHandlers):
  """`with ForwardedSignals(running) as stop:` sends each SIGINT, SIGTERM or SIGHUP the study receives on to the
  `main.py` processes that `running()` returns, and records it (`stop.signum`, `stop.count`) so that no further run
  starts.

  On the first signal each run stops after its current step and writes its checkpoint (main.py's own handling); on
  a second one it stops at once, without one. The runs are started in sessions of their own, so a Ctrl-C at the
  terminal reaches them once, through here, not a second time from the terminal; a hangup (the terminal closed),
  which their sessions no longer get, is sent on as SIGTERM. A signal the study was started ignoring (nohup, a
  background job) stays ignored (`KEEP_IGNORED`).
  """

  FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}
  SIGNALS = tuple(FORWARDED)
  KEEP_IGNORED = True

  def __init__(self, running: Callable[[], List[subprocess.Popen]]):
    self.signum: Optional[int] = None
    self.count = 0
    self._running = running

  def _handle(self, signum, frame) -> None:
    del frame
    self.signum, self.count = signum, self.count + 1
    processes = self._running()
    for process in processes:
      process.send_signal(self.FORWARDED[signum])
    then = ('they stop at once, without a checkpoint' if self.count > 1 else
            'each stops after its current step and writes its checkpoint (send it again to stop them at once, '
            'without one)')
    try:
      os.write(2, f'[study] {signal.Signals(signum).name} received: sent to the {len(processes)} running run(s); '
                  f'{then}. No further run starts; waiting for them to exit.\n'.encode())
    except OSError:  # No terminal left to say it on (a hangup).
      pass

  def forward_to(self, process: subprocess.Popen) -> None:
    """Sends the signal received so far to a process started just as it came."""
    if self.signum is not None:
      process.send_signal(self.FORWARDED[self.signum])


def check_runs(runs: Sequence[plan.Run]) -> None:
  """Parses every run's config as main.py will (`run_config`), so a bad override is refused before anything is
  recorded or started."""
  for run in runs:
    run_config(run.flags)


def starts_from(run: plan.Run) -> Optional[str]:
  """The workdir whose checkpoint the run starts from (`--config.init_from`), if any."""
  return next((f.split('=', 1)[1] for f in run.flags if f.startswith('--config.init_from=')), None)


def run_all(runs: Sequence[plan.Run], seconds_per_step: Optional[float] = None, jobs: int = 1) -> None:
  """Prints the plan, then trains and evaluates every run without metrics.json, one `main.py` process each (an
  interrupted run resumes from its workdir's checkpoint), `jobs` processes at a time (more than one shares an
  accelerator or the CPU cores between runs; on a GPU, set XLA_PYTHON_CLIENT_PREALLOCATE=false so that each process
  takes only the memory it uses). Runs start in their order, except that a run starting from another run of the
  list (`starts_from`) waits until that one has finished, and is not started if it failed. With several jobs every
  other run is tried, with one the first failure stops the rest; `plan.StudyError` then names each failed run and
  its log. A SIGINT, SIGTERM or SIGHUP is sent on to the running runs (`ForwardedSignals`), which are waited for;
  then `StudyInterrupted`. The runs' configs are checked by the caller (`check_runs`)."""
  todo = [run for run in runs if not is_finished(run.workdir)]
  print_plan(todo, len(runs) - len(todo), seconds_per_step)
  waiting, running, failed, stopped, blocked = list(todo), [], [], [], []
  pending = {run.workdir for run in todo}  # Not finished yet: what a run starting from one of them waits for.

  def startable() -> Optional[plan.Run]:
    return next((run for run in waiting if starts_from(run) not in pending), None)

  with ForwardedSignals(lambda: [process for _, process in running]) as stop:
    while running or (waiting and stop.signum is None):
      if not running and startable() is None:  # Everything left starts from a run that failed (or from one of them).
        for run in waiting:
          print(f'[study] NOT STARTED: {run.label}: the run it starts from, {starts_from(run)}, did not finish',
                flush=True)
        blocked, waiting = list(waiting), []
        break
      while waiting and len(running) < jobs and stop.signum is None and startable() is not None:
        run = startable()
        waiting.remove(run)
        command = _main_command(run)
        print(f'[study] {run.label}: {" ".join(command[1:])}', flush=True)
        os.makedirs(run.workdir, exist_ok=True)
        with open(_log(run), 'a') as log:
          running.append((run, subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)))
        stop.forward_to(running[-1][1])
      finished = [(run, process) for run, process in running if process.poll() is not None]
      if not finished:
        time.sleep(0.2)
      for run, process in finished:
        running.remove((run, process))
        if not process.returncode:
          pending.discard(run.workdir)
        if process.returncode and stop.signum is not None:
          stopped.append((run, process.returncode))
        elif process.returncode:
          failed.append(run)
          print(f'[study] FAILED (exit {process.returncode}): {run.label}; see {_log(run)}', flush=True)
          if jobs == 1:
            waiting.clear()  # One at a time: stop at the first failure, as before.
  if stop.signum is not None:
    how = (' at once, without a checkpoint (the last one of each workdir is kept)' if stop.count > 1 else
           ', each after its current step with a checkpoint (main.py\'s own handling; a run not yet training has '
           'none to write)')
    raise StudyInterrupted(
        f'{signal.Signals(stop.signum).name}: the study stopped. {len(stopped)} run(s) were stopped{how}'
        + (': ' + '; '.join(f'{run.label} (exit {code}, log: {_log(run)})' for run, code in stopped) if stopped else '')
        + f'; {len(waiting)} run(s) not started' + (f'; {len(failed)} failed before the signal' if failed else '')
        + '. Finished runs are skipped on resume, and a stopped run resumes from its checkpoint.', stop.signum)
  if failed:
    raise plan.StudyError(f'{len(failed)} run(s) failed: ' + '; '.join(
        f'{run.label} (log: {_log(run)})' for run in failed) + '. Each log ends with the reason' + (
        f'; {len(blocked)} run(s) were not started, as the run each starts from failed: '
        + '; '.join(run.label for run in blocked) if blocked else '') + '. Once fixed, run the same command again: '
        'finished runs are skipped.')


def attention_all(runs: Sequence[plan.Run]) -> None:
  """`main.py --mode=attention` on every finished run of `runs` without attention/attention.json."""
  finished = [run for run in runs if is_finished(run.workdir)]
  todo = [run for run in finished if not os.path.exists(os.path.join(run.workdir, 'attention', 'attention.json'))]
  print(f'[study] pseudo-attention: {len(todo)} run(s) to do ({len(finished) - len(todo)} already done).', flush=True)
  for run in todo:
    command = _main_command(run, '--mode=attention')
    print(f'[study] attention of {run.label}: {" ".join(command[1:])}', flush=True)
    with open(_log(run), 'a') as log:
      try:
        subprocess.run(command, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
      except subprocess.CalledProcessError as e:
        raise plan.StudyError(f'the pseudo-attention of {run.label} failed (exit {e.returncode}); its log, '
                              f'{_log(run)}, ends with the reason') from None
