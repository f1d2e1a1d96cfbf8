"""Paired statistics of per-slice metrics: differences paired by seed and slice, bootstrap intervals (over slices, or
hierarchical over training runs then slices), the Wilcoxon signed-rank test and the verdict of a claim.

A per-slice record is `{'ids': [str], 'metrics': {key: float64 [n]}}` (`reporting.read_per_slice`); a row of a study
is `{seed: record}`. Every function is deterministic: bootstrap generators take a fixed seed, so reports reproduce.
"""

import collections
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import scipy.stats

BOOTSTRAP_RESAMPLES = 10000  # Resamples of every bootstrap interval.
BOOTSTRAP_SEED = 0  # Seed of the bootstrap generator.
CONFIDENCE = 0.95  # Two-sided percentile intervals.
_CHUNK_ELEMENTS = 2 ** 22  # Bounds the memory of one vectorised batch of resamples.


def percentile_interval(values: np.ndarray) -> Tuple[float, float]:
  """The central `CONFIDENCE` percentile interval of bootstrap replicates."""
  tail = 100 * (1 - CONFIDENCE) / 2
  low, high = np.percentile(values, [tail, 100 - tail])
  return float(low), float(high)


def bootstrap_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
  """`resamples` means of `values` (float64 `[n]`) resampled with replacement, float64 `[resamples]`."""
  values = np.asarray(values, np.float64)
  means = np.empty(resamples)
  chunk = max(1, _CHUNK_ELEMENTS // max(values.size, 1))
  for start in range(0, resamples, chunk):
    count = min(chunk, resamples - start)
    means[start:start + count] = values[rng.integers(0, values.size, size=(count, values.size))].mean(axis=1)
  return means


def bootstrap_interval(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> Tuple[float, float]:
  """95% percentile bootstrap interval of the mean of `values` (slices resampled with replacement)."""
  values = np.asarray(values, np.float64)
  if values.size == 0:
    return float('nan'), float('nan')
  return percentile_interval(bootstrap_means(values, resamples, np.random.default_rng(seed)))


def joint_bootstrap_means(columns: Sequence[np.ndarray], resamples: int = BOOTSTRAP_RESAMPLES,
                          seed: int = BOOTSTRAP_SEED) -> np.ndarray:
  """Means of several per-slice columns (each float64 `[n]`) over the same resampled slices, float64
  `[resamples, len(columns)]`: for intervals of statistics of several columns, e.g. a ratio of two means."""
  columns = np.stack([np.asarray(c, np.float64) for c in columns], axis=-1)  # [n, k]
  picks = np.random.default_rng(seed).integers(0, columns.shape[0], size=(resamples, columns.shape[0]))
  return columns[picks].mean(axis=1)


def hierarchical_bootstrap_interval(groups: Sequence[np.ndarray], resamples: int = BOOTSTRAP_RESAMPLES,
                                    seed: int = BOOTSTRAP_SEED) -> Tuple[float, float]:
  """95% interval of the mean over training runs of each run's mean over slices, resampling both levels.

  Each resample draws as many runs as there are, with replacement, and for every drawn run (each draw on its own,
  so a run drawn twice gets two independent slice resamples) its slices with replacement; the statistic is the mean
  over the drawn runs of their resampled slice means. The interval so covers how much another training run would
  differ as well as which slices were tested. With one run it is `bootstrap_interval` of that run's slices.

  Args:
    groups: one float64 `[n_k]` array per training run (seed) of the per-slice values (n_k > 0).

  Returns:
    (low, high).
  """
  groups = [np.asarray(g, np.float64) for g in groups if np.asarray(g).size]
  if not groups:
    return float('nan'), float('nan')
  rng = np.random.default_rng(seed)
  count = len(groups)
  # slice_means[j, k]: the resampled slice means of run k when it fills draw position j (independent for each j).
  slice_means = np.stack([np.stack([bootstrap_means(g, resamples, rng) for g in groups]) for _ in range(count)])
  picks = rng.integers(0, count, size=(resamples, count))  # The runs drawn at each position.
  drawn = slice_means[np.arange(count)[None, :], picks, np.arange(resamples)[:, None]]  # [resamples, count]
  return percentile_interval(drawn.mean(axis=1))


def wilcoxon_p(differences: np.ndarray) -> float:
  """Two-sided Wilcoxon signed-rank p-value of paired differences (1 when none differs, NaN for fewer than 2)."""
  differences = np.asarray(differences, np.float64)
  if differences.size < 2:
    return float('nan')
  if not np.any(differences != 0):
    return 1.0  # No slice differs: nothing to rank.
  return float(scipy.stats.wilcoxon(differences).pvalue)


def paired_by_seed(better: Mapping[int, dict], worse: Mapping[int, dict], key: str,
                   sign: int = 1) -> Dict[int, Dict[str, float]]:
  """`{seed: {slice id: sign * (better - worse)}}` of metric `key` over the seeds both rows ran and the slices both
  scored with finite values (F- metrics are NaN on slices without heart). `sign` is -1 when lower is better (MSE),
  so positive differences always favour `better`."""
  found = {}
  for seed in sorted(set(better) & set(worse)):
    if key not in better[seed]['metrics'] or key not in worse[seed]['metrics']:
      continue
    a = dict(zip(better[seed]['ids'], better[seed]['metrics'][key]))
    b = dict(zip(worse[seed]['ids'], worse[seed]['metrics'][key]))
    differences = {}
    for name in sorted(set(a) & set(b)):
      difference = sign * (float(a[name]) - float(b[name]))
      if np.isfinite(difference):
        differences[name] = difference
    if differences:
      found[seed] = differences
  return found


def paired_differences(better: Mapping[int, dict], worse: Mapping[int, dict], key: str,
                       sign: int = 1) -> Tuple[np.ndarray, List[str], List[int]]:
  """Per-slice differences averaged over the seeds both rows ran (the slice as the unit).

  Returns:
    (differences float64 `[slices]` sorted by slice id, those ids, the seeds used).
  """
  by_seed = paired_by_seed(better, worse, key, sign)
  by_slice = collections.defaultdict(list)
  for differences in by_seed.values():
    for name, value in differences.items():
      by_slice[name].append(value)
  names = sorted(by_slice)
  return np.array([np.mean(by_slice[n]) for n in names], np.float64), names, sorted(by_seed)


def slice_means(runs: Mapping[int, dict], key: str) -> np.ndarray:
  """Each slice's value of `key` averaged over the seeds of `runs` (seed -> per-slice record), finite ones only."""
  by_slice = collections.defaultdict(list)
  for record in runs.values():
    for name, value in zip(record['ids'], record['metrics'].get(key, [])):
      if np.isfinite(value):
        by_slice[name].append(float(value))
  return np.array([np.mean(by_slice[n]) for n in sorted(by_slice)], np.float64)


def paired_statistics(differences: np.ndarray,
                      per_seed: Optional[Sequence[np.ndarray]] = None) -> Dict[str, object]:
  """Effect, 95% interval, Wilcoxon p and counts of paired differences.

  Args:
    differences: per-slice differences (each averaged over seeds), float64 `[slices]`.
    per_seed: the same differences per seed (one array per seed), for the cross-seed statistics. Without it, or with
      one seed, the interval is over slices only.

  Returns:
    `effect` (the mean over seeds of each seed's mean over slices; with one seed, the mean over slices), `low`,
    `high` (hierarchical over seeds then slices when there are 2+ seeds), `p` (Wilcoxon of `differences`), `slices`,
    `seeds`, `seed_effects` (each seed's mean difference) and `interval` ('seeds and slices' or 'slices').
  """
  differences = np.asarray(differences, np.float64)
  groups = [np.asarray(g, np.float64) for g in (per_seed or []) if np.asarray(g).size]
  if len(groups) >= 2:
    effect = float(np.mean([g.mean() for g in groups]))
    low, high = hierarchical_bootstrap_interval(groups)
    interval = 'seeds and slices'
  else:
    effect = float(differences.mean()) if differences.size else float('nan')
    low, high = bootstrap_interval(differences)
    interval = 'slices'
  return {'effect': effect, 'low': low, 'high': high, 'p': wilcoxon_p(differences), 'slices': int(differences.size),
          'seeds': max(len(groups), 1 if differences.size else 0),
          'seed_effects': [float(g.mean()) for g in groups], 'interval': interval}


def compare(better: Mapping[int, dict], worse: Mapping[int, dict], key: str, sign: int = 1) -> Optional[dict]:
  """`paired_statistics` of metric `key` between two rows (seed -> per-slice record), or None without common data."""
  by_seed = paired_by_seed(better, worse, key, sign)
  if not by_seed:
    return None
  differences, _, _ = paired_differences(better, worse, key, sign)
  return paired_statistics(differences, [np.array(list(d.values())) for d in by_seed.values()])


HOLDS, FAILS, PARTLY, INCONCLUSIVE = 'holds', 'does not hold', 'partly', 'inconclusive'


def verdict(statistics: Sequence[Mapping[str, float]]) -> Tuple[str, int, int]:
  """A claim's verdict from its metrics' intervals: `holds` when every interval lies above 0 (the claim's side),
  `does not hold` when none does and some lie below, `inconclusive` when every interval holds 0, `partly` otherwise.

  Returns:
    (verdict, metrics for the claim, metrics against it).
  """
  favour = sum(s['low'] > 0 for s in statistics)
  against = sum(s['high'] < 0 for s in statistics)
  if favour == len(statistics):
    return HOLDS, favour, against
  if favour == 0:
    return (FAILS if against else INCONCLUSIVE), favour, against
  return PARTLY, favour, against


def verdict_text(statistics: Sequence[Mapping[str, float]]) -> str:
  """`verdict` in words: 'holds', 'does not hold', 'inconclusive: every interval holds 0' or 'partly (k of n ...)'."""
  name, favour, against = verdict(statistics)
  if name == PARTLY:
    return (f'partly ({favour} of {len(statistics)} metrics for it' + (f', {against} against it' if against else '')
            + ')')
  return 'inconclusive: every interval holds 0' if name == INCONCLUSIVE else name
