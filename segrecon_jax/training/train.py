"""The training loop: runtime set-up, the epoch loop over the stabilization schedule, logging, checkpoints, eval.

`train_and_evaluate(config, workdir)` is what `main.py --mode=train` runs. The pure steps live in `steps.py`,
checkpoints and the resume policy in `checkpoints.py`, the workdir lock in `workdir.py`, evaluation and predict in
`inference.py`, device layout in `parallel.py`.

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
import functools
import itertools
import logging
import os
import shlex
import signal
import sys
import threading
import time
from typing import Dict, Optional

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


class StopSignals:
  """`with StopSignals() as stop:` turns the first SIGTERM or SIGINT into a request (`stop.signum`) that the loop
  reads between steps; a second one ends the process at once. Handlers are installed from the main thread only
  (Python's rule) and the previous ones come back at exit."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous = {}

  def __enter__(self) -> 'StopSignals':
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

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


def _train_and_evaluate(config, workdir: str, stop: StopSignals) -> Dict[str, float]:
  parallel.check_batch_size(config.batch_size)
  parallel.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  train_source = input_pipeline.load_split(config, config.train_split)
  eval_source = input_pipeline.load_split(config, config.eval_split)
  data_info = input_pipeline.data_info(config)
  steps_per_epoch = input_pipeline.num_train_steps_per_epoch(train_source, config)
  total_steps = config.num_epochs * steps_per_epoch

  model, tx = steps.create_model(config), steps.create_optimizer(config, total_steps)
  shape = input_pipeline.image_shape(train_source)
  steps.check_masks_fit(config, shape[-1], f'{config.dataset}/{config.dataset_config}')
  state = initial_state(config, model, tx, shape)
  manager = checkpoints.checkpoint_manager(workdir, config)
  restored, meta = checkpoints.restore_checkpoint(
      manager, state, check=lambda meta: checkpoints.check_resume(meta, config, data_info, manager.directory),
      set_aside_corrupt=True)
  start_epoch, skip_steps = 1, 0  # Steps of start_epoch already trained (a run stopped by a signal).
  if restored is None:
    state = warm_start.initialize(config, state, shape, data_info, tx)
  else:
    state, start_epoch, skip_steps = restored, meta['epoch'] + 1, meta.get('steps_into_epoch', 0)
    logging.info('Resumed from %s at step %d (epoch %d done%s).', manager.directory, int(state.step), meta['epoch'],
                 f', {skip_steps} steps of epoch {start_epoch}' if skip_steps else '')
  step = int(state.step)
  writer = writer_lib.SummaryWriter(workdir, resume_step=step if restored is not None else None)
  writer.write_hparams(config)

  p_eval_step = parallel.pmap(functools.partial(steps.eval_step, model=model, config=config))
  state = parallel.replicate(state)
  rng = parallel.replicate(jax.random.PRNGKey(config.seed + 1))

  # The distinct sampled fractions still to train, in schedule order.
  fractions = list(dict.fromkeys(steps.sampled_fraction_for_epoch(config, epoch)
                                 for epoch in range(start_epoch, config.num_epochs + 1)))
  compiled_steps = None  # compiled.TrainSteps, made at the first batch (it needs the batch's shapes).
  compiled_eval = None  # The same for the eval step (no static argument).
  train_step, train_fraction = None, None  # The executable of the current sampled fraction.
  results = None
  window = []  # Device metrics of the steps since the last log step, read at the next one.
  window_start, window_compile_seconds = time.time(), 0.0
  progress = writer_lib.progress_bar(config, total=total_steps, initial=step)

  def flush_window(epoch: int, fraction: float, log: bool) -> None:
    """Checks every step of the window for finiteness; on a log step, writes the window's means."""
    nonlocal window_start, window_compile_seconds
    if not window:
      return
    host = [parallel.unreplicate(terms) for terms in jax.device_get(window)]
    finite = np.array([h['finite'] for h in host])
    if finite.min() < 1.0:
      bad_step = step - len(window) + int(np.argmin(finite)) + 1
      manager.wait_until_finished()
      raise NonFiniteError(f'non-finite loss or gradient at step {bad_step} (epoch {epoch}); the update was skipped '
                           f'and training stopped. {_last_good(manager)}')
    if not log:
      return
    means = {k: float(np.mean([h[k] for h in host])) for k in host[0] if k not in ('finite', 'sampled_fraction')}
    elapsed = max(time.time() - window_start - window_compile_seconds, 1e-9)
    steps_per_second = len(window) / elapsed
    means.update(sampled_fraction=fraction, epoch=epoch, steps_per_second=steps_per_second,
                 slices_per_second=steps_per_second * config.batch_size)
    writer.write_scalars(step, {f'train_{k}': v for k, v in means.items()})
    eta = (total_steps - step) / steps_per_second
    terms = ' '.join(f'{k} {means[k]:.4f}' for k in ('loss', 'recon_loss', 'seg_loss', 'grad_norm') if k in means)
    if jax.process_index() == 0:
      logging.info('step %d/%d epoch %d/%d sampled_fraction %.4f %s | %.2f steps/s, %.1f slices/s, ETA %s', step,
                   total_steps, epoch, config.num_epochs, fraction, terms, steps_per_second,
                   means['slices_per_second'], _format_seconds(eta))
    progress.set_postfix(loss=f"{means['loss']:.4f}", frac=f'{fraction:.3f}',
                         slices_s=f"{means['slices_per_second']:.1f}")
    window.clear()
    window_start, window_compile_seconds = time.time(), 0.0

  def checked_host_state(epoch: int):
    """The state on the host, after checking every array (params, batch statistics, optimizer state) is finite:
    a non-finite state is neither evaluated nor checkpointed."""
    host_state = parallel.unreplicate(state)
    bad = checkpoints.non_finite_arrays(host_state)
    if bad:
      manager.wait_until_finished()
      raise NonFiniteError(f'non-finite values in the train state after step {step} (epoch {epoch}): '
                           f'{", ".join(bad[:4])}{", ..." if len(bad) > 4 else ""}; training stopped without '
                           f'evaluating or writing a checkpoint. {_last_good(manager)}')
    return host_state

  try:
    for epoch in range(start_epoch, config.num_epochs + 1):
      fraction = steps.sampled_fraction_for_epoch(config, epoch)
      epoch_start = time.time()
      epoch_steps = skip_steps if epoch == start_epoch else 0
      batches = input_pipeline.train_batches(train_source, config, epoch)
      for batch in itertools.islice(batches, epoch_steps, None):  # The same order as an uninterrupted run.
        batch = parallel.shard(batch)
        if compiled_steps is None:
          compiled_steps = compiled.TrainSteps(model, tx, config, state, batch, rng,
                                            workers=config.compile_workers or None)
          eval_batch = parallel.shard(next(input_pipeline.eval_batches(eval_source, config)))
          compiled_eval = parallel.AheadOfTimeSteps(p_eval_step, (state, eval_batch), 'eval step', static=False,
                                                    after=compiled_steps.masks)
          if config.compile_ahead:  # Every level of the schedule in order, then the eval step.
            for upcoming in fractions:
              compiled_steps.prefetch(upcoming)
            compiled_eval.prefetch(None)
        if train_fraction != fraction:  # A new level of the schedule (or the first step of this run).
          first = train_fraction is None
          train_step, train_fraction = compiled_steps.get(fraction), fraction
          window_compile_seconds += compiled_steps.wait_seconds.get(fraction, 0.0) + (
              compiled_steps.wait_seconds.get('update', 0.0) if first else 0.0)
        state, terms = train_step(state, batch, rng)
        step += 1
        epoch_steps += 1
        window.append(terms)
        progress.update(1)
        if step % config.log_every_steps == 0:
          flush_window(epoch, fraction, log=True)
        signum = stop.requested(step, config.log_every_steps)
        if signum is not None:
          flush_window(epoch, fraction, log=False)
          checkpoints.save_checkpoint(manager, checked_host_state(epoch), epoch - 1, config, data_info,
                                      steps_into_epoch=epoch_steps)
          manager.wait_until_finished()
          progress.close()
          writer.close()
          raise TrainingInterrupted(
              f'{signal.Signals(signum).name}: training stopped after step {step} (epoch {epoch}, step '
              f'{epoch_steps} of it) and wrote its checkpoint to {manager.directory}. To resume, run the same '
              f'command again{_resume_command()}', signum)
      flush_window(epoch, fraction, log=False)  # Every step finite before this epoch's checkpoint can be written.
      writer.write_scalars(step, {**compile_summary(compiled_steps), 'train_epoch_seconds': time.time() - epoch_start})
      last = epoch == config.num_epochs
      evaluate = last or epoch % config.eval_every_epochs == 0
      save = last or epoch % config.checkpoint_every_epochs == 0
      host_state = checked_host_state(epoch) if evaluate or save else None
      if evaluate:
        eval_step = compiled_eval.get(None) if compiled_eval is not None else p_eval_step
        results, images = inference.evaluate_state(eval_step, state, eval_source, config)
        writer.write_scalars(step, {f'eval_{k}': v for k, v in results.items()})
        writer.write_images(step, images, config)
        inference.log_results(f'eval at step {step} (epoch {epoch})', results)
      if save:
        checkpoints.save_checkpoint(manager, host_state, epoch, config, data_info)
  except BaseException:  # The bar's line ends before main.py's paragraph; scalars.jsonl is closed, not leaked.
    progress.close()
    writer.close()
    raise
  finally:
    if compiled_steps is not None:  # Also when training stops early (NonFiniteError): no compile left running.
      compiled_steps.close()  # (compiled_eval shares its thread.)
  progress.close()
  manager.wait_until_finished()
  if compiled_steps is not None:
    compile_seconds, wait_seconds = compiled_steps.compile_seconds, compiled_steps.wait_seconds
    logging.info('Train step compiles: %d, %.1f s of compiling, %.1f s of it waited for (seconds compiled, '
                 'waited: %s).', len(compile_seconds), sum(compile_seconds.values()), sum(wait_seconds.values()),
                 {k if isinstance(k, str) else f'masks {k:.4f}': (round(v, 1), round(wait_seconds.get(k, 0.0), 1))
                  for k, v in compile_seconds.items()})
  if results is None:  # Resumed after the last epoch: evaluate the restored state.
    results, _ = inference.evaluate_state(p_eval_step, state, eval_source, config)
  reporting.write_results(workdir, config, results, extra={**compile_summary(compiled_steps),
                                                           'step': step, 'seed': config.seed,
                                                           'config': checkpoints.jsonable(config.to_dict())},
                          per_slice=results.per_slice)
  writer.close()
  return results
