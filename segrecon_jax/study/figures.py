"""The study's figures: Fig. 2-like comparisons, the loss-weight curves, the loss trade-off and training curves."""

import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from segrecon_jax.study import plan
from segrecon_jax.training import reporting

plt = reporting.plt


def _save(fig, path: str) -> None:
  """Lays the figure out, writes it to `path` (its folder made if missing) and frees it."""
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def fig2(root: str, out_dir: str, margin_fraction: float, data_name: str) -> List[str]:
  """Fig. 2-like figures per table and acceleration: fully sampled, zero-filled and each row's reconstruction of the
  test slice with the most heart, seed 0 (or the lowest seed a row ran)."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for table_number in plan.TABLES:
    for acceleration in plan.ACCELERATIONS:
      columns, reference, index = [], None, 0
      for number, method, experiment, stabilized in plan.ROWS:
        if number != table_number:
          continue
        parent = os.path.dirname(plan.run_dir(root, experiment, acceleration, stabilized, 0))
        seeds = sorted(int(n[4:]) for n in os.listdir(parent) if n[4:].isdigit()) if os.path.isdir(parent) else []
        pred = next((p for p in (os.path.join(parent, f'seed{s}', 'predictions') for s in seeds)
                     if os.path.exists(os.path.join(p, 'recon.npy'))), None)
        if pred is None:
          continue
        if reference is None:
          reference = {k: np.load(os.path.join(pred, f'{k}.npy')) for k in ('image', 'zero_filled', 'segmentation')}
          index = int(np.argmax([(s > 0).sum() for s in reference['segmentation']]))
          columns += [('Fully sampled', reference['image'][index], None),
                      (f'Zero-filled x{acceleration}', reference['zero_filled'][index], None)]
        columns.append((method, np.load(os.path.join(pred, 'recon.npy'))[index], None))
      if reference is None:
        continue
      margin = int(round(margin_fraction * reference['image'].shape[-2]))  # The F- box of the tables.
      path = os.path.join(out_dir, f'fig2_table{table_number}_x{acceleration}.png')
      reporting.comparison_figure(path, columns, reference['segmentation'][index], margin,
                                  title=f'Table {table_number} models, x{acceleration} ({data_name} test slice)')
      paths.append(path)
  return paths


def _finish_method_plot(fig, ax, path: str, title: str, colors: Dict[str, Any], markers: Dict[int, str],
                        xlabel: str) -> None:
  """The legend (a colour per method, a marker per acceleration), axes and title of a per-method plot against solo
  CascadeNet's F-PSNR, saved to `path`."""
  handles = [plt.Line2D([], [], color=color, marker='o', linestyle='none', label=l) for l, color in colors.items()]
  handles += [plt.Line2D([], [], color='black', marker=m, linestyle='none', label=f'x{a}') for a, m in markers.items()]
  ax.legend(handles=handles, fontsize=7, loc='best')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('F-PSNR - F-PSNR(solo CascadeNet) (dB)')
  ax.grid(True, alpha=0.3)
  ax.set_title(title, fontsize=9)
  _save(fig, path)


def tradeoff(path: str, points: Sequence[Tuple[str, int, Tuple[float, float, float], Tuple[float, float, float]]],
             title: str) -> None:
  """F-PSNR gain against global PSNR cost, both paired against solo reconstruction, one point per (method,
  acceleration) with its 95% intervals as error bars.

  Args:
    points: (method label, acceleration, (PSNR difference, low, high), (F-PSNR difference, low, high)).
  """
  fig, ax = plt.subplots(figsize=(7.5, 5.2))
  markers = {4: 'o', 8: 's'}
  labels = sorted({p[0] for p in points}, key=[p[0] for p in points].index)
  colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
  for label, acceleration, (x, x_low, x_high), (y, y_low, y_high) in points:
    ax.errorbar([x], [y], xerr=[[x - x_low], [x_high - x]], yerr=[[y - y_low], [y_high - y]], capsize=3,
                marker=markers.get(acceleration, 'D'), color=colors[label], linestyle='none')
  ax.axhline(0, color='grey', linewidth=0.8)
  ax.axvline(0, color='grey', linewidth=0.8)
  ax.axvline(-0.5, color='grey', linewidth=0.8, linestyle=':')
  _finish_method_plot(fig, ax, path, title, colors, markers, 'PSNR - PSNR(solo CascadeNet) (dB)')


def curves(path: str, series: Dict[str, Dict[str, Tuple[np.ndarray, np.ndarray]]],
           panels: Sequence[Tuple[str, str]], title: str) -> None:
  """Eval metrics against the training step, one panel per metric, one line per row (mean over seeds).

  Args:
    series: row label -> {metric tag: (steps `[n]`, values `[n]`)}.
    panels: (axis label, metric tag).
  """
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
  for ax, (label, tag) in zip(axes[0], panels):
    for row, tags in series.items():
      if tag in tags:
        steps, values = tags[tag]
        ax.plot(steps, values, marker='.', label=row)
    ax.set_xlabel('training step')
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  _save(fig, path)


def loss_weight_figure(path: str, series, panels, title: str = '') -> None:
  """Metrics against a loss weight on a symlog axis (0 shown), one panel per metric, one line per acceleration.

  Args:
    path: PNG to write.
    series: acceleration -> (weights, {metric key: float `[len(weights), 3]` rows of (mean, low, high)}); a NaN
      interval draws the point without an error bar.
    panels: (axis label, metric key) per panel.
  """
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
  positive = [w for weights, _ in series.values() for w in weights if w > 0]
  for ax, (label, key) in zip(axes[0], panels):
    for acceleration, (weights, curves) in sorted(series.items()):
      values = np.asarray(curves[key], np.float64).reshape(-1, 3)
      mean, low, high = values.T
      errors = np.nan_to_num(np.stack([mean - low, high - mean]), nan=0.0)
      ax.errorbar(weights, mean, yerr=errors, marker='o', capsize=3, label=f'x{acceleration}')
    ax.set_xscale('symlog', linthresh=min(positive) if positive else 1.0)
    ax.set_xlabel('segmentation loss weight')
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title + ' (mean over slices, 95% bootstrap interval)', fontsize=10)
  _save(fig, path)


def difference_curves(path: str, series: Dict[Tuple[str, int], Dict[str, Dict[int, Tuple[np.ndarray, np.ndarray]]]],
                      panels: Sequence[Tuple[str, str]], title: str) -> None:
  """Paired differences of eval means against the training step: a row of panels per metric, a column per
  acceleration; a colour per method (the same in every panel), a thin line per seed, the mean over seeds thick.

  Args:
    series: (method label, acceleration) -> {metric tag: {seed: (steps `[n]`, differences `[n]`)}}.
    panels: (metric name, metric tag).
  """
  accelerations = sorted({acceleration for _, acceleration in series})
  methods = list(dict.fromkeys(label for label, _ in series))
  fig, axes = plt.subplots(len(panels), len(accelerations), figsize=(4.8 * len(accelerations), 3.3 * len(panels)),
                           squeeze=False, sharex=True)
  for row, (name, tag) in enumerate(panels):
    for column, acceleration in enumerate(accelerations):
      ax = axes[row][column]
      for (label, series_acceleration), tags in series.items():
        if series_acceleration != acceleration:
          continue
        color = plt.cm.tab10(methods.index(label) % 10)
        per_seed = tags.get(tag, {})
        for steps, differences in per_seed.values():
          ax.plot(steps, differences, color=color, alpha=0.35, linewidth=0.9)
        common = sorted(set.intersection(*(set(s.tolist()) for s, _ in per_seed.values()))) if per_seed else []
        if common:
          mean = [np.mean([dict(zip(s.tolist(), d))[step] for s, d in per_seed.values()]) for step in common]
          seeds = f'{len(per_seed)} seed{"s" if len(per_seed) > 1 else ""}'
          ax.plot(common, mean, color=color, linewidth=2.2, marker='.', label=f'{label} ({seeds})')
      ax.axhline(0, color='grey', linewidth=0.8)
      ax.set_title(f'x{acceleration}', fontsize=9)
      if row == len(panels) - 1:
        ax.set_xlabel('training step')
      if column == 0:
        ax.set_ylabel(f'{name} difference (dB)')
      ax.grid(True, alpha=0.3)
      ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  _save(fig, path)


def pareto(path: str, points: Sequence[Dict], front: Sequence[int], title: str) -> None:
  """Focal gain against segmentation quality: one point per (method, acceleration) with 95% intervals on both axes,
  the Pareto-front points ringed and joined per acceleration.

  Args:
    points: {'label', 'acceleration', 'dice': (mean, low, high), 'gain': (mean, low, high)}.
    front: indices into `points` on the front.
  """
  fig, ax = plt.subplots(figsize=(8, 5.5))
  markers = {4: 'o', 8: 's'}
  labels = list(dict.fromkeys(p['label'] for p in points))
  colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
  for p in points:
    (x, x_low, x_high), (y, y_low, y_high) = p['dice'], p['gain']
    ax.errorbar([x], [y], xerr=[[x - x_low], [x_high - x]], yerr=[[y - y_low], [y_high - y]], capsize=3,
                marker=markers.get(p['acceleration'], 'D'), color=colors[p['label']], linestyle='none')
  for acceleration, marker in markers.items():
    on_front = sorted((points[i]['dice'][0], points[i]['gain'][0]) for i in front
                      if points[i]['acceleration'] == acceleration)
    if on_front:
      xs, ys = zip(*on_front)
      ax.plot(xs, ys, color='black', linewidth=0.8, linestyle='--')
      ax.scatter(xs, ys, s=220, facecolors='none', edgecolors='black', marker=marker)
  ax.axhline(0, color='grey', linewidth=0.8)
  _finish_method_plot(fig, ax, path, title, colors, markers, 'mean foreground Dice')
