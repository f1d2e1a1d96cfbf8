"""Training and evaluation: the pmapped train/eval steps, the epoch loop with the stabilization schedule, checkpoints.

`train_and_evaluate(config, workdir)` is what `main.py --mode=train` runs; `evaluate` and `predict` restore the
latest checkpoint of a workdir. Device layout (pmap, sharding) lives in `parallel.py`.
"""

import collections
import functools
import json
import logging
import os
import time
from typing import Any, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from segrecon_jax import input_pipeline
from segrecon_jax import losses
from segrecon_jax import metrics as metrics_lib
from segrecon_jax import models
from segrecon_jax import mri
from segrecon_jax import parallel
from segrecon_jax import reporting

# Traces of the train step, keyed by sampled fraction: each distinct fraction compiles the step once.
TRAIN_STEP_TRACES = collections.Counter()


class NonFiniteError(FloatingPointError):
  """The loss or a gradient stopped being finite; the last good checkpoint stays in the workdir."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


# ---------------------------------------------------------------------------------------------------------------
# Model, optimizer, state.


RECON_ONLY_MODELS = ('unet', 'cascade')  # Solo reconstruction: no segmentation output, no Dice term.


def is_joint(config) -> bool:
  """Models with a segmentation output (trained with the Dice term and evaluated with Dice)."""
  return config.model.name not in RECON_ONLY_MODELS


def create_model(config, bn_axis_name: Optional[str] = parallel.AXIS_NAME):
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  return models.get_model(config.model, dtype=dtype, bn_axis_name=bn_axis_name)


def create_optimizer(config) -> optax.GradientTransformation:
  if config.optimizer != 'adam':
    raise ValueError(f"config.optimizer={config.optimizer!r}: only 'adam' (the paper's optimizer) is supported")
  return optax.adam(config.learning_rate, b1=config.b1, b2=config.b2)


def image_shape(source, config=None) -> Tuple[int, int]:
  """`(H, W)` of the split's images; with `config`, also checks that its masks fit the width."""
  shape = tuple(input_pipeline.decode(source[0], 0)['image'].shape)
  if config is not None:
    check_masks_fit(config, shape[-1], f'{config.dataset}/{config.dataset_config}')
  return shape


def check_masks_fit(config, width: int, what: str) -> None:
  """A clear config error, before any tracing, when the target masks would keep fewer lines than the ACS block."""
  lines = mri.num_sampled_lines(width, 1.0 / config.acceleration)
  if lines < config.num_acs:
    raise ValueError(f'config.acceleration={config.acceleration} keeps {lines} of the {width} phase-encode lines '
                     f'of {what}, fewer than config.num_acs={config.num_acs} autocalibration lines: lower num_acs '
                     'or use larger images')


def initial_state(config, model, tx, shape: Tuple[int, int]) -> TrainState:
  """Parameters from `config.seed`; the unpmapped init sees one example with a full mask.

  The init key is an 'rbg' key: XLA compiles threefry's bit generation for every parameter shape, which made
  `init` take longer to compile than the train step on CPU (5.5 s against 4.3 s for a small UNet -> UNet); 'rbg'
  compiles about 3x faster. Masks and data order keep the default threefry keys. JAX does not promise the same
  'rbg' stream on every backend, so one seed may give other initial weights on CPU and GPU.
  """
  height, width = shape
  image = jnp.zeros((1, height, width, 2), jnp.float32)
  kspace = jnp.zeros((1, height, width), jnp.complex64)
  mask = jnp.ones((1, 1, width), bool)
  init_model = create_model(config, bn_axis_name=None)
  variables = jax.jit(functools.partial(init_model.init, train=False))(
      jax.random.key(config.seed, impl='rbg'), image, kspace, mask)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params))


# ---------------------------------------------------------------------------------------------------------------
# Steps (module-level pure functions; model/config bound with functools.partial).


def undersample_batch(image, keys, sampled_fraction: float, num_acs: int):
  """Per-example masks from `keys` and the network inputs.

  Args:
    image: complex64 `[b, H, W]`, fully sampled.
    keys: PRNG keys `[b, 2]`.

  Returns:
    (zero-filled image channels float32 `[b, H, W, 2]`, measured k-space complex64 `[b, H, W]`,
     masks bool `[b, 1, W]`).
  """
  width = image.shape[-1]
  masks = jax.vmap(lambda key: mri.sample_mask(key, width, sampled_fraction, num_acs))(keys)[:, None, :]
  measured = mri.undersample(mri.fft2c(image), masks)
  return mri.complex_to_channels(mri.ifft2c(measured)), measured, masks


def split_outputs(outputs):
  """(recon, seg_logits or None) from any model's output."""
  if isinstance(outputs, tuple):
    return outputs
  return outputs, None


def compute_losses(config, recon, seg_logits, batch):
  target = mri.complex_to_channels(batch['image'])
  recon_loss = jnp.mean(losses.l1_l2_loss(recon.astype(jnp.float32), target, l1_weight=config.l1_weight,
                                          l2_weight=config.l2_weight))
  terms = {'recon_loss': recon_loss}
  loss = config.recon_loss_weight * recon_loss
  if seg_logits is not None:
    seg_loss = jnp.mean(losses.generalized_dice_loss(seg_logits.astype(jnp.float32), batch['segmentation'],
                                                     config.num_classes))
    terms['seg_loss'] = seg_loss
    loss = loss + config.seg_loss_weight * seg_loss
  terms['loss'] = loss
  return loss, terms


def train_step(state: TrainState, batch, rng, sampled_fraction: float, *, model, tx, config):
  """One optimizer step on this device's share of the batch; runs under `parallel.pmap`.

  `sampled_fraction` is static: each distinct value compiles this function once. Masks are drawn per example from
  `fold_in(fold_in(rng, step), device)`. A step whose loss or gradients are not finite leaves the state unchanged
  and reports `finite = 0`; the host loop stops on it.
  """
  TRAIN_STEP_TRACES[sampled_fraction] += 1
  step_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), parallel.device_index())
  keys = jax.random.split(step_rng, batch['image'].shape[0])
  zero_filled, measured, masks = undersample_batch(batch['image'], keys, sampled_fraction, config.num_acs)

  def loss_fn(params):
    outputs, updates = model.apply({'params': params, 'batch_stats': state.batch_stats}, zero_filled, measured,
                                   masks, train=True, mutable=['batch_stats'])
    recon, seg_logits = split_outputs(outputs)
    loss, terms = compute_losses(config, recon, seg_logits, batch)
    return loss, (terms, updates.get('batch_stats', {}))

  (_, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = parallel.pmean(grads)  # Average over the 'batch' axis: all devices apply the same update.
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = parallel.all_finite((terms['loss'], grads))
  new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  terms = dict(terms, grad_norm=optax.tree.norm(grads), finite=finite.astype(jnp.float32),
               sampled_fraction=jnp.float32(sampled_fraction))
  return new_state, parallel.pmean(terms)  # Metrics averaged over the 'batch' axis.


def eval_step(state: TrainState, batch, *, model, config):
  """Reconstruction (and segmentation) metrics per example at the target acceleration, with masks keyed by the
  example index so every model sees the same masks. Runs under `parallel.pmap`; no collectives."""
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(config.eval_mask_seed), i))(batch['index'])
  zero_filled, measured, masks = undersample_batch(batch['image'], keys, 1.0 / config.acceleration,
                                                   config.num_acs)
  outputs = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, zero_filled, measured, masks,
                        train=False)
  recon, seg_logits = split_outputs(outputs)
  recon = mri.channels_to_complex(recon.astype(jnp.float32))
  results = metrics_lib.reconstruction_metrics(recon, batch['image'], batch['segmentation'],
                                               margin=config.focus_margin)
  zf_results = metrics_lib.reconstruction_metrics(mri.channels_to_complex(zero_filled), batch['image'],
                                                  batch['segmentation'], margin=config.focus_margin)
  results.update({f'zero_filled_{k}': v for k, v in zf_results.items() if k != 'has_heart'})
  outputs = {'recon': recon, 'zero_filled': mri.channels_to_complex(zero_filled), 'masks': masks}
  if seg_logits is not None:
    results.update(metrics_lib.segmentation_metrics(seg_logits.astype(jnp.float32), batch['segmentation'],
                                                    config.num_classes))
    outputs['seg'] = jnp.argmax(seg_logits, axis=-1).astype(jnp.int32)
  return results, outputs


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints.


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=config.max_checkpoints_to_keep, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
                               item_names=('state', 'meta'))


def save_checkpoint(manager, state: TrainState, epoch: int, config, data_info) -> None:
  host_state = parallel.unreplicate(state)
  meta = {'epoch': epoch, 'step': int(host_state.step), 'seed': config.seed, 'config': config.to_dict(),
          'data': data_info}
  manager.save(int(host_state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(_jsonable(meta))))


def restore_checkpoint(manager, template: TrainState) -> Tuple[Optional[TrainState], Optional[dict]]:
  """The latest checkpoint as (host state, meta), or (None, None) when the workdir has none."""
  step = manager.latest_step()
  if step is None:
    return None, None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
  return restored['state'], restored['meta']


def _jsonable(tree):
  return json.loads(json.dumps(tree, default=lambda o: o.tolist() if hasattr(o, 'tolist') else str(o)))


# ---------------------------------------------------------------------------------------------------------------
# Loops.


_DISTRIBUTED = {'initialized': False}  # jax.distributed.initialize() runs once per process.


def setup_runtime(config) -> None:
  """Multi-host initialization and the persistent compilation cache (before any computation).

  `jax.distributed.initialize()` must come before anything starts the XLA backend (even `jax.process_count()`), so
  whether it ran is kept here rather than asked of JAX.
  """
  if config.distributed and not _DISTRIBUTED['initialized']:
    jax.distributed.initialize()
    _DISTRIBUTED['initialized'] = True
  if config.compilation_cache_dir:
    cache_dir = os.path.expanduser(config.compilation_cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    jax.config.update('jax_compilation_cache_dir', cache_dir)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def sampled_fraction_for_epoch(config, epoch: int) -> float:
  """The static sampled fraction of an epoch: 1 / R, or the quantized stabilization ramp (eq. 1)."""
  target = 1.0 / config.acceleration
  if not config.stabilization:
    return target
  return mri.stabilization_schedule(epoch, target, config.patience, config.eps, config.schedule_levels)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Trains with resume from the latest checkpoint of `workdir`, then evaluates; returns the final metrics."""
  setup_runtime(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  parallel.check_batch_size(config.batch_size)
  parallel.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  if not is_joint(config) and config.stabilization:
    raise ValueError(f'config.stabilization=True needs a joint model; {config.model.name!r} reconstructs only')

  train_source = input_pipeline.load_split(config, config.train_split)
  eval_source = input_pipeline.load_split(config, config.eval_split)
  data_info = input_pipeline.data_info(config)
  steps_per_epoch = input_pipeline.num_train_steps_per_epoch(train_source, config)

  model, tx = create_model(config), create_optimizer(config)
  state = initial_state(config, model, tx, image_shape(train_source, config))
  manager = checkpoint_manager(workdir, config)
  restored, meta = restore_checkpoint(manager, state)
  start_epoch = 1
  if restored is not None:
    _check_same_data(meta, data_info, manager)
    state, start_epoch = restored, meta['epoch'] + 1
    logging.info('Resumed from %s at step %d (epoch %d done).', manager.directory, int(state.step), meta['epoch'])
  writer = reporting.SummaryWriter(workdir)
  writer.write_hparams(config)

  p_train_step = parallel.pmap(functools.partial(train_step, model=model, tx=tx, config=config),
                               static_broadcasted_argnums=(3,), donate_argnums=(0,))
  p_eval_step = parallel.pmap(functools.partial(eval_step, model=model, config=config))
  state = parallel.replicate(state)
  rng = parallel.replicate(jax.random.PRNGKey(config.seed + 1))

  compile_seconds = {}
  results = None
  progress = reporting.progress_bar(config, total=config.num_epochs * steps_per_epoch,
                                    initial=(start_epoch - 1) * steps_per_epoch)
  for epoch in range(start_epoch, config.num_epochs + 1):
    fraction = sampled_fraction_for_epoch(config, epoch)
    epoch_start, examples, finite_flags = time.time(), 0, []
    for batch in input_pipeline.train_batches(train_source, config, epoch):
      first_of_fraction = fraction not in compile_seconds
      step_start = time.time()
      state, terms = p_train_step(state, parallel.shard(batch), rng, fraction)
      examples += config.batch_size
      finite_flags.append(terms['finite'])  # Read at the next log step: no host sync per step.
      if first_of_fraction:
        jax.block_until_ready(terms)
        compile_seconds[fraction] = time.time() - step_start
        logging.info('Compiled the train step for sampled fraction %.4f in %.1f s (%d compiles so far).',
                     fraction, compile_seconds[fraction], len(compile_seconds))
      progress.update(1)
      if progress.n % config.log_every_steps == 0:
        scalars = _host_scalars(terms)
        _check_finite(finite_flags, progress.n, epoch, manager)
        scalars['slices_per_second'] = examples / max(time.time() - epoch_start, 1e-9)
        progress.set_postfix(loss=f"{scalars['loss']:.4f}", frac=f'{fraction:.3f}',
                             slices_s=f"{scalars['slices_per_second']:.1f}")
        writer.write_scalars(progress.n, {f'train_{k}': v for k, v in scalars.items()})
    _check_finite(finite_flags, progress.n, epoch, manager)  # Before this epoch's checkpoint can be written.
    writer.write_scalars(progress.n, {'train_epoch': epoch, 'train_compiles': len(compile_seconds),
                                      'train_compile_seconds': sum(compile_seconds.values()),
                                      'train_epoch_slices_per_second': examples / (time.time() - epoch_start)})
    last = epoch == config.num_epochs
    if last or epoch % config.eval_every_epochs == 0:
      results, images = evaluate_state(p_eval_step, state, eval_source, config)
      writer.write_scalars(progress.n, {f'eval_{k}': v for k, v in results.items()})
      writer.write_images(progress.n, images, config)
    if last or epoch % config.checkpoint_every_epochs == 0:
      save_checkpoint(manager, state, epoch, config, data_info)
  progress.close()
  manager.wait_until_finished()
  logging.info('Train step compiles: %d, %.1f s in total (%s).', len(compile_seconds),
               sum(compile_seconds.values()), {f'{k:.4f}': round(v, 1) for k, v in compile_seconds.items()})
  if results is None:  # Resumed after the last epoch: evaluate the restored state.
    results, _ = evaluate_state(p_eval_step, state, eval_source, config)
  reporting.write_results(workdir, config, results, extra={'train_compiles': len(compile_seconds),
                                                           'train_compile_seconds': sum(compile_seconds.values())})
  writer.close()
  return results


def _host_scalars(terms) -> Dict[str, float]:
  return {k: float(v) for k, v in parallel.unreplicate(terms).items()}


def _check_finite(finite_flags, step, epoch, manager) -> None:
  """Raises NonFiniteError if any step since the last check was skipped as non-finite; empties `finite_flags`."""
  flags = [np.asarray(f) for f in finite_flags]
  finite_flags.clear()
  if flags and np.min(flags) < 1.0:
    manager.wait_until_finished()
    raise NonFiniteError(f'non-finite loss or gradient at step {step} (epoch {epoch}); the update was skipped and '
                         f'training stopped. The last good checkpoint is step {manager.latest_step()} in '
                         f'{manager.directory}.')


def evaluate_state(p_eval_step, state, eval_source, config):
  """Means over the eval split (F- metrics over examples with heart labels) and a few examples for summaries."""
  sums, counts, images = collections.defaultdict(float), collections.defaultdict(float), None
  for batch in input_pipeline.eval_batches(eval_source, config):
    results, outputs = p_eval_step(state, parallel.shard(batch))
    results = parallel.unshard(results)
    valid = batch['valid'] > 0
    has_heart = valid & (results['has_heart'] > 0)
    for key, values in results.items():
      if key == 'has_heart':
        continue
      weight = has_heart if key.startswith(('f_', 'zero_filled_f_')) else valid
      sums[key] += float(np.sum(np.where(weight, values, 0.0)))
      counts[key] += float(np.sum(weight))
    if images is None:
      images = dict(parallel.unshard(outputs), image=batch['image'], segmentation=batch['segmentation'])
  sums, counts = _allgather_sums(sums, counts)
  results = {k: sums[k] / counts[k] if counts[k] else float('nan') for k in sorted(sums)}
  results['num_examples'] = counts['mse']
  return results, images


def _allgather_sums(sums, counts):
  if jax.process_count() == 1:
    return sums, counts
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  keys = sorted(sums)
  totals = multihost_utils.process_allgather(np.array([[sums[k] for k in keys], [counts[k] for k in keys]]))
  totals = np.asarray(totals).sum(0)
  return dict(zip(keys, totals[0])), dict(zip(keys, totals[1]))


def restore_for_inference(config, workdir: str):
  """Model, replicated state and the stored data description of the latest checkpoint of `workdir`."""
  setup_runtime(config)
  manager = checkpoint_manager(workdir, config)
  if manager.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint in {manager.directory}: train first (--mode=train)')
  eval_source = input_pipeline.load_split(config, config.eval_split)
  model, tx = create_model(config), create_optimizer(config)
  template = initial_state(config, model, tx, image_shape(eval_source, config))
  state, meta = restore_checkpoint(manager, template)
  _check_same_data(meta, input_pipeline.data_info(config), manager)
  return model, parallel.replicate(state), eval_source, meta


def _check_same_data(meta, current, manager) -> None:
  """A checkpoint is resumed or used only with the data and preprocessing it was trained on."""
  if meta['data'] != current:
    raise ValueError(f'the checkpoint in {manager.directory} was trained on data {meta["data"]}, but the config asks '
                     f'for {current}; use the training configuration (or a new workdir)')


def evaluate(config, workdir: str) -> Dict[str, float]:
  """Restores the latest checkpoint and writes metrics.json and results.md to the workdir."""
  parallel.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  model, state, eval_source, meta = restore_for_inference(config, workdir)
  p_eval_step = parallel.pmap(functools.partial(eval_step, model=model, config=config))
  results, _ = evaluate_state(p_eval_step, state, eval_source, config)
  reporting.write_results(workdir, config, results, extra={'checkpoint_step': meta['step']})
  return results


def predict(config, workdir: str, input_path: str = '') -> str:
  """Reconstructs and segments the eval split (or one OCMR-format .h5 file) with the latest checkpoint.

  Writes `.npy` arrays and Fig. 2-like PNGs to `workdir/predictions` (the eval split) or
  `workdir/predictions/<file stem>` (a file; without its label file the segmentation maps are all background and
  the figures have no focus box); returns that folder.
  """
  parallel.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  if jax.process_count() > 1:
    raise ValueError('predict writes every example from one process: run it on a single host')
  model, state, eval_source, _ = restore_for_inference(config, workdir)
  if input_path:
    from segrecon_jax.data import ocmr  # pylint: disable=g-import-not-at-top
    image_size = image_shape(eval_source)
    examples = ocmr.load_examples(input_path, image_size)
    source = [dict(image=e['image'], segmentation=e['segmentation']) for e in examples]
  else:
    source = eval_source
  p_eval_step = parallel.pmap(functools.partial(eval_step, model=model, config=config))
  collected = collections.defaultdict(list)
  for batch in input_pipeline.eval_batches(source, config):
    results, outputs = p_eval_step(state, parallel.shard(batch))
    outputs = parallel.unshard(outputs)
    valid = batch['valid'] > 0
    for key in ('image', 'segmentation'):
      collected[key].append(batch[key][valid])
    for key, value in outputs.items():
      collected[key].append(value[valid])
  arrays = {k: np.concatenate(v) for k, v in collected.items()}
  name = os.path.splitext(os.path.basename(input_path))[0] if input_path else ''
  return reporting.write_predictions(workdir, config, arrays, name)
