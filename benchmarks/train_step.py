"""Speed benchmark of the paper's experiments: compile and step time, FLOP/s against this machine's ceiling, memory.

  python benchmarks/train_step.py                         # every experiment, paper widths, 128x128, batch 16
  python benchmarks/train_step.py --experiments=cascade --image_size=128 --batch=16 --steps=5 --json=bench.json
  python benchmarks/train_step.py --experiments=unet --devices=2      # 1..2 devices, same global batch
  python benchmarks/train_step.py --experiments=unet,cascade --conv_impl=xla,native --upconv_impl=xla,dense
  python benchmarks/train_step.py --steps=3 --torch_python=/path/to/torchvenv/bin/python   # + PyTorch columns
  python benchmarks/train_step.py --torch_python=python3 --torch_modes=eager,compile --tf32=on --batch=128
  python benchmarks/train_step.py --experiments=cascade_manet --steps=2 --profile=/tmp/trace   # jax.profiler trace

For each experiment (the model of `configs/<experiment>.py` at its paper settings, no `runlocal`) it measures the
train step exactly as training runs it (`compiled.TrainSteps`: the mask sampler and the update under `parallel.pmap`):
compile time, steady-state step time (median of `--steps` timed steps after warm-up, with min and max), slices/s,
FLOPs per step from XLA's cost analysis of the update with XLA's convolutions (`update_flops`: the native kernels are
FFI calls it would count as nothing) and the achieved FLOP/s as a fraction of the float32 matmul ceiling measured
in the same run, peak memory, the input pipeline's examples/s against the rate the step consumes them, and the
number of compiles of a full stabilization schedule with their share of the wall time at paper scale. Synthetic
phantom-like batches feed the step; the input pipeline is timed on its own over the TFDS `ocmr` data source.
On CPU, `--devices N` fakes N host devices (correctness of the layout, not speed); on a multi-GPU host it prints
the scaling efficiency of the same global batch over 1..N devices. `--conv_impl` and `--upconv_impl` time the
step with each value of the runtime layer setting of `models/layers.py` in the same run (every pair of the two
lists; the model and its parameters are the same in each): `conv_impl` of every convolution ('xla': XLA's
convolutions, as nn.Conv; 'native': the native CPU kernels of models/native.py; 'auto': the default),
`upconv_impl` of the U-Nets' 2x2 up-convolutions ('xla': nn.ConvTranspose; 'dense': UpConv2x2; 'auto').

With `--torch_python` (the Python of an environment with benchmarks/requirements-torch.txt), the same run then
times the PyTorch reference (`benchmarks/torch_reference.py`, same shapes, loss, optimizer; `--torch_threads`
threads, default all CPUs) in a subprocess and adds "PyTorch step" and "speed vs PyTorch" (PyTorch's step time
over ours) columns; `--torch_modes=eager,compile` also times it under `torch.compile` (`--torch_compile_mode`) and
adds the compiled columns. `--tf32=on|off` sets TF32 for float32 matmuls and convolutions identically on both sides
(JAX: `jax_default_matmul_precision` 'tensorfloat32' or 'highest', which convolutions follow too; PyTorch: both
`allow_tf32` switches); 'default' leaves each framework's own default (on recent NVIDIA GPUs both use TF32 for
float32 convolutions, and PyTorch not for matmuls). `--profile DIR` writes a `jax.profiler` trace of the timed steps
(TensorBoard's profile plugin or Perfetto read it) and prints the most expensive XLA operations of the step.
"""

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

EXPERIMENTS = ('unet', 'multidecoder_unet', 'unet_unet', 'cascade', 'cascade_manet')
# --tf32 -> jax_default_matmul_precision (None leaves JAX's default); PyTorch gets the same --tf32.
TF32_PRECISIONS = {'default': None, 'on': 'tensorfloat32', 'off': 'highest'}
TORCH_MODES = ('eager', 'compile')
# The row fields of each PyTorch mode: (step seconds, our speed against it).
TORCH_FIELDS = {'eager': ('torch_step_s', 'speed_vs_torch'),
                'compile': ('torch_compile_step_s', 'speed_vs_torch_compile')}



def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--experiments', default=','.join(EXPERIMENTS),
                      help=f'comma-separated configs/<name>.py experiments, of {EXPERIMENTS}')
  parser.add_argument('--preset', default='x8_stab', help='config preset; solo models use its acceleration only')
  parser.add_argument('--image_size', type=int, default=128, help='square image side H = W')
  parser.add_argument('--batch', type=int, default=16, help='global batch (the paper: 16)')
  parser.add_argument('--steps', type=int, default=5, help='timed steps after one warm-up step')
  parser.add_argument('--devices', type=int, default=1, help='run the same global batch over 1..N local devices')
  parser.add_argument('--half_precision', action='store_true', help='bfloat16 compute')
  parser.add_argument('--conv_impl', default='auto',
                      help="comma-separated convolution choices timed in the same run, of 'auto', 'xla', 'native'")
  parser.add_argument('--upconv_impl', default='auto',
                      help="comma-separated U-Net up-convolution choices, of 'auto', 'xla', 'dense'")
  parser.add_argument('--torch_python', default='',
                      help='Python with benchmarks/requirements-torch.txt: adds the PyTorch reference columns')
  parser.add_argument('--torch_threads', type=int, default=0, help='PyTorch threads (0: all CPUs of this host)')
  parser.add_argument('--torch_modes', default='eager',
                      help="comma-separated PyTorch step modes, of 'eager', 'compile' (torch.compile)")
  parser.add_argument('--torch_compile_mode', default='default',
                      help="torch.compile mode of --torch_modes=compile ('default', 'reduce-overhead', 'max-autotune')")
  parser.add_argument('--tf32', default='default', choices=tuple(TF32_PRECISIONS),
                      help="TF32 for float32 matmuls and convolutions, set the same in JAX and PyTorch: 'on', 'off', "
                           "or each framework's 'default'")
  parser.add_argument('--profile', default='', help='write a jax.profiler trace of the timed steps to this folder')
  parser.add_argument('--pipeline_config', default='phantom',
                      help="TFDS ocmr config whose input pipeline is timed ('' skips it)")
  parser.add_argument('--data_dir', default='', help='TFDS data_dir for the input-pipeline timing')
  parser.add_argument('--json', default='', help='also write the results as JSON to this path')
  return parser.parse_args(argv)


def _force_host_devices(num_devices: int) -> None:
  """Fake CPU devices must be requested before jax starts its CPU backend."""
  if num_devices > 1 and 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_force_host_platform_device_count={num_devices}').strip()


if __name__ == '__main__':
  _force_host_devices(parse_args(sys.argv[1:]).devices)
  # The repository root: segrecon_jax and the experiment files configs/<experiment>.py.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import contextlib
import functools
import gzip
import importlib
import itertools
import resource
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from segrecon_jax import models
from segrecon_jax.models import layers
from segrecon_jax.training import compiled
from segrecon_jax.training import config_checks
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import parallel
from segrecon_jax.training import steps as step_lib  # `steps` is the timed step count here.
# pylint: enable=g-import-not-at-top,wrong-import-position


def matmul_ceiling(device: jax.Device, size: int = 2048, repeats: int = 5) -> float:
  """Measured float32 matmul FLOP/s of one device: the best of `repeats` square `size` x `size` products."""
  a = jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), jnp.float32), device)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def synthetic_batch(batch: int, size: int, seed: int = 0) -> Dict[str, np.ndarray]:
  """A host batch shaped like the input pipeline's: smooth complex images in [0, 1] and a disc of labels."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size] / size - 0.5
  radius = np.sqrt(yy**2 + xx**2)
  images = np.stack([np.clip(1.0 - 2.0 * radius, 0, 1) * np.exp(1j * rng.uniform(-1, 1))
                     for _ in range(batch)]).astype(np.complex64)
  labels = np.zeros((batch, size, size), np.int32)
  labels[:, radius < 0.1] = 1
  labels[:, (radius >= 0.1) & (radius < 0.15)] = 2
  return {'image': images, 'segmentation': labels, 'index': np.arange(batch, dtype=np.int32),
          'mask_id': np.arange(batch, dtype=np.int32),
          'valid': np.ones((batch,), np.float32)}


def experiment_config(experiment: str, preset: str, args: argparse.Namespace, stabilized: Optional[bool] = None,
                      conv_impl: str = 'auto', upconv_impl: str = 'auto'):
  """`configs/<experiment>.py` at `preset` (e.g. 'x8_stab'; solo models drop '_stab'), with the benchmark's batch.

  `stabilized` overrides the preset's stabilization (joint models only); `conv_impl` and `upconv_impl` set the
  config's runtime layer setting (`time_train_step` applies it).
  """
  acceleration, _, suffix = preset.partition('_')
  stabilized = suffix == 'stab' if stabilized is None else stabilized
  solo = not models.segments(experiment)  # Experiment files are named by their model.
  config = importlib.import_module(f'configs.{experiment}').get_config(
      acceleration + ('_stab' if stabilized and not solo else ''))
  config.batch_size = args.batch
  config.half_precision = args.half_precision
  return set_layer_choices(config, conv_impl=conv_impl, upconv_impl=upconv_impl)


def set_layer_choices(config, **choices: str):
  """Sets the runtime layer setting of `config` (`conv_impl`, `upconv_impl`, e.g. `conv_impl='xla'`), in place."""
  unknown = sorted(set(choices) - set(layers.current_impls()))
  if unknown:
    raise ValueError(f'unknown layer setting(s) {unknown}; valid are {sorted(layers.current_impls())}')
  for field, value in choices.items():
    config[field] = value
  return config


def layer_setting(config) -> Dict[str, str]:
  """The runtime layer setting a config asks for (`layers.impls` keyword arguments)."""
  return {field: config.get(field, 'auto') for field in layers.current_impls()}


def _flops(stage) -> float:
  analysis = stage.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get('flops', float('nan'))) if analysis else float('nan')


def update_flops(config, tx, state, batch, masks, devices) -> float:
  """FLOPs of one device's train update as XLA counts them with XLA's own convolutions.

  XLA's cost analysis counts an FFI call as no work, so the compiled step of a model whose convolutions run on the
  native CPU kernels (`models/layers.py`) would count only what XLA computes itself, a small part of the step. The
  same update is therefore lowered, not compiled, with conv_impl 'xla' and counted before XLA optimizes it: the
  model's arithmetic, whichever layers compute it (the parameters, and so `state`, are the same for every layer
  setting). The setting is process-wide: call this when no compile of another setting is running."""
  with layers.impls(conv_impl='xla'):
    update = parallel.pmap(functools.partial(step_lib.train_update, model=step_lib.create_model(config), tx=tx,
                                             config=config), devices=devices)
    return _flops(update.lower(state, batch, masks))


def _peak_memory_bytes(devices, compiled) -> Dict[str, Optional[float]]:
  """Device peak bytes where the runtime reports them (GPU/TPU), XLA's planned bytes, and the host's max RSS."""
  stats = devices[0].memory_stats() or {}
  planned = None
  try:
    analysis = compiled.memory_analysis()
    planned = float(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                    - analysis.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    pass
  return {'device_peak_bytes': stats.get('peak_bytes_in_use'), 'xla_planned_bytes': planned,
          'host_max_rss_bytes': float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}


def time_train_step(config, image_size: int, num_devices: int, steps: int, profile_dir: str = '') -> Dict[str, Any]:
  """Compile and steady-state times of the real train step on the first `num_devices` local devices.

  With `profile_dir`, the timed steps run under `jax.profiler.trace(profile_dir)`. The step is traced and compiled
  (on `TrainSteps`' background thread too) under the config's runtime layer setting (`layer_setting`).
  """
  with layers.impls(**layer_setting(config)):
    return _time_train_step(config, image_size, num_devices, steps, profile_dir)


def _time_train_step(config, image_size: int, num_devices: int, steps: int, profile_dir: str) -> Dict[str, Any]:
  devices = jax.local_devices()[:num_devices]
  config_checks.check_masks_fit(config, image_size, f'--image_size={image_size}')
  if config.batch_size % num_devices:
    raise ValueError(f'--batch={config.batch_size} does not split over {num_devices} devices')
  model, tx = step_lib.create_model(config), step_lib.create_optimizer(config)
  state = step_lib.initial_state(config, model, tx, (image_size, image_size))
  state = parallel.replicate(state, devices)
  rng = parallel.replicate(jax.random.PRNGKey(0), devices)
  batch = parallel.shard(synthetic_batch(config.batch_size, image_size), num_devices)
  fraction = 1.0 / config.acceleration

  # As the training loop runs it: the mask sampler of this fraction and the update, compiled one after the other.
  train_steps = compiled.TrainSteps(model, tx, config, state, batch, rng, devices=devices, workers=1)
  train_steps.prefetch(fraction)
  step_fn = train_steps.get(fraction)
  update = train_steps.update.get(None)  # Both compiles have finished: update_flops may change the setting.
  compile_seconds = train_steps.compile_seconds
  masks = jax.ShapeDtypeStruct((num_devices, config.batch_size // num_devices, 1, image_size), jnp.bool_)
  flops_per_device = update_flops(config, tx, state, batch, masks, devices)
  state, terms = step_fn(state, batch, rng)  # Warm-up.
  jax.block_until_ready(terms)
  times = []
  with jax.profiler.trace(profile_dir) if profile_dir else contextlib.nullcontext():
    for _ in range(steps):
      start = time.perf_counter()
      state, terms = step_fn(state, batch, rng)
      jax.block_until_ready(terms)
      times.append(time.perf_counter() - start)
  train_steps.close()
  if not np.isfinite(float(np.asarray(terms['loss'])[0])):
    raise FloatingPointError(f'{config.model.name}: non-finite loss in the benchmark step')
  median = float(np.median(times))
  return {
      'devices': num_devices, 'compile_s': sum(compile_seconds.values()), 'update_compile_s': compile_seconds['update'],
      'masks_compile_s': compile_seconds[fraction], 'step_median_s': median, 'step_min_s': float(min(times)),
      'step_max_s': float(max(times)), 'slices_per_s': config.batch_size / median,
      'flops_per_step': flops_per_device * num_devices, 'flops_per_s': flops_per_device * num_devices / median,
      **_peak_memory_bytes(devices, update), **({'hlo_text': update.as_text()} if profile_dir else {})}


def time_input_pipeline(config, pipeline_config: str, data_dir: str, max_batches: int = 20) -> Dict[str, float]:
  """Examples/s of this host's training batches (decode + shuffle + batch), over at most `max_batches`."""
  config = config.copy_and_resolve_references()
  config.dataset_config = pipeline_config
  if data_dir:
    config.data_dir = data_dir
  source = input_pipeline.load_split(config, config.train_split)
  config.batch_size = min(config.batch_size, len(source))
  start, examples = time.perf_counter(), 0
  for epoch in range(1, 1000):
    for batch in input_pipeline.train_batches(source, config, epoch):
      examples += len(batch['image'])
      if examples >= max_batches * config.batch_size:
        return {'pipeline_examples_per_s': examples / (time.perf_counter() - start)}
  return {'pipeline_examples_per_s': examples / (time.perf_counter() - start)}


def schedule_cost(config, update_compile_s: float, masks_compile_s: float, step_s: float,
                  train_examples: int = 155) -> Dict[str, float]:
  """Compiles of the config's full stabilization schedule (the update once, a mask sampler per distinct fraction;
  `compiled.TrainSteps`) and their share of the wall time of a paper-scale run (`train_examples` slices per epoch as
  the paper's train split, `config.num_epochs` epochs)."""
  fractions = {step_lib.sampled_fraction_for_epoch(config, epoch) for epoch in range(1, config.num_epochs + 1)}
  steps = config.num_epochs * (train_examples // config.batch_size)
  compile_total = update_compile_s + len(fractions) * masks_compile_s
  return {'schedule_compiles': len(fractions) + 1, 'schedule_compile_s': compile_total,
          'schedule_compile_share': compile_total / (compile_total + steps * step_s)}


def format_table(rows: List[Dict[str, Any]], ceiling: float) -> str:
  columns = (('experiment', '{}'), ('layers', '{}'), ('dev', '{}'), ('compile s', '{:.1f}'), ('step s (med)', '{:.3f}'),
             ('min', '{:.3f}'), ('max', '{:.3f}'), ('slices/s', '{:.1f}'), ('GFLOP/step', '{:.1f}'),
             ('GFLOP/s', '{:.1f}'), ('% ceiling', '{:.0f}'), ('peak MiB', '{}'), ('pipeline ex/s', '{}'),
             ('sched compiles', '{}'), ('compile share', '{:.1%}'))
  torch_modes = [m for m in TORCH_MODES if any(TORCH_FIELDS[m][0] in row for row in rows)]
  labels = {'eager': ('PyTorch step s', 'speed vs PyTorch'),
            'compile': ('PyTorch compiled step s', 'speed vs compiled')}
  for mode in torch_modes:
    columns += tuple((label, '{}') for label in labels[mode])
  lines = ['| ' + ' | '.join(c for c, _ in columns) + ' |', '|' + '---|' * len(columns)]
  for row in rows:
    peak = row.get('device_peak_bytes') or row.get('xla_planned_bytes')
    pipeline = row.get('pipeline_examples_per_s')
    values = (row['experiment'], layers_label(row), row['devices'], row['compile_s'], row['step_median_s'],
              row['step_min_s'], row['step_max_s'], row['slices_per_s'], row['flops_per_step'] / 1e9,
              row['flops_per_s'] / 1e9,
              100 * row['flops_per_s'] / (ceiling * row['devices']), '-' if peak is None else f'{peak / 2**20:.0f}',
              '-' if pipeline is None else f'{pipeline:.0f}', row['schedule_compiles'],
              row['schedule_compile_share'])
    for mode in torch_modes:
      step_field, speed_field = TORCH_FIELDS[mode]
      torch_step = row.get(step_field)
      values += ('-' if torch_step is None else f'{torch_step:.3f}',
                 '-' if torch_step is None else f'{row[speed_field]:.2f}x')
    lines.append('| ' + ' | '.join(fmt.format(v) for (_, fmt), v in zip(columns, values)) + ' |')
  return '\n'.join(lines)


def layers_label(row: Dict[str, Any]) -> str:
  """'conv/upconv' layer choices of a row ('conv' alone for models without up-convolutions)."""
  if row.get('upconv_impl') is None:
    return row['conv_impl']
  return f"{row['conv_impl']}/{row['upconv_impl']}"


def _choices(value: str, valid, flag: str) -> List[str]:
  chosen = list(dict.fromkeys(v.strip() for v in value.split(',') if v.strip()))
  unknown = sorted(set(chosen) - set(valid))
  if unknown or not chosen:
    raise ValueError(f'{flag}={value!r}: unknown {unknown}; valid are {list(valid)}')
  return chosen


def torch_reference(args: argparse.Namespace, experiments: List[str]) -> Dict[str, Any]:
  """Runs benchmarks/torch_reference.py with `args.torch_python` on the same shapes; returns its JSON."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_reference.py')
  acceleration = int(args.preset.partition('_')[0].lstrip('x'))
  threads = args.torch_threads or os.cpu_count()
  with_cuda = jax.default_backend() == 'gpu'
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'torch.json')
    command = [args.torch_python, script, f'--experiments={",".join(experiments)}', f'--image_size={args.image_size}',
               f'--batch={args.batch}', f'--steps={args.steps}', f'--threads={threads}',
               f'--acceleration={acceleration}', f'--device={"cuda" if with_cuda else "cpu"}', f'--json={out}',
               f'--modes={",".join(torch_modes(args))}', f'--compile_mode={args.torch_compile_mode}',
               f'--tf32={args.tf32}']
    if args.half_precision:
      command.append('--half_precision')
    print('PyTorch reference: ' + ' '.join(command), flush=True)
    subprocess.run(command, check=True)
    with open(out) as f:
      return json.load(f)


def torch_modes(args: argparse.Namespace) -> List[str]:
  return _choices(args.torch_modes, TORCH_MODES, '--torch_modes')


def _top_ops(profile_dir: str, hlo_text: str = '', count: int = 8) -> List[Dict[str, Any]]:
  """The XLA operations of the traced steps with the most total time, from the trace's `*.trace.json.gz` (Chrome
  trace format) written by jax.profiler: [{name, total_ms, calls, hlo}], `hlo` being the operation's line of the
  optimized program `hlo_text` (its result shape and operands), and one entry per kind of operation (the name
  without its number, e.g. all 'convolution.*') named 'all <kind>'."""
  paths = []
  for root, _, names in os.walk(profile_dir):
    paths += [os.path.join(root, n) for n in names if n.endswith('.trace.json.gz')]
  if not paths:
    return []
  with gzip.open(max(paths, key=os.path.getmtime), 'rt') as f:
    events = json.load(f).get('traceEvents', [])
  totals: Dict[str, List[float]] = {}
  for event in events:
    if event.get('ph') != 'X' or 'dur' not in event:
      continue
    name = event.get('name', '')
    args = event.get('args') or {}
    if 'hlo_op' not in args and 'long_name' not in args:
      continue  # Host-side Python and runtime spans; keep the XLA ops.
    total = totals.setdefault(args.get('hlo_op', name), [0.0, 0])
    total[0] += event['dur'] / 1e3
    total[1] += 1
  kinds: Dict[str, List[float]] = {}
  for name, (ms, calls) in totals.items():
    kind = kinds.setdefault('all ' + name.rsplit('.', 1)[0], [0.0, 0])
    kind[0] += ms
    kind[1] += calls
  lines = {}
  for line in hlo_text.splitlines():
    left, sep, right = line.strip().partition(' = ')
    if sep:
      lines[left.replace('ROOT ', '').lstrip('%')] = right[:150]
  ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:count]
  ranked += sorted(kinds.items(), key=lambda kv: -kv[1][0])[:4]
  return [{'name': name, 'total_ms': ms, 'calls': calls, 'hlo': lines.get(name, '')} for name, (ms, calls) in ranked]


def run(args: argparse.Namespace) -> Dict[str, Any]:
  """Times every experiment (and PyTorch with `--torch_python`) under `--tf32`'s matmul precision, restored after."""
  torch_modes(args)  # Checked before any timing.
  previous = jax.config.jax_default_matmul_precision
  if TF32_PRECISIONS[args.tf32]:
    jax.config.update('jax_default_matmul_precision', TF32_PRECISIONS[args.tf32])
  try:
    return _run(args)
  finally:
    jax.config.update('jax_default_matmul_precision', previous)


def _run(args: argparse.Namespace) -> Dict[str, Any]:
  experiments = [e.strip() for e in args.experiments.split(',') if e.strip()]
  unknown = sorted(set(experiments) - set(EXPERIMENTS))
  if unknown:
    raise ValueError(f'--experiments: unknown {unknown}; valid are {list(EXPERIMENTS)}')
  conv_impls = _choices(args.conv_impl, layers.CONV_IMPLS, '--conv_impl')
  upconv_impls = _choices(args.upconv_impl, layers.UPCONV_IMPLS, '--upconv_impl')
  if args.devices > jax.local_device_count():
    raise ValueError(f'--devices={args.devices} but this host has {jax.local_device_count()} local devices')
  if args.torch_python and not os.path.exists(args.torch_python):
    raise FileNotFoundError(f'--torch_python={args.torch_python}: no such file')
  device = jax.local_devices()[0]
  ceiling = matmul_ceiling(device)
  print(f'Device: {device.device_kind} ({device.platform}), {jax.local_device_count()} local; float32 matmul '
        f'ceiling {ceiling / 1e9:.1f} GFLOP/s per device; image {args.image_size}x{args.image_size}, global batch '
        f'{args.batch}, {"bfloat16" if args.half_precision else "float32"}, TF32 {args.tf32} '
        f'(jax_default_matmul_precision {jax.config.jax_default_matmul_precision}); jax {jax.__version__}.',
        flush=True)
  rows = []
  for experiment in experiments:
    schedule_config = experiment_config(experiment, args.preset, args, stabilized=True)  # A full schedule's cost.
    pipeline = {}
    if args.pipeline_config:  # The pipeline reads only the batch and data fields, the same in every variant.
      pipeline = time_input_pipeline(schedule_config, args.pipeline_config, args.data_dir)
    has_upconv = models.has_upconv(experiment)
    for conv_impl, upconv_impl in itertools.product(conv_impls, upconv_impls if has_upconv else [None]):
      config = experiment_config(experiment, args.preset, args, conv_impl=conv_impl,
                                 upconv_impl=upconv_impl or 'auto')
      for num_devices in range(1, args.devices + 1):
        if args.batch % num_devices:
          continue
        profile_dir = ''
        if args.profile:
          profile_dir = os.path.join(args.profile, f'{experiment}_{conv_impl}_{upconv_impl}_{num_devices}dev')
        row = {'experiment': experiment, 'conv_impl': conv_impl, 'upconv_impl': upconv_impl,
               **time_train_step(config, args.image_size, num_devices, args.steps, profile_dir), **pipeline}
        row.update(schedule_cost(schedule_config, row['update_compile_s'], row['masks_compile_s'],
                                 row['step_median_s']))
        if profile_dir:
          row['top_ops'] = _top_ops(profile_dir, row.pop('hlo_text'))
        if num_devices > 1:
          single = next(r for r in rows if r['experiment'] == experiment and r['conv_impl'] == conv_impl
                        and r['upconv_impl'] == upconv_impl and r['devices'] == 1)
          row['scaling_efficiency'] = single['step_median_s'] / (num_devices * row['step_median_s'])
        rows.append(row)
        print(f'{experiment} ({layers_label(row)} layers) on {num_devices} device(s): step '
              f'{row["step_median_s"]:.3f} s, {row["slices_per_s"]:.1f} slices/s, compile {row["compile_s"]:.1f} s',
              flush=True)
  result = {'device': device.device_kind, 'platform': device.platform, 'matmul_ceiling_flops_per_s': ceiling,
            'image_size': args.image_size, 'batch': args.batch, 'half_precision': args.half_precision,
            'tf32': args.tf32, 'jax_default_matmul_precision': jax.config.jax_default_matmul_precision,
            'jax_version': jax.__version__, 'rows': rows, 'torch': None}
  if args.json and args.torch_python:  # Ours first, so a PyTorch run stopped by a time limit leaves them.
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  torch_result = None
  if args.torch_python:
    torch_result = torch_reference(args, experiments)
    by_key = {(r['experiment'], r.get('mode', 'eager')): r for r in torch_result['rows'] if 'error' not in r}
    for row in rows:
      for mode, (step_field, speed_field) in TORCH_FIELDS.items():
        if (row['experiment'], mode) in by_key and row['devices'] == 1:
          row[step_field] = by_key[(row['experiment'], mode)]['step_s_median']
          row[speed_field] = row[step_field] / row['step_median_s']
  print()
  print(format_table(rows, ceiling))
  scaling = [r for r in rows if 'scaling_efficiency' in r]
  if scaling:
    fake = device.platform == 'cpu'
    print('\nScaling efficiency (same global batch)' + (' -- fake CPU devices share the same cores: layout check, '
                                                         'not a speed figure' if fake else '') + ':')
    for row in scaling:
      print(f'  {row["experiment"]} ({row["conv_impl"]} layers): {row["devices"]} devices '
            f'{row["scaling_efficiency"]:.0%}')
  if len(conv_impls) * len(upconv_impls) > 1:
    print('\nLayer choices against the first of this run (step times of this run):')
    for row in rows:
      base = next(r for r in rows if r['experiment'] == row['experiment'] and r['devices'] == row['devices'])
      if row is not base:
        print(f'  {row["experiment"]} on {row["devices"]} device(s), {layers_label(row)}: '
              f'{base["step_median_s"] / row["step_median_s"]:.2f}x the speed of {layers_label(base)}')
  for row in rows:
    if row.get('top_ops'):
      print(f'\nMost expensive XLA operations of the {row["experiment"]} ({layers_label(row)}) step, '
            f'{args.steps} steps traced in {args.profile}:')
      for op in row['top_ops']:
        print(f'  {op["total_ms"] / args.steps:9.1f} ms/step  {op["calls"] // args.steps:4d} calls/step  '
              f'{op["name"]}  {op["hlo"]}')
  for row in rows:
    if row.get('pipeline_examples_per_s') and row['pipeline_examples_per_s'] < row['slices_per_s']:
      print(f'WARNING: the input pipeline ({row["pipeline_examples_per_s"]:.0f} ex/s) is slower than the '
            f'{row["experiment"]} step consumes ({row["slices_per_s"]:.0f} slices/s)')
  result['torch'] = torch_result
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  return result


def main(argv: Optional[List[str]] = None) -> None:
  run(parse_args(argv))


if __name__ == '__main__':
  main(sys.argv[1:])
