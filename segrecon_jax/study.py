"""The reproduction study: runs every row of the paper's Tables 1 and 2 and writes docs/results.md from the workdirs.

  python -m segrecon_jax.study run --root=/tmp/segrecon/study --switch=cpu_study --seeds=0,1,2
  python -m segrecon_jax.study report --root=/tmp/segrecon/study --switch=cpu_study --out=docs/results.md

`run` trains and evaluates each (row, acceleration, seed) with `main.py` in its own process (workdir
`ROOT/<experiment>_x<R>[_stab]/seed<k>`), skipping those that already have `metrics.json`, so an interrupted study
resumes where it stopped. `report` reads every `metrics.json`, lays the tables out like the paper's (mean and
standard deviation over seeds), puts the paper's own numbers beside ours, draws a Fig. 2-like figure per
acceleration from the runs' predictions, and states for each claim of the paper whether it holds here.
"""

import argparse
import collections
import importlib
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from segrecon_jax import reporting
from segrecon_jax import models

# (table, experiment config, stabilization), in the paper's order.
_EXPERIMENTS = ((1, 'unet', False), (1, 'multidecoder_unet', False), (1, 'multidecoder_unet', True),
                (1, 'unet_unet', False), (1, 'unet_unet', True), (2, 'cascade', False), (2, 'cascade_manet', False),
                (2, 'cascade_manet', True))
# (table, method as the paper names it (the registry's display name), experiment config, stabilization)
ROWS = tuple((table, models.display_name(experiment) + (' (S)' if stabilized else ''), experiment, stabilized)
             for table, experiment, stabilized in _EXPERIMENTS)
ACCELERATIONS = (4, 8)
METRICS = (('MSE (x10^3)', 'mse_x1e3', -1), ('PSNR', 'psnr', 1), ('SSIM', 'ssim', 1),
           ('F-MSE (x10^3)', 'f_mse_x1e3', -1), ('F-PSNR', 'f_psnr', 1), ('F-SSIM', 'f_ssim', 1))
FOCUSED = ('f_mse_x1e3', 'f_psnr', 'f_ssim')
GLOBAL = ('mse_x1e3', 'psnr', 'ssim')

# The paper's Tables 1 and 2 (OCMR, their own labels; MSE x 10^3), in METRICS order. Theirs, not ours.
PAPER = {
    ('UNet', 4): (1.7693, 26.9204, 0.6247, 1.9009, 25.5002, 0.5926),
    ('Multi-Decoder UNet', 4): (1.9693, 26.3084, 0.6651, 2.0209, 25.3396, 0.6318),
    ('Multi-Decoder UNet (S)', 4): (1.7530, 27.1221, 0.7082, 1.7109, 25.8338, 0.6735),
    ('UNet -> UNet', 4): (1.9509, 25.4176, 0.5227, 2.5709, 24.6887, 0.5488),
    ('UNet -> UNet (S)', 4): (1.7474, 27.0973, 0.6729, 1.8174, 26.4023, 0.6475),
    ('UNet', 8): (2.2378, 25.4062, 0.6583, 2.7243, 24.3128, 0.6033),
    ('Multi-Decoder UNet', 8): (2.4312, 25.1512, 0.6532, 2.9125, 24.0712, 0.6219),
    ('Multi-Decoder UNet (S)', 8): (2.2441, 25.2193, 0.6646, 2.6217, 24.7312, 0.6422),
    ('UNet -> UNet', 8): (3.1743, 23.2683, 0.5491, 3.4719, 23.0352, 0.5428),
    ('UNet -> UNet (S)', 8): (2.2782, 25.2931, 0.6529, 2.4174, 24.9023, 0.6375),
    ('CascadeNet', 4): (0.6698, 32.1988, 0.9113, 1.0342, 29.1253, 0.8331),
    ('CascadeNet -> MANet', 4): (0.7640, 31.5884, 0.8563, 1.1980, 28.3712, 0.8131),
    ('CascadeNet -> MANet (S)', 4): (0.7114, 31.4328, 0.8991, 0.9731, 30.0000, 0.8828),
    ('CascadeNet', 8): (1.2825, 28.4301, 0.8259, 1.7826, 25.5156, 0.7728),
    ('CascadeNet -> MANet', 8): (1.7603, 25.2837, 0.7265, 2.4456, 23.3219, 0.6673),
    ('CascadeNet -> MANet (S)', 8): (1.3226, 27.4895, 0.8217, 1.5453, 26.3421, 0.7931),
}


def config_arg(experiment: str, acceleration: int, stabilized: bool, switch: str) -> str:
  preset = f'x{acceleration}' + ('_stab' if stabilized else '')
  return f'configs/{experiment}.py:{preset}' + (f',{switch}' if switch else '')


def run_dir(root: str, experiment: str, acceleration: int, stabilized: bool, seed: int) -> str:
  return os.path.join(root, f'{experiment}_x{acceleration}' + ('_stab' if stabilized else ''), f'seed{seed}')


def run(root: str, switch: str, seeds: Sequence[int], experiments: Optional[Sequence[str]] = None,
        accelerations: Sequence[int] = ACCELERATIONS) -> None:
  """Trains and evaluates every missing (row, acceleration, seed), one `main.py` process each."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for seed in seeds:
    for acceleration in accelerations:
      for _, method, experiment, stabilized in ROWS:
        if experiments and experiment not in experiments:
          continue
        workdir = run_dir(root, experiment, acceleration, stabilized, seed)
        if os.path.exists(os.path.join(workdir, 'metrics.json')):
          continue
        command = [sys.executable, 'main.py', f'--config={config_arg(experiment, acceleration, stabilized, switch)}',
                   f'--config.seed={seed}', '--config.progress_bar=False', f'--workdir={workdir}']
        print(f'[study] {method} x{acceleration} seed {seed}: {" ".join(command[1:])}', flush=True)
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, 'log.txt'), 'a') as log:
          subprocess.run(command, cwd=repo, check=True, stdout=log, stderr=subprocess.STDOUT)


def collect(root: str) -> Dict[Tuple[str, int], List[dict]]:
  """Every run's metrics, keyed by (method, acceleration)."""
  results = collections.defaultdict(list)
  for _, method, experiment, stabilized in ROWS:
    for acceleration in ACCELERATIONS:
      parent = os.path.dirname(run_dir(root, experiment, acceleration, stabilized, 0))
      if not os.path.isdir(parent):
        continue
      for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name, 'metrics.json')
        if name.startswith('seed') and os.path.exists(path):
          with open(path) as f:
            results[(method, acceleration)].append(json.load(f)['metrics'])
  return results


def summarize(runs: List[dict], key: str) -> Tuple[float, float, int]:
  values = np.array([r[key] for r in runs if key in r], float)
  if values.size == 0:
    return float('nan'), float('nan'), 0
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else float('nan'), int(values.size)


def _cell(mean: float, std: float) -> str:
  if not np.isfinite(mean):
    return '-'
  return f'{mean:.4f}' + (f' ± {std:.4f}' if np.isfinite(std) else '')


def table(results, table_number: int) -> str:
  header = ['Method', 'seeds'] + [name for name, _, _ in METRICS] + ['Dice']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for acceleration in ACCELERATIONS:
    lines.append(f'| **x{acceleration}** |' + ' |' * (len(header) - 1))
    solo = next(method for number, method, _, _ in ROWS if number == table_number)
    inputs = [{k[len('zero_filled_'):]: v for k, v in r.items() if k.startswith('zero_filled_')}
              for r in results.get((solo, acceleration), [])]
    if inputs:  # The network input, the same test masks for every model: the floor every row should beat.
      cells = [_cell(*summarize(inputs, key)[:2]) for _, key, _ in METRICS]
      lines.append(f'| Zero-filled input | {len(inputs)} | ' + ' | '.join(cells) + ' | |')
    for number, method, _, _ in ROWS:
      if number != table_number:
        continue
      runs = results.get((method, acceleration), [])
      cells = [_cell(*summarize(runs, key)[:2]) for _, key, _ in METRICS]
      dice = _cell(*summarize(runs, 'dice_mean')[:2])
      lines.append(f'| {method} | {len(runs)} | ' + ' | '.join(cells) + f' | {dice} |')
      paper = PAPER[(method, acceleration)]
      lines.append(f'| *paper: {method}* | | ' + ' | '.join(f'*{v:.4f}*' for v in paper) + ' | |')
  return '\n'.join(lines) + '\n'


def _compare(results, better: str, worse: str, acceleration: int,
             keys: Sequence[str]) -> Tuple[int, Optional[int], Optional[int], int, str]:
  """Of `keys`: how many have `better` ahead of `worse` (a lower MSE counts as ahead), how many of those by more
  than the larger of the two standard deviations over seeds ("beyond the spread"), how many have `worse` ahead
  beyond the spread (None for both without a spread: one seed), how many were compared, and the numbers."""
  wins, clear, against, total, parts = 0, 0, 0, 0, []
  spread_known = True
  for _, key, sign in METRICS:
    if key not in keys:
      continue
    a, spread_a, _ = summarize(results.get((better, acceleration), []), key)
    b, spread_b, _ = summarize(results.get((worse, acceleration), []), key)
    if not (np.isfinite(a) and np.isfinite(b)):
      continue
    total += 1
    margin = sign * (a - b)
    wins += int(margin > 0)
    spreads = [v for v in (spread_a, spread_b) if np.isfinite(v)]
    if spreads:
      clear += int(margin > max(spreads))
      against += int(-margin > max(spreads))
    else:
      spread_known = False
    parts.append(f'{key} {a:.4f} vs {b:.4f}')
  if not spread_known:  # One seed: no spread to compare with.
    clear = against = None
  return wins, clear, against, total, '; '.join(parts)


def claims(results) -> str:
  """One line per claim and acceleration: holds / does not hold / partly, how much of it beyond the seed spread,
  with the numbers."""
  checks = []
  for joint in ('Multi-Decoder UNet', 'UNet -> UNet', 'CascadeNet -> MANet'):
    checks.append((f'Stabilization helps {joint} on the F- metrics', f'{joint} (S)', joint, FOCUSED))
  for solo, joint in (('UNet', 'UNet -> UNet (S)'), ('CascadeNet', 'CascadeNet -> MANet (S)')):
    checks.append((f'Segmentation-aware {joint} beats solo {solo} on the F- metrics', joint, solo, FOCUSED))
  for solo, others in (('UNet', [m for t, m, _, _ in ROWS if t == 1 and m != 'UNet']),
                       ('CascadeNet', [m for t, m, _, _ in ROWS if t == 2 and m != 'CascadeNet'])):
    for other in others:
      checks.append((f'Solo {solo} beats {other} on the global metrics', solo, other, GLOBAL))
  lines = []
  for text, better, worse, keys in checks:
    for acceleration in ACCELERATIONS:
      wins, clear, against, total, numbers = _compare(results, better, worse, acceleration, keys)
      if total == 0:
        verdict = 'not run yet'
      elif wins == total:
        verdict = 'holds'
      elif wins == 0:
        verdict = 'does not hold'
      else:
        verdict = f'partly ({wins} of {total} metrics)'
      if total and clear is None:
        verdict += '; one seed, no spread'
      else:
        if wins:
          verdict += f'; {clear} of {total} beyond the spread'
        if wins < total:
          verdict += f'; {against} of {total} against it beyond the spread'
      lines.append(f'- x{acceleration}: {text}: **{verdict}**' + (f' ({numbers}).' if numbers else '.'))
  return '\n'.join(lines) + '\n'


def figures(root: str, out_dir: str) -> List[str]:
  """Fig. 2-like figures: fully sampled, zero-filled and each row's reconstruction of one test slice, seed 0."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for table_number in (1, 2):
    for acceleration in ACCELERATIONS:
      columns, reference = [], None
      for number, method, experiment, stabilized in ROWS:
        pred = os.path.join(run_dir(root, experiment, acceleration, stabilized, 0), 'predictions')
        if number != table_number or not os.path.exists(os.path.join(pred, 'recon.npy')):
          continue
        if reference is None:
          reference = {k: np.load(os.path.join(pred, f'{k}.npy')) for k in ('image', 'zero_filled', 'segmentation')}
          index = int(np.argmax([(s > 0).sum() for s in reference['segmentation']]))
          columns += [('Fully sampled', reference['image'][index], None),
                      (f'Zero-filled x{acceleration}', reference['zero_filled'][index], None)]
        columns.append((method, np.load(os.path.join(pred, 'recon.npy'))[index], None))
      if reference is None:
        continue
      margin = importlib.import_module('configs.default').get_config().focus_margin  # The F- box of the tables.
      path = os.path.join(out_dir, f'fig2_table{table_number}_x{acceleration}.png')
      reporting.comparison_figure(path, columns, reference['segmentation'][index], margin,
                                  title=f'Table {table_number} models, x{acceleration} (seed 0, phantom test slice)')
      paths.append(path)
  return paths


def scale_description(switch: str) -> str:
  """The data, schedule and every model's widths of the runs, read from the configs they used."""
  suffix = f',{switch}' if switch else ''
  lines = []
  for _, method, experiment, stabilized in ROWS:
    if not stabilized:
      preset = 'x8_stab' if models.segments(experiment) else 'x8'  # Experiment files are named by their model.
      config = importlib.import_module(f'configs.{experiment}').get_config(preset + suffix)
      lines.append(f'- {method}: model `{json.dumps(config.model.to_dict())}`')
  config = importlib.import_module('configs.unet_unet').get_config('x8_stab' + suffix)
  head = (f'Data `ocmr/{config.dataset_config}`; {config.num_epochs} epochs, global batch {config.batch_size}, Adam '
          f'lr {config.learning_rate} (b1 {config.b1}, b2 {config.b2}); stabilization P = {config.patience}, '
          f'eps = {config.eps}, {config.schedule_levels} levels; {config.num_acs} ACS lines; F- box margin '
          f'{config.focus_margin} px.')
  return head + '\n' + '\n'.join(lines) + '\n'


def _test_size(results) -> str:
  sizes = sorted({int(r['num_examples']) for runs in results.values() for r in runs if 'num_examples' in r})
  return f'Test split: {", ".join(map(str, sizes))} slices. ' if sizes else ''


def report(root: str, out: str, switch: str) -> str:
  results = collect(root)
  out_dir = os.path.dirname(os.path.abspath(out))
  fig_paths = figures(root, os.path.join(out_dir, 'figures'))
  text = [
      '# Reproduction study: Tables 1 and 2 on the built-in phantom\n',
      f'Generated by `python -m segrecon_jax.study report --root={root} --switch={switch} --out={out}` from the '
      f'runs of `python -m segrecon_jax.study run --root={root} --switch={switch} --seeds=...`. Cells are the mean '
      '± standard deviation over seeds of the per-slice means on the test split (the "seeds" column); each seed '
      're-initializes the networks and reshuffles the data, and the test masks are the same for every model. '
      'Rows in *italics* are the paper\'s own numbers (OCMR with in-house labels): different data, so compare '
      'orderings, not values.\n',
      '## Scale\n',
      ('This is a reduced-scale study on the CPU of the development machines, not the paper\'s scale. ' if switch
       else 'Paper scale. ') + _test_size(results) + scale_description(switch),
      '## Table 1 (U-Net family)\n', table(results, 1),
      '## Table 2 (CascadeNet and MANet)\n', table(results, 2),
      '## Do the paper\'s claims hold here?\n',
      'Each verdict compares the means over seeds, metric by metric (a lower MSE counts as better). "Beyond the '
      'spread" counts the metrics on which the claim\'s side is ahead (or, "against it", behind) by more than the '
      'larger of the two standard deviations over seeds; a difference within the spread is not evidence either '
      'way.\n',
      claims(results),
  ]
  if fig_paths:
    text.append('## Figures\n')
    text += [f'![{os.path.basename(p)}](figures/{os.path.basename(p)})\n' for p in fig_paths]
  with open(out, 'w') as f:
    f.write('\n'.join(text))
  return out


def main(argv: Optional[List[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('action', choices=('run', 'report'))
  parser.add_argument('--root', required=True, help='folder holding one workdir per (row, acceleration, seed)')
  parser.add_argument('--switch', default='cpu_study', help="config switch for every run ('' = paper scale)")
  parser.add_argument('--seeds', default='0', help='comma-separated seeds (run)')
  parser.add_argument('--experiments', default='', help='comma-separated subset of the experiments (run)')
  parser.add_argument('--accelerations', default='4,8', help='comma-separated accelerations (run)')
  parser.add_argument('--out', default='docs/results.md', help='the report (report)')
  args = parser.parse_args(argv)
  if args.action == 'run':
    run(args.root, args.switch, [int(s) for s in args.seeds.split(',')],
        [e for e in args.experiments.split(',') if e], [int(a) for a in args.accelerations.split(',')])
  else:
    print(report(args.root, args.out, args.switch))


if __name__ == '__main__':
  main()
