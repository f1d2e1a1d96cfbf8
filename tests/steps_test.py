"""Tests of steps.train_step's per-term gradient norms (`config.log_loss_grad_norms`): the update is unchanged, the
norms match a direct `jax.grad` of each weighted term, and the segmentation term's norm is 0 where it cannot reach
the reconstruction network."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import multidecoder_unet as multidecoder_unet_config
from configs import unet_unet as unet_unet_config
from segrecon_jax.training import compiled
from segrecon_jax.training import parallel
from segrecon_jax.training import steps

SIZE = 16
# One level of 4 channels (no pooling): the steps' losses, gradient norms and balancing do not depend on the depth,
# and every level adds to each of the many train steps compiled here.
TINY = (4,)
TINY_MODELS = {
    'unet_unet': {'name': 'unet_unet', 'recon': {'features': TINY}, 'seg': {'features': TINY, 'out_channels': 4},
                  'stop_gradient': False},
    'multidecoder_unet': {'name': 'multidecoder_unet', 'features': TINY, 'num_classes': 4},
}
CONFIG_MODULES = {'unet_unet': unet_unet_config, 'multidecoder_unet': multidecoder_unet_config}


def tiny_config(experiment='unet_unet', **overrides):
  config = CONFIG_MODULES[experiment].get_config('x4,runlocal')
  config.model = ml_collections.ConfigDict(TINY_MODELS[experiment])
  config.num_acs = 2  # 16 phase-encode lines: x4 keeps 4.
  config.recon_loss_weight, config.seg_loss_weight = 0.7, 1.3  # Unequal weights: the norms must carry them.
  config.learning_rate = 1e-2
  for key, value in overrides.items():
    if key == 'stop_gradient':
      config.model.stop_gradient = value
    else:
      setattr(config, key, value)
  return config


def tiny_batch(batch=4, seed=0):
  """Smooth complex images with a disc of heart labels, shaped like the input pipeline's batches."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE - 0.5
  radius = np.sqrt(yy**2 + xx**2)
  images = np.stack([np.clip(1.0 - 1.5 * radius, 0, 1) * np.exp(1j * rng.uniform(-1, 1, (SIZE, SIZE)))
                     for _ in range(batch)]).astype(np.complex64)
  labels = np.zeros((batch, SIZE, SIZE), np.int32)
  labels[:, radius < 0.15] = 1
  labels[:, (radius >= 0.15) & (radius < 0.25)] = 2
  labels[:, (radius >= 0.25) & (radius < 0.3)] = 3
  return {'image': images, 'segmentation': labels, 'index': np.arange(batch, dtype=np.int32),
          'mask_id': np.arange(batch, dtype=np.int32), 'valid': np.ones((batch,), np.float32)}


def run_step(config, num_devices=2, batch=None):
  """One pmapped train step from the initial state: (new state, terms), both unreplicated."""
  devices = jax.local_devices()[:num_devices]
  model, tx = steps.create_model(config), steps.create_optimizer(config)
  state = steps.initial_state(config, model, tx, (SIZE, SIZE))
  p_step = parallel.pmap(functools.partial(steps.train_step, model=model, tx=tx, config=config),
                         static_broadcasted_argnums=(3,), devices=devices)
  batch = tiny_batch() if batch is None else batch
  new_state, terms = p_step(parallel.replicate(state, devices), parallel.shard(batch, num_devices),
                            parallel.replicate(jax.random.PRNGKey(3), devices), 1.0 / config.acceleration)
  return state, parallel.unreplicate(new_state), jax.device_get(parallel.unreplicate(terms))


def direct_norms(config, state, batch, rng):
  """Norms of d(w_r * recon_loss)/d(recon params) and d(w_s * seg_loss)/d(same) by `jax.grad`, on one device
  with the masks train_step draws there (device index 0); jitted, one compile rather than one per operation."""
  model = steps.create_model(config, bn_axis_name=None)

  def norms_of(state, batch, rng):
    step_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), 0)
    keys = jax.random.split(step_rng, batch['image'].shape[0])
    zero_filled, measured, masks = steps.undersample_batch(batch['image'], keys, 1.0 / config.acceleration,
                                                           config.num_acs)

    def weighted_term(params, name, weight):
      outputs, _ = model.apply({'params': params, 'batch_stats': state.batch_stats}, zero_filled, measured, masks,
                               train=True, mutable=['batch_stats'])
      _, terms = steps.compute_losses(config, outputs.recon, outputs.seg_logits, batch)
      return weight * terms[name]

    norms = {}
    for name, weight in (('recon_loss', config.recon_loss_weight), ('seg_loss', config.seg_loss_weight)):
      grads = jax.grad(weighted_term)(state.params, name, weight)
      norms[name.replace('_loss', '_grad_norm')] = optax.tree.norm(steps.recon_network_params(model, grads))
    return norms

  return {name: float(norm) for name, norm in jax.jit(norms_of)(state, batch, rng).items()}


@pytest.mark.parametrize('experiment', ['unet_unet', 'multidecoder_unet'])
def test_logging_the_norms_leaves_the_update_bit_identical(experiment):
  _, off_state, off_terms = run_step(tiny_config(experiment, log_loss_grad_norms=False))
  _, on_state, on_terms = run_step(tiny_config(experiment, log_loss_grad_norms=True))
  assert 'recon_grad_norm' not in off_terms and 'seg_grad_norm' not in off_terms
  assert on_terms['recon_grad_norm'] > 0 and on_terms['seg_grad_norm'] > 0
  assert int(on_state.step) == int(off_state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(on_state), jax.device_get(off_state))
  for key, value in off_terms.items():
    np.testing.assert_array_equal(on_terms[key], value, err_msg=key)


@pytest.mark.parametrize('experiment', ['unet_unet', 'multidecoder_unet'])
def test_norms_match_a_direct_grad_of_each_weighted_term(experiment):
  config = tiny_config(experiment, log_loss_grad_norms=True)
  batch = tiny_batch(batch=2)
  state, _, terms = run_step(config, num_devices=1, batch=batch)
  expected = direct_norms(config, state, batch, jax.random.PRNGKey(3))
  assert expected['seg_grad_norm'] > 0
  for key, value in expected.items():
    np.testing.assert_allclose(terms[key], value, rtol=1e-5, err_msg=key)


def test_recon_network_of_the_multidecoder_is_encoder_and_recon_decoder():
  config = tiny_config('multidecoder_unet')
  model = steps.create_model(config)
  params = steps.initial_state(config, model, steps.create_optimizer(config), (SIZE, SIZE)).params
  assert set(steps.recon_network_params(model, params)) == {'encoder', 'recon_decoder'}
  assert set(steps.recon_network_params(steps.create_model(tiny_config()), {'recon_net': 1, 'seg_net': 2})) == {
      'recon_net'}


@pytest.mark.parametrize('overrides', [{'seg_loss_weight': 0.0}, {'stop_gradient': True}])
def test_seg_grad_norm_is_zero_where_the_seg_term_cannot_reach_the_recon_network(overrides):
  _, _, terms = run_step(tiny_config(log_loss_grad_norms=True, **overrides))
  assert terms['seg_grad_norm'] == 0.0
  assert terms['recon_grad_norm'] > 0 and np.isfinite(terms['seg_loss'])


def test_cosine_learning_rate_decays_to_zero_over_the_run_and_fixes_num_epochs_on_resume():
  config = tiny_config(lr_schedule='cosine')
  tx = steps.create_optimizer(config, total_steps=4)
  params = {'w': jnp.zeros(3)}
  opt_state = tx.init(params)
  sizes = []
  for _ in range(5):  # Adam's first steps on a constant gradient move each weight by about the learning rate.
    updates, opt_state = tx.update({'w': jnp.ones(3)}, opt_state, params)
    sizes.append(float(jnp.abs(updates['w'][0])))
  expected = [config.learning_rate * 0.5 * (1 + np.cos(np.pi * k / 4)) for k in range(5)]
  np.testing.assert_allclose(sizes, expected, rtol=1e-5, atol=1e-9)
  constant = tiny_config()
  assert float(jnp.abs(steps.create_optimizer(constant).update({'w': jnp.ones(3)}, steps.create_optimizer(
      constant).init(params), params)[0]['w'][0])) == pytest.approx(config.learning_rate, rel=1e-5)
  # More epochs resume a constant rate but not a cosine one, whose decay they would stretch.
  from segrecon_jax.training import checkpoints
  for schedule, refused in (('constant', False), ('cosine', True)):
    stored = tiny_config(lr_schedule=schedule)
    meta = {'data': {'name': 'x'}, 'config': checkpoints.jsonable(stored.to_dict())}
    longer = tiny_config(lr_schedule=schedule, num_epochs=stored.num_epochs + 5)
    if refused:
      with pytest.raises(checkpoints.ResumeError, match=r'config.num_epochs: \d+ in the checkpoint, \d+ now'):
        checkpoints.check_resume(meta, longer, {'name': 'x'}, '/ckpt')
    else:
      checkpoints.check_resume(meta, longer, {'name': 'x'}, '/ckpt')
  with pytest.raises(ValueError, match=r"config.lr_schedule='linear'"):
    steps.create_optimizer(tiny_config(lr_schedule='linear'))


def test_train_steps_split_equals_the_one_program_train_step():
  """`TrainSteps` (mask sampler per fraction + one update) trains exactly as the single pmapped `train_step`:
  same masks, same updates, over steps that change the sampled fraction; compiled as the loop asks for them, and
  compiled ahead (every fraction prefetched first)."""
  config = tiny_config()
  devices = jax.local_devices()[:2]
  model, tx = steps.create_model(config), steps.create_optimizer(config)
  state = parallel.replicate(steps.initial_state(config, model, tx, (SIZE, SIZE)), devices)
  batch = parallel.shard(tiny_batch(), len(devices))
  rng = parallel.replicate(jax.random.PRNGKey(5), devices)
  p_step = parallel.pmap(functools.partial(steps.train_step, model=model, tx=tx, config=config),
                         static_broadcasted_argnums=(3,), devices=devices)
  fractions = (1.0, 0.5, 0.5, 0.25)
  want, want_terms = state, []
  for fraction in fractions:
    want, terms = p_step(want, batch, rng, fraction)
    want_terms.append(jax.device_get(terms))
  for ahead in (False, True):
    split = compiled.TrainSteps(model, tx, config, state, batch, rng, devices=devices)
    if ahead:
      for fraction in dict.fromkeys(fractions):
        split.prefetch(fraction)
    got = jax.tree.map(jnp.copy, state)  # The split's update donates its state.
    for fraction, expected in zip(fractions, want_terms):
      got, got_terms = split.get(fraction)(got, batch, rng)
      jax.tree.map(np.testing.assert_array_equal, jax.device_get(got_terms), expected)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), jax.device_get(want))
    assert int(parallel.unreplicate(got).step) == len(fractions)
    assert set(split.compile_seconds) == {1.0, 0.5, 0.25, 'update'} == set(split.wait_seconds)
    split.close()


# ---------------------------------------------------------------------------------------------------------------
# Explicit focus and loss balancing (config.focus_weight, focus_source, loss_balancing).


def old_compute_losses(config, recon, seg_logits, batch):
  """`steps.compute_losses` as it was before the focus and balancing options, verbatim."""
  from segrecon_jax import losses, mri  # pylint: disable=g-import-not-at-top
  target = mri.complex_to_channels(batch['image'])
  recon_loss = jnp.mean(losses.l1_l2_loss(recon.astype(jnp.float32), target))
  terms = {'recon_loss': recon_loss}
  loss = config.recon_loss_weight * recon_loss
  if seg_logits is not None:
    seg_loss = jnp.mean(losses.generalized_dice_loss(seg_logits.astype(jnp.float32), batch['segmentation'],
                                                     config.num_classes))
    terms['seg_loss'] = seg_loss
    loss = loss + config.seg_loss_weight * seg_loss
  terms['loss'] = loss
  return loss, terms


def loss_inputs(seed=0):
  """A reconstruction, segmentation logits whose argmax has its heart in the top-left corner, and a batch of 2."""
  rng = np.random.default_rng(seed)
  recon = rng.standard_normal((2, SIZE, SIZE, 2)).astype(np.float32)
  seg_logits = rng.standard_normal((2, SIZE, SIZE, 4)).astype(np.float32)
  seg_logits[..., 0] += 10.0
  seg_logits[:, 1:4, 2:5, 1] += 20.0  # Predicted heart: rows 1-3, columns 2-4.
  return recon, seg_logits, tiny_batch(batch=2, seed=seed)


def np_loss(config, recon, seg_logits, batch, region=None, log_variances=None):
  """The training loss in float64 NumPy: focus-weighted l1-l2 (with `region`) and Dice, combined as configured."""
  import losses_test  # pylint: disable=g-import-not-at-top
  target = np.stack([batch['image'].real, batch['image'].imag], axis=-1)
  weights = np.ones(recon.shape[:3]) if region is None else losses_test.np_focus_weights(region, config.focus_weight)
  error = recon.astype(np.float64) - target
  recon_loss = np.mean((weights[..., None] * np.abs(error)).mean(axis=(1, 2, 3))
                       + (weights[..., None] * error**2).mean(axis=(1, 2, 3)))
  seg_loss = np.mean(losses_test.np_generalized_dice(seg_logits, batch['segmentation'], 4))
  terms = (config.recon_loss_weight * recon_loss, config.seg_loss_weight * seg_loss)
  if log_variances is None:
    return sum(terms)
  return sum(np.exp(-s) * term + s for term, s in zip(terms, log_variances))


def test_none_is_bit_identical_to_the_fixed_weight_loss():
  config = tiny_config()
  assert config.loss_balancing == 'none' and config.focus_weight == 0.0
  recon, seg_logits, batch = loss_inputs()
  for loss_state in (None, {}, steps.initial_loss_state(config)):
    def new(r, s, loss_state=loss_state):
      return steps.compute_losses(config, r, s, batch, loss_state)

    want = jax.jit(jax.value_and_grad(lambda r, s: old_compute_losses(config, r, s, batch), (0, 1), has_aux=True))
    got = jax.jit(jax.value_and_grad(new, (0, 1), has_aux=True))
    jax.tree.map(np.testing.assert_array_equal, got(recon, seg_logits), want(recon, seg_logits))
  np.testing.assert_allclose(steps.compute_losses(config, recon, seg_logits, batch)[0],
                             np_loss(config, recon, seg_logits, batch), rtol=1e-5)


@pytest.mark.parametrize('source', ['reference', 'prediction'])
def test_focus_loss_matches_numpy(source):
  import losses_test  # pylint: disable=g-import-not-at-top
  config = tiny_config(focus_weight=4.0, focus_source=source)
  recon, seg_logits, batch = loss_inputs()
  labels = batch['segmentation'] if source == 'reference' else np.argmax(seg_logits, axis=-1)
  margin = steps.focus_margin_pixels(config, SIZE)
  assert margin == 1
  region = losses_test.np_box(labels, margin)
  assert 0 < region.mean() < 0.5
  loss, terms = jax.jit(functools.partial(steps.compute_losses, config))(recon, seg_logits, batch)
  np.testing.assert_allclose(loss, np_loss(config, recon, seg_logits, batch, region), rtol=1e-5)
  plain = steps.compute_losses(tiny_config(), recon, seg_logits, batch)[1]['recon_loss']
  assert abs(float(terms['recon_loss']) / float(plain) - 1) > 1e-3
  other = losses_test.np_box(np.argmax(seg_logits, axis=-1) if source == 'reference' else batch['segmentation'],
                             margin)
  assert not np.allclose(loss, np_loss(config, recon, seg_logits, batch, other), rtol=1e-4)
  # The predicted box is a constant of the reconstruction loss: no gradient reaches the logits through it.
  recon_grad = jax.grad(lambda s: steps.compute_losses(config, recon, s, batch)[1]['recon_loss'])(seg_logits)
  np.testing.assert_array_equal(recon_grad, 0.0)


def test_uncertainty_loss_matches_numpy():
  config = tiny_config(loss_balancing='uncertainty')
  recon, seg_logits, batch = loss_inputs()
  loss_state = steps.initial_loss_state(config)
  loss_state['log_variances'] = {'recon': jnp.float32(-1.0), 'seg': jnp.float32(0.5)}
  loss, _ = steps.compute_losses(config, recon, seg_logits, batch, loss_state)
  np.testing.assert_allclose(loss, np_loss(config, recon, seg_logits, batch, log_variances=(-1.0, 0.5)), rtol=1e-5)
  recon_weight, seg_weight = steps.loss_term_weights(config, loss_state)
  np.testing.assert_allclose((recon_weight, seg_weight), (0.7 * np.exp(1.0), 1.3 * np.exp(-0.5)), rtol=1e-6)


def run_steps(config, num_steps, num_devices=2, batch=None):
  """`num_steps` pmapped train steps from the initial state: (initial state, final state, terms of every step)."""
  devices = jax.local_devices()[:num_devices]
  model, tx = steps.create_model(config), steps.create_optimizer(config)
  initial = steps.initial_state(config, model, tx, (SIZE, SIZE))
  p_step = parallel.pmap(functools.partial(steps.train_step, model=model, tx=tx, config=config),
                         static_broadcasted_argnums=(3,), devices=devices)
  state = parallel.replicate(initial, devices)
  batch = parallel.shard(tiny_batch() if batch is None else batch, num_devices)
  rng = parallel.replicate(jax.random.PRNGKey(3), devices)
  history = []
  for _ in range(num_steps):
    state, terms = p_step(state, batch, rng, 1.0 / config.acceleration)
    history.append(jax.device_get(parallel.unreplicate(terms)))
  return initial, jax.device_get(parallel.unreplicate(state)), history


def test_grad_norm_weight_equalises_the_norms_and_follows_a_scaled_term(experiment='unet_unet'):
  batch = tiny_batch(batch=2)
  config = tiny_config(experiment, loss_balancing='grad_norm')
  initial, state, (terms,) = run_steps(config, 1, num_devices=1, batch=batch)
  weight = float(terms['seg_weight_effective'])
  # The first step's weight makes the weighted Dice gradient's norm on the reconstruction network equal the
  # l1-l2 term's; by a direct jax.grad of each term (Dice at weight 1).
  unit = direct_norms(tiny_config(experiment, seg_loss_weight=1.0), initial, batch, jax.random.PRNGKey(3))
  np.testing.assert_allclose(weight, unit['recon_grad_norm'] / unit['seg_grad_norm'], rtol=1e-4)
  np.testing.assert_allclose(terms['seg_grad_norm'], terms['recon_grad_norm'], rtol=1e-5)
  np.testing.assert_allclose(state.loss_state['seg_weight'], weight)
  # The update is the fixed-weight update at that weight.
  _, fixed_state, (fixed_terms,) = run_steps(tiny_config(experiment, seg_loss_weight=weight), 1, num_devices=1,
                                            batch=batch)
  for key in ('loss', 'grad_norm', 'recon_loss', 'seg_loss'):
    np.testing.assert_allclose(terms[key], fixed_terms[key], rtol=1e-5, err_msg=key)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6), state.params, fixed_state.params)
  # A reconstruction term 10x larger, with a wanted ratio of 2, moves the Dice weight 20x with it.
  _, _, (scaled,) = run_steps(tiny_config(experiment, loss_balancing='grad_norm', recon_loss_weight=7.0,
                                          balance_ratio=2.0), 1, num_devices=1, batch=batch)
  np.testing.assert_allclose(scaled['seg_weight_effective'], 20.0 * weight, rtol=1e-4)
  np.testing.assert_allclose(scaled['seg_grad_norm'], 2.0 * scaled['recon_grad_norm'], rtol=1e-5)


def test_grad_norm_weight_is_a_moving_average_over_steps():
  config = tiny_config(loss_balancing='grad_norm', balance_momentum=0.6)
  _, state, history = run_steps(config, 3)
  weights = [float(t['seg_weight_effective']) for t in history]
  for previous, terms in zip(weights, history[1:]):
    weight = float(terms['seg_weight_effective'])
    target = terms['recon_grad_norm'] / (terms['seg_grad_norm'] / weight)  # Ratio 1 over the Dice norm at weight 1.
    np.testing.assert_allclose(weight, 0.6 * previous + 0.4 * target, rtol=1e-4)
  assert len(set(weights)) == 3
  np.testing.assert_allclose(state.loss_state['seg_weight'], weights[-1])


def test_uncertainty_log_variances_start_at_the_log_losses_then_follow_adam():
  config = tiny_config(loss_balancing='uncertainty')
  _, state, history = run_steps(config, 2)
  first, second = history
  assert first['log_variance_recon'] == first['log_variance_seg'] == 0.0
  np.testing.assert_allclose((first['recon_weight_effective'], first['seg_weight_effective']), (0.7, 1.3), rtol=1e-6)
  s1 = np.log([0.7 * first['recon_loss'], 1.3 * first['seg_loss']])
  np.testing.assert_allclose((second['log_variance_recon'], second['log_variance_seg']), s1, rtol=1e-5)
  np.testing.assert_allclose((second['recon_weight_effective'], second['seg_weight_effective']),
                             (1.0 / first['recon_loss'], 1.0 / first['seg_loss']), rtol=1e-5)
  # Adam's first step on the s-gradient 1 - exp(-s) w L: -lr g / (|g| + eps), towards s = log(w L).
  grads = 1.0 - np.exp(-s1) * np.array([0.7 * second['recon_loss'], 1.3 * second['seg_loss']])
  s2 = s1 - config.uncertainty_learning_rate * grads / (np.abs(grads) + 1e-8)
  log_variances = state.loss_state['log_variances']
  np.testing.assert_allclose((log_variances['recon'], log_variances['seg']), s2, rtol=1e-5)
  np.testing.assert_allclose(second['loss'], np.sum(np.exp(-s1) * np.array(
      [0.7 * second['recon_loss'], 1.3 * second['seg_loss']]) + s1), rtol=1e-5)
  # A Dice term 10x larger starts with an s_seg larger by log 10: the same effective weight.
  _, scaled_state, _ = run_steps(tiny_config(loss_balancing='uncertainty', seg_loss_weight=13.0), 1)
  np.testing.assert_allclose(scaled_state.loss_state['log_variances']['seg'] - second['log_variance_seg'],
                             np.log(10.0), rtol=1e-5)
