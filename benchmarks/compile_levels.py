"""Compile seconds per level of a stabilization schedule: the whole train step per level against the split one.

  python benchmarks/compile_levels.py --experiment=cascade_manet --preset=x8_stab              # paper scale
  python benchmarks/compile_levels.py --experiment=cascade_manet --preset=x4_stab,demo --image_size=64
  python benchmarks/compile_levels.py --levels=2 --modes=whole                                  # a quicker look

`whole`: the pmapped `steps.train_step` with the sampled fraction static, one compile of the whole step (model,
losses, optimizer) per distinct fraction of the schedule, as the training loop ran it before `compiled.TrainSteps`.
`split`: `compiled.TrainSteps`, what the loop runs now: the update (model, losses, optimizer) compiled once and a mask
sampler per fraction. The compiles run one after the other on one thread (`--workers`; more threads compile levels
side by side). Each mode runs in a process of its own, so neither reuses the other's in-memory caches (XLA's GPU
autotuning results, for one); the persistent compilation cache is not used. Prints one table row per compiled
program and the totals.
"""

import argparse
import functools
import importlib
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from segrecon_jax.training import compiled
from segrecon_jax.training import parallel
from segrecon_jax.training import steps
from benchmarks.train_step import synthetic_batch


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--experiment', default='cascade_manet', help='configs/<experiment>.py')
  parser.add_argument('--preset', default='x8_stab', help="its preset and switches, e.g. 'x4_stab,demo'")
  parser.add_argument('--image_size', type=int, default=128, help='square image side H = W')
  parser.add_argument('--batch', type=int, default=0, help="global batch (0: the config's)")
  parser.add_argument('--levels', type=int, default=0, help='compile only the first N levels (0: all)')
  parser.add_argument('--modes', default='whole,split', help="comma-separated, of 'whole' and 'split'")
  parser.add_argument('--workers', type=int, default=1, help='compile threads (parallel.AheadOfTimeSteps)')
  parser.add_argument('--no_header', action='store_true', help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  modes = [m.strip() for m in args.modes.split(',') if m.strip()]
  if not modes or set(modes) - {'whole', 'split'}:
    raise ValueError(f"--modes={args.modes!r}: expected 'whole', 'split' or both")
  if len(modes) > 1:  # One process per mode: cold in-memory caches for each.
    print('| mode | program | compile s |\n|---|---|---|', flush=True)
    for mode in modes:
      rest = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith('--modes')]
      subprocess.run([sys.executable, os.path.abspath(__file__), *rest, f'--modes={mode}', '--no_header'],
                     check=True)
    return
  config = importlib.import_module(f'configs.{args.experiment}').get_config(args.preset)
  if args.batch:
    config.batch_size = args.batch
  fractions = list(dict.fromkeys(steps.sampled_fraction_for_epoch(config, e) for e in range(1, config.num_epochs + 1)))
  if args.levels:
    fractions = fractions[:args.levels]
  model, tx = steps.create_model(config), steps.create_optimizer(config)
  state = parallel.replicate(steps.initial_state(config, model, tx, (args.image_size, args.image_size)))
  batch = parallel.shard(synthetic_batch(config.batch_size, args.image_size))
  rng = parallel.replicate(jax.random.PRNGKey(0))
  print(f'{args.experiment}:{args.preset}, {args.image_size}x{args.image_size}, batch {config.batch_size}, '
        f'{len(fractions)} levels, {jax.devices()[0].device_kind} ({jax.default_backend()}), '
        f'{args.workers} compile thread(s)', file=sys.stderr if args.no_header else sys.stdout, flush=True)
  if not args.no_header:
    print('| mode | program | compile s |\n|---|---|---|')
  for mode in modes:
    start = time.perf_counter()
    if mode == 'whole':
      p_step = parallel.pmap(functools.partial(steps.train_step, model=model, tx=tx, config=config),
                             static_broadcasted_argnums=(3,), donate_argnums=(0,))
      ahead = parallel.AheadOfTimeSteps(p_step, (state, batch, rng), 'whole step', workers=args.workers)
    else:
      ahead = compiled.TrainSteps(model, tx, config, state, batch, rng, workers=args.workers)
    for fraction in fractions:
      ahead.prefetch(fraction)
    for fraction in fractions:
      ahead.get(fraction)
    ready = time.perf_counter() - start
    seconds = ahead.compile_seconds
    ahead.close()
    for key, value in seconds.items():
      name = key if isinstance(key, str) else (f'step, fraction {key:.4f}' if mode == 'whole'
                                               else f'masks, fraction {key:.4f}')
      print(f'| {mode} | {name} | {value:.1f} |')
    print(f'| {mode} | **all {len(seconds)} programs** | **{sum(seconds.values()):.1f}** '
          f'(all ready after {ready:.1f} s) |', flush=True)


if __name__ == '__main__':
  main()
