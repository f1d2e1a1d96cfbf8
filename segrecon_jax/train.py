"""The training loop: runtime set-up, the epoch loop over the stabilization schedule, logging, checkpoints, eval.

`train_and_evaluate(config, workdir)` is what `main.py --mode=train` runs. The pure steps live in `steps.py`,
checkpoints and the resume policy in `checkpoints.py`, the workdir lock in `workdir.py`, evaluation and predict in
`inference.py`, device layout in `parallel.py`.

The step count is the loop's own (it starts at the restored state's step); the progress bar only displays it.
Train scalars are means over the `log_every_steps` window, read from the devices once per log step (no host sync
per step), and every log step and eval also logs one line, so batch jobs without a terminal show progress.
"""

import contextlib
import functools
import logging
import time
from typing import Dict

import jax
import ml_collections
import numpy as np

from segrecon_jax import checkpoints
from segrecon_jax import config_checks
from segrecon_jax import inference
from segrecon_jax import input_pipeline
from segrecon_jax import parallel
from segrecon_jax import reporting
from segrecon_jax import steps
from segrecon_jax import workdir as workdir_lib


class NonFiniteError(FloatingPointError):
  """The loss or a gradient stopped being finite; the last good checkpoint stays in the workdir."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Trains with resume from the latest checkpoint of `workdir`, then evaluates; returns the final metrics.

  Process 0 holds the workdir lock for the whole run (a second run into the same workdir stops at once).
  """
  config_checks.check_config(config)
  parallel.setup_runtime(config)
  workdir = workdir_lib.prepare(workdir)
  lock = workdir_lib.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    return _train_and_evaluate(config, workdir)


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


def _train_and_evaluate(config, workdir: str) -> Dict[str, float]:
  parallel.check_batch_size(config.batch_size)
  parallel.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  train_source = input_pipeline.load_split(config, config.train_split)
  eval_source = input_pipeline.load_split(config, config.eval_split)
  data_info = input_pipeline.data_info(config)
  steps_per_epoch = input_pipeline.num_train_steps_per_epoch(train_source, config)
  total_steps = config.num_epochs * steps_per_epoch

  model, tx = steps.create_model(config), steps.create_optimizer(config)
  state = steps.initial_state(config, model, tx, steps.image_shape(train_source, config))
  manager = checkpoints.checkpoint_manager(workdir, config)
  restored, meta = checkpoints.restore_checkpoint(
      manager, state, check=lambda meta: checkpoints.check_resume(meta, config, data_info, manager.directory))
  start_epoch = 1
  if restored is not None:
    state, start_epoch = restored, meta['epoch'] + 1
    logging.info('Resumed from %s at step %d (epoch %d done).', manager.directory, int(state.step), meta['epoch'])
  step = int(state.step)
  writer = reporting.SummaryWriter(workdir)
  writer.write_hparams(config)

  p_train_step = parallel.pmap(functools.partial(steps.train_step, model=model, tx=tx, config=config),
                               static_broadcasted_argnums=(3,), donate_argnums=(0,))
  p_eval_step = parallel.pmap(functools.partial(steps.eval_step, model=model, config=config))
  state = parallel.replicate(state)
  rng = parallel.replicate(jax.random.PRNGKey(config.seed + 1))

  compile_seconds, results = {}, None
  window = []  # Device metrics of the steps since the last log step, read at the next one.
  window_start, window_compile_seconds = time.time(), 0.0
  progress = reporting.progress_bar(config, total=total_steps, initial=step)

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
                           f'and training stopped. The last good checkpoint is step {manager.latest_step()} in '
                           f'{manager.directory}.')
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

  for epoch in range(start_epoch, config.num_epochs + 1):
    fraction = steps.sampled_fraction_for_epoch(config, epoch)
    epoch_start = time.time()
    for batch in input_pipeline.train_batches(train_source, config, epoch):
      first_of_fraction = fraction not in compile_seconds
      step_start = time.time()
      state, terms = p_train_step(state, parallel.shard(batch), rng, fraction)
      step += 1
      window.append(terms)
      if first_of_fraction:
        jax.block_until_ready(terms)
        compile_seconds[fraction] = time.time() - step_start
        window_compile_seconds += compile_seconds[fraction]
        logging.info('Compiled the train step for sampled fraction %.4f in %.1f s (%d compiles so far).',
                     fraction, compile_seconds[fraction], len(compile_seconds))
      progress.update(1)
      if step % config.log_every_steps == 0:
        flush_window(epoch, fraction, log=True)
    flush_window(epoch, fraction, log=False)  # Every step finite before this epoch's checkpoint can be written.
    writer.write_scalars(step, {'train_compiles': len(compile_seconds),
                                'train_compile_seconds': sum(compile_seconds.values()),
                                'train_epoch_seconds': time.time() - epoch_start})
    last = epoch == config.num_epochs
    if last or epoch % config.eval_every_epochs == 0:
      results, images = inference.evaluate_state(p_eval_step, state, eval_source, config)
      writer.write_scalars(step, {f'eval_{k}': v for k, v in results.items()})
      writer.write_images(step, images, config)
      inference.log_results(f'eval at step {step} (epoch {epoch})', results)
    if last or epoch % config.checkpoint_every_epochs == 0:
      checkpoints.save_checkpoint(manager, state, epoch, config, data_info)
  progress.close()
  manager.wait_until_finished()
  logging.info('Train step compiles: %d, %.1f s in total (%s).', len(compile_seconds),
               sum(compile_seconds.values()), {f'{k:.4f}': round(v, 1) for k, v in compile_seconds.items()})
  if results is None:  # Resumed after the last epoch: evaluate the restored state.
    results, _ = inference.evaluate_state(p_eval_step, state, eval_source, config)
  reporting.write_results(workdir, config, results, extra={'train_compiles': len(compile_seconds),
                                                           'train_compile_seconds': sum(compile_seconds.values()),
                                                           'step': step, 'seed': config.seed,
                                                           'config': checkpoints.jsonable(config.to_dict())})
  writer.close()
  return results
