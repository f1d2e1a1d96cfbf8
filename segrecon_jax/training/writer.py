"""A run's scalars as it trains: TensorBoard and JSON lines (with their reader), and the progress bar."""

import json
import os
from typing import Dict, Optional

import jax
import numpy as np

from segrecon_jax.training import reporting
from segrecon_jax.training import workdir as workdir_lib


SCALARS_FILE = 'scalars.jsonl'  # Under the workdir: one JSON object per write, {"step": s, "<tag>": value, ...}.


class SummaryWriter:
  """A run's scalars, images and config for people and for tools; process 0 writes.

  Two backends, as CLU's MultiWriter: TensorBoard event files under `workdir/tensorboard` (tensorboardX, no
  TensorFlow) for people, and `workdir/scalars.jsonl` (`SCALARS_FILE`) for tools such as the study, which read it
  with `read_scalars` and never parse event files. Each line is flushed when written, so a killed run keeps every
  scalar it logged. A run writes the steps after the one it starts from again, so the scalars an earlier, aborted
  run logged past that step are dropped when the writer opens (`resume_step`): one row per step and tag remains.
  TensorBoard hides those steps' old events likewise (tensorboardX's `purge_step`).
  """

  def __init__(self, workdir: str, resume_step: Optional[int] = None):
    """Opens the writers of `workdir`.

    Args:
      workdir: the run's folder.
      resume_step: the step of the checkpoint the run resumes from: rows of later steps are removed from
        `scalars.jsonl`. None, a run from scratch, removes every row.
    """
    self._writer = None
    self._jsonl = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter as _Writer  # pylint: disable=g-import-not-at-top
      self._writer = _Writer(os.path.join(workdir, 'tensorboard'),
                             purge_step=0 if resume_step is None else int(resume_step) + 1)
      path = os.path.join(workdir, SCALARS_FILE)
      if resume_step is not None:
        _drop_rows_after(path, int(resume_step))
      self._jsonl = open(path, 'w' if resume_step is None else 'a')

  def write_scalars(self, step: int, scalars: Dict[str, float]) -> None:
    if self._writer:
      for key, value in scalars.items():
        self._writer.add_scalar(key, float(value), step)
      self._jsonl.write(json.dumps({'step': int(step), **{k: float(v) for k, v in scalars.items()}}) + '\n')
      self._jsonl.flush()

  def write_hparams(self, config) -> None:
    if self._writer:
      self._writer.add_text('config', '```\n' + str(config) + '\n```', 0)

  def write_images(self, step: int, images: Optional[Dict[str, np.ndarray]], config) -> None:
    """Fully sampled, zero-filled, reconstruction (magnitudes) and segmentations of the first examples."""
    if not self._writer or images is None:
      return
    for i in range(min(config.num_summary_images, len(images['image']))):
      row = [np.abs(images[k][i]) for k in ('image', 'zero_filled', 'recon')]
      scale = max(row[0].max(), 1e-8)
      panel = np.concatenate([np.clip(r / scale, 0, 1) for r in row], axis=1)
      self._writer.add_image(f'eval_images/{i}', panel, step, dataformats='HW')
      labels = [images['segmentation'][i]] + ([images['seg'][i]] if 'seg' in images else [])
      colored = np.concatenate([reporting.LABEL_COLORS[l][..., :3] for l in labels], axis=1)
      self._writer.add_image(f'eval_segmentation/{i}', colored, step, dataformats='HWC')

  def close(self) -> None:
    if self._writer:
      self._writer.close()
      self._jsonl.close()


def _drop_rows_after(path: str, step: int) -> None:
  """Rewrites `scalars.jsonl` without its rows of steps after `step` and without a last line cut short by a kill
  (the next row would be appended to it); a line that is not a record stays, for `read_scalars` to name."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    text = f.read()
  lines = text.split('\n')
  kept = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      if int(json.loads(line)['step']) <= step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      if number != len(lines):  # Not the unterminated last line of a killed run.
        kept.append(line)
  rewritten = ''.join(line + '\n' for line in kept)
  if rewritten != text:
    workdir_lib.write_text_atomic(path, rewritten)


def read_scalars(workdir: str) -> Dict[str, Dict[int, float]]:
  """Every scalar of `workdir/scalars.jsonl` as {tag: {step: value}} with steps in order; a step written twice (a
  resumed run) keeps its later value. A line that is not JSON raises ValueError naming the file and line, except a
  last line cut short by a kill, which is skipped."""
  path = os.path.join(workdir, SCALARS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    lines = f.read().split('\n')
  scalars = {}
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      step = int(record.pop('step'))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      if number == len(lines):  # The unterminated last line of a killed run.
        continue
      raise ValueError(f'{path}: line {number} is not a scalars record ({e}): {line[:80]!r}') from e
    for tag, value in record.items():
      scalars.setdefault(tag, {})[step] = float(value)
  return {tag: dict(sorted(values.items())) for tag, values in scalars.items()}


def progress_bar(config, total: int, initial: int):
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial, unit='step', dynamic_ncols=True,
                   disable=not config.progress_bar or jax.process_index() != 0)
