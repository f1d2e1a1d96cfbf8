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
from segrecon_jax import parallel
from segrecon_jax import steps

SIZE = 16
TINY = (4, 8)
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
  with the masks train_step draws there (device index 0)."""
  model = steps.create_model(config, bn_axis_name=None)
  step_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), 0)
  keys = jax.random.split(step_rng, batch['image'].shape[0])
  zero_filled, measured, masks = steps.undersample_batch(jnp.asarray(batch['image']), keys,
                                                         1.0 / config.acceleration, config.num_acs)

  def weighted_term(params, name, weight):
    outputs, _ = model.apply({'params': params, 'batch_stats': state.batch_stats}, zero_filled, measured, masks,
                             train=True, mutable=['batch_stats'])
    _, terms = steps.compute_losses(config, outputs.recon, outputs.seg_logits, batch)
    return weight * terms[name]

  norms = {}
  for name, weight in (('recon_loss', config.recon_loss_weight), ('seg_loss', config.seg_loss_weight)):
    grads = jax.grad(weighted_term)(state.params, name, weight)
    norms[name.replace('_loss', '_grad_norm')] = float(optax.tree.norm(steps.recon_network_params(model, grads)))
  return norms


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
  from segrecon_jax import checkpoints
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


@pytest.mark.parametrize('ahead', [False, True])
def test_train_steps_split_equals_the_one_program_train_step(ahead):
  """`TrainSteps` (mask sampler per fraction + one update) trains exactly as the single pmapped `train_step`:
  same masks, same updates, over steps that change the sampled fraction."""
  config = tiny_config()
  devices = jax.local_devices()[:2]
  model, tx = steps.create_model(config), steps.create_optimizer(config)
  state = parallel.replicate(steps.initial_state(config, model, tx, (SIZE, SIZE)), devices)
  batch = parallel.shard(tiny_batch(), len(devices))
  rng = parallel.replicate(jax.random.PRNGKey(5), devices)
  p_step = parallel.pmap(functools.partial(steps.train_step, model=model, tx=tx, config=config),
                         static_broadcasted_argnums=(3,), devices=devices)
  split = steps.TrainSteps(model, tx, config, state, batch, rng, devices=devices)
  fractions = (1.0, 0.5, 0.5, 0.25)
  if ahead:
    for fraction in dict.fromkeys(fractions):
      split.prefetch(fraction)
  want, got = state, jax.tree.map(jnp.copy, state)  # The split's update donates its state.
  for fraction in fractions:
    want, want_terms = p_step(want, batch, rng, fraction)
    got, got_terms = split.get(fraction)(got, batch, rng)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(got_terms), jax.device_get(want_terms))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), jax.device_get(want))
  assert int(parallel.unreplicate(got).step) == len(fractions)
  assert set(split.compile_seconds) == {1.0, 0.5, 0.25, 'update'} == set(split.wait_seconds)
  split.close()
