"""Writes the study's report (docs/results.md) from the runs under one root: tables, verdicts, sections, figures."""

import json
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from segrecon_jax import models
from segrecon_jax import stats
from segrecon_jax.study import baselines
from segrecon_jax.study import claims as claims_lib
from segrecon_jax.study import figures
from segrecon_jax.study import plan
from segrecon_jax.study import results as results_lib
from segrecon_jax.training import reporting
from segrecon_jax.training import workdir

SWEEP_METRICS = (('PSNR', 'psnr'), ('F-PSNR', 'f_psnr'), ('Dice', 'dice_mean'))
# The loss comparison's columns: absolute values, then differences paired against solo CascadeNet.
LOSS_VALUES = (('PSNR', 'psnr'), ('SSIM', 'ssim'), ('F-PSNR', 'f_psnr'), ('F-SSIM', 'f_ssim'), ('Dice', 'dice_mean'))
LOSS_DIFFERENCES = ('psnr', 'f_psnr', 'f_ssim')
MAX_PSNR_COST = 0.5  # The loss target: at most this global PSNR (dB) lost against solo CascadeNet.
CURVE_PANELS = (('eval PSNR (dB)', 'eval_psnr'), ('eval F-PSNR (dB)', 'eval_f_psnr'), ('eval Dice', 'eval_dice_mean'))


def summarize(runs: Dict[int, Dict[str, Any]], key: str) -> Tuple[float, float, int]:
  """Mean and standard deviation over seeds of the runs' metric `key` (metrics.json), and the number of seeds."""
  values = np.array([run['metrics'][key] for run in runs.values() if key in run['metrics']], np.float64)
  if values.size == 0:
    return float('nan'), float('nan'), 0
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else float('nan'), int(values.size)


def _cell(mean: float, std: float) -> str:
  if not np.isfinite(mean):
    return '-'
  return f'{mean:.4f}' + (f' ± {std:.4f}' if np.isfinite(std) else '')


def _interval_cell(mean: float, low: float, high: float, signed: bool = False, digits: int = 4) -> str:
  if not np.isfinite(mean):
    return '-'
  form = f'+.{digits}f' if signed else f'.{digits}f'
  return f'{mean:{form}}' + (f' [{low:{form}}, {high:{form}}]' if np.isfinite(low) else '')


def _seeds_text(seeds: Sequence[int]) -> str:
  if not seeds:
    return 'not run yet'
  return f'{len(seeds)} seed{"s" if len(seeds) != 1 else ""} ({", ".join(map(str, sorted(seeds)))})'


def _table_methods(table_number: int) -> List[str]:
  """The row names of a paper table in the paper's order; the first is its solo reconstruction network."""
  return [method for number, method, _, _ in plan.ROWS if number == table_number]


def table(results, table_number: int) -> str:
  """A paper table: mean ± standard deviation over seeds, the seeds column, the paper's row in italics; only the
  accelerations with runs of the table (a row not run shows '-')."""
  header = ['Method', 'seeds'] + [name for name, _, _ in plan.METRICS] + ['Dice']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  methods = _table_methods(table_number)
  run_accelerations = [a for a in plan.ACCELERATIONS if any(results.get((m, a)) for m in methods)]
  if not run_accelerations:
    return 'Not run under this root.\n'
  for acceleration in run_accelerations:
    lines.append(f'| **x{acceleration}** |' + ' |' * (len(header) - 1))
    solo = methods[0]
    inputs = {seed: {'metrics': {k[len('zero_filled_'):]: v for k, v in run['metrics'].items()
                                 if k.startswith('zero_filled_')}}
              for seed, run in results.get((solo, acceleration), {}).items()}
    if inputs:  # The network input, the same test masks for every model: the floor every row should beat.
      cells = [_cell(*summarize(inputs, key)[:2]) for _, key, _ in plan.METRICS]
      lines.append(f'| Zero-filled input | {len(inputs)} | ' + ' | '.join(cells) + ' | |')
    for method in methods:
      runs = results.get((method, acceleration), {})
      cells = [_cell(*summarize(runs, key)[:2]) for _, key, _ in plan.METRICS]
      dice = _cell(*summarize(runs, 'dice_mean')[:2])
      lines.append(f'| {method} | {len(runs)} | ' + ' | '.join(cells) + f' | {dice} |')
      lines.append(f'| *paper: {method}* | | ' + ' | '.join(f'*{v:.4f}*' for v in plan.PAPER[(method, acceleration)])
                   + ' | |')
  return '\n'.join(lines) + '\n'


def paired_table(results, table_number: int) -> str:
  """Every row of a paper table against the table's solo reconstruction network (its first row), paired slice by
  slice on the seeds both ran: `LOSS_DIFFERENCES` with 95% intervals over seeds and slices (over slices only with one
  seed), and each seed's effect on the headline F-PSNR. Empty when no row has a paired solo run."""
  solo_name, *rows = _table_methods(table_number)
  header = (['Method', 'x', 'seeds'] + [f'{plan.NAMES[k]} - {solo_name}' for k in LOSS_DIFFERENCES]
            + [f'F-PSNR - {solo_name} per seed'])
  lines = []
  for acceleration in plan.ACCELERATIONS:
    solo = results_lib.per_slice(results.get((solo_name, acceleration), {}))
    for method in rows:
      runs = results_lib.per_slice(results.get((method, acceleration), {}))
      # The seeds whose per-slice results both rows have for the headline metric (the ones its interval covers).
      seeds = sorted(stats.paired_by_seed(runs, solo, 'f_psnr'))
      if not seeds:
        continue
      runs, paired_solo = {s: runs[s] for s in seeds}, {s: solo[s] for s in seeds}
      found = {key: stats.compare(runs, paired_solo, key, plan.SIGNS.get(key, 1)) for key in LOSS_DIFFERENCES}
      cells = [_interval_cell(c['effect'], c['low'], c['high'], signed=True, digits=4 if key.endswith('ssim') else 2)
               if c else '-' for key, c in found.items()]
      f_psnr = found['f_psnr']
      per_seed = ' / '.join(f'{e:+.2f}' for e in f_psnr['seed_effects']) if len(seeds) > 1 else '-'
      lines.append(f'| {method} | {acceleration} | {", ".join(map(str, seeds))} | ' + ' | '.join(cells)
                   + f' | {per_seed} |')
  if not lines:
    return ''
  return '\n'.join(['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] + lines) + '\n'


def table_seeds(results, table_number: int) -> List[int]:
  return sorted({seed for (method, _), runs in results.items() for seed in runs
                 if any(m == method and n == table_number for n, m, _, _ in plan.ROWS)})


def verdict_summary(verdicts: Sequence[claims_lib.Verdict]) -> str:
  """One row per claim: the verdict at each acceleration with the headline metric's effect [interval] (F-PSNR for
  focused claims, PSNR for global ones) and the seeds."""
  lines = ['| Claim | ' + ' | '.join(f'x{a}' for a in plan.ACCELERATIONS) + ' |',
           '|---|' + '---|' * len(plan.ACCELERATIONS)]
  by_claim = {}
  for verdict in verdicts:
    by_claim.setdefault(verdict.claim.text, {})[verdict.acceleration] = verdict
  not_run = [text for text, found in by_claim.items() if not any(v.metrics for v in found.values())]
  for text, found in by_claim.items():
    if text in not_run:
      continue
    cells = []
    for acceleration in plan.ACCELERATIONS:
      verdict = found.get(acceleration)
      if verdict is None or not verdict.metrics:
        cells.append('not run')
        continue
      key = next((k for k in ('f_psnr', 'psnr') if k in verdict.metrics), next(iter(verdict.metrics)))
      record = verdict.metrics[key]
      seeds = f'{verdict.seeds} seed{"s" if verdict.seeds != 1 else ""}'
      cells.append(f'**{claims_lib.verdict_words(verdict)}**: {plan.NAMES[key]} {record["effect"]:+.2f} '
                   f'[{record["low"]:+.2f}, {record["high"]:+.2f}]{" dB" if key.endswith("psnr") else ""}, {seeds}')
    lines.append(f'| {text} | ' + ' | '.join(cells) + ' |')
  if len(not_run) == len(by_claim):
    return 'No claim has runs of both its rows under this root yet.\n'
  if not_run:
    lines.append(f'\nNot run under this root (no runs of both rows at any acceleration): {"; ".join(not_run)}.')
  return '\n'.join(lines) + '\n'


def scale_description(root: str, results, settings: Optional[plan.Settings]) -> str:
  """The data, the schedule and every model's widths of the runs, read from the config stored with each run."""
  metas = results_lib.first_meta(results, root)
  if not metas:
    return 'No run stores its config yet.\n'
  meta = next(iter(metas.values()))
  config, data = meta['config'], meta.get('data', {})
  builder = data.get('builder_config', {})
  lines = []
  if settings is not None:
    lines.append(f'Study settings (`{plan.SETTINGS_FILE}`): {settings.describe()}.')
  lines.append(
      f'Data `{data.get("dataset", config["dataset"])}/{data.get("dataset_config", config["dataset_config"])}` '
      f'(source {builder.get("source", "?")}, images {builder.get("image_size", "?")}'
      + (f', manual_dir `{config["manual_dir"]}`' if config.get('manual_dir') else '') + '); '
      f'{config["num_epochs"]} epochs, global batch {config["batch_size"]}, Adam lr {config["learning_rate"]} '
      f'(b1 {config["b1"]}, b2 {config["b2"]}, '
      + ('constant' if config.get('lr_schedule', 'constant') == 'constant' else
         f'{config["lr_schedule"]} decay to 0 over the run') + ').')
  stabilized = next((m['config'] for (method, _), m in metas.items() if method.endswith(reporting.STABILIZED)), config)
  levels = stabilized.get('schedule_levels')
  acs_lines = sorted({(a, m['config']['num_acs']) for (_, a), m in metas.items()})
  lines.append(f'Stabilization (the (S) rows): P = {stabilized["patience"]} epochs, eps = {stabilized["eps"]}, '
               + ('the exact eq. 1 schedule (P + 1 levels)' if levels is None else f'{levels} levels') + '. '
               + 'ACS lines: ' + ', '.join(f'{acs} at x{a}' for a, acs in acs_lines)
               + f'; F- box margin {config["focus_margin_fraction"]:.4g} of the image side.')
  for (method, acceleration), m in metas.items():
    if acceleration == max(a for (x, a) in metas if x == method) and not method.endswith(reporting.STABILIZED):
      lines.append(f'- {method}: model `{json.dumps(m["config"]["model"], sort_keys=True)}`')
  return '\n'.join(lines) + '\n'


def _test_size(results) -> str:
  sizes = sorted({int(run['metrics']['num_examples']) for runs in results.values() for run in runs.values()
                  if 'num_examples' in run['metrics']})
  return f'Test split: {", ".join(map(str, sizes))} slices. ' if sizes else ''


def curves_section(results, out_dir: str) -> Tuple[str, List[str]]:
  """Eval PSNR, F-PSNR and Dice against step of the joint rows with and without stabilization (mean over seeds),
  from the runs' scalars.jsonl; '' when no row evaluated at least 3 times during training."""
  paths = []
  for acceleration in plan.ACCELERATIONS:
    series = {}
    for _, method, experiment, _ in plan.ROWS:
      runs = results.get((method, acceleration), {})
      if not models.segments(experiment) or not runs:
        continue
      tags = {}
      for _, tag in CURVE_PANELS:
        by_step = {}
        for run in runs.values():
          for step, value in run['scalars'].get(tag, {}).items():
            by_step.setdefault(step, []).append(value)
        if len(by_step) >= 3:
          steps = np.array(sorted(by_step))
          tags[tag] = (steps, np.array([np.mean(by_step[s]) for s in steps]))
      if tags:
        series[f'{method} ({len(runs)} seed{"s" if len(runs) != 1 else ""})'] = tags
    if series:
      path = os.path.join(out_dir, f'curves_x{acceleration}.png')
      figures.curves(path, series, CURVE_PANELS, f'Eval metrics during training, x{acceleration} (mean over seeds)')
      paths.append(path)
  if not paths:
    return '', []
  text = ('Evaluated on the test split during training (TensorBoard `eval_*`, read from each run\'s '
          '`scalars.jsonl`), mean over seeds: does the joint model without stabilization stall where the stabilized '
          'one does not?\n')
  return text, paths


def sweep_summary(runs: Dict[int, Dict[str, Any]], key: str, baseline: Optional[Dict[int, Dict[str, Any]]] = None):
  """(mean, low, high) of `key` over slices and seeds, or with `baseline` the paired difference against it across
  seeds (`stats.compare`); without per-slice data the mean over seeds of metrics.json and no interval."""
  with_slices = results_lib.per_slice(runs)
  if baseline is not None:
    record = stats.compare(with_slices, results_lib.per_slice(baseline), key, plan.SIGNS.get(key, 1))
    return (record['effect'], record['low'], record['high']) if record else (float('nan'),) * 3
  if with_slices:
    groups = [stats.slice_means({s: r}, key) for s, r in with_slices.items()]
    groups = [g for g in groups if g.size]
    if groups:
      return (float(np.mean([g.mean() for g in groups])),) + stats.hierarchical_bootstrap_interval(groups)
  mean, _, _ = summarize(runs, key)
  return mean, float('nan'), float('nan')


def sweep_section(root: str, figure_path: str) -> str:
  """The loss-weight table per acceleration and its figure; '' without sweep runs."""
  results = results_lib.collect_sweep(root)
  if not results:
    return ''
  lines = ['| Weight | seeds | ' + ' | '.join(n for n, _ in SWEEP_METRICS) +
           ' | PSNR - PSNR(w=0) | F-PSNR - F-PSNR(w=0) | recon grad norm | seg grad norm |',
           '|' + '---|' * (len(SWEEP_METRICS) + 6)]
  series = {}
  for acceleration in sorted({a for a, _ in results}):
    lines.append(f'| **x{acceleration}** |' + ' |' * (len(SWEEP_METRICS) + 5))
    weights = sorted(w for a, w in results if a == acceleration)
    baseline = results.get((acceleration, 0.0))
    curves = {key: [] for _, key in SWEEP_METRICS}
    for weight in weights:
      runs = results[(acceleration, weight)]
      cells = []
      for _, key in SWEEP_METRICS:
        summary = sweep_summary(runs, key)
        curves[key].append(summary)
        cells.append(_interval_cell(*summary))
      for key in ('psnr', 'f_psnr'):
        cells.append('-' if baseline is None or weight == 0 else
                     _interval_cell(*sweep_summary(runs, key, baseline), signed=True))
      for tag in ('train_recon_grad_norm', 'train_seg_grad_norm'):
        norms = [v for v in (results_lib.mean_scalar(run, tag) for run in runs.values()) if v is not None]
        cells.append(f'{np.mean(norms):.4g}' if norms else '-')
      lines.append(f'| {weight:g} | {len(runs)} | ' + ' | '.join(cells) + ' |')
    series[acceleration] = (weights, {k: np.array(v, np.float64) for k, v in curves.items()})
  figures.loss_weight_figure(figure_path, series, (('PSNR (dB)', 'psnr'), ('F-PSNR (dB)', 'f_psnr')),
                             title=f'{models.display_name(plan.SWEEP_EXPERIMENT)} (S): segmentation loss weight')
  return '\n'.join(lines) + '\n'


def loss_comparison(root: str) -> Dict[str, Any]:
  """Every loss method and baseline against solo CascadeNet: per (label, acceleration) the seeds, the absolute
  metrics (mean over seeds and slices, interval over both), the paired differences (`stats.compare`), the mean
  effective Dice weight logged, whether the loss target is met, and the attention share where measured."""
  found = results_lib.collect_losses(root)
  solo_label = plan.LOSS_BASELINES[0][0]
  labels = [label for label, _, _ in plan.LOSS_BASELINES[1:]] + [m.name for m in plan.LOSS_METHODS]
  display = {m.name: m.label for m in plan.LOSS_METHODS}
  attention = results_lib.collect_attention(root)
  rows = []
  for acceleration in plan.ACCELERATIONS:
    solo = found.get((solo_label, acceleration))
    for label in labels:
      runs = found.get((label, acceleration))
      if not runs:
        continue
      row = {'label': display.get(label, label), 'name': label, 'acceleration': acceleration, 'seeds': sorted(runs),
             'values': {key: sweep_summary(runs, key) for _, key in LOSS_VALUES}, 'differences': {},
             'seg_weight': None, 'attention': None}
      if solo:
        for key in LOSS_DIFFERENCES:
          row['differences'][key] = stats.compare(results_lib.per_slice(runs), results_lib.per_slice(solo), key,
                                                  plan.SIGNS.get(key, 1))
      weights = [v for v in (results_lib.mean_scalar(run, 'train_seg_weight_effective') for run in runs.values())
                 if v is not None]
      row['seg_weight'] = float(np.mean(weights)) if weights else None
      shares = attention.get((display.get(label, label), acceleration), {})
      if shares:
        row['attention'] = float(np.mean([record['share_to_area_ratio']['mean'] for record, _ in shares.values()]))
      rows.append(row)
  targets = {}
  for row in rows:
    d = row['differences']
    met = (all(d.get(k) is not None and d[k]['low'] > 0 for k in ('f_psnr', 'f_ssim'))
           and d.get('psnr') is not None and d['psnr']['effect'] >= -MAX_PSNR_COST)
    row['target'] = met
    targets.setdefault(row['name'], []).append(met)
  return {'rows': rows, 'met_everywhere': sorted(name for name, mets in targets.items()
                                                if len(mets) == len(plan.ACCELERATIONS) and all(mets))}


def ingredient_rows(root: str) -> List[Dict[str, Any]]:
  """`plan.LOSS_INGREDIENTS` paired: per pair and acceleration with both methods run, the seeds they share and
  `stats.compare` of each `LOSS_DIFFERENCES` metric (with the ingredient minus without it)."""
  found = results_lib.collect_losses(root)
  rows = []
  for acceleration in plan.ACCELERATIONS:
    for with_it, without_it, what in plan.LOSS_INGREDIENTS:
      a, b = found.get((with_it, acceleration)), found.get((without_it, acceleration))
      seeds = sorted(set(a or ()) & set(b or ()))
      if not seeds:
        continue
      a, b = {s: a[s] for s in seeds}, {s: b[s] for s in seeds}
      rows.append({'what': what, 'acceleration': acceleration, 'seeds': seeds, 'differences': {
          key: stats.compare(results_lib.per_slice(a), results_lib.per_slice(b), key, plan.SIGNS.get(key, 1))
          for key in LOSS_DIFFERENCES}})
  return rows


def ingredient_table(root: str) -> str:
  rows = ingredient_rows(root)
  if not rows:
    return ''
  lines = ['| Ingredient | x | seeds | ' + ' | '.join(plan.NAMES[k] for k in LOSS_DIFFERENCES) + ' |',
           '|' + '---|' * (3 + len(LOSS_DIFFERENCES))]
  for row in rows:
    cells = ['-' if record is None else _interval_cell(record['effect'], record['low'], record['high'], signed=True,
                                                       digits=2 if key.endswith('psnr') else 4)
             for key, record in row['differences'].items()]
    lines.append(f'| {row["what"]} | {row["acceleration"]} | {len(row["seeds"])} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def loss_section(root: str, figure_path: str) -> str:
  comparison = loss_comparison(root)
  rows = comparison['rows']
  if not any(row['name'] in {m.name for m in plan.LOSS_METHODS} for row in rows):
    return ''  # Table 2's baselines alone are no comparison.
  lines = ['| Method | x | seeds | ' + ' | '.join(n for n, _ in LOSS_VALUES) + ' | ' +
           ' | '.join(f'{plan.NAMES[k]} - solo' for k in LOSS_DIFFERENCES) +
           ' | Dice weight | attention / area | target |', '|' + '---|' * (len(LOSS_VALUES) + 8)]
  points = []
  for row in rows:
    values = [_interval_cell(*row['values'][key], digits=2 if key.endswith('psnr') else 3) for _, key in LOSS_VALUES]
    differences = []
    for key in LOSS_DIFFERENCES:
      record = row['differences'].get(key)
      differences.append('-' if record is None else
                         _interval_cell(record['effect'], record['low'], record['high'], signed=True,
                                        digits=2 if key.endswith('psnr') else 4))
    weight = '-' if row['seg_weight'] is None else f'{row["seg_weight"]:.3g}'
    share = '-' if row['attention'] is None else f'{row["attention"]:.2f}'
    lines.append(f'| {row["label"]} | {row["acceleration"]} | {len(row["seeds"])} | ' + ' | '.join(values) + ' | '
                 + ' | '.join(differences) + f' | {weight} | {share} | {"yes" if row["target"] else "no"} |')
    psnr, f_psnr = row['differences'].get('psnr'), row['differences'].get('f_psnr')
    if psnr and f_psnr:
      points.append((row['label'], row['acceleration'], (psnr['effect'], psnr['low'], psnr['high']),
                     (f_psnr['effect'], f_psnr['low'], f_psnr['high'])))
  if points:
    figures.tradeoff(figure_path, points, 'Focal gain against global cost, paired against solo CascadeNet '
                     '(95% intervals over seeds and slices)')
  met = comparison['met_everywhere']
  summary = ('Meets the target at every acceleration: ' + ', '.join(met) + '.' if met else
             'No method meets the target at every acceleration.')
  return '\n'.join(lines) + '\n\n' + summary + '\n'


def attention_section(root: str, figure_dir: str) -> Tuple[str, List[str]]:
  """The pseudo-attention table (energy share of the Dice gradient in the F- box against the box's area share, the
  runs' 95% bootstrap intervals over slices, per seed) and the flagship (S) figures copied to `figure_dir`."""
  found = results_lib.collect_attention(root)
  if not found:
    return '', []
  lines = ['| Method | x | seed | slices | energy in box | box area | energy / area |', '|---|---|---|---|---|---|---|']
  interval = lambda d, scale: _interval_cell(d['mean'] * scale, d['low'] * scale, d['high'] * scale,
                                             digits=1 if scale == 100 else 2)
  for acceleration in plan.ACCELERATIONS:
    for (method, a), seeds in found.items():
      if a != acceleration:
        continue
      for seed, (record, _) in sorted(seeds.items()):
        lines.append(f'| {method} | {acceleration} | {seed} | {record["num_slices"]} | '
                     f'{interval(record["energy_share"], 100)} % | {interval(record["area_share"], 100)} % | '
                     f'{interval(record["share_to_area_ratio"], 1)} |')
  paths = []
  os.makedirs(figure_dir, exist_ok=True)
  flagship = reporting.row_name(models.display_name(plan.SWEEP_EXPERIMENT), True)
  for acceleration in plan.ACCELERATIONS:
    seeds = found.get((flagship, acceleration), {})
    if seeds:
      _, folder = seeds[min(seeds)]
      path = os.path.join(figure_dir, f'attention_x{acceleration}.png')
      shutil.copyfile(os.path.join(folder, 'attention.png'), path)
      paths.append(path)
  return '\n'.join(lines) + '\n', paths


def _image(path: str) -> str:
  """A markdown image of `path`, a figure in `figures/<report name>/` beside the report."""
  name = os.path.basename(path)
  return f'![{name}](figures/{os.path.basename(os.path.dirname(path))}/{name})\n'


STATISTICS_TEXT = (
    'Every model sees the same test slices with the same masks, so each claim is tested paired: for every metric of '
    'the claim, the per-slice difference between the claim\'s side and the other row (oriented so that a positive '
    'effect favours the claim; a lower MSE counts as better), paired by seed and slice. The effect is the mean over '
    'seeds of each seed\'s mean difference over slices. With two or more seeds, [the 95% interval] is a '
    f'hierarchical bootstrap ({stats.BOOTSTRAP_RESAMPLES} resamples, numpy seed {stats.BOOTSTRAP_SEED}): resample '
    'the training runs (seeds), then the slices within each drawn run, so the interval covers how much another '
    'training run would differ; with one seed it is over slices only and says nothing about another training run. '
    '"per seed" lists each seed\'s effect, and p is the two-sided Wilcoxon signed-rank test of the per-slice '
    'differences averaged over seeds. F- metrics leave out slices without heart labels. A claim **holds** when the '
    'interval of every one of its metrics lies above 0, **does not hold** when none does and some lie below 0, is '
    '**partly** supported when some but not all lie above 0, and **inconclusive** when every interval holds 0.\n')


def beyond_the_tables(root: str, figure_dir: str) -> List[str]:
  """The convergence, baselines and Pareto sections, where their runs exist."""
  text = []
  curve_path = os.path.join(figure_dir, 'convergence.png')
  convergence = baselines.convergence_section(root, curve_path)
  if convergence:
    text += [
        '## Does the gain survive longer training?\n',
        f'Generated from `python -m segrecon_jax.study converge --root={root} --seeds=... --methods=...`: solo '
        f'CascadeNet and each joint loss method in the table (by default {plan.RECOMMENDED}), trained '
        f'{plan.CONVERGENCE_FACTOR} times the switch\'s epochs (the ramp and the cosine decay stretched alike) and '
        'evaluated along the way. Differences are the joint model minus solo, each seed against the same seed; "at '
        'the end" per slice with 95% intervals over seeds and slices. Dice - two-stage: against the two-stage '
        'baseline at the same budget trained with the method\'s segmentation loss (the 4x solo run, frozen, then '
        'MANet trained as long on its outputs), paired per slice. Target (the issue\'s, at the longer budget): F-PSNR '
        f'and F-SSIM above solo (intervals excluding 0), PSNR not below solo\'s, Dice within {baselines.DICE_MARGIN} '
        'of two-stage.\n',
        convergence, _image(curve_path)]
  table = baselines.baselines_section(root)
  if table:
    text += [
        '## Against two-stage and pretrain-then-fine-tune pipelines\n',
        f'Generated from `python -m segrecon_jax.study baselines --root={root} --seeds=...` beside the end-to-end '
        'runs, all at the switch\'s total steps. Two-stage: Table 2\'s solo CascadeNet, frozen, then MANet trained '
        'on its outputs (its Dice is the segmentation reference). Fine-tune: solo CascadeNet for half the epochs, '
        'then joint training with grad-norm balancing at ratio 0.1 from it for the other half. "- solo": paired '
        'per slice against solo CascadeNet; "Dice - two-stage": paired per slice against the two-stage baseline '
        'trained with the same segmentation loss (Dice, or Dice + cross-entropy); 95% intervals over seeds and '
        'slices. Target: F-PSNR and F-SSIM above solo (intervals excluding 0), PSNR not below solo\'s, Dice within '
        f'{baselines.DICE_MARGIN} of two-stage.\n', table]
  pareto_path = os.path.join(figure_dir, 'pareto.png')
  front = baselines.pareto_section(root, pareto_path)
  if front:
    text += ['## Focal gain against segmentation\n', front, _image(pareto_path)]
  return text


def _paired_text(results, table_number: int) -> List[str]:
  paired = paired_table(results, table_number)
  if not paired:
    return []
  return [f'Against solo {_table_methods(table_number)[0]}, paired slice by slice on the seeds both ran (the row '
          'minus solo; 95% intervals over seeds and slices, over slices only with one seed):\n', paired]


def check_root(root: str) -> None:
  """Raises `plan.StudyError` for a root that does not exist or holds no study (neither its study.json nor a
  finished run), so a typo in --root is not reported as an empty study."""
  if not os.path.isdir(root):
    raise plan.StudyError(f'--root={root}: no such folder; the root is the folder that `study run` (or sweep, '
                          'losses) was given as --root.')
  if plan.load_settings(root) is None and not any('metrics.json' in names for _, _, names in os.walk(root)):
    raise plan.StudyError(f'--root={root} holds no study: no {plan.SETTINGS_FILE} and no finished run (a workdir '
                          'with metrics.json) under it; the root is the folder that `study run` was given as --root.')


def report(root: str, out: str, settings: Optional[plan.Settings] = None) -> str:
  """Writes the report of the runs under `root` to `out` (figures in `figures/<out's name>/` beside it, so that
  several reports share a folder) and returns its path; a root that holds no study is refused (`check_root`)."""
  check_root(root)
  settings = plan.load_settings(root) or settings
  results = results_lib.collect(root)
  verdicts = claims_lib.evaluate(results)
  out_dir = os.path.dirname(os.path.abspath(out))
  figure_dir = os.path.join(out_dir, 'figures', os.path.splitext(os.path.basename(out))[0])
  metas = results_lib.first_meta(results, root)
  meta = next(iter(metas.values()), {})
  data_name = meta.get('data', {}).get('dataset_config', 'phantom')
  margin_fraction = meta.get('config', {}).get('focus_margin_fraction', 8 / 128)
  switch_text = settings.describe() if settings else "--switch=''"
  t1, t2 = table_seeds(results, 1), table_seeds(results, 2)
  text = [
      f'# Reproduction study: Tables 1 and 2 on `{data_name}`\n',
      f'Generated by `python -m segrecon_jax.study report --root={root} --out={out}` from the runs of '
      f'`python -m segrecon_jax.study run --root={root} {switch_text} --seeds=...`. Table cells are the mean ± '
      'standard deviation over seeds of each run\'s mean over the test slices ("seeds" column: how many training '
      'runs); each seed re-initializes the networks and reshuffles the data; the test masks are the same for every '
      'model and seed. Rows in *italics* are the paper\'s own numbers (OCMR with in-house labels): different data, '
      'so compare orderings, not values.\n',
      '## Scale\n', _test_size(results) + scale_description(root, results, settings),
      '## Verdicts at a glance\n',
      'Each cell: the verdict across seeds and the headline effect (F-PSNR for focused claims, PSNR for global ones) '
      'with its 95% interval over seeds and slices; details and every metric below.\n',
      verdict_summary(verdicts),
      f'## Table 1 (U-Net family; {_seeds_text(t1)})\n', table(results, 1), *_paired_text(results, 1),
      f'## Table 2 (CascadeNet and MANet; {_seeds_text(t2)})\n', table(results, 2), *_paired_text(results, 2),
      '## Do the paper\'s claims hold here?\n', STATISTICS_TEXT,
      '\n'.join(claims_lib.format_verdict(v) for v in verdicts if v.metrics) + '\n',
  ]
  curves_text, curve_paths = curves_section(results, figure_dir)
  if curves_text:
    text += ['## Training curves\n', curves_text] + [_image(p) for p in curve_paths]
  sweep_figure = os.path.join(figure_dir, 'loss_weight.png')
  sweep_table = sweep_section(root, sweep_figure)
  if sweep_table:
    text += [
        '## Segmentation loss weight (CascadeNet -> MANet (S))\n',
        f'Generated from `python -m segrecon_jax.study sweep --root={root} --seeds=... --weights=...`: '
        'seg_loss_weight w on the Dice term, w = 0 being solo reconstruction through the same network (its Dice is '
        'that of an untrained segmentation head). Cells are means [95% interval over seeds and slices]; the two '
        '"- (w=0)" columns are the paired difference against w = 0. The last two columns are the norms of the '
        'gradients of the weighted l1-l2 term and of the weighted Dice term with respect to the reconstruction '
        'network\'s parameters, the mean over the logged steps and seeds (`config.log_loss_grad_norms`).\n',
        sweep_table, _image(sweep_figure)]
  loss_figure = os.path.join(figure_dir, 'loss_tradeoff.png')
  loss_table = loss_section(root, loss_figure)
  if loss_table:
    text += [
        '## Segmentation-aware losses against solo reconstruction\n',
        f'Generated from `python -m segrecon_jax.study losses --root={root} --seeds=...`. Each method trains the '
        'flagship at the study scale; the baselines are Table 2\'s solo CascadeNet and CascadeNet -> MANet (S) at '
        'the paper\'s w = 1. Values are means [95% interval over seeds and slices]; "- solo" columns are paired '
        'per-slice differences against solo CascadeNet with hierarchical intervals; "Dice weight" is the mean '
        'effective weight of the Dice term logged during training (balancing methods); "attention / area" the '
        'pseudo-attention ratio where measured. The target a user would act on: F-PSNR and F-SSIM above solo with '
        f'intervals excluding 0, losing at most {MAX_PSNR_COST} dB of PSNR, at every acceleration.\n',
        loss_table, _image(loss_figure) if os.path.exists(loss_figure) else '']
    ingredients = ingredient_table(root)
    if ingredients:
      text += [
          '### What each ingredient adds\n',
          'Two methods that differ in one ingredient, paired slice by slice on the seeds both ran (with it minus '
          'without it; 95% intervals over seeds and slices).\n', ingredients]
  text += beyond_the_tables(root, figure_dir)
  attention_table, attention_figures = attention_section(root, figure_dir)
  if attention_table:
    text += [
        '## Pseudo-attention of the segmentation loss\n',
        f'Generated from `python -m segrecon_jax.study attention --root={root} --seeds=...` (`main.py '
        '--mode=attention` on each trained segmenting workdir): for every test slice, the gradient of the generalized '
        'Dice loss with respect to the reconstructed image, through the trained segmentation network in eval mode, '
        'and the share of its energy (|g|^2) inside the F- heart box against the box\'s share of the image; means '
        'over slices [95% bootstrap interval over slices]. A ratio above 1 means the segmentation loss asks more of '
        'the reconstruction inside the heart box than elsewhere: the paper\'s "pseudo-attention". The '
        'seg_loss_weight 0 row is the control: its segmentation network was never trained.\n',
        attention_table] + [_image(p) for p in attention_figures]
  fig_paths = figures.fig2(root, figure_dir, margin_fraction, data_name)
  if fig_paths:
    text += ['## Figures\n'] + [_image(p) for p in fig_paths]
  os.makedirs(out_dir, exist_ok=True)
  workdir.write_text_atomic(out, '\n'.join(text))
  return out
