"""The study's command line: `python -m segrecon_jax.study run|sweep|losses|attention|report ...`."""

import argparse
import shlex
import sys
from typing import List, Optional

from segrecon_jax.study import plan
from segrecon_jax.study import report as report_lib
from segrecon_jax.study import runner

ACTIONS = ('run', 'sweep', 'losses', 'converge', 'baselines', 'attention', 'report')


def _ints(text: str) -> List[int]:
  return [int(part) for part in text.split(',') if part.strip()]


def parse(argv: Optional[List[str]] = None):
  """The parsed arguments and the `--config.*` overrides (every other unknown argument is an error)."""
  parser = argparse.ArgumentParser(
      prog='python -m segrecon_jax.study',
      description='Runs the study (each run a main.py process; finished runs are skipped) and writes its report. '
      'Any --config.<field>=<value> argument is passed to every run, as to main.py: the data '
      '(--config.dataset_config=nifti --config.manual_dir=DIR --config.image_size=128 --config.data_dir=DIR) or '
      'any other setting; a root records its switch and overrides (ROOT/study.json) and refuses others.')
  parser.add_argument('action', choices=ACTIONS)
  parser.add_argument('--root', required=True, help='folder holding one workdir per (row, acceleration, seed)')
  parser.add_argument('--switch', default='cpu_study', help="config switch for every run ('' = paper scale)")
  parser.add_argument('--seeds', default='0', help='comma-separated seeds')
  parser.add_argument('--experiments', default='', help='comma-separated subset of the experiments (run)')
  parser.add_argument('--tables', default=','.join(map(str, plan.TABLES)),
                      help="comma-separated paper tables, in the order to run them, e.g. '2,1' (run)")
  parser.add_argument('--accelerations', default='4,8', help='comma-separated accelerations')
  parser.add_argument('--weights', default=','.join(f'{w:g}' for w in plan.SWEEP_WEIGHTS),
                      help='comma-separated seg_loss_weight values (sweep)')
  parser.add_argument('--methods', default='', help='comma-separated loss methods (losses: a subset, default all; '
                      f'converge: those trained beside solo CascadeNet, default {plan.RECOMMENDED}): '
                      + ', '.join(m.name for m in plan.LOSS_METHODS))
  parser.add_argument('--seconds_per_step', type=float, default=None,
                      help='seconds per training step, for the expected duration printed before starting')
  parser.add_argument('--jobs', type=int, default=1,
                      help='runs trained at once, each its own main.py process (run, sweep, losses, converge, '
                      'baselines)')
  parser.add_argument('--out', default='docs/results.md', help='the report (report)')
  args, unknown = parser.parse_known_args(argv)
  overrides = [a for a in unknown if a.startswith('--config.')]
  others = [a for a in unknown if not a.startswith('--config.')]
  if others:
    parser.error(f'unrecognized arguments: {" ".join(others)} (config settings are passed as --config.<field>=<value>)')
  if args.action == 'report' and overrides:
    parser.error('report reads the settings the runs were started with (ROOT/study.json); it takes no --config.*')
  if args.jobs < 1:
    parser.error(f'--jobs={args.jobs}: runs trained at once must be at least 1')
  for name, kind in (('seeds', int), ('tables', int), ('accelerations', int), ('weights', float)):
    try:
      _ = [kind(part) for part in getattr(args, name).split(',') if part.strip()]
    except ValueError:
      parser.error(f'--{name}={getattr(args, name)}: expected {"integers" if kind is int else "numbers"}, '
                   'separated by commas')
  unknown_tables = sorted(set(_ints(args.tables)) - set(plan.TABLES))
  if unknown_tables:
    parser.error(f'--tables={args.tables}: the paper has tables {list(plan.TABLES)}, not {unknown_tables}')
  try:
    settings = plan.Settings(args.switch, tuple(overrides))
  except ValueError as e:
    parser.error(str(e))
  return args, settings


def main(argv: Optional[List[str]] = None) -> None:
  """The command line: a refusal or failed runs (`plan.StudyError`) end with one paragraph and exit code 2; a signal
  that stopped the runs (`runner.StudyInterrupted`), or a Ctrl-C outside them, with how to resume and 128 + the
  signal's number."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args, settings = parse(argv)
  prog = f'python -m segrecon_jax.study {args.action}'
  resume = f'To resume, run the same command again: python -m segrecon_jax.study {shlex.join(argv)}'
  try:
    _run(args, settings)
  except plan.StudyError as e:
    sys.stderr.write(f'{prog}: {e}\n')
    sys.exit(2)
  except runner.StudyInterrupted as e:
    sys.stderr.write(f'{prog}: {e} {resume}\n')
    sys.exit(e.exit_code)
  except KeyboardInterrupt:  # Ctrl-C before or between the runs: no run was running.
    sys.stderr.write(f'{prog}: SIGINT: stopped. {resume}\n')
    sys.exit(130)


def _run(args, settings) -> None:
  seeds, accelerations = _ints(args.seeds), _ints(args.accelerations)
  if args.action == 'report':
    print(report_lib.report(args.root, args.out, settings))
    return
  first = []  # Runs that others start from (the two-stage baselines from a solo run): listed first.
  if args.action == 'run':
    runs = plan.table_runs(args.root, settings, seeds, _ints(args.tables), accelerations,
                           [e for e in args.experiments.split(',') if e])
  elif args.action == 'sweep':
    runs = plan.sweep_runs(args.root, settings, seeds, [float(w) for w in args.weights.split(',')], accelerations)
  elif args.action == 'losses':
    runs = plan.loss_runs(args.root, settings, seeds, [m for m in args.methods.split(',') if m], accelerations)
  elif args.action in ('converge', 'baselines'):
    schedule = runner.run_config(plan.table_runs(args.root, settings, seeds[:1], [2], accelerations[:1],
                                                 ['cascade'])[0].flags)
    if args.action == 'converge':
      first, runs = plan.converge_runs(args.root, settings, seeds, schedule.num_epochs, schedule.patience,
                                       accelerations, [m for m in args.methods.split(',') if m])
    else:
      first, runs = plan.baseline_runs(args.root, settings, seeds, schedule.num_epochs, accelerations)
  else:
    runs = plan.attention_runs(args.root, settings, seeds, accelerations)
  runner.check_runs(first + runs)  # Check first, record after: a refused call leaves no study.json behind.
  plan.save_settings(args.root, settings)
  if args.action == 'attention':
    runner.attention_all(runs)
  else:  # A run that starts from another one waits for it there (runner.starts_from).
    runner.run_all(first + runs, args.seconds_per_step, args.jobs)
