"""The train step as the loop runs it: pmapped, and compiled ahead on background threads, one level at a time."""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from segrecon_jax.training import parallel
from segrecon_jax.training import steps


class TrainSteps:
  """The pmapped train step of every sampled fraction, as the training loop and the benchmark run it.

  `steps.train_step` as two pmapped programs: `steps.sample_train_masks`, compiled once per sampled fraction (a small
  program: the fraction is its static argument), and `steps.train_update` (model, losses, gradients, optimizer),
  compiled once for all fractions. A stabilized run's later levels then cost a mask sampler's compile each instead
  of the whole step's (6 levels of the paper's schedule compiled the flagship's step 6 times before).
  Both compile ahead on `parallel.AheadOfTimeSteps`' threads: `prefetch(fraction)` queues a level,
  `get(fraction)` returns `fn(state, batch, rng) -> (state, terms)` (state donated), waiting if needed.

  `compile_seconds` / `wait_seconds`: per compiled program, keyed by fraction for the mask samplers and by
  'update' for the update.
  """

  def __init__(self, model, tx, config, state, batch, rng, devices=None, workers: Optional[int] = None):
    """`state`, `batch`, `rng` are replicated/sharded examples (read for shapes and dtypes only)."""
    num_devices, num_examples, _, width = np.shape(batch['image'])
    p_masks = parallel.pmap(functools.partial(steps.sample_train_masks, num_examples=num_examples, width=width,
                                              num_acs=config.num_acs),
                            static_broadcasted_argnums=(2,), devices=devices)
    p_update = parallel.pmap(functools.partial(steps.train_update, model=model, tx=tx, config=config),
                             donate_argnums=(0,), devices=devices)
    self.masks = parallel.AheadOfTimeSteps(p_masks, (state.step, rng), 'train masks', workers=workers)
    masks = jax.ShapeDtypeStruct((num_devices, num_examples, 1, width), jnp.bool_)
    self.update = parallel.AheadOfTimeSteps(p_update, (state, batch, masks), 'train update', static=False,
                                            after=self.masks)

  def prefetch(self, fraction: float) -> None:
    self.masks.prefetch(fraction)
    self.update.prefetch(None)

  def get(self, fraction: float):
    sample, update = self.masks.get(fraction), self.update.get(None)

    def step(state, batch, rng):
      return update(state, batch, sample(state.step, rng))

    return step

  def _merged(self, name: str):
    merged = dict(getattr(self.masks, name))
    if None in getattr(self.update, name):
      merged['update'] = getattr(self.update, name)[None]
    return merged

  @property
  def compile_seconds(self):
    return self._merged('compile_seconds')

  @property
  def wait_seconds(self):
    return self._merged('wait_seconds')

  def close(self) -> None:
    self.masks.close()  # (The update shares its thread.)
