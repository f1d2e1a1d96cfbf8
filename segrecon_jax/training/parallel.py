"""Device layout: the one place that knows about pmap, replication and batch sharding.

Training data-parallelizes with `jax.pmap` over all local devices under the axis name `AXIS_NAME`; each host
feeds its own share of the global batch (`per_host_batch_size`), reshaped here to `[devices, per_device, ...]`.
A later move to `jit` + sharding touches only this file.
"""

import concurrent.futures
import functools
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Hashable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from segrecon_jax import settings
from segrecon_jax.models import layers

AXIS_NAME = 'batch'  # The pmap axis: gradients, BatchNorm statistics and metrics are averaged over it.


class BatchSizeError(ValueError):
  """A batch size that does not divide evenly over hosts and devices."""


def check_batch_size(global_batch_size: int, field: str = 'batch_size') -> None:
  """Raises BatchSizeError unless the global batch splits evenly over all devices of all hosts."""
  num_devices = jax.device_count()
  if global_batch_size <= 0 or global_batch_size % num_devices:
    raise BatchSizeError(f'config.{field}={global_batch_size} must be a positive multiple of the number of '
                         f'devices ({num_devices}: {jax.local_device_count()} local x {jax.process_count()} '
                         'hosts).')


def per_host_batch_size(global_batch_size: int) -> int:
  """The part of the global batch this host loads."""
  return global_batch_size // jax.process_count()


def shard(batch: Any, num_devices: Optional[int] = None) -> Any:
  """Reshapes every leaf `[per_host_batch, ...]` to `[num_devices, per_device, ...]` (default: all local devices)."""
  num_devices = num_devices or jax.local_device_count()

  def _shard(x):
    x = np.asarray(x)
    if x.shape[0] % num_devices:
      raise BatchSizeError(f'a batch of {x.shape[0]} does not split over {num_devices} local devices')
    return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])

  return jax.tree.map(_shard, batch)


def unshard(tree: Any) -> Any:
  """Inverse of `shard` for device outputs: `[devices, per_device, ...]` -> numpy `[devices * per_device, ...]`."""
  return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), tree)


def gather_to_host(tree: Any) -> Any:
  """Every host's `[n, ...]` numpy leaves concatenated in process order `[hosts * n, ...]`, on every host."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)


def replicate(tree: Any, devices: Optional[Sequence[jax.Device]] = None) -> Any:
  """Puts one copy of `tree` on every device of `devices` (default: all local devices; leading axis = devices)."""
  devices = list(devices or jax.local_devices())
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS_NAME,)),
                                        jax.sharding.PartitionSpec(AXIS_NAME))

  def _replicate(x):
    x = np.asarray(x)
    return jax.device_put(np.broadcast_to(x[None], (len(devices),) + x.shape), sharding)

  return jax.tree.map(_replicate, tree)


def unreplicate(tree: Any) -> Any:
  """The copy on the first local device, as host numpy arrays."""
  return jax.tree.map(lambda x: np.asarray(x[0]), tree)


def pmap(fn: Callable, static_broadcasted_argnums: Sequence[int] = (), donate_argnums: Sequence[int] = (),
         devices: Optional[Sequence[jax.Device]] = None) -> Callable:
  """`jax.pmap` with axis name `AXIS_NAME` over all local devices, or over `devices` (scaling benchmarks)."""
  return jax.pmap(fn, axis_name=AXIS_NAME, static_broadcasted_argnums=tuple(static_broadcasted_argnums),
                  donate_argnums=tuple(donate_argnums), devices=None if devices is None else list(devices))


def pmean(tree: Any) -> Any:
  """Mean over the devices of the pmap axis (call inside a pmapped function)."""
  return jax.lax.pmean(tree, axis_name=AXIS_NAME)


def device_index() -> jax.Array:
  """This device's position on the pmap axis (call inside a pmapped function)."""
  return jax.lax.axis_index(AXIS_NAME)


def all_finite(tree: Any) -> jax.Array:
  """True when every element of every leaf is finite on every device (call inside a pmapped function), so all
  replicas take the same decision and stay identical."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  finite = jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
  return jax.lax.pmin(finite.astype(jnp.int32), AXIS_NAME) > 0


class AheadOfTimeSteps:
  """Executables of a pmapped step, one per value of its last (static) argument, compiled on background threads.

  `prefetch(value)` queues `pmapped.lower(*example_args, value).compile()` on `workers` threads, so the next
  values' compiles (e.g. the later sampled fractions of the stabilization schedule) run while the current one
  trains: free on a GPU/TPU host whose CPU is otherwise idle, and on a small CPU host they share the cores.
  `workers=None` picks `default_compile_workers()`: one on a CPU backend (the compiles already compete with the
  train step for the cores), two on a GPU/TPU host, whose cores are otherwise idle (more do not pay there: each
  compile also autotunes on the one accelerator, so many at once queue behind each other). `get(value)` returns
  the executable (called without the static argument), waiting for it if needed, compiling it now if it was never
  queued. `compile_seconds[value]` is each compile's own time, `wait_seconds[value]` how long the caller was blocked
  waiting for it; the gap between the two is compile time hidden behind training.

  `example_args` are only read for shapes and dtypes (`jax.ShapeDtypeStruct`s are taken), so donated buffers
  may be passed. The compiles trace the step on the worker threads, so what a trace reads from process state (the
  layer setting of `models.layers`, set by `setup_runtime`) must be set before `prefetch`. With `static=False` the
  step has no static argument: use the value None. Instances made with `after=other` share `other`'s worker
  threads, so their compiles queue behind `other`'s instead of competing.

  In a multi-process job nothing is compiled ahead (jax 0.10.2's pmap cannot lower from shapes there: host-local
  to global avals): `get` returns the pmapped step with the value bound, which compiles at its first call.
  """

  def __init__(self, pmapped: Callable, example_args: Tuple[Any, ...], name: str = 'step', static: bool = True,
               after: Optional['AheadOfTimeSteps'] = None, workers: Optional[int] = None):
    self._pmapped = pmapped
    self._static = static
    self._ahead = jax.process_count() == 1
    self._specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), example_args)
    self._name = name
    self.workers = after.workers if after is not None else (workers or default_compile_workers())
    self._executor = after._executor if after is not None else concurrent.futures.ThreadPoolExecutor(
        max_workers=self.workers, thread_name_prefix='compile_ahead')
    self._futures: Dict[Hashable, concurrent.futures.Future] = {}
    self._lock = threading.Lock()
    self.compile_seconds: Dict[Hashable, float] = {}
    self.wait_seconds: Dict[Hashable, float] = {}

  def _compile(self, value):
    start = time.perf_counter()
    args = self._specs + (value,) if self._static else self._specs
    compiled = self._pmapped.lower(*args).compile()
    self.compile_seconds[value] = time.perf_counter() - start
    return compiled

  def prefetch(self, value: Hashable) -> None:
    """Queues the compile of `value` (no-op if already queued or done, or in a multi-process job)."""
    if not self._ahead:
      return
    with self._lock:
      if value not in self._futures:
        self._futures[value] = self._executor.submit(self._compile, value)

  def get(self, value: Hashable):
    """The executable for `value`; the first call for a value records how long it waited."""
    if not self._ahead:
      return functools.partial(_call_with_static, self._pmapped, value) if self._static else self._pmapped
    self.prefetch(value)
    future = self._futures[value]
    if value not in self.wait_seconds:
      start = time.perf_counter()
      future.result()
      self.wait_seconds[value] = time.perf_counter() - start
      logging.info('%s%s: compiled in %.1f s, waited %.1f s for it (%d compiled so far).', self._name,
                   f' for {value}' if self._static else '', self.compile_seconds[value], self.wait_seconds[value],
                   len(self.compile_seconds))
    return future.result()

  def close(self) -> None:
    """Drops queued compiles that have not started and waits for a running one."""
    self._executor.shutdown(wait=True, cancel_futures=True)


def default_compile_workers() -> int:
  """Compile threads of `AheadOfTimeSteps`: 1 on a CPU backend, 2 on a GPU/TPU host with 4 or more cores."""
  if jax.default_backend() == 'cpu' or (os.cpu_count() or 1) < 4:
    return 1
  return 2


def _call_with_static(pmapped: Callable, value, *args):
  return pmapped(*args, value)


_DISTRIBUTED = {'initialized': False}  # jax.distributed.initialize() runs once per process.
# How long jax.distributed.initialize() waits for every process of the job to connect (JAX's default, passed so that
# the waiting message states the limit in force); past it JAX ends the process (DEADLINE_EXCEEDED).
DISTRIBUTED_TIMEOUT_SECONDS = 300


def setup_runtime(config) -> None:
  """Multi-host initialization, the persistent compilation cache and the layer implementations (before any
  computation or tracing).

  `jax.distributed.initialize()` must come before anything starts the XLA backend (even `jax.process_count()`), so
  whether it ran is kept here rather than asked of JAX. With `coordinator_address` empty it detects the cluster
  (SLURM, Open MPI, TPU pods); otherwise it uses the given coordinator, process count and id (e.g. several
  processes on one machine). On CPU, cross-process collectives go through gloo. `config.conv_impl` and
  `config.upconv_impl` (runtime only: how the convolutions are computed, never part of the model) are set once for
  the whole process (`layers.set_impls`), so every trace, the background compiles of `AheadOfTimeSteps` included,
  uses the same layers.
  """
  if config.distributed and not _DISTRIBUTED['initialized']:
    kwargs = {}
    if config.get('coordinator_address'):
      kwargs = dict(coordinator_address=config.coordinator_address, num_processes=config.num_processes,
                    process_id=config.process_id)
      if not 0 <= config.process_id < config.num_processes:
        raise settings.ConfigError(
            f'config.num_processes={config.num_processes}, config.process_id={config.process_id}: with '
            f'config.coordinator_address={config.coordinator_address!r} give the number of processes of the job '
            '(>= 1) and this process\'s id, 0 .. num_processes - 1 (0 on the coordinator\'s host).')
      # The connection blocks until every process has come: say for whom this process waits, and how long.
      logging.warning('process %d of %d: waiting up to %d s for the coordinator %s and the other %d process(es) to '
                      'connect (jax.distributed.initialize); past that, JAX ends this process (DEADLINE_EXCEEDED).',
                      config.process_id, config.num_processes, DISTRIBUTED_TIMEOUT_SECONDS,
                      config.coordinator_address, config.num_processes - 1)
    if 'cpu' in os.environ.get('JAX_PLATFORMS', ''):
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    try:
      jax.distributed.initialize(initialization_timeout=DISTRIBUTED_TIMEOUT_SECONDS, **kwargs)
    except ValueError as e:
      if kwargs or 'coordinator_address' not in str(e):
        raise
      raise settings.ConfigError(  # JAX found no cluster (SLURM, Open MPI, a TPU pod) to read it from.
          'config.distributed=True with config.coordinator_address empty: no cluster (SLURM, Open MPI, a TPU pod) '
          'was detected to find the other processes from. Set --config.coordinator_address=HOST:PORT (the host of '
          'process 0 and a free port), --config.num_processes=N and --config.process_id=i (0 .. N-1, a different one '
          'on each process), or leave config.distributed False for one process (docs/usage.md, Several hosts).'
      ) from None
    _DISTRIBUTED['initialized'] = True
  if config.compilation_cache_dir:
    cache_dir = os.path.expanduser(config.compilation_cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    jax.config.update('jax_compilation_cache_dir', cache_dir)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  layers.set_impls(conv_impl=config.get('conv_impl', 'auto'), upconv_impl=config.get('upconv_impl', 'auto'))
