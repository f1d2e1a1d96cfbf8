"""Tests of parallel.AheadOfTimeSteps: executables compiled on a background thread equal the pmapped step."""

import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrecon_jax.training import parallel

TRACED_ON = []


def _step(state, batch, scale):
  TRACED_ON.append((threading.current_thread().name, scale))
  new = state + parallel.pmean(jnp.sum(batch, axis=0)) * scale
  return new, parallel.device_index()


def _eval(state, batch):
  return jnp.sum(state) + jnp.sum(batch)


def test_compiled_ahead_equals_the_pmapped_step():
  p_step = parallel.pmap(_step, static_broadcasted_argnums=(2,), donate_argnums=(0,))
  state = parallel.replicate(np.zeros(3, np.float32))
  batch = parallel.shard(np.arange(12, dtype=np.float32).reshape(4, 3))
  TRACED_ON.clear()
  ahead = parallel.AheadOfTimeSteps(p_step, (state, batch), 'test step')
  for scale in (0.5, 2.0):
    ahead.prefetch(scale)
  ahead.prefetch(0.5)  # Queued once.
  got, index = ahead.get(0.5)(state, batch)
  np.testing.assert_array_equal(index, np.arange(jax.local_device_count()))
  want, _ = p_step(parallel.replicate(np.zeros(3, np.float32)), batch, 0.5)
  np.testing.assert_array_equal(got, want)
  got, _ = ahead.get(2.0)(got, batch)
  want, _ = p_step(want, batch, 2.0)
  np.testing.assert_array_equal(got, want)
  # Compiled off the main thread, each value traced once there (the pmapped calls above trace on the main one).
  assert sorted(s for t, s in TRACED_ON if t.startswith('compile_ahead')) == [0.5, 2.0]
  assert set(ahead.compile_seconds) == set(ahead.wait_seconds) == {0.5, 2.0}
  assert all(0 <= ahead.wait_seconds[k] <= ahead.compile_seconds[k] + 1.0 for k in (0.5, 2.0))
  ahead.close()


def test_a_value_never_prefetched_compiles_on_get_and_steps_without_static_arguments():
  p_step = parallel.pmap(_step, static_broadcasted_argnums=(2,))
  state = parallel.replicate(np.ones(2, np.float32))
  batch = parallel.shard(np.ones((2, 2), np.float32))
  ahead = parallel.AheadOfTimeSteps(p_step, (state, batch), 'test step')
  np.testing.assert_array_equal(ahead.get(3.0)(state, batch)[0], p_step(state, batch, 3.0)[0])
  evals = parallel.AheadOfTimeSteps(parallel.pmap(_eval), (state, batch), 'eval', static=False, after=ahead)
  evals.prefetch(None)
  np.testing.assert_array_equal(evals.get(None)(state, batch), parallel.pmap(_eval)(state, batch))
  with pytest.raises(TypeError):
    ahead.get(3.0)(state, batch, 3.0)  # The executable takes the dynamic arguments only.
  ahead.close()


MEETING = threading.Barrier(2)


def _step_meeting(state, batch, scale):
  """`_step`, whose tracing waits (at most 30 s) until a second trace reaches the same point: two compiles that
  do not run side by side break the barrier."""
  MEETING.wait(timeout=30)
  return _step(state, batch, scale)


def test_several_workers_compile_levels_side_by_side_and_equal_the_pmapped_step():
  p_step = parallel.pmap(_step_meeting, static_broadcasted_argnums=(2,))
  state = parallel.replicate(np.zeros(3, np.float32))
  batch = parallel.shard(np.arange(12, dtype=np.float32).reshape(4, 3))
  TRACED_ON.clear()
  MEETING.reset()
  ahead = parallel.AheadOfTimeSteps(p_step, (state, batch), 'test step', workers=2)
  evals = parallel.AheadOfTimeSteps(parallel.pmap(_eval), (state, batch), 'eval', static=False, after=ahead)
  assert ahead.workers == evals.workers == 2
  scales = (0.5, 2.0)
  for scale in scales:
    ahead.prefetch(scale)
  compiled = {scale: ahead.get(scale) for scale in scales}  # A broken barrier raises here.
  threads = {t for t, s in TRACED_ON if t.startswith('compile_ahead')}
  assert len(threads) == 2 and sorted(s for t, s in TRACED_ON if t in threads) == list(scales)
  TRACED_ON.clear()
  for scale in scales:
    want, _ = parallel.pmap(_step, static_broadcasted_argnums=(2,))(state, batch, scale)
    np.testing.assert_array_equal(compiled[scale](state, batch)[0], want)
  ahead.close()


def test_default_compile_workers():
  want = 1 if jax.default_backend() == 'cpu' or (os.cpu_count() or 1) < 4 else 2
  assert parallel.default_compile_workers() == want
  p_step = parallel.pmap(_step, static_broadcasted_argnums=(2,))
  ahead = parallel.AheadOfTimeSteps(p_step, (parallel.replicate(np.zeros(1, np.float32)),
                                             parallel.shard(np.ones((2, 1), np.float32))), 'test step')
  assert ahead.workers == want
  ahead.close()


def test_negative_compile_workers_is_a_config_error():
  from configs import default  # pylint: disable=g-import-not-at-top
  from segrecon_jax.training import config_checks  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config_checks.check_config(config)  # 0: the default for the backend.
  config.compile_workers = -1
  with pytest.raises(config_checks.ConfigError, match=r'config.compile_workers=-1: compile threads must be >= 0'):
    config_checks.check_config(config)
