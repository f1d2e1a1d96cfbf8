"""The pure pieces of training: state, model and optimizer, the pmapped train and eval steps, the schedule.

`sample_train_masks`, `train_update`, `train_step` (the two as one program) and `eval_step` are module-level
functions of arrays; the model, optimizer and config are bound with `functools.partial` and the result is pmapped
by `parallel.pmap`. What compiles them for the loop is `compiled.TrainSteps`; what reads data and pretrained
weights is `train.py`: nothing here touches files.
"""

import collections
import functools
from typing import Any, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from segrecon_jax import losses
from segrecon_jax import metrics as metrics_lib
from segrecon_jax import models
from segrecon_jax import mri
from segrecon_jax.training import balancing
from segrecon_jax.training import parallel
from segrecon_jax.training import warm_start

# Traces of the train step's mask sampler, keyed by sampled fraction (each distinct fraction compiles it once), and
# of its update, keyed by the masks' shape (compiled once for every fraction).
TRAIN_STEP_TRACES = collections.Counter()
TRAIN_UPDATE_TRACES = collections.Counter()


@flax.struct.dataclass
class TrainState:
  """`loss_state`: the state of the loss-balancing scheme (`initial_loss_state`); `{}` with fixed weights."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  loss_state: Any = flax.struct.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Model, optimizer, state.


def create_model(config, bn_axis_name: Any = parallel.AXIS_NAME):
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  return models.get_model(config.model, dtype=dtype, bn_axis_name=bn_axis_name)


# The learning rates of `config.lr_schedule`: name -> (what it is, (learning rate, total steps) -> Adam's rate).
LR_SCHEDULES = {
    'constant': ("the paper's Adam", lambda learning_rate, total_steps: learning_rate),
    'cosine': ('decay to 0 over the run', lambda learning_rate, total_steps: optax.cosine_decay_schedule(
        learning_rate, decay_steps=max(int(total_steps), 1))),
}


def create_optimizer(config, total_steps: int = 1) -> optax.GradientTransformation:
  """Adam at `config.learning_rate`, constant (the paper) or, with `config.lr_schedule='cosine'`, decayed along a
  half cosine to 0 over `total_steps` (the run's `num_epochs` x steps per epoch). The optimizer state has the same
  structure for every `total_steps`, so restoring needs no step count.

  Raises:
    ValueError: a schedule not in `LR_SCHEDULES` (the config checks build the optimizer once to ask).
  """
  if config.lr_schedule not in LR_SCHEDULES:
    described = [f'{name!r} ({what})' for name, (what, _) in LR_SCHEDULES.items()]
    raise ValueError(f'config.lr_schedule={config.lr_schedule!r}: expected {" or ".join(described)}.')
  learning_rate = LR_SCHEDULES[config.lr_schedule][1](config.learning_rate, total_steps)
  return warm_start.trainable(config, optax.adam(learning_rate, b1=config.b1, b2=config.b2))


def initial_state(config, model, tx, shape: Tuple[int, int]) -> TrainState:
  """Parameters from `config.seed`; the unpmapped init sees one example with a full mask.

  The init key is an 'rbg' key: XLA compiles threefry's bit generation for every parameter shape, which made
  `init` take longer to compile than the train step on CPU; 'rbg' compiles in a fraction of that. Masks and data
  order keep the default threefry keys. JAX does not promise the same 'rbg' stream on every backend, so one seed
  may give other initial weights on CPU and GPU.
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
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
                    loss_state=initial_loss_state(config))


def initial_loss_state(config):
  """The state of the scheme `config.loss_balancing` (training/balancing.py), carried in `TrainState.loss_state`
  (and so checkpointed and resumed): `{}` for 'none'."""
  return balancing.get(config.loss_balancing).init(config)


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


def compute_losses(config, recon, seg_logits, batch, loss_state=None):
  """The training loss and its terms (`recon_loss` for a model that reconstructs, `seg_loss` for one that segments,
  `loss`), batch means.

  The reconstruction term is weighted per pixel by `focus_pixel_weights` when `config.focus_weight > 0`. A joint
  model's two terms are combined by the scheme `config.loss_balancing` (training/balancing.py) with `loss_state`,
  or with the fixed `recon_loss_weight` and `seg_loss_weight` without one; a model with one term has its fixed
  weight.
  """
  terms = {}
  if recon is not None:
    target = mri.complex_to_channels(batch['image'])
    recon_loss = jnp.mean(losses.l1_l2_loss(recon.astype(jnp.float32), target,
                                            pixel_weights=focus_pixel_weights(config, seg_logits, batch)))
    terms['recon_loss'] = recon_loss
  if seg_logits is not None:
    seg_loss = jnp.mean(losses.segmentation_loss(config.seg_loss, seg_logits.astype(jnp.float32),
                                                 batch['segmentation'], config.num_classes))
    terms['seg_loss'] = seg_loss
  if seg_logits is None:
    loss = config.recon_loss_weight * recon_loss
  elif recon is None:
    loss = config.seg_loss_weight * seg_loss
  else:
    scheme = balancing.get(balancing.NONE if loss_state is None else config.loss_balancing)
    loss = scheme.loss(config, recon_loss, seg_loss, loss_state)
  terms['loss'] = loss
  return loss, terms


def loss_term_weights(config, loss_state=None):
  """(reconstruction weight, Dice weight) that multiply a joint model's two terms in the loss (the effective
  weights): the scheme's (`balancing.Scheme.weights`), or the fixed config weights without `loss_state`."""
  if loss_state is None:
    return config.recon_loss_weight, config.seg_loss_weight
  return balancing.get(config.loss_balancing).weights(config, loss_state)


def focus_pixel_weights(config, seg_logits, batch):
  """The explicit focus's per-pixel weights float32 `[b, H, W]` (`losses.focus_pixel_weights`), or None when
  `config.focus_weight` is 0.

  The region is the F- metrics' heart box (`metrics.box_mask` with the margin of `focus_margin_pixels`), from the
  reference labels (`config.focus_source='reference'`: a training-time oracle) or from the segmentation network's
  argmax (`'prediction'`, no gradient through it; the config checks hold it to models that segment). A slice without
  heart gets uniform weights.
  """
  if not config.focus_weight:
    return None
  if config.focus_source == 'prediction':
    labels = jnp.argmax(jax.lax.stop_gradient(seg_logits), axis=-1)
  else:
    labels = batch['segmentation']
  region = metrics_lib.box_mask(labels, focus_margin_pixels(config, labels.shape[-2]))
  return losses.focus_pixel_weights(region, config.focus_weight)


def sample_train_masks(step, rng, sampled_fraction: float, *, num_examples: int, width: int, num_acs: int):
  """This device's training masks bool `[num_examples, 1, width]` for one step, from `fold_in(fold_in(rng, step),
  device)`; runs under `parallel.pmap` with `sampled_fraction` static (it fixes how many lines a mask keeps).

  This is the only part of the train step that depends on the sampled fraction, so the training loop compiles it
  once per fraction of the stabilization schedule (a small program) and `train_update` once for all of them.
  """
  TRAIN_STEP_TRACES[sampled_fraction] += 1
  step_rng = jax.random.fold_in(jax.random.fold_in(rng, step), parallel.device_index())
  keys = jax.random.split(step_rng, num_examples)
  return jax.vmap(lambda key: mri.sample_mask(key, width, sampled_fraction, num_acs))(keys)[:, None, :]


def train_step(state: TrainState, batch, rng, sampled_fraction: float, *, model, tx, config):
  """One optimizer step on this device's share of the batch; runs under `parallel.pmap` as one program.

  `sampled_fraction` is static: each distinct value compiles this function once. It is `sample_train_masks`
  followed by `train_update`, which the training loop and the benchmark pmap and compile separately
  (`compiled.TrainSteps`), so that a new fraction only compiles the mask sampler.
  """
  masks = sample_train_masks(state.step, rng, sampled_fraction, num_examples=batch['image'].shape[0],
                             width=batch['image'].shape[-1], num_acs=config.num_acs)
  return train_update(state, batch, masks, model=model, tx=tx, config=config)


def train_update(state: TrainState, batch, masks, *, model, tx, config):
  """The optimizer step for the given masks bool `[b, 1, W]` (from `sample_train_masks`); runs under
  `parallel.pmap`. A step whose loss or gradients are not finite leaves the state unchanged and reports
  `finite = 0`; the host loop stops on it. With `config.log_loss_grad_norms` and a joint model, the terms also hold
  `recon_grad_norm` and `seg_grad_norm` (`_grads_with_term_norms`); the update is unchanged.

  A joint model's two terms are weighed by the scheme `config.loss_balancing` (training/balancing.py), whose state
  is `state.loss_state`; the step logs the scheme's `logged` scalars, at least `seg_weight_effective`, the weight
  that multiplies the Dice term in this step's loss (`config.seg_loss_weight` with 'none'). A scheme that reads
  the gradient norms ('grad_norm') sets that weight from this step's norms (`_norm_balanced_grads`; the norms are
  logged too); any other trains with its current state, then updates it ('uncertainty': its log-variances).
  """
  TRAIN_UPDATE_TRACES[masks.shape] += 1
  measured = mri.undersample(mri.fft2c(batch['image']), masks)
  zero_filled = mri.complex_to_channels(mri.ifft2c(measured))
  joint = models.spec(config.model).task == models.JOINT
  scheme = balancing.get(config.loss_balancing)

  def loss_fn(params):
    outputs, updates = model.apply({'params': params, 'batch_stats': state.batch_stats}, zero_filled, measured,
                                   masks, train=True, mutable=['batch_stats'])
    recon, seg_logits = model_outputs(config, outputs)
    loss, terms = compute_losses(config, recon, seg_logits, batch, state.loss_state)
    return loss, (terms, updates.get('batch_stats', {}))

  loss_state, balance_terms = state.loss_state, {}
  if joint and scheme.reads_grad_norms:
    grads, term_norms, (terms, batch_stats), loss_state = _norm_balanced_grads(loss_fn, state, model, config, scheme)
  elif config.log_loss_grad_norms and joint:
    grads, term_norms, (terms, batch_stats) = _grads_with_term_norms(
        loss_fn, state.params, model, loss_term_weights(config, state.loss_state))
  else:
    (_, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    term_norms = {}
  if joint:
    balance_terms = scheme.logged(config, loss_state)  # The state this step's loss was weighed with.
    if not scheme.reads_grad_norms:
      loss_state = scheme.update(config, state.loss_state, state.step, terms)
  grads = parallel.pmean(grads)  # Average over the 'batch' axis: all devices apply the same update.
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = parallel.all_finite((terms['loss'], grads, loss_state) if loss_state else (terms['loss'], grads))
  batch_stats = warm_start.frozen_batch_stats(config, state.batch_stats, batch_stats)
  new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                         loss_state=loss_state)
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  terms = dict(terms, **term_norms, **balance_terms, grad_norm=optax.tree.norm(grads),
               finite=finite.astype(jnp.float32), sampled_fraction=jnp.mean(masks.astype(jnp.float32)))
  return new_state, parallel.pmean(terms)  # Metrics averaged over the 'batch' axis.


def model_outputs(config, outputs: models.ModelOutput):
  """(recon, seg_logits) of a model's output, which must hold what its registered task says (models/registry.py):
  a model registered as JOINT that returns no segmentation would otherwise train as a reconstruction model."""
  entry = models.spec(config.model)
  recon, seg_logits = outputs.recon, outputs.seg_logits
  if (recon is not None) != entry.reconstructs or (seg_logits is not None) != entry.segments:
    returned = ' and '.join(k for k, v in (('recon', recon), ('seg_logits', seg_logits)) if v is not None) or 'neither'
    raise ValueError(f'config.model.name={config.model.name!r} is registered with task={entry.task!r}, but its '
                     f'ModelOutput holds {returned}: a reconstruction model returns recon, a segmentation model '
                     'seg_logits (recon=None), a joint model both.')
  return recon, seg_logits


def recon_network_params(model, params):
  """The parameters of `model`'s reconstruction network: the subtrees that compute the reconstruction, as the
  module's `reconstruction_params` method selects them (`models.reconstruction_params`; all of them without one).

  `SegRecon`: its `recon_net`. `MultiDecoderUNet`: the shared `encoder` and the `recon_decoder`. Solo
  reconstruction models: all of them.
  """
  return models.reconstruction_params(model, params)


def _norm_balanced_grads(loss_fn, state: TrainState, model, config, scheme: balancing.Scheme):
  """A scheme that reads the gradient norms (`reads_grad_norms`, e.g. 'grad_norm'): the gradient of
  `w_r L_r + w_s L_s` with the Dice weight `w_s` of the state that `scheme.update` returns from this step's gradient
  norms on the reconstruction network (`recon_network_params`).

  The two terms' gradients (`w_r L_r` and `L_s` with weight 1) come from one forward pass and a 2-wide backward pass
  (as `_grads_with_term_norms`'s); their norms are taken after averaging over the 'batch' axis, so every device
  computes the same weight. The gradient is `g_r + w_s g_s`.

  Returns:
    (gradient (this device's), {'recon_grad_norm', 'seg_grad_norm'} of the weighted terms, loss_fn's aux with
    `loss` recomputed at `w_s`, the scheme's new state).
  """
  def unit_terms(params):
    _, aux = loss_fn(params)
    terms = aux[0]
    return (config.recon_loss_weight * terms['recon_loss'], terms['seg_loss']), aux

  outputs, vjp_fn, (terms, batch_stats) = jax.vjp(unit_terms, state.params, has_aux=True)
  one, zero = jnp.ones_like(outputs[0]), jnp.zeros_like(outputs[0])
  (term_grads,) = jax.vmap(vjp_fn)((jnp.stack([one, zero]), jnp.stack([zero, one])))
  norms = jax.vmap(optax.tree.norm)(parallel.pmean(recon_network_params(model, term_grads)))  # Over 'batch'.
  loss_state = scheme.update(config, state.loss_state, state.step,
                             dict(terms, recon_grad_norm=norms[0], seg_grad_norm=norms[1]))
  seg_weight = scheme.weights(config, loss_state)[1]
  grads = jax.tree.map(lambda g: g[0] + seg_weight * g[1], term_grads)
  terms = dict(terms, loss=outputs[0] + seg_weight * outputs[1])
  return grads, {'recon_grad_norm': norms[0], 'seg_grad_norm': seg_weight * norms[1]}, (terms, batch_stats), \
      loss_state


def _grads_with_term_norms(loss_fn, params, model, term_weights):
  """The gradient of `loss_fn` exactly as `jax.value_and_grad` computes it, and the norms of the two weighted
  terms' gradients with respect to the reconstruction network (`recon_network_params`), from one forward pass.

  The vjp of (loss, w_r * recon_loss, w_s * seg_loss) seeded with (1, 0, 0) runs value_and_grad's backward pass
  plus exact additions of zeros at its head, so the update is bit-identical to the flag-off step; the seeds
  (0, 1, 0) and (0, 0, 1), batched by vmap, give the per-term gradients (a second, 2-wide backward pass). The
  per-term gradients are averaged over the 'batch' axis before their norms, like `grad_norm`. `term_weights`:
  (w_r, w_s), the weights the loss gives the two terms (`loss_term_weights`).

  Returns:
    (gradient of the loss (this device's), {'recon_grad_norm', 'seg_grad_norm'}, loss_fn's aux).
  """
  def weighted_terms(params):
    loss, aux = loss_fn(params)
    terms = aux[0]
    return (loss, term_weights[0] * terms['recon_loss'], term_weights[1] * terms['seg_loss']), aux

  outputs, vjp_fn, aux = jax.vjp(weighted_terms, params, has_aux=True)
  one, zero = jnp.ones_like(outputs[0]), jnp.zeros_like(outputs[0])
  (grads,) = vjp_fn((one, zero, zero))
  seeds = (jnp.stack([zero, zero]), jnp.stack([one, zero]), jnp.stack([zero, one]))
  (term_grads,) = jax.vmap(vjp_fn)(seeds)
  term_grads = parallel.pmean(recon_network_params(model, term_grads))  # Average over the 'batch' axis.
  norms = jax.vmap(optax.tree.norm)(term_grads)
  return grads, {'recon_grad_norm': norms[0], 'seg_grad_norm': norms[1]}, aux


def eval_step(state: TrainState, batch, *, model, config):
  """Reconstruction (and segmentation) metrics per example at the target acceleration, with masks keyed by each
  example's stable id (`input_pipeline.mask_id`) so every model sees the same masks. Runs under `parallel.pmap`;
  no collectives."""
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(config.eval_mask_seed), i))(batch['mask_id'])
  zero_filled, measured, masks = undersample_batch(batch['image'], keys, 1.0 / config.acceleration,
                                                   config.num_acs)
  outputs = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, zero_filled, measured, masks,
                        train=False)
  recon, seg_logits = model_outputs(config, outputs)
  if recon is None:  # A segmentation model: the image it segments, the zero-filled one, stands for its reconstruction.
    recon = zero_filled
  recon = mri.channels_to_complex(recon.astype(jnp.float32))
  margin = focus_margin_pixels(config, batch['image'].shape[-2])
  results = metrics_lib.reconstruction_metrics(recon, batch['image'], batch['segmentation'], margin=margin)
  zf_results = metrics_lib.reconstruction_metrics(mri.channels_to_complex(zero_filled), batch['image'],
                                                  batch['segmentation'], margin=margin)
  results.update({f'zero_filled_{k}': v for k, v in zf_results.items() if k != 'has_heart'})
  outputs = {'recon': recon, 'zero_filled': mri.channels_to_complex(zero_filled), 'masks': masks}
  if seg_logits is not None:
    results.update(metrics_lib.segmentation_metrics(seg_logits.astype(jnp.float32), batch['segmentation'],
                                                    config.num_classes))
    outputs['seg'] = jnp.argmax(seg_logits, axis=-1).astype(jnp.int32)
  return results, outputs


def focus_margin_pixels(config, height: int) -> int:
  """The F- box margin in pixels for images of `height` rows: `config.focus_margin_fraction` of the side."""
  return int(round(config.focus_margin_fraction * height))


# ---------------------------------------------------------------------------------------------------------------
# Schedule.


def sampled_fraction_for_epoch(config, epoch: int) -> float:
  """The static sampled fraction of an epoch: 1 / R, or the stabilization ramp (eq. 1; exact when
  `config.schedule_levels` is None, else quantized to that many levels)."""
  target = 1.0 / config.acceleration
  if not config.stabilization:
    return target
  return mri.stabilization_schedule(epoch, target, config.patience, config.eps, config.schedule_levels)
