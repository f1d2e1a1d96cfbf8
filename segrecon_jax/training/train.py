"""The training loop: runtime set-up, the epoch loop over the stabilization schedule, logging, checkpoints, eval.

`train_and_evaluate(config, workdir)` is what `main.py --mode=train` runs. The pure steps live in `steps.py`,
checkpoints and the resume policy in `checkpoints.py`, the workdir lock in `workdir.py`, evaluation and predict in
`inference.py`, device layout in `parallel.py`.

The loop reads top to bottom as step, log, evaluate, checkpoint, stop on a signal; where it starts (`_start`: the
restored, warm-started or initial state), the compiled programs (`_Programs`) and the log window (`_LogWindow`) are
their own pieces, and the writer, the bar and the compiles are closed once, however the loop ends.

The step count is the loop's own (it starts at the restored state's step); the progress bar only displays it.
Train scalars are means over the `log_every_steps` window, read from the devices once per log step (no host sync
per step), and every log step and eval also logs one line, so batch jobs without a terminal show progress.

The sampled fraction is a static argument of the pmapped train step, so each distinct fraction of the
stabilization schedule needs its own executable. Only the masks depend on it, so `compiled.TrainSteps` compiles a
small mask sampler per fraction and the update (model, losses, optimizer) once. With `config.compile_ahead` they
are all queued at the first step (`parallel.AheadOfTimeSteps`) and compile in schedule order on background
threads (`config.compile_workers`) while the earlier levels train; the loop only waits when a level starts before
its executable is ready. The time waited is what the `train_compile_wait_seconds` scalar and metrics.json
report; `train_compile_seconds` is the compiles' own time.

SIGTERM (what SLURM and TPU preemption send first) and SIGINT stop training at the next step boundary: the loop
writes a checkpoint there (with the steps of the unfinished epoch, which a resume skips), waits for it, releases
the workdir and raises `TrainingInterrupted`, whose message says how to resume; a resumed run trains exactly as an
uninterrupted one. A second signal stops at once, without a checkpoint.
"""

import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import shlex
import signal
import sys
import time
from typing import Any, Dict, Optional

import jax
import ml_collections
import numpy as np

from segrecon_jax.models import pretrained
from segrecon_jax.training import checkpoints
from segrecon_jax.training import compiled
from segrecon_jax.training import config_checks
from segrecon_jax.training import inference
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import parallel
from segrecon_jax.training import reporting
from segrecon_jax.training import signals
from segrecon_jax.training import steps
from segrecon_jax.training import warm_start
from segrecon_jax.training import workdir as workdir_lib
from segrecon_jax.training import writer as writer_lib


class NonFiniteError(FloatingPointError):
  """The loss, a gradient or the train state stopped being finite; the last good checkpoint stays in the workdir."""


class TrainingInterrupted(Exception):
  """SIGTERM or SIGINT stopped training at a step boundary after its checkpoint was written; `exit_code` is the
  shell's code for the signal (128 + its number)."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


class StopSignals(signals.SignalHandlers):
  """`with StopSignals() as stop:` turns the first SIGTERM or SIGINT into a request (`stop.signum`) that the loop
  reads between steps; a second one ends the process at once. Also where the process was started ignoring them (a
  background job): a study or a scheduler stops a run with them."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: Optional[int] = None

  def _handle(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.signum is not None:  # Second signal: stop now. The workdir lock goes with the process.
      os.write(2, f'{name} again: stopping at once, without a checkpoint; the last checkpoint in the workdir '
                  'is kept (a checkpoint being written is discarded).\n'.encode())
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.signum = signum
    os.write(2, f'{name} received: training stops after the current step and writes a checkpoint (send it '
                'again to stop at once, without one).\n'.encode())

  def requested(self, step: int, every: int) -> Optional[int]:
    """The signal to stop for, or None. With several processes they agree every `every` steps (all of them call
    this at the same steps), so every process stops after the same step."""
    if jax.process_count() == 1:
      return self.signum
    if step % every:
      return None
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    signums = np.asarray(multihost_utils.process_allgather(np.int32(self.signum or 0)))
    return int(signums.max()) or None


def _resume_command() -> str:
  if sys.argv and os.path.basename(sys.argv[0]) == 'main.py':
    return ': python ' + shlex.join(sys.argv)
  return ' (the same config and workdir)'


def _last_good(manager) -> str:
  step = manager.latest_step()
  if step is None:
    return ('No checkpoint was written before it, so there is none to resume from: start the run again (for example '
            'with a lower config.learning_rate).')
  return f'The last good checkpoint is step {step} in {manager.directory}.'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Trains with resume from the latest checkpoint of `workdir`, then evaluates; returns the final metrics.

  Process 0 holds the workdir lock for the whole run (a second run into the same workdir stops at once).
  """
  config_checks.check_config(config)
  parallel.setup_runtime(config)
  workdir = workdir_lib.prepare(workdir)
  lock = workdir_lib.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock, StopSignals() as stop:
    return _train_and_evaluate(config, workdir, stop)


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


def compile_summary(compiled_steps) -> Dict[str, float]:
  """The train step's programs compiled so far (`compiled.TrainSteps`: a mask sampler per sampled fraction and the
  update), their compile seconds, and the seconds the loop waited for them."""
  if compiled_steps is None:
    return {'train_compiles': 0, 'train_compile_seconds': 0.0, 'train_compile_wait_seconds': 0.0}
  return {'train_compiles': len(compiled_steps.compile_seconds),
          'train_compile_seconds': float(sum(compiled_steps.compile_seconds.values())),
          'train_compile_wait_seconds': float(sum(compiled_steps.wait_seconds.values()))}


def initial_state(config, model, tx, shape) -> steps.TrainState:
  """`steps.initial_state` with the pretrained weights that `config.model` names (MANet's `encoder_weights`, read
  by `models.pretrained`) written over the random initialization; the random one where it names none."""
  state = steps.initial_state(config, model, tx, shape)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  loaded = pretrained.apply_pretrained(config.model, variables)
  if loaded is variables:
    return state
  return state.replace(params=loaded['params'], batch_stats=loaded['batch_stats'], opt_state=tx.init(loaded['params']))


@dataclasses.dataclass
class _Start:
  """What the loop starts from: the data, the model, the host train state (restored, warm-started or initial) and
  where in the schedule it stands."""
  train_source: Any
  eval_source: Any
  data_info: Dict[str, Any]
  total_steps: int
  model: Any
  tx: Any
  state: steps.TrainState
  manager: Any
  start_epoch: int
  skip_steps: int  # Steps of start_epoch already trained (a run stopped by a signal).
  resumed: bool


def _start(config, workdir: str) -> _Start:
  """Reads the splits, builds the model and optimizer, and restores the workdir's latest intact checkpoint (or
  warm-starts a new run from `config.init_from`)."""
  parallel.check_batch_size(config.batch_size)
  parallel.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  train_source = input_pipeline.load_split(config, config.train_split)
  eval_source = input_pipeline.load_split(config, config.eval_split)
  data_info = input_pipeline.data_info(config)
  total_steps = config.num_epochs * input_pipeline.num_train_steps_per_epoch(train_source, config)
  model, tx = steps.create_model(config), steps.create_optimizer(config, total_steps)
  shape = input_pipeline.image_shape(train_source)
  config_checks.check_masks_fit(config, shape[-1], f'{config.dataset}/{config.dataset_config}')
  state = initial_state(config, model, tx, shape)
  manager = checkpoints.checkpoint_manager(workdir, config)
  restored, meta = checkpoints.restore_checkpoint(
      manager, state, check=lambda meta: checkpoints.check_resume(meta, config, data_info, manager.directory),
      set_aside_corrupt=True)
  if restored is None:
    template_of = lambda source: steps.initial_state(source, steps.create_model(source),
                                                     steps.create_optimizer(source), shape)
    return _Start(train_source, eval_source, data_info, total_steps, model, tx,
                  warm_start.initialize(config, state, data_info, tx, template_of), manager, 1, 0, False)
  skip_steps = meta.get('steps_into_epoch', 0)
  logging.info('Resumed from %s at step %d (epoch %d done%s).', manager.directory, int(restored.step), meta['epoch'],
               f', {skip_steps} steps of epoch {meta["epoch"] + 1}' if skip_steps else '')
  return _Start(train_source, eval_source, data_info, total_steps, model, tx, restored, manager, meta['epoch'] + 1,
                skip_steps, True)


class _Programs:
  """The compiled train step of each sampled fraction and the eval step. `compiled.TrainSteps` needs a batch's
  shapes, so they are made at the first batch; with `config.compile_ahead` every level of the schedule (in order)
  and the eval step are queued then. `waited()` is the compile time the loop waited for since it was last read (so
  the log's steps/s leave it out). A context manager: no compile is left running when training stops."""

  def __init__(self, model, tx, config, eval_source, p_eval_step, fractions):
    self._model, self._tx, self._config = model, tx, config
    self._eval_source, self._p_eval_step, self._fractions = eval_source, p_eval_step, fractions
    self.steps = None  # compiled.TrainSteps
    self._eval = None
    self._fraction, self._step = None, None
    self._waited = 0.0

  def __enter__(self) -> '_Programs':
    return self

  def __exit__(self, *exc) -> None:
    if self.steps is not None:
      self.steps.close()  # (The eval step shares its thread.)

  def train_step(self, state, batch, rng, fraction: float):
    """The executable of `fraction`, compiled (or waited for) on its first use."""
    if self.steps is None:
      self.steps = compiled.TrainSteps(self._model, self._tx, self._config, state, batch, rng,
                                       workers=self._config.compile_workers or None)
      eval_batch = parallel.shard(next(input_pipeline.eval_batches(self._eval_source, self._config)))
      self._eval = parallel.AheadOfTimeSteps(self._p_eval_step, (state, eval_batch), 'eval step', static=False,
                                             after=self.steps.masks)
      if self._config.compile_ahead:
        for upcoming in self._fractions:
          self.steps.prefetch(upcoming)
        self._eval.prefetch(None)
    if fraction != self._fraction:  # A new level of the schedule (or the first step of this run).
      first = self._fraction is None
      self._step, self._fraction = self.steps.get(fraction), fraction
      self._waited += self.steps.wait_seconds.get(fraction, 0.0) + (
          self.steps.wait_seconds.get('update', 0.0) if first else 0.0)
    return self._step

  def eval_step(self):
    return self._eval.get(None) if self._eval is not None else self._p_eval_step

  def waited(self) -> float:
    waited, self._waited = self._waited, 0.0
    return waited

  def summary(self) -> Dict[str, float]:
    return compile_summary(self.steps)

  def log_summary(self) -> None:
    if self.steps is None:
      return
    compile_seconds, wait_seconds = self.steps.compile_seconds, self.steps.wait_seconds
    logging.info('Train step compiles: %d, %.1f s of compiling, %.1f s of it waited for (seconds compiled, '
                 'waited: %s).', len(compile_seconds), sum(compile_seconds.values()), sum(wait_seconds.values()),
                 {k if isinstance(k, str) else f'masks {k:.4f}': (round(v, 1), round(wait_seconds.get(k, 0.0), 1))
                  for k, v in compile_seconds.items()})


class _LogWindow:
  """The train metrics of the steps since the last log step, kept on the devices and read at the next one.

  `check` reads them, stops on a non-finite step, and on a log step writes their means (the scalars, a log line
  and the progress bar's postfix) and starts a new window; otherwise the window goes on into the next log step.
  """

  def __init__(self, config, total_steps: int, writer, progress, manager):
    self._config, self._total_steps = config, total_steps
    self._writer, self._progress, self._manager = writer, progress, manager
    self._terms = []
    self._start, self._compile_seconds = time.time(), 0.0

  def add(self, terms, compile_seconds: float) -> None:
    self._terms.append(terms)
    self._compile_seconds += compile_seconds

  def check(self, step: int, epoch: int, fraction: float, log: bool) -> None:
    if not self._terms:
      return
    host = [parallel.unreplicate(terms) for terms in jax.device_get(self._terms)]
    finite = np.array([h['finite'] for h in host])
    if finite.min() < 1.0:
      bad_step = step - len(self._terms) + int(np.argmin(finite)) + 1
      checkpoints.wait(self._manager)
      raise NonFiniteError(f'non-finite loss or gradient at step {bad_step} (epoch {epoch}); the update was skipped '
                           f'and training stopped. {_last_good(self._manager)}')
    if not log:
      return
    config = self._config
    means = {k: float(np.mean([h[k] for h in host])) for k in host[0] if k not in ('finite', 'sampled_fraction')}
    elapsed = max(time.time() - self._start - self._compile_seconds, 1e-9)
    steps_per_second = len(self._terms) / elapsed
    means.update(sampled_fraction=fraction, epoch=epoch, steps_per_second=steps_per_second,
                 slices_per_second=steps_per_second * config.batch_size)
    self._writer.write_scalars(step, {f'train_{k}': v for k, v in means.items()})
    eta = (self._total_steps - step) / steps_per_second
    terms = ' '.join(f'{k} {means[k]:.4f}' for k in ('loss', 'recon_loss', 'seg_loss', 'grad_norm') if k in means)
    if jax.process_index() == 0:
      logging.info('step %d/%d epoch %d/%d sampled_fraction %.4f %s | %.2f steps/s, %.1f slices/s, ETA %s', step,
                   self._total_steps, epoch, config.num_epochs, fraction, terms, steps_per_second,
                   means['slices_per_second'], _format_seconds(eta))
    self._progress.set_postfix(loss=f"{means['loss']:.4f}", frac=f'{fraction:.3f}',
                               slices_s=f"{means['slices_per_second']:.1f}")
    self._terms.clear()
    self._start, self._compile_seconds = time.time(), 0.0


def _checked_host_state(state, step: int, epoch: int, manager):
  """The state on the host, after checking every array (params, batch statistics, optimizer state) is finite: a
  non-finite state is neither evaluated nor checkpointed."""
  host_state = parallel.unreplicate(state)
  bad = checkpoints.non_finite_arrays(host_state)
  if bad:
    checkpoints.wait(manager)
    raise NonFiniteError(f'non-finite values in the train state after step {step} (epoch {epoch}): '
                         f'{", ".join(bad[:4])}{", ..." if len(bad) > 4 else ""}; training stopped without '
                         f'evaluating or writing a checkpoint. {_last_good(manager)}')
  return host_state


def _train_and_evaluate(config, workdir: str, stop: StopSignals) -> Dict[str, float]:
  start = _start(config, workdir)
  manager, eval_source = start.manager, start.eval_source
  step = int(start.state.step)
  state = parallel.replicate(start.state)
  rng = parallel.replicate(jax.random.PRNGKey(config.seed + 1))
  p_eval_step = parallel.pmap(functools.partial(steps.eval_step, model=start.model, config=config))
  epochs = range(start.start_epoch, config.num_epochs + 1)
  fractions = list(dict.fromkeys(steps.sampled_fraction_for_epoch(config, epoch) for epoch in epochs))
  results = None
  # Closed once, in reverse order, however the loop ends: the bar's line ends before main.py's paragraph, and
  # scalars.jsonl is closed, not leaked.
  with contextlib.ExitStack() as resources:
    writer = resources.enter_context(contextlib.closing(
        writer_lib.SummaryWriter(workdir, resume_step=step if start.resumed else None)))
    progress = resources.enter_context(writer_lib.progress_bar(config, total=start.total_steps, initial=step))
    programs = resources.enter_context(_Programs(start.model, start.tx, config, eval_source, p_eval_step, fractions))
    window = _LogWindow(config, start.total_steps, writer, progress, manager)
    writer.write_hparams(config)
    for epoch in epochs:
      fraction = steps.sampled_fraction_for_epoch(config, epoch)
      epoch_start = time.time()
      epoch_steps = start.skip_steps if epoch == start.start_epoch else 0
      batches = input_pipeline.train_batches(start.train_source, config, epoch)
      for batch in itertools.islice(batches, epoch_steps, None):  # The same order as an uninterrupted run.
        batch = parallel.shard(batch)
        # Step.
        state, terms = programs.train_step(state, batch, rng, fraction)(state, batch, rng)
        step, epoch_steps = step + 1, epoch_steps + 1
        progress.update(1)
        # Log.
        window.add(terms, programs.waited())
        if step % config.log_every_steps == 0:
          window.check(step, epoch, fraction, log=True)
        # Stop on a signal, with a checkpoint of the steps taken.
        signum = stop.requested(step, config.log_every_steps)
        if signum is not None:
          window.check(step, epoch, fraction, log=False)
          checkpoints.save_checkpoint(manager, _checked_host_state(state, step, epoch, manager), epoch - 1, config,
                                      start.data_info, steps_into_epoch=epoch_steps)
          checkpoints.wait(manager)
          raise TrainingInterrupted(
              f'{signal.Signals(signum).name}: training stopped after step {step} (epoch {epoch}, step '
              f'{epoch_steps} of it) and wrote its checkpoint to {manager.directory}. To resume, run the same '
              f'command again{_resume_command()}', signum)
      window.check(step, epoch, fraction, log=False)  # Every step finite before this epoch's checkpoint is written.
      writer.write_scalars(step, {**programs.summary(), 'train_epoch_seconds': time.time() - epoch_start})
      last = epoch == config.num_epochs
      evaluate = last or epoch % config.eval_every_epochs == 0
      save = last or epoch % config.checkpoint_every_epochs == 0
      host_state = _checked_host_state(state, step, epoch, manager) if evaluate or save else None
      # Evaluate.
      if evaluate:
        results, images = inference.evaluate_state(programs.eval_step(), state, eval_source, config)
        writer.write_scalars(step, {f'eval_{k}': v for k, v in results.items()})
        writer.write_images(step, images, config)
        inference.log_results(f'eval at step {step} (epoch {epoch})', results)
      # Checkpoint.
      if save:
        checkpoints.save_checkpoint(manager, host_state, epoch, config, start.data_info)
    progress.close()
    checkpoints.wait(manager)
    programs.log_summary()
    summary = programs.summary()
  if results is None:  # Resumed after the last epoch: evaluate the restored state.
    results, _ = inference.evaluate_state(p_eval_step, state, eval_source, config)
  reporting.write_results(workdir, config, results, extra={**summary, 'step': step, 'seed': config.seed,
                                                           'config': checkpoints.jsonable(config.to_dict())},
                          per_slice=results.per_slice)
  return results
