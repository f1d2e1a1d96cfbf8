"""A run's results for people: metrics.json / results.md with the paper's table, per-slice records, figures."""

import json
import os
from typing import Any, Dict, Optional

import jax
import matplotlib
import numpy as np

from segrecon_jax import metrics
from segrecon_jax import models
from segrecon_jax.training import workdir as workdir_lib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import patches  # pylint: disable=g-import-not-at-top,wrong-import-position

# The paper's table columns (Table 2 order), MSE scaled by 10^3 as the paper prints it.
TABLE_COLUMNS = (('MSE (x10^3)', 'mse_x1e3'), ('PSNR', 'psnr'), ('SSIM', 'ssim'), ('F-MSE (x10^3)', 'f_mse_x1e3'),
                 ('F-PSNR', 'f_psnr'), ('F-SSIM', 'f_ssim'), ('Dice', 'dice_mean'))
LABEL_COLORS = np.array([[0, 0, 0, 0], [1.0, 0.2, 0.2, 0.45], [0.2, 1.0, 0.2, 0.45], [0.2, 0.4, 1.0, 0.45]])


STABILIZED = '(S)'  # The paper's mark of a row trained with the stabilization curriculum.


def row_name(display_name: str, stabilized: bool) -> str:
  """A method's name in the tables: the model's display name, with the paper's " (S)" when stabilized."""
  return f'{display_name} {STABILIZED}' if stabilized else display_name


def method_name(config) -> str:
  return row_name(models.display_name(config.model), config.stabilization)


def results_table(rows) -> str:
  """Markdown table with the paper's columns; `rows` is a list of (method, metrics dict)."""
  lines = ['| Method | ' + ' | '.join(c for c, _ in TABLE_COLUMNS) + ' |',
           '|---|' + '---|' * len(TABLE_COLUMNS)]
  for method, results in rows:
    cells = []
    for _, key in TABLE_COLUMNS:
      value = results.get(key)
      cells.append('-' if value is None or not np.isfinite(value) else f'{value:.4f}')
    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_results(workdir: str, config, results: Dict[str, float], extra: Optional[Dict[str, Any]] = None,
                  per_slice: Optional[Dict[str, Any]] = None) -> None:
  """`metrics.json` (every metric), `results.md` (one row with the paper's columns plus Dice) and, given the
  evaluation's `per_slice` values (`inference.EvalResults.per_slice`), `per_slice.json` (`write_per_slice`)."""
  if jax.process_index() != 0:
    return
  if per_slice is not None:
    write_per_slice(workdir, per_slice)
  record = {'method': method_name(config), 'acceleration': config.acceleration, 'metrics': results,
            **(extra or {})}
  workdir_lib.write_text_atomic(os.path.join(workdir, 'metrics.json'), json.dumps(record, indent=2, sort_keys=True))
  text = (f'# {method_name(config)}, x{config.acceleration} acceleration\n\n'
          f'{int(results.get("num_examples", 0))} {config.eval_split} slices of '
          f'{config.dataset}/{config.dataset_config}; MSE columns are scaled by 10^3 as in the paper; F- metrics '
          f'use the ground-truth heart bounding box + {config.focus_margin_fraction:.4g} of the image side on each '
          'side.\n\n'
          + results_table([(method_name(config), results)]))
  workdir_lib.write_text_atomic(os.path.join(workdir, 'results.md'), text)


def write_per_slice(workdir: str, per_slice: Dict[str, Any]) -> str:
  """`workdir/per_slice.json`: `{"ids": [...], "index": [...], "metrics": {name: [...]}}`, one entry per test slice.

  `ids` are `subject_id/slice/frame` (or the split position for data without subject ids), sorted; `index` is each
  slice's position in the split (the order of `predictions/*.npy`); every metric list follows `ids`. Values that
  are not finite (the focused metrics of a slice without heart labels) are written as null.
  """
  record = {'ids': list(per_slice['ids']), 'index': [int(i) for i in per_slice.get('index', [])],
            'metrics': {k: [float(x) if np.isfinite(x) else None for x in np.asarray(v, np.float64)]
                        for k, v in sorted(per_slice['metrics'].items())}}
  return workdir_lib.write_text_atomic(os.path.join(workdir, 'per_slice.json'), json.dumps(record))


def read_per_slice(workdir: str) -> Optional[Dict[str, Any]]:
  """`per_slice.json` of a workdir as `{'ids': [str], 'metrics': {name: float64 [n]}}` (null -> NaN), or None."""
  path = os.path.join(workdir, 'per_slice.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  return {'ids': list(record['ids']),
          'metrics': {k: np.array([np.nan if x is None else x for x in v], np.float64)
                      for k, v in record['metrics'].items()}}


def heart_box(segmentation: np.ndarray, margin: int):
  """`metrics.heart_box` of labels `[H, W]` as Python ints (row0, row1, col0, col1), or None without heart."""
  if not np.any(segmentation > 0):
    return None
  return tuple(int(b) for b in metrics.heart_box(segmentation, margin))


def comparison_figure(path: str, columns, segmentation: np.ndarray, margin: int, title: str = '') -> None:
  """A Fig. 2-like figure: magnitudes in the top row with the focus rectangle in red, the zoom on it below.

  Args:
    path: PNG to write.
    columns: list of (name, complex or magnitude image `[H, W]`, optional predicted segmentation `[H, W]`); the
      first column is the fully sampled reference and sets the grey scale.
    segmentation: ground-truth labels `[H, W]` defining the focus box.
  """
  box = heart_box(segmentation, margin)
  vmax = np.abs(columns[0][1]).max()
  fig, axes = plt.subplots(2, len(columns), figsize=(2.6 * len(columns), 5.4), squeeze=False)
  for j, (name, image, labels) in enumerate(columns):
    magnitude = np.abs(image)
    for i in range(2):
      ax = axes[i, j]
      ax.axis('off')
      shown, seg = magnitude, labels
      if i == 1 and box is not None:
        shown = magnitude[box[0]:box[1], box[2]:box[3]]
        seg = None if labels is None else labels[box[0]:box[1], box[2]:box[3]]
      ax.imshow(shown, cmap='gray', vmin=0, vmax=vmax)
      if seg is not None:
        ax.imshow(LABEL_COLORS[seg], interpolation='nearest')
      if i == 0:
        ax.set_title(name, fontsize=9)
        if box is not None:
          ax.add_patch(patches.Rectangle((box[2] - 0.5, box[0] - 0.5), box[3] - box[2], box[1] - box[0],
                                         fill=False, edgecolor='red', linewidth=1.2))
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_predictions(out_dir: str, config, arrays: Dict[str, np.ndarray]) -> str:
  """Saves `.npy` arrays and a figure per example (the first few) in `out_dir`; returns it."""
  os.makedirs(out_dir, exist_ok=True)
  for key, value in arrays.items():
    np.save(os.path.join(out_dir, f'{key}.npy'), value)
  for i in range(min(4, len(arrays['image']))):
    psnr = lambda key: float(metrics.reconstruction_metrics(arrays[key][i][None], arrays['image'][i][None],
                                                            arrays['segmentation'][i][None], 0)['psnr'][0])
    columns = [('Fully sampled', arrays['image'][i], None),
               (f'Zero-filled x{config.acceleration}\nPSNR {psnr("zero_filled"):.2f} dB', arrays['zero_filled'][i],
                None),
               (f'{method_name(config)}\nPSNR {psnr("recon"):.2f} dB', arrays['recon'][i], None)]
    if 'seg' in arrays:
      num_classes = int(config.num_classes)
      dice = float(np.mean(metrics.dice_per_class(arrays['seg'][i][None], arrays['segmentation'][i][None],
                                                  num_classes)))
      columns += [('Reference labels', arrays['image'][i], arrays['segmentation'][i]),
                  (f'Predicted labels\nDice {dice:.2f}', arrays['recon'][i], arrays['seg'][i])]
    comparison_figure(os.path.join(out_dir, f'figure_{i}.png'), columns, arrays['segmentation'][i],
                      int(round(config.focus_margin_fraction * arrays['image'].shape[-2])),
                      title=f'{method_name(config)}, x{config.acceleration}')
  return out_dir
