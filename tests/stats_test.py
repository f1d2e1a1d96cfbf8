"""Tests of the paired statistics against NumPy / SciPy references and on constructed cases."""

import numpy as np
import pytest
import scipy.stats

from segrecon_jax import stats


def record(ids, values):
  return {'ids': list(ids), 'metrics': {'psnr': np.asarray(values, np.float64)}}


def test_bootstrap_interval_matches_numpy():
  values = np.array([0.5, 1.5, -0.25, 2.0, 0.75])
  means = values[np.random.default_rng(stats.BOOTSTRAP_SEED).integers(
      0, 5, size=(stats.BOOTSTRAP_RESAMPLES, 5))].mean(axis=1)
  np.testing.assert_allclose(stats.bootstrap_interval(values), np.percentile(means, [2.5, 97.5]))
  assert all(np.isnan(stats.bootstrap_interval(np.array([]))))


def test_paired_by_seed_and_differences():
  better = {0: record(['a', 'b', 'c'], [3.0, 2.0, np.nan]), 1: record(['a', 'b', 'c'], [4.0, 1.0, 1.0]),
            2: record(['a'], [9.0])}
  worse = {0: record(['b', 'a', 'c'], [1.0, 1.0, 0.0]), 1: record(['a', 'b', 'c'], [1.0, 1.0, 2.0])}
  by_seed = stats.paired_by_seed(better, worse, 'psnr')
  assert by_seed == {0: {'a': 2.0, 'b': 1.0}, 1: {'a': 3.0, 'b': 0.0, 'c': -1.0}}  # NaN dropped; seed 2 unpaired.
  differences, names, seeds = stats.paired_differences(better, worse, 'psnr')
  assert names == ['a', 'b', 'c'] and seeds == [0, 1]
  np.testing.assert_allclose(differences, [2.5, 0.5, -1.0])
  lower_is_better, _, _ = stats.paired_differences(better, worse, 'psnr', sign=-1)
  np.testing.assert_allclose(lower_is_better, -differences)


def test_wilcoxon_matches_scipy():
  differences = np.array([0.3, -0.1, 0.7, 0.2, 0.9, -0.4])
  assert stats.wilcoxon_p(differences) == pytest.approx(scipy.stats.wilcoxon(differences).pvalue)
  assert stats.wilcoxon_p(np.zeros(4)) == 1.0 and np.isnan(stats.wilcoxon_p(np.array([1.0])))


def _slow_hierarchical(groups, resamples, seed):
  """Loop reference: draw runs with replacement, then each drawn run's slices with replacement."""
  rng = np.random.default_rng(seed)
  replicates = []
  for _ in range(resamples):
    drawn = [groups[k] for k in rng.integers(0, len(groups), len(groups))]
    replicates.append(np.mean([g[rng.integers(0, g.size, g.size)].mean() for g in drawn]))
  return np.percentile(replicates, [2.5, 97.5])


def test_hierarchical_interval_matches_a_loop_reference_in_distribution():
  rng = np.random.default_rng(3)
  groups = [rng.normal(mean, 0.5, 30) for mean in (0.2, 0.6, 1.0)]
  fast = stats.hierarchical_bootstrap_interval(groups, resamples=20000)
  slow = _slow_hierarchical(groups, 4000, seed=11)
  np.testing.assert_allclose(fast, slow, atol=0.04)
  assert stats.hierarchical_bootstrap_interval(groups[:1]) == stats.bootstrap_interval(groups[0])


def test_seeds_that_disagree_widen_the_interval_past_zero():
  """Three training runs: two gain +1 on every slice, one loses 1.5. Over slices (seed-averaged) the effect looks
  certain; across runs it is not."""
  rng = np.random.default_rng(0)
  ids = [f's{i}' for i in range(40)]
  base = rng.normal(30, 1, 40)
  worse = {seed: record(ids, base) for seed in range(3)}
  better = {seed: record(ids, base + shift + rng.normal(0, 0.05, 40)) for seed, shift in enumerate((1.0, 1.0, -1.5))}
  differences, _, _ = stats.paired_differences(better, worse, 'psnr')
  flat = stats.paired_statistics(differences)
  assert flat['low'] > 0 and flat['interval'] == 'slices'
  across = stats.compare(better, worse, 'psnr')
  assert across['interval'] == 'seeds and slices' and across['seeds'] == 3 and across['slices'] == 40
  assert across['low'] < 0 < across['high']
  np.testing.assert_allclose(across['seed_effects'], [1.0, 1.0, -1.5], atol=0.03)
  assert across['effect'] == pytest.approx(np.mean(across['seed_effects']))
  assert stats.verdict([across]) == (stats.INCONCLUSIVE, 0, 0)
  agree = {seed: record(ids, base + 0.5 + rng.normal(0, 0.05, 40)) for seed in range(3)}
  assert stats.compare(agree, worse, 'psnr')['low'] > 0.4


def test_verdicts():
  up, null, down = {'low': 0.1, 'high': 0.3}, {'low': -0.1, 'high': 0.1}, {'low': -0.3, 'high': -0.1}
  assert stats.verdict([up, up]) == (stats.HOLDS, 2, 0)
  assert stats.verdict([null, down]) == (stats.FAILS, 0, 1)
  assert stats.verdict([null, null]) == (stats.INCONCLUSIVE, 0, 0)
  assert stats.verdict([up, null, down]) == (stats.PARTLY, 1, 1)
  assert stats.verdict_text([up, null, down]) == 'partly (1 of 3 metrics for it, 1 against it)'


def test_joint_bootstrap_keeps_pairs_together():
  share, area = np.array([0.2, 0.4, 0.6, 0.8]), np.array([0.1, 0.2, 0.3, 0.4])
  means = stats.joint_bootstrap_means([share, area], resamples=500)
  np.testing.assert_allclose(means[:, 0] / means[:, 1], 2.0)  # Every slice has share = 2 x area.
