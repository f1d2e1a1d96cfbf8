"""Pseudo-attention: where the segmentation loss's gradient falls on the reconstruction, against the heart box.

The paper argues that the segmentation term focuses the reconstruction network on the heart. Its signal to the
reconstruction network is `g = d(seg_loss) / d(recon)`, the gradient of each slice's generalized Dice loss
(`losses.generalized_dice_loss`, as `steps.compute_losses` uses it) with respect to the reconstruction `[H, W, 2]`
(real, imaginary; before the magnitude the segmentation network sees), through the segmentation network in eval
mode. `pseudo_attention` computes it on every test slice of a trained workdir, with the eval masks of
`steps.eval_step`, and measures how much of its energy `|g|^2` (`|g| = sqrt(g_re^2 + g_im^2)`) lies inside the F-
heart box (`metrics.box_mask`, margin `steps.focus_margin_pixels`) against the box's share of the image: a gradient
spread evenly over the image would put as much energy in the box as the box has area.

For a model trained with `stop_gradient=True` the gradient is computed all the same: it is what the segmentation
loss would send to the reconstruction network, had training not cut it.
"""

import dataclasses
import functools
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from segrecon_jax import losses
from segrecon_jax import metrics
from segrecon_jax import models
from segrecon_jax import stats
from segrecon_jax.training import config_checks
from segrecon_jax.training import inference
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import parallel
from segrecon_jax.training import reporting
from segrecon_jax.training import steps

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import patches  # pylint: disable=g-import-not-at-top,wrong-import-position

ATTENTION_DIR = 'attention'  # Under the workdir, unless pseudo_attention gets an out_dir.
# Percentile bootstrap over slices, fixed seed (study.py's conventions): the intervals reproduce.
NUM_EXAMPLES = 3  # Example slices in the figure: the lowest, the median and the highest energy share.


def attention_step(variables, batch, *, model, config) -> Dict[str, jax.Array]:
  """The eval step's reconstruction of a batch and each slice's segmentation-loss gradient on it.

  Masks are `steps.eval_step`'s: keyed by `batch['mask_id']` from `config.eval_mask_seed`, at 1 / R.

  Returns:
    `grad` float32 `[B, H, W, 2]` (row i: d seg_loss_i / d recon_i), `seg_loss` float32 `[B]`, `box` bool
    `[B, H, W]` (the F- heart box), `has_heart` bool `[B]`.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(config.eval_mask_seed), i))(batch['mask_id'])
  zero_filled, measured, masks = steps.undersample_batch(batch['image'], keys, 1.0 / config.acceleration,
                                                         config.num_acs)
  recon = model.apply(variables, zero_filled, measured, masks, train=False).recon.astype(jnp.float32)

  def slice_losses(recon):
    logits = model.apply(variables, recon, train=False, method='segment')  # The model's segmentation of a recon.
    return losses.segmentation_loss(config.seg_loss, logits.astype(jnp.float32), batch['segmentation'],
                                    config.num_classes)

  seg_loss, vjp_fn = jax.vjp(slice_losses, recon)
  (grad,) = vjp_fn(jnp.ones_like(seg_loss))  # Eval mode keeps slices independent: no cross terms between rows.
  margin = steps.focus_margin_pixels(config, batch['image'].shape[-2])
  return {'grad': grad, 'seg_loss': seg_loss, 'box': metrics.box_mask(batch['segmentation'], margin),
          'has_heart': metrics.has_heart(batch['segmentation'])}


def gradient_magnitude(grad: np.ndarray) -> np.ndarray:
  """`|g|`: float64 `[..., H, W]` from the gradient's (real, imaginary) channels `[..., H, W, 2]`."""
  return np.sqrt(np.sum(np.square(np.asarray(grad, np.float64)), axis=-1))


def energy_share(magnitude: np.ndarray, box: np.ndarray) -> np.ndarray:
  """Share of `sum |g|^2` inside `box` per slice, float64 `[...]`; NaN where the gradient is zero everywhere.

  Args:
    magnitude: `|g|` `[..., H, W]`.
    box: bool `[..., H, W]`.
  """
  energy = np.square(np.asarray(magnitude, np.float64))
  total = energy.sum(axis=(-2, -1))
  inside = np.where(box, energy, 0.0).sum(axis=(-2, -1))
  return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def area_share(box: np.ndarray) -> np.ndarray:
  """Share of the image inside `box` (bool `[..., H, W]`) per slice, float64 `[...]`."""
  return np.mean(np.asarray(box, np.float64), axis=(-2, -1))


def bootstrap_summary(share: np.ndarray, area: np.ndarray, resamples: int = stats.BOOTSTRAP_RESAMPLES,
                      seed: int = stats.BOOTSTRAP_SEED) -> Dict[str, Dict[str, float]]:
  """Means over slices with 95% percentile bootstrap intervals: energy share, area share and their ratio.

  Slices are resampled in pairs (share, area), so the ratio of the two means gets its interval from the same
  resamples.
  """
  share, area = np.asarray(share, np.float64), np.asarray(area, np.float64)
  means = stats.joint_bootstrap_means([share, area], resamples, seed)
  summary = {}
  for name, value, resampled in (('energy_share', share.mean(), means[:, 0]), ('area_share', area.mean(), means[:, 1]),
                                 ('share_to_area_ratio', share.mean() / area.mean(), means[:, 0] / means[:, 1])):
    low, high = stats.percentile_interval(resampled)
    summary[name] = {'mean': float(value), 'low': float(low), 'high': float(high)}
  return summary


def _rectangle(box, **style):
  row0, row1, col0, col1 = box
  return patches.Rectangle((col0 - 0.5, row0 - 0.5), col1 - col0, row1 - row0, fill=False, **style)


def attention_figure(path: str, examples, mean_map: np.ndarray, mean_box, union_box, title: str) -> None:
  """Example slices (fully sampled magnitude over |g|, heart box on both) and the mean normalized |g| map.

  Args:
    path: PNG to write.
    examples: list of (name, fully sampled complex image `[H, W]`, |g| `[H, W]`, box (row0, row1, col0, col1),
      energy share, area share).
    mean_map: mean over slices of |g| normalized to unit sum per slice, `[H, W]`.
    mean_box, union_box: (row0, row1, col0, col1) of the mean box (mean corners) and of the boxes' union.
  """
  columns = len(examples)
  fig = plt.figure(figsize=(2.8 * columns + 5.4, 6.0))
  grid = fig.add_gridspec(2, columns + 1, width_ratios=[1.0] * columns + [2.0])
  for j, (name, image, magnitude, box, share, area) in enumerate(examples):
    top, bottom = fig.add_subplot(grid[0, j]), fig.add_subplot(grid[1, j])
    top.imshow(np.abs(image), cmap='gray', vmin=0)
    top.add_patch(_rectangle(box, edgecolor='red', linewidth=1.2))
    top.set_title(name, fontsize=8)
    bottom.imshow(magnitude, cmap='magma', vmin=0, vmax=max(np.percentile(magnitude, 99.5), 1e-30))
    bottom.add_patch(_rectangle(box, edgecolor='cyan', linewidth=1.2))
    bottom.set_title(f'|g|: {share:.0%} of energy in box ({area:.0%} of area)', fontsize=8)
    for ax in (top, bottom):
      ax.axis('off')
  ax = fig.add_subplot(grid[:, columns])
  shown = ax.imshow(mean_map, cmap='magma', vmin=0)
  ax.add_patch(_rectangle(mean_box, edgecolor='cyan', linewidth=1.5, label='mean box'))
  ax.add_patch(_rectangle(union_box, edgecolor='white', linewidth=1.0, linestyle='--', label='union of boxes'))
  ax.legend(loc='lower right', fontsize=7, framealpha=0.6)
  ax.set_title('mean |g| over slices (each normalized to unit sum)', fontsize=9)
  ax.axis('off')
  fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _check_model(config):
  if not models.segments(config.model):
    raise config_checks.ConfigError(
        f'config.model.name={config.model.name!r} ({models.display_name(config.model)}) has no segmentation '
        'output: pseudo-attention needs a model that segments.')
  if not (models.spec(config.model).reconstructs
          and models.segments_reconstruction(steps.create_model(config, bn_axis_name=None))):
    raise config_checks.ConfigError(
        f'config.model.name={config.model.name!r} ({models.display_name(config.model)}): its segmentation does not '
        'see the reconstruction (e.g. both decoders read a shared encoder), so there is no gradient of the '
        'segmentation loss on the reconstruction to show; pseudo-attention needs a model that segments a given '
        'reconstruction, with a `segment(recon, *, train)` method (models.SegRecon; models/registry.py).')


@dataclasses.dataclass(frozen=True)
class _Slice:
  """One test slice the pseudo-attention measured."""
  id: str
  index: int
  energy_share: float  # Of the Dice gradient's energy, inside the heart box.
  area_share: float  # Of the image, the heart box.
  seg_loss: float
  gradient: np.ndarray  # |d seg_loss / d recon| float32 [H, W].
  image: np.ndarray  # The reference image [H, W, 2].
  segmentation: np.ndarray  # The reference labels [H, W].


def pseudo_attention(config, workdir: str, out_dir: Optional[str] = None) -> Dict[str, Any]:
  """Writes `attention.json` and `attention.png` to `out_dir` (default `workdir/attention`).

  The record holds the mean energy share of `|g|^2` inside the heart box and the box's mean area share, each with
  a 95% bootstrap interval over slices, the ratio of the two means, and every slice's values under its id
  (`input_pipeline.example_id`) and split index. Slices without heart labels (no box) and slices whose gradient is zero
  everywhere are left out and listed by id. Single process only.

  Returns:
    The record of `attention.json`, with `json_path` and `figure_path` added.
  """
  _check_model(config)
  _, replicated, eval_source, meta = inference.restore_for_inference(config, workdir)
  if jax.process_count() > 1:
    raise ValueError('pseudo_attention runs in a single process: run --mode=attention on one host')
  state = parallel.unreplicate(replicated)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  model = steps.create_model(config, bn_axis_name=None)  # Eval mode under jit: no batch axis to average over.
  step = jax.jit(functools.partial(attention_step, model=model, config=config))
  margin = steps.focus_margin_pixels(config, input_pipeline.image_shape(eval_source)[0])

  kept: List[_Slice] = []  # Every slice used.
  skipped = {'no_heart': [], 'zero_gradient': []}
  for batch in input_pipeline.eval_batches(eval_source, config):
    out = jax.device_get(step(variables, {k: batch[k] for k in ('image', 'segmentation', 'mask_id')}))
    magnitude = gradient_magnitude(out['grad'])
    shares, areas = energy_share(magnitude, out['box']), area_share(out['box'])
    for i in np.flatnonzero(batch['valid'] > 0):
      index = int(batch['index'][i])
      name = input_pipeline.example_id(eval_source[index], index)
      if not out['has_heart'][i]:
        skipped['no_heart'].append(name)
      elif not np.isfinite(shares[i]):
        skipped['zero_gradient'].append(name)
      else:
        kept.append(_Slice(name, index, float(shares[i]), float(areas[i]), float(out['seg_loss'][i]),
                           magnitude[i].astype(np.float32), batch['image'][i], batch['segmentation'][i]))
  if not kept:
    raise ValueError(f'{config.eval_split!r} split: no slice with heart labels and a nonzero gradient '
                     f'({len(skipped["no_heart"])} without heart, {len(skipped["zero_gradient"])} zero gradients)')
  kept.sort(key=lambda row: row.id)
  summary = bootstrap_summary(np.array([row.energy_share for row in kept]), np.array([row.area_share for row in kept]))
  record = {
      'model': reporting.method_name(config), 'acceleration': config.acceleration,
      'checkpoint_step': int(meta['step']), 'margin_pixels': margin, 'num_slices': len(kept), **summary,
      'bootstrap': {'resamples': stats.BOOTSTRAP_RESAMPLES, 'seed': stats.BOOTSTRAP_SEED,
                    'interval': '95% percentile, slices resampled with replacement'},
      'per_slice': {key: [getattr(row, field) for row in kept] for key, field in
                    (('ids', 'id'), ('index', 'index'), ('energy_share', 'energy_share'),
                     ('area_share', 'area_share'), ('seg_loss', 'seg_loss'))},
      'skipped': skipped,
  }
  out_dir = out_dir or os.path.join(workdir, ATTENTION_DIR)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'attention.json'), 'w') as f:
    json.dump(record, f, indent=2)
  _write_figure(os.path.join(out_dir, 'attention.png'), record, kept, config, margin)
  return dict(record, json_path=os.path.join(out_dir, 'attention.json'),
              figure_path=os.path.join(out_dir, 'attention.png'))


def _write_figure(path: str, record, kept: Sequence[_Slice], config, margin: int) -> None:
  maps = np.stack([row.gradient / row.gradient.sum() for row in kept])  # Each slice's |g| to unit sum, then the mean.
  boxes = np.array([reporting.heart_box(row.segmentation, margin) for row in kept])
  mean_box = tuple(int(round(v)) for v in boxes.mean(axis=0))
  union_box = (int(boxes[:, 0].min()), int(boxes[:, 1].max()), int(boxes[:, 2].min()), int(boxes[:, 3].max()))
  by_share = sorted(range(len(kept)), key=lambda j: kept[j].energy_share)
  picks = list(dict.fromkeys(by_share[k] for k in (0, len(by_share) // 2, len(by_share) - 1)))[:NUM_EXAMPLES]
  examples = [(kept[j].id, kept[j].image, kept[j].gradient, tuple(boxes[j]), kept[j].energy_share,
               kept[j].area_share) for j in picks]
  share, area, ratio = record['energy_share'], record['area_share'], record['share_to_area_ratio']
  title = (f'{record["model"]}, x{config.acceleration}: pseudo-attention, |d seg_loss / d recon| on '
           f'{record["num_slices"]} test slices\n'
           f'energy in the heart box {share["mean"]:.1%} [{share["low"]:.1%}, {share["high"]:.1%}] vs the box\'s '
           f'area {area["mean"]:.1%} [{area["low"]:.1%}, {area["high"]:.1%}] of the image '
           f'(ratio {ratio["mean"]:.2f} [{ratio["low"]:.2f}, {ratio["high"]:.2f}]; means, 95% bootstrap intervals)')
  attention_figure(path, examples, maps.mean(axis=0), mean_box, union_box, title)
