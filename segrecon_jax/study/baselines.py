"""The report's answer beyond the paper's tables: does the gain survive longer training (`study converge`), how it
compares with two-stage and pretrain-then-fine-tune pipelines (`study baselines`), and the trade-off of every
method between focal reconstruction gain and Dice (the Pareto figure)."""

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from segrecon_jax import stats
from segrecon_jax.study import figures
from segrecon_jax.study import plan
from segrecon_jax.study import results as results_lib

DIFFERENCES = ('psnr', 'f_psnr', 'f_ssim')
CURVE_TAGS = (('PSNR', 'eval_psnr'), ('F-PSNR', 'eval_f_psnr'))
DICE_MARGIN = 0.02  # The target: segments within this much mean Dice of the two-stage baseline.


def _rows(parent_of: Any, names: Sequence[str]) -> Dict[Tuple[str, int], Dict[int, Dict[str, Any]]]:
  found = {}
  for name in names:
    for acceleration in plan.ACCELERATIONS:
      runs = results_lib.row_runs(os.path.dirname(parent_of(name, acceleration)))
      if runs:
        found[(name, acceleration)] = runs
  return found


def collect_converge(root: str) -> Dict[Tuple[str, int], Dict[int, Dict[str, Any]]]:
  return _rows(lambda name, a: plan.converge_dir(root, name, a, 0),
               [plan.CONVERGENCE_SOLO] + [m.name for m in plan.LOSS_METHODS] + list(plan.TWO_STAGES))


def collect_baselines(root: str) -> Dict[Tuple[str, int], Dict[int, Dict[str, Any]]]:
  found = _rows(lambda name, a: plan.baseline_dir(root, name, a, 0), plan.BASELINES)
  for acceleration in plan.ACCELERATIONS:
    solo = results_lib.row_runs(os.path.dirname(plan.run_dir(root, 'cascade', acceleration, False, 0)))
    if solo:
      found[('solo', acceleration)] = solo
  return found


def _cell(record: Optional[Dict[str, Any]], digits: int = 2) -> str:
  if record is None:
    return '-'
  return f'{record["effect"]:+.{digits}f} [{record["low"]:+.{digits}f}, {record["high"]:+.{digits}f}]'


def _paired(a, b, key) -> Optional[Dict[str, Any]]:
  return stats.compare(results_lib.per_slice(a), results_lib.per_slice(b), key, plan.SIGNS.get(key, 1))


def _eval_curve(run: Dict[str, Any], tag: str) -> Dict[int, float]:
  return {int(step): float(value) for step, value in run['scalars'].get(tag, {}).items()}


def convergence_section(root: str, figure_path: str) -> str:
  """Each joint loss method minus solo CascadeNet, both trained CONVERGENCE_FACTOR x the switch's epochs: the paired
  difference of the eval means at every evaluation (per seed: the same seed's two runs), drawn against the training
  step, and at the end per slice with intervals; its Dice against the two-stage baseline of its segmentation loss at
  the same budget."""
  found = collect_converge(root)
  series, lines = {}, []
  for method in plan.LOSS_METHODS:
    for acceleration in plan.ACCELERATIONS:
      solo, joint = found.get((plan.CONVERGENCE_SOLO, acceleration)), found.get((method.name, acceleration))
      seeds = sorted(set(solo or ()) & set(joint or ()))
      if not seeds:
        continue
      key = (method.name, acceleration)
      for label, tag in CURVE_TAGS:
        per_seed = {}
        for seed in seeds:
          a, b = _eval_curve(joint[seed], tag), _eval_curve(solo[seed], tag)
          steps = sorted(set(a) & set(b))
          per_seed[seed] = (np.array(steps), np.array([a[s] - b[s] for s in steps]))
        series.setdefault(key, {})[tag] = per_seed
      runs = {s: joint[s] for s in seeds}
      end = {k: _paired(runs, {s: solo[s] for s in seeds}, k) for k in DIFFERENCES}
      segments = _segments(runs)
      two_stage = found.get((plan.two_stage_reference(method.overrides), acceleration))
      versus = _paired(runs, two_stage, 'dice_mean') if segments and two_stage else None
      by_step = series[key]['eval_f_psnr']
      common = sorted(set.intersection(*(set(s.tolist()) for s, _ in by_step.values())))
      mid = [f'{step}: {np.mean([dict(zip(s.tolist(), d))[step] for s, d in by_step.values()]):+.2f}'
             for step in common]
      lines.append(f'| {method.label} | {acceleration} | {len(seeds)} | {int(max(common)) if common else "-"} | '
                   + ' | '.join(_cell(end[k], 2 if k.endswith('psnr') else 4) for k in DIFFERENCES)
                   + f' | {f"{_mean_dice(runs)[0]:.3f}" if segments else "-"} | {_cell(versus, 3)} | '
                   f'{_target(end, versus) if segments else "-"} | {", ".join(mid)} |')
  if not lines:
    return ''
  figures.difference_curves(figure_path, series, CURVE_TAGS,
                            f'Joint minus solo CascadeNet, {plan.CONVERGENCE_FACTOR}x the epochs (one line per seed, '
                            'the mean thick)')
  header = ('| method | x | seeds | steps | '
            + ' | '.join(f'{plan.NAMES[k]} - solo at the end' for k in DIFFERENCES)
            + ' | Dice | Dice - two-stage | target | F-PSNR - solo along training (step: mean over seeds of the eval '
            'means) |')
  return '\n'.join([header, '|' + '---|' * (8 + len(DIFFERENCES))] + lines) + '\n'


def _segments(runs: Dict[int, Dict[str, Any]]) -> bool:
  """Whether the runs wrote per-slice results, every one with Dice (a model that segments)."""
  records = list(results_lib.per_slice(runs).values())
  return bool(records) and all('dice_mean' in record['metrics'] for record in records)


def _mean_dice(runs: Dict[int, Dict[str, Any]]) -> Tuple[float, Tuple[float, float, float]]:
  """Mean Dice over seeds of the slice means, with its 95% interval over seeds and slices (slices only for one
  seed)."""
  groups = [np.asarray(record['metrics']['dice_mean'], np.float64) for record in results_lib.per_slice(runs).values()]
  groups = [g[np.isfinite(g)] for g in groups]
  dice = float(np.mean([g.mean() for g in groups]))
  low, high = (stats.hierarchical_bootstrap_interval(groups) if len(groups) > 1
               else stats.bootstrap_interval(groups[0]))
  return dice, (dice, low, high)


def meets_target(differences: Dict[str, Optional[Dict[str, Any]]], dice_vs_two_stage: Optional[Dict[str, Any]]) -> bool:
  """The target: F-PSNR and F-SSIM above solo with intervals excluding 0, mean PSNR not below solo's, mean Dice
  within DICE_MARGIN of two-stage."""
  d = differences
  return bool(all(d[k] is not None and d[k]['low'] > 0 for k in ('f_psnr', 'f_ssim'))
              and d['psnr'] is not None and d['psnr']['effect'] >= 0
              and dice_vs_two_stage is not None and dice_vs_two_stage['effect'] >= -DICE_MARGIN)


def _target(differences, dice_vs_two_stage) -> str:
  if dice_vs_two_stage is None:
    return 'no two-stage run at this budget'
  return 'yes' if meets_target(differences, dice_vs_two_stage) else 'no'


def baseline_rows(root: str) -> List[Dict[str, Any]]:
  """Each baseline and end-to-end joint method at the study budget: paired differences against solo CascadeNet, its
  mean Dice (over seeds of the slice means, interval over seeds and slices), its Dice minus the two-stage
  baseline's (paired per slice), and the target: F-PSNR and F-SSIM above solo with intervals excluding 0, mean
  PSNR not below solo's, mean Dice within DICE_MARGIN of two-stage."""
  found = collect_baselines(root)
  losses = results_lib.collect_losses(root)
  table2 = results_lib.collect(root)
  rows = []
  for acceleration in plan.ACCELERATIONS:
    solo = found.get(('solo', acceleration))
    # (label, runs, the two-stage baseline its Dice is held to: the one with the same segmentation loss)
    candidates = [(plan.BASELINE_LABELS[name], found.get((name, acceleration)),
                   name if name in plan.TWO_STAGES else 'two_stage') for name in plan.BASELINES]
    candidates += [(f'{method}', table2.get((method, acceleration)), 'two_stage')
                   for _, method, experiment, _ in plan.ROWS if experiment == 'cascade_manet']
    candidates += [(m.label, losses.get((m.name, acceleration)), plan.two_stage_reference(m.overrides))
                   for m in plan.LOSS_METHODS if m.experiment == 'cascade_manet']
    for label, runs, reference in candidates:
      two_stage = found.get((reference, acceleration))
      if not runs or not _segments(runs):
        continue
      dice, dice_interval = _mean_dice(runs)
      row = {'label': label, 'acceleration': acceleration, 'seeds': sorted(runs), 'dice': dice,
             'dice_interval': dice_interval,
             'differences': {k: _paired(runs, solo, k) if solo else None for k in DIFFERENCES},
             'dice_vs_two_stage': _paired(runs, two_stage, 'dice_mean') if two_stage else None}
      row['target'] = meets_target(row['differences'], row['dice_vs_two_stage'])
      rows.append(row)
  return rows


def _fewer_seeds(record: Optional[Dict[str, Any]], seeds: Sequence[int]) -> str:
  """Says so when a paired cell rests on fewer seeds than its row (only those both sides ran)."""
  if record is None or record['seeds'] >= len(seeds):
    return ''
  return f' ({record["seeds"]} seed{"s" if record["seeds"] > 1 else ""})'


def baselines_section(root: str) -> str:
  rows = baseline_rows(root)
  if not any(row['label'] in plan.BASELINE_LABELS.values() for row in rows):
    return ''
  lines = ['| Method | x | seeds | Dice | Dice - two-stage | ' + ' | '.join(f'{plan.NAMES[k]} - solo' for k in DIFFERENCES)
           + ' | target |', '|' + '---|' * (6 + len(DIFFERENCES))]
  for row in rows:
    lines.append(f'| {row["label"]} | {row["acceleration"]} | {len(row["seeds"])} | {row["dice"]:.3f} | '
                 f'{_cell(row["dice_vs_two_stage"], 3)}{_fewer_seeds(row["dice_vs_two_stage"], row["seeds"])} | '
                 + ' | '.join(_cell(row['differences'][k], 2 if k.endswith('psnr') else 4) for k in DIFFERENCES)
                 + f' | {"yes" if row["target"] else "no"} |')
  return '\n'.join(lines) + '\n'


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
  """Indices of the points no other point beats on both coordinates (higher is better on each)."""
  front = []
  for i, (x, y) in enumerate(points):
    if not any((u >= x and v >= y) and (u > x or v > y) for j, (u, v) in enumerate(points) if j != i):
      front.append(i)
  return front


def pareto_section(root: str, figure_path: str) -> str:
  """F-PSNR gain over solo CascadeNet against mean Dice, one point per method and acceleration with intervals, the
  Pareto front of each acceleration marked."""
  rows = [r for r in baseline_rows(root) if r['differences']['f_psnr'] is not None]
  if not rows:
    return ''
  points = []
  for row in rows:
    f_psnr = row['differences']['f_psnr']
    points.append({'label': row['label'], 'acceleration': row['acceleration'], 'dice': row['dice_interval'],
                   'gain': (f_psnr['effect'], f_psnr['low'], f_psnr['high'])})
  front = set()
  for acceleration in plan.ACCELERATIONS:
    indices = [i for i, p in enumerate(points) if p['acceleration'] == acceleration]
    front |= {indices[k] for k in pareto_front([(points[i]['dice'][0], points[i]['gain'][0]) for i in indices])}
  figures.pareto(figure_path, points, sorted(front),
                 'F-PSNR gain over solo CascadeNet against Dice\n(95% intervals over seeds and slices; ringed and '
                 'joined: the Pareto front of each acceleration)')
  names = [f'{points[i]["label"]} (x{points[i]["acceleration"]})' for i in sorted(front)]
  return 'On the Pareto front: ' + '; '.join(names) + '.\n'
