"""The reproduction study: runs every row of the paper's Tables 1 and 2 and writes docs/results.md from the workdirs.

  python -m segrecon_jax.study run --root=/tmp/segrecon/study --switch=cpu_study --seeds=0,1,2
  python -m segrecon_jax.study sweep --root=/tmp/segrecon/study --switch=cpu_study --seeds=0 --weights=0,0.01,0.1,1,10
  python -m segrecon_jax.study attention --root=/tmp/segrecon/study --switch=cpu_study --seeds=0
  python -m segrecon_jax.study report --root=/tmp/segrecon/study --switch=cpu_study --out=docs/results.md
  python -m segrecon_jax.study run --root=/tmp/segrecon/paper --switch='' --tables=2,1 --seeds=0  # paper scale

`run` trains and evaluates each (row, acceleration, seed) with `main.py` in its own process (workdir
`ROOT/<experiment>_x<R>[_stab]/seed<k>`), skipping those that already have `metrics.json`, so an interrupted study
resumes where it stopped; before starting it prints how many runs are left, their training steps and, with
`--seconds_per_step`, the expected duration. `sweep` does the same for CascadeNet -> MANet (S) over the
segmentation loss weight (`ROOT/sweep/cascade_manet_x<R>_stab_w<w>/seed<k>`), logging both terms' gradient norms.
`attention` runs `main.py --mode=attention` on every finished SegRecon row and sweep w = 0 run. `report` reads every `metrics.json`
and `per_slice.json`, lays the tables out like the paper's (mean and standard deviation over seeds), puts the
paper's own numbers beside ours, draws a Fig. 2-like figure per acceleration from the runs' predictions, states
for each claim of the paper whether it holds here from paired per-slice differences (effect, 95% bootstrap
interval, Wilcoxon p), and, with sweep and attention runs, adds the loss-weight table (with the mean gradient
norms read from TensorBoard) and figure, and the pseudo-attention table and figures.
"""

import argparse
import collections
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.stats

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
TABLES = (1, 2)
# The loss-weight sweep: CascadeNet -> MANet (S) over seg_loss_weight (0 = solo reconstruction, same network).
SWEEP_EXPERIMENT = 'cascade_manet'
SWEEP_WEIGHTS = (0.0, 0.01, 0.1, 1.0, 10.0)
SWEEP_METRICS = (('PSNR', 'psnr'), ('F-PSNR', 'f_psnr'), ('Dice', 'dice_mean'))
# The pseudo-attention (`main.py --mode=attention`): the SegRecon rows, and the sweep's w = 0 run (a segmentation
# network never trained, whose Dice gradient on the reconstruction is the control).
ATTENTION_EXPERIMENTS = ('unet_unet', 'cascade_manet')
# Paired statistics: bootstrap resamples of the test slices and the generator's seed (fixed: reports reproduce).
BOOTSTRAP_RESAMPLES = 10000
BOOTSTRAP_SEED = 0
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
        accelerations: Sequence[int] = ACCELERATIONS, tables: Sequence[int] = TABLES,
        seconds_per_step: Optional[float] = None) -> None:
  """Trains and evaluates every missing (row, acceleration, seed), one `main.py` process each.

  Order: seed by seed; within a seed the tables in the order of `tables` (e.g. (2, 1): Table 2's rows first), each
  table at every acceleration. Before starting, prints the plan (`print_plan`).
  """
  runs = []
  for seed in seeds:
    for table_number in tables:
      for acceleration in accelerations:
        for number, method, experiment, stabilized in ROWS:
          if number != table_number or (experiments and experiment not in experiments):
            continue
          command = [f'--config={config_arg(experiment, acceleration, stabilized, switch)}', f'--config.seed={seed}']
          runs.append((f'{method} x{acceleration} seed {seed}', command,
                       run_dir(root, experiment, acceleration, stabilized, seed)))
  _run_all(runs, seconds_per_step)


def sweep_dir(root: str, acceleration: int, weight: float, seed: int) -> str:
  return os.path.join(root, 'sweep', f'{SWEEP_EXPERIMENT}_x{acceleration}_stab_w{weight:g}', f'seed{seed}')


def sweep_flags(switch: str, acceleration: int, weight: float, seed: int) -> List[str]:
  """main.py's config flags of one sweep run (shared by `sweep` and `attention`)."""
  return [f'--config={config_arg(SWEEP_EXPERIMENT, acceleration, True, switch)}',
          f'--config.seg_loss_weight={weight:g}', '--config.log_loss_grad_norms=True', f'--config.seed={seed}']


def sweep(root: str, switch: str, seeds: Sequence[int], weights: Sequence[float] = SWEEP_WEIGHTS,
          accelerations: Sequence[int] = ACCELERATIONS, seconds_per_step: Optional[float] = None) -> None:
  """CascadeNet -> MANet (S) at every (acceleration, seg_loss_weight, seed) into `ROOT/sweep/...`, skipping finished
  runs; weight 0 is solo reconstruction through the same network. Logs each loss term's gradient norm."""
  runs = []
  for seed in seeds:
    for acceleration in accelerations:
      for weight in weights:
        command = sweep_flags(switch, acceleration, weight, seed)
        runs.append((f'{models.display_name(SWEEP_EXPERIMENT)} (S) x{acceleration} seg_loss_weight {weight:g} '
                     f'seed {seed}', command, sweep_dir(root, acceleration, weight, seed)))
  _run_all(runs, seconds_per_step)


def attention_runs(root: str, switch: str, seeds: Sequence[int],
                   accelerations: Sequence[int] = ACCELERATIONS) -> List[Tuple[str, List[str], str]]:
  """(label, main.py flags, workdir) of every finished SegRecon row and sweep w = 0 run of `seeds`."""
  runs = []
  for seed in seeds:
    for acceleration in accelerations:
      for _, method, experiment, stabilized in ROWS:
        if experiment in ATTENTION_EXPERIMENTS:
          runs.append((f'{method} x{acceleration} seed {seed}',
                       [f'--config={config_arg(experiment, acceleration, stabilized, switch)}', f'--config.seed={seed}'],
                       run_dir(root, experiment, acceleration, stabilized, seed)))
      runs.append((f'{models.display_name(SWEEP_EXPERIMENT)} (S) x{acceleration} seg_loss_weight 0 seed {seed}',
                   sweep_flags(switch, acceleration, 0.0, seed), sweep_dir(root, acceleration, 0.0, seed)))
  return [r for r in runs if os.path.exists(os.path.join(r[2], 'metrics.json'))]


def attention(root: str, switch: str, seeds: Sequence[int], accelerations: Sequence[int] = ACCELERATIONS) -> None:
  """`main.py --mode=attention` on every finished SegRecon run (see `attention_runs`) without attention.json."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  runs = attention_runs(root, switch, seeds, accelerations)
  todo = [r for r in runs if not os.path.exists(os.path.join(r[2], 'attention', 'attention.json'))]
  print(f'[study] pseudo-attention: {len(todo)} run(s) to do ({len(runs) - len(todo)} already done).', flush=True)
  for label, flags, workdir in todo:
    command = [sys.executable, 'main.py'] + flags + ['--config.progress_bar=False', f'--workdir={workdir}',
                                                      '--mode=attention']
    print(f'[study] attention of {label}: {" ".join(command[1:])}', flush=True)
    with open(os.path.join(workdir, 'log.txt'), 'a') as log:
      subprocess.run(command, cwd=repo, check=True, stdout=log, stderr=subprocess.STDOUT)


def collect_attention(root: str) -> Dict[Tuple[str, int], Dict[int, Tuple[dict, str]]]:
  """{(row label, acceleration): {seed: (attention.json, its folder)}} of the runs `attention` covers."""
  found = collections.defaultdict(dict)
  rows = [(method, experiment, stabilized, None) for _, method, experiment, stabilized in ROWS
          if experiment in ATTENTION_EXPERIMENTS]
  rows.append((f'{models.display_name(SWEEP_EXPERIMENT)} (S), seg_loss_weight 0', SWEEP_EXPERIMENT, True, 0.0))
  for method, experiment, stabilized, weight in rows:
    for acceleration in ACCELERATIONS:
      parent = os.path.dirname(run_dir(root, experiment, acceleration, stabilized, 0) if weight is None else
                               sweep_dir(root, acceleration, weight, 0))
      for seed, workdir in _seed_dirs(parent):
        path = os.path.join(workdir, 'attention', 'attention.json')
        if os.path.exists(path):
          with open(path) as f:
            found[(method, acceleration)][seed] = (json.load(f), os.path.dirname(path))
  return found


def attention_report(root: str, figure_dir: str) -> Tuple[str, List[str]]:
  """The pseudo-attention table (energy share of the Dice gradient in the F- box against the box's area share, with
  the runs' 95% bootstrap intervals over slices, per seed) and the flagship (S) figures copied to `figure_dir`."""
  found = collect_attention(root)
  if not found:
    return '', []
  lines = ['| Method | x | seed | slices | energy in box | box area | energy / area |', '|---|---|---|---|---|---|---|']
  interval = lambda d, scale: _interval_cell(d['mean'] * scale, d['low'] * scale, d['high'] * scale, digits=1 if
                                             scale == 100 else 2)
  for acceleration in ACCELERATIONS:
    for (method, a), seeds in found.items():
      if a != acceleration:
        continue
      for seed, (record, _) in sorted(seeds.items()):
        lines.append(f'| {method} | {acceleration} | {seed} | {record["num_slices"]} | '
                     f'{interval(record["energy_share"], 100)} % | {interval(record["area_share"], 100)} % | '
                     f'{interval(record["share_to_area_ratio"], 1)} |')
  paths = []
  os.makedirs(figure_dir, exist_ok=True)
  flagship = models.display_name(SWEEP_EXPERIMENT) + ' (S)'
  for acceleration in ACCELERATIONS:
    seeds = found.get((flagship, acceleration), {})
    if seeds:
      _, folder = seeds[min(seeds)]
      path = os.path.join(figure_dir, f'attention_x{acceleration}.png')
      shutil.copyfile(os.path.join(folder, 'attention.png'), path)
      paths.append(path)
  return '\n'.join(lines) + '\n', paths


def _run_all(runs, seconds_per_step: Optional[float]) -> None:
  """`runs`: (label, main.py config flags, workdir); prints the plan, then runs those without metrics.json."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  todo = [r for r in runs if not os.path.exists(os.path.join(r[2], 'metrics.json'))]
  print_plan(todo, len(runs) - len(todo), seconds_per_step)
  for label, flags, workdir in todo:
    command = [sys.executable, 'main.py'] + flags + ['--config.progress_bar=False', f'--workdir={workdir}']
    print(f'[study] {label}: {" ".join(command[1:])}', flush=True)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'log.txt'), 'a') as log:
      subprocess.run(command, cwd=repo, check=True, stdout=log, stderr=subprocess.STDOUT)


def train_split_size(config) -> Tuple[Optional[int], str]:
  """The number of training slices of `config` and how it is known: read from the prepared TFDS dataset, estimated
  from a phantom config (its slices and labelled frames times 1 - test_fraction; the real split takes whole
  subjects, so it differs by a few slices), or unknown (real or NIfTI data not prepared yet)."""
  try:
    from segrecon_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    dataset_builder = input_pipeline.builder(config)
    name = f'{config.dataset}/{dataset_builder.builder_config.name}'
    if dataset_builder.is_prepared():
      return int(dataset_builder.info.splits[config.train_split].num_examples), f'read from the prepared {name}'
    described = dataset_builder.builder_config
  except Exception as e:  # pylint: disable=broad-except  (the plan is informational; the run reports the error)
    return None, f'unknown ({type(e).__name__}: {e})'
  if getattr(described, 'source', '') != 'phantom':
    return None, f'unknown until the first run prepares {name}'
  total = 0
  for i in range(described.num_phantom_subjects):
    frames = described.phantom_num_frames[i % len(described.phantom_num_frames)]
    labelled = frames if described.include_unlabelled or not described.phantom_labelled_frames else \
        len([f for f in set(described.phantom_labelled_frames) if f < frames])
    total += described.phantom_num_slices[i % len(described.phantom_num_slices)] * labelled
  estimate = int(round(total * (1 - described.test_fraction)))
  return estimate, (f'estimated: {name} is not prepared yet; {total} slices x (1 - test_fraction '
                    f'{described.test_fraction:.3f})')


def _config_of(flags: Sequence[str]):
  """The experiment config a run's `--config=configs/<experiment>.py:<arg>` flag names."""
  path, arg = next(f for f in flags if f.startswith('--config=')).split('=', 1)[1].split(':', 1)
  return importlib.import_module('configs.' + os.path.splitext(os.path.basename(path))[0]).get_config(arg)


def print_plan(todo, num_done: int, seconds_per_step: Optional[float]) -> None:
  """Prints how many runs are left, the training steps of each (epochs x whole global batches of the train split)
  and, with `seconds_per_step`, the expected duration of their training steps."""
  print(f'[study] {len(todo)} runs to do ({num_done} already done).', flush=True)
  total_steps, unknown, lines, sizes = 0, 0, collections.OrderedDict(), {}
  for _, flags, _ in todo:
    config = _config_of(flags)
    data = json.dumps({f: config.get(f) for f in ('dataset', 'dataset_config', 'data_dir', 'train_split',
                                                  'image_size', 'test_fraction', 'split_seed',
                                                  'include_unlabelled', 'label_mapping', 'phase_seed')}, default=str)
    if data not in sizes:  # Rows share their data: one look at each dataset.
      sizes[data] = train_split_size(config)
    size, how = sizes[data]
    if size is None:
      unknown += 1
      line = f'unknown steps ({config.num_epochs} epochs of global batch {config.batch_size}; train split {how})'
    else:
      steps = config.num_epochs * (size // config.batch_size)
      total_steps += steps
      line = (f'{steps} steps ({config.num_epochs} epochs x {size // config.batch_size} steps of global batch '
              f'{config.batch_size}; train split {size} slices, {how})')
    lines[line] = lines.get(line, 0) + 1
  for line, count in lines.items():
    print(f'[study]   {count} run(s): {line}', flush=True)
  if todo and seconds_per_step:
    duration = total_steps * seconds_per_step
    print(f'[study] expected: {total_steps} training steps x {seconds_per_step:g} s/step = {duration / 3600:.1f} h'
          f'{f" for the {len(todo) - unknown} runs of known size" if unknown else ""}; compiles, evaluations and '
          'dataset preparation come on top, and the models differ in speed (one s/step for all is a rough '
          'guide).', flush=True)
  elif todo:
    print('[study] pass --seconds_per_step=S (a run\'s train_steps_per_second in TensorBoard, inverted, or '
          'python -m segrecon_jax.benchmark) for the expected duration.', flush=True)


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


def _seed_dirs(parent: str):
  """(seed, workdir) of the finished runs (with metrics.json) under a row's folder."""
  if not os.path.isdir(parent):
    return []
  found = []
  for name in sorted(os.listdir(parent)):
    if re.fullmatch(r'seed\d+', name) and os.path.exists(os.path.join(parent, name, 'metrics.json')):
      found.append((int(name[len('seed'):]), os.path.join(parent, name)))
  return found


def collect_slices(root: str) -> Dict[Tuple[str, int], Dict[int, dict]]:
  """Every run's per-slice metrics (`per_slice.json`, see `reporting.write_per_slice`), keyed by (method,
  acceleration), then seed; runs without the file (older workdirs) are left out."""
  results = collections.defaultdict(dict)
  for _, method, experiment, stabilized in ROWS:
    for acceleration in ACCELERATIONS:
      for seed, workdir in _seed_dirs(os.path.dirname(run_dir(root, experiment, acceleration, stabilized, 0))):
        per_slice = reporting.read_per_slice(workdir)
        if per_slice is not None:
          results[(method, acceleration)][seed] = per_slice
  return results


def paired_differences(better: Dict[int, dict], worse: Dict[int, dict], key: str,
                       sign: int = 1) -> Tuple[np.ndarray, List[str], List[int]]:
  """Per-slice differences `sign * (better - worse)` of metric `key`, paired by (seed, slice id).

  Only the seeds both rows ran count; a slice's difference is its mean over those seeds (the slice is the unit of
  the statistics), over the seeds where both values are finite (F- metrics are NaN without heart).

  Args:
    better, worse: seed -> per-slice record (`{'ids': [str], 'metrics': {key: [n]}}`) of the two rows.
    key: the metric.
    sign: 1 when higher is better, -1 when lower is (MSE): positive differences favour `better`.

  Returns:
    (differences float64 `[slices]` sorted by slice id, those ids, the seeds used).
  """
  seeds = sorted(s for s in set(better) & set(worse)
                 if key in better[s]['metrics'] and key in worse[s]['metrics'])
  by_slice = collections.defaultdict(list)
  for seed in seeds:
    a = dict(zip(better[seed]['ids'], better[seed]['metrics'][key]))
    b = dict(zip(worse[seed]['ids'], worse[seed]['metrics'][key]))
    for name in set(a) & set(b):
      difference = sign * (float(a[name]) - float(b[name]))
      if np.isfinite(difference):
        by_slice[name].append(difference)
  names = sorted(by_slice)
  return np.array([np.mean(by_slice[n]) for n in names], np.float64), names, seeds


def slice_means(runs: Dict[int, dict], key: str) -> np.ndarray:
  """Each slice's value of `key` averaged over the seeds of `runs` (seed -> per-slice record), finite ones only."""
  by_slice = collections.defaultdict(list)
  for record in runs.values():
    for name, value in zip(record['ids'], record['metrics'].get(key, [])):
      if np.isfinite(value):
        by_slice[name].append(float(value))
  return np.array([np.mean(by_slice[n]) for n in sorted(by_slice)], np.float64)


def bootstrap_interval(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> Tuple[float, float]:
  """95% percentile bootstrap interval of the mean of `values` (slices resampled with replacement)."""
  values = np.asarray(values, np.float64)
  if values.size == 0:
    return float('nan'), float('nan')
  rng = np.random.default_rng(seed)
  means = np.empty(resamples)
  chunk = max(1, 2 ** 22 // values.size)  # Bounded memory for large test splits.
  for start in range(0, resamples, chunk):
    count = min(chunk, resamples - start)
    means[start:start + count] = values[rng.integers(0, values.size, size=(count, values.size))].mean(axis=1)
  low, high = np.percentile(means, [2.5, 97.5])
  return float(low), float(high)


def paired_statistics(differences: np.ndarray) -> Dict[str, float]:
  """Effect (the mean difference), its 95% bootstrap interval, the two-sided Wilcoxon signed-rank p-value and the
  number of slices, of per-slice paired differences."""
  differences = np.asarray(differences, np.float64)
  low, high = bootstrap_interval(differences)
  if differences.size < 2:
    p = float('nan')
  elif not np.any(differences != 0):
    p = 1.0  # No slice differs: nothing to rank.
  else:
    p = float(scipy.stats.wilcoxon(differences).pvalue)
  return {'effect': float(np.mean(differences)) if differences.size else float('nan'), 'low': low, 'high': high,
          'p': p, 'slices': int(differences.size)}


def paired_verdict(statistics: Sequence[Dict[str, float]]) -> str:
  """`holds` when every metric's interval lies above 0 (the claim's side), `does not hold` when none does and some
  lie below, `inconclusive` when every interval holds 0, `partly (...)` otherwise."""
  favour = sum(s['low'] > 0 for s in statistics)
  against = sum(s['high'] < 0 for s in statistics)
  total = len(statistics)
  if favour == total:
    return 'holds'
  if favour == 0:
    return 'does not hold' if against else 'inconclusive: every interval holds 0'
  return f'partly ({favour} of {total} metrics for it' + (f', {against} against it' if against else '') + ')'


def _format_statistics(name: str, stats: Dict[str, float]) -> str:
  return f'{name} {stats["effect"]:+.4f} [{stats["low"]:+.4f}, {stats["high"]:+.4f}] p = {stats["p"]:.2g}'


def paired_claim(slices, better: str, worse: str, acceleration: int, keys: Sequence[str]) -> Optional[str]:
  """The verdict and numbers of one claim from paired per-slice differences, or None without per-slice data."""
  a, b = slices.get((better, acceleration), {}), slices.get((worse, acceleration), {})
  parts, statistics, seeds, sizes = [], [], set(), set()
  for name, key, sign in METRICS:
    if key not in keys:
      continue
    differences, _, used = paired_differences(a, b, key, sign)
    if differences.size == 0:
      continue
    stats = paired_statistics(differences)
    statistics.append(stats)
    seeds.update(used)
    sizes.add(stats['slices'])
    parts.append(_format_statistics(name, stats))
  if not statistics:
    return None
  slices_text = '/'.join(str(n) for n in sorted(sizes))
  return (f'**{paired_verdict(statistics)}** ({"; ".join(parts)}; {len(seeds)} seed{"s" if len(seeds) > 1 else ""}, '
          f'{slices_text} slices)')


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


def claim_checks():
  """(text, the claim's side, the other side, metric keys) of each claim of the paper."""
  checks = []
  for joint in ('Multi-Decoder UNet', 'UNet -> UNet', 'CascadeNet -> MANet'):
    checks.append((f'Stabilization helps {joint} on the F- metrics', f'{joint} (S)', joint, FOCUSED))
  for solo, joint in (('UNet', 'UNet -> UNet (S)'), ('CascadeNet', 'CascadeNet -> MANet (S)')):
    checks.append((f'Segmentation-aware {joint} beats solo {solo} on the F- metrics', joint, solo, FOCUSED))
  for solo, others in (('UNet', [m for t, m, _, _ in ROWS if t == 1 and m != 'UNet']),
                       ('CascadeNet', [m for t, m, _, _ in ROWS if t == 2 and m != 'CascadeNet'])):
    for other in others:
      checks.append((f'Solo {solo} beats {other} on the global metrics', solo, other, GLOBAL))
  return checks


def claims(results, slices=None) -> str:
  """One line per claim and acceleration: the paired verdict with each metric's effect [95% CI] and Wilcoxon p
  (`paired_claim`); rows without per-slice data fall back to the means over seeds and the seed spread."""
  lines = []
  for text, better, worse, keys in claim_checks():
    for acceleration in ACCELERATIONS:
      paired = paired_claim(slices or {}, better, worse, acceleration, keys)
      if paired is not None:
        lines.append(f'- x{acceleration}: {text}: {paired}.')
        continue
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
      elif total:
        if wins:
          verdict += f'; {clear} of {total} beyond the spread'
        if wins < total:
          verdict += f'; {against} of {total} against it beyond the spread'
      note = ' No per_slice.json in these runs: means over seeds, not paired.' if total else ''
      lines.append(f'- x{acceleration}: {text}: **{verdict}**' + (f' ({numbers}).' if numbers else '.') + note)
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
      margin_fraction = importlib.import_module('configs.default').get_config().focus_margin_fraction
      margin = int(round(margin_fraction * reference['image'].shape[-2]))  # The F- box of the tables.
      path = os.path.join(out_dir, f'fig2_table{table_number}_x{acceleration}.png')
      reporting.comparison_figure(path, columns, reference['segmentation'][index], margin,
                                  title=f'Table {table_number} models, x{acceleration} (seed 0, phantom test slice)')
      paths.append(path)
  return paths


def collect_sweep(root: str) -> Dict[Tuple[int, float], Dict[int, dict]]:
  """The sweep's runs, keyed by (acceleration, seg_loss_weight), then seed: `{'metrics': metrics.json's metrics,
  'per_slice': the per-slice record or None}`."""
  results = collections.defaultdict(dict)
  folder = os.path.join(root, 'sweep')
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    match = re.fullmatch(rf'{SWEEP_EXPERIMENT}_x(\d+)_stab_w(.+)', name)
    if not match:
      continue
    for seed, workdir in _seed_dirs(os.path.join(folder, name)):
      with open(os.path.join(workdir, 'metrics.json')) as f:
        metrics = json.load(f)['metrics']
      scalars = reporting.read_scalars(workdir)
      grad_norms = {key: float(np.mean(list(reporting.last_values(scalars[f'train_{key}']).values())))
                    for key in ('recon_grad_norm', 'seg_grad_norm') if scalars.get(f'train_{key}')}
      results[(int(match.group(1)), float(match.group(2)))][seed] = {
          'metrics': metrics, 'per_slice': reporting.read_per_slice(workdir), 'grad_norms': grad_norms}
  return results


def _interval_cell(mean: float, low: float, high: float, signed: bool = False, digits: int = 4) -> str:
  if not np.isfinite(mean):
    return '-'
  form = f'+.{digits}f' if signed else f'.{digits}f'
  return f'{mean:{form}}' + (f' [{low:{form}}, {high:{form}}]' if np.isfinite(low) else '')


def sweep_summary(runs: Dict[int, dict], key: str, baseline: Optional[Dict[int, dict]] = None):
  """(mean, low, high) of `key` over slices and seeds (each slice averaged over seeds, 95% bootstrap interval over
  slices), or with `baseline` the paired difference against it; without per-slice data the mean over seeds of
  metrics.json and no interval."""
  with_slices = {seed: r['per_slice'] for seed, r in runs.items() if r['per_slice'] is not None}
  if baseline is not None:
    base = {seed: r['per_slice'] for seed, r in baseline.items() if r['per_slice'] is not None}
    differences, _, _ = paired_differences(with_slices, base, key)
    if differences.size == 0:
      return float('nan'), float('nan'), float('nan')
    stats = paired_statistics(differences)
    return stats['effect'], stats['low'], stats['high']
  if with_slices:
    values = slice_means(with_slices, key)
    if values.size:
      return (float(values.mean()),) + bootstrap_interval(values)
  mean, _, _ = summarize([r['metrics'] for r in runs.values()], key)
  return mean, float('nan'), float('nan')


def sweep_report(root: str, figure_path: str) -> str:
  """The loss-weight section: a table per acceleration and the figure `figure_path` (PSNR and F-PSNR against the
  weight with 95% intervals); '' without sweep runs."""
  results = collect_sweep(root)
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
        if baseline is None or weight == 0:
          cells.append('-')
        else:
          cells.append(_interval_cell(*sweep_summary(runs, key, baseline), signed=True))
      for key in ('recon_grad_norm', 'seg_grad_norm'):
        norms = [r['grad_norms'][key] for r in runs.values() if key in r['grad_norms']]
        cells.append(f'{np.mean(norms):.4g}' if norms else '-')
      lines.append(f'| {weight:g} | {len(runs)} | ' + ' | '.join(cells) + ' |')
    series[acceleration] = (weights, {k: np.array(v, np.float64) for k, v in curves.items()})
  reporting.loss_weight_figure(figure_path, series, (('PSNR (dB)', 'psnr'), ('F-PSNR (dB)', 'f_psnr')),
                               title=f'{models.display_name(SWEEP_EXPERIMENT)} (S): segmentation loss weight')
  return '\n'.join(lines) + '\n'


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
          f'lr {config.learning_rate} (b1 {config.b1}, b2 {config.b2}, '
          + ('constant' if config.get('lr_schedule', 'constant') == 'constant' else
             f'{config.lr_schedule} decay to 0 over the run') + f'); stabilization P = {config.patience}, '
          f'eps = {config.eps}, ' + ('the exact eq. 1 schedule (P + 1 levels)' if config.schedule_levels is None
                                     else f'{config.schedule_levels} levels') +
          f'; ACS lines: {config.num_acs} at x8 (x4: '
          f'{importlib.import_module("configs.unet_unet").get_config("x4_stab" + suffix).num_acs}); F- box margin '
          f'{config.focus_margin_fraction:.4g} of the image side.')
  return head + '\n' + '\n'.join(lines) + '\n'


def _test_size(results) -> str:
  sizes = sorted({int(r['num_examples']) for runs in results.values() for r in runs if 'num_examples' in r})
  return f'Test split: {", ".join(map(str, sizes))} slices. ' if sizes else ''


def report(root: str, out: str, switch: str) -> str:
  results, slices = collect(root), collect_slices(root)
  out_dir = os.path.dirname(os.path.abspath(out))
  fig_paths = figures(root, os.path.join(out_dir, 'figures'))
  sweep_figure = os.path.join(out_dir, 'figures', 'loss_weight.png')
  sweep_table = sweep_report(root, sweep_figure)
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
      f'Every model sees the same test slices with the same masks, so each claim is tested paired: for every '
      'metric of the claim, the per-slice difference between the claim\'s side and the other row (oriented so that '
      'a positive effect favours the claim; a lower MSE counts as better), paired by seed and slice over the seeds '
      'both rows ran, each slice\'s difference averaged over those seeds so that the slice is the unit. The effect '
      f'is the mean over slices, [the 95% percentile bootstrap interval] from {BOOTSTRAP_RESAMPLES} resamples of '
      f'the slices (numpy seed {BOOTSTRAP_SEED}), and p the two-sided Wilcoxon signed-rank test of the per-slice '
      'differences; F- metrics leave out slices without heart labels. A claim **holds** when the interval of every '
      'one of its metrics lies above 0, **does not hold** when none does and some lie below 0, is **partly** '
      'supported when some but not all lie above 0, and **inconclusive** when every interval holds 0. The seeds '
      're-draw initialization and data order, not the test slices, so the intervals are over slices, not over '
      'training runs: with few seeds they do not say how much another training run would differ. Runs without '
      'per_slice.json (older workdirs) fall back to comparing the means over seeds against their spread, as the '
      'line says.\n',
      claims(results, slices),
  ]
  if sweep_table:
    text += [
        '## Segmentation loss weight (CascadeNet -> MANet (S))\n',
        f'Generated from `python -m segrecon_jax.study sweep --root={root} --switch={switch} --seeds=... '
        '--weights=...`: seg_loss_weight w on the Dice term, w = 0 being solo reconstruction through the same '
        'network (its Dice is that of an untrained segmentation head). Cells are means over slices (each averaged '
        'over seeds) [95% bootstrap interval over slices]; the two "- (w=0)" columns are the paired per-slice '
        'difference against w = 0. The last two columns are the norms of the gradients of the weighted l1-l2 term '
        'and of the weighted Dice term with respect to the reconstruction network\'s parameters, each the mean over '
        'the run\'s logged steps (every log_every_steps, the mean of that window) and over seeds (TensorBoard '
        'train_recon_grad_norm, train_seg_grad_norm, `config.log_loss_grad_norms`).\n',
        sweep_table,
        f'![loss_weight.png](figures/{os.path.basename(sweep_figure)})\n',
    ]
  attention_table, attention_figures = attention_report(root, os.path.join(out_dir, 'figures'))
  if attention_table:
    text += [
        '## Pseudo-attention of the segmentation loss\n',
        f'Generated from `python -m segrecon_jax.study attention --root={root} --switch={switch} --seeds=...` '
        '(`main.py --mode=attention` on each trained SegRecon workdir): for every test slice, the gradient of the '
        'generalized Dice loss with respect to the reconstructed image [H, W, 2], through the trained segmentation '
        'network in eval mode, and the share of its energy (|g|^2) inside the F- heart box against the box\'s share '
        'of the image; means over slices [95% bootstrap interval over slices]. A ratio above 1 means the '
        'segmentation loss asks more of the reconstruction inside the heart box than elsewhere: the paper\'s '
        '"pseudo-attention". The seg_loss_weight 0 row is the control: its segmentation network was never trained, '
        'so its gradient shows what the architecture alone concentrates.\n',
        attention_table,
    ]
    text += [f'![{os.path.basename(p)}](figures/{os.path.basename(p)})\n' for p in attention_figures]
  if fig_paths:
    text.append('## Figures\n')
    text += [f'![{os.path.basename(p)}](figures/{os.path.basename(p)})\n' for p in fig_paths]
  with open(out, 'w') as f:
    f.write('\n'.join(text))
  return out


def main(argv: Optional[List[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('action', choices=('run', 'sweep', 'attention', 'report'))
  parser.add_argument('--root', required=True, help='folder holding one workdir per (row, acceleration, seed)')
  parser.add_argument('--switch', default='cpu_study', help="config switch for every run ('' = paper scale)")
  parser.add_argument('--seeds', default='0', help='comma-separated seeds (run, sweep)')
  parser.add_argument('--experiments', default='', help='comma-separated subset of the experiments (run)')
  parser.add_argument('--tables', default=','.join(map(str, TABLES)),
                      help="comma-separated paper tables, in the order to run them, e.g. '2,1' (run)")
  parser.add_argument('--accelerations', default='4,8', help='comma-separated accelerations (run, sweep)')
  parser.add_argument('--weights', default=','.join(f'{w:g}' for w in SWEEP_WEIGHTS),
                      help='comma-separated seg_loss_weight values (sweep)')
  parser.add_argument('--seconds_per_step', type=float, default=None,
                      help='seconds per training step, for the expected duration printed before starting (run, sweep)')
  parser.add_argument('--out', default='docs/results.md', help='the report (report)')
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(',')]
  accelerations = [int(a) for a in args.accelerations.split(',')]
  if args.action == 'run':
    tables = [int(t) for t in args.tables.split(',') if t]
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
      parser.error(f'--tables={args.tables}: the paper has tables {list(TABLES)}, not {unknown}')
    run(args.root, args.switch, seeds, [e for e in args.experiments.split(',') if e], accelerations, tables,
        args.seconds_per_step)
  elif args.action == 'sweep':
    sweep(args.root, args.switch, seeds, [float(w) for w in args.weights.split(',')], accelerations,
          args.seconds_per_step)
  elif args.action == 'attention':
    attention(args.root, args.switch, seeds, accelerations)
  else:
    print(report(args.root, args.out, args.switch))


if __name__ == '__main__':
  main()
