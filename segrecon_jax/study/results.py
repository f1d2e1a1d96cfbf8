"""Reads the study's finished runs: metrics.json, per_slice.json, scalars.jsonl, attention.json and the config and
data description stored with each run's last checkpoint."""

import collections
import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from segrecon_jax.study import plan
from segrecon_jax.training import reporting
from segrecon_jax.training import writer as writer_lib


def seed_dirs(parent: str) -> List[Tuple[int, str]]:
  """(seed, workdir) of the finished runs (with metrics.json) under a row's folder, by seed."""
  if not os.path.isdir(parent):
    return []
  found = []
  for name in os.listdir(parent):
    if re.fullmatch(r'seed\d+', name) and os.path.exists(os.path.join(parent, name, 'metrics.json')):
      found.append((int(name[len('seed'):]), os.path.join(parent, name)))
  return sorted(found)


def read_metrics(workdir: str) -> Dict[str, float]:
  with open(os.path.join(workdir, 'metrics.json')) as f:
    return json.load(f)['metrics']


def read_run(workdir: str) -> Dict[str, Any]:
  """`{'metrics': metrics.json's metrics, 'per_slice': the per-slice record or None, 'scalars': read_scalars}`."""
  return {'metrics': read_metrics(workdir), 'per_slice': reporting.read_per_slice(workdir),
          'scalars': writer_lib.read_scalars(workdir)}


def row_runs(parent: str) -> Dict[int, Dict[str, Any]]:
  return {seed: read_run(workdir) for seed, workdir in seed_dirs(parent)}


def collect(root: str) -> Dict[Tuple[str, int], Dict[int, Dict[str, Any]]]:
  """Every table row's runs: {(method, acceleration): {seed: read_run}}."""
  results = {}
  for _, method, experiment, stabilized in plan.ROWS:
    for acceleration in plan.ACCELERATIONS:
      runs = row_runs(os.path.dirname(plan.run_dir(root, experiment, acceleration, stabilized, 0)))
      if runs:
        results[(method, acceleration)] = runs
  return results


def per_slice(runs: Dict[int, Dict[str, Any]]) -> Dict[int, dict]:
  """{seed: per-slice record} of the runs that wrote per_slice.json."""
  return {seed: run['per_slice'] for seed, run in runs.items() if run['per_slice'] is not None}


def collect_sweep(root: str) -> Dict[Tuple[int, float], Dict[int, Dict[str, Any]]]:
  """The sweep's runs: {(acceleration, seg_loss_weight): {seed: read_run}}."""
  results = {}
  folder = os.path.join(root, 'sweep')
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    match = re.fullmatch(rf'{plan.SWEEP_EXPERIMENT}_x(\d+)_stab_w(.+)', name)
    runs = row_runs(os.path.join(folder, name)) if match else {}
    if runs:
      results[(int(match.group(1)), float(match.group(2)))] = runs
  return results


def collect_losses(root: str) -> Dict[Tuple[str, int], Dict[int, Dict[str, Any]]]:
  """The loss comparison's runs: {(method name, acceleration): {seed: read_run}}, with its two baselines (Table 2's
  solo CascadeNet and CascadeNet -> MANet (S) runs) under their labels."""
  results = {}
  for method in plan.LOSS_METHODS:
    for acceleration in plan.ACCELERATIONS:
      runs = row_runs(os.path.dirname(plan.loss_dir(root, method.name, acceleration, 0)))
      if runs:
        results[(method.name, acceleration)] = runs
  for label, experiment, stabilized in plan.LOSS_BASELINES:
    for acceleration in plan.ACCELERATIONS:
      runs = row_runs(os.path.dirname(plan.run_dir(root, experiment, acceleration, stabilized, 0)))
      if runs:
        results[(label, acceleration)] = runs
  return results


def mean_scalar(run: Dict[str, Any], tag: str) -> Optional[float]:
  """The mean over a run's logged steps of scalar `tag` (each logged value is the mean of its log window)."""
  values = run['scalars'].get(tag)
  return float(np.mean(list(values.values()))) if values else None


def attention_record(workdir: str) -> Optional[Tuple[dict, str]]:
  """(attention.json, its folder) of a run, or None."""
  path = os.path.join(workdir, 'attention', 'attention.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f), os.path.dirname(path)


def stored_meta(workdir: str) -> Optional[Dict[str, Any]]:
  """The JSON stored with the run's latest checkpoint (`checkpoints.save_checkpoint`: epoch, step, config, data),
  or None."""
  folder = os.path.join(workdir, 'checkpoints')
  steps = sorted((int(n) for n in os.listdir(folder) if n.isdigit()), reverse=True) if os.path.isdir(folder) else []
  for step in steps:
    path = os.path.join(folder, str(step), 'meta', 'metadata')
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
  return None


def first_meta(results: Dict[Any, Dict[int, Dict[str, Any]]], root: str) -> Dict[Tuple[str, int], dict]:
  """{(method, acceleration): stored meta of its lowest seed} for the rows of `results` (see `stored_meta`)."""
  found = {}
  for _, method, experiment, stabilized in plan.ROWS:
    for acceleration in plan.ACCELERATIONS:
      runs = results.get((method, acceleration))
      if runs:
        meta = stored_meta(plan.run_dir(root, experiment, acceleration, stabilized, min(runs)))
        if meta is not None:
          found[(method, acceleration)] = meta
  return found


def collect_attention(root: str) -> Dict[Tuple[str, int], Dict[int, Tuple[dict, str]]]:
  """{(row label, acceleration): {seed: (attention.json, its folder)}} of the runs `plan.attention_runs` covers."""
  found = collections.defaultdict(dict)
  rows = [(method, lambda a, s, e=experiment, st=stabilized: plan.run_dir(root, e, a, st, s))
          for _, method, experiment, stabilized in plan.ROWS if experiment in plan.ATTENTION_EXPERIMENTS]
  rows.append((f'{plan.models.display_name(plan.SWEEP_EXPERIMENT)} (S), seg_loss_weight 0',
               lambda a, s: plan.sweep_dir(root, a, 0.0, s)))
  rows += [(method.label, lambda a, s, n=method.name: plan.loss_dir(root, n, a, s)) for method in plan.LOSS_METHODS
           if plan.models.segments(method.experiment)]
  for label, folder_of in rows:
    for acceleration in plan.ACCELERATIONS:
      for seed, workdir in seed_dirs(os.path.dirname(folder_of(acceleration, 0))):
        record = attention_record(workdir)
        if record is not None:
          found[(label, acceleration)][seed] = record
  return dict(found)
