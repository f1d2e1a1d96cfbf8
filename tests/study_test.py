"""Tests of the reproduction-study report on synthetic run folders (no training)."""

import json
import os

import numpy as np
import pytest
import scipy.stats

from segrecon_jax import reporting
from segrecon_jax import study


def write_run(root, experiment, acceleration, stabilized, seed, value):
  """A run whose every metric is `value` (so 'better' is decided by the sign of each metric)."""
  workdir = study.run_dir(root, experiment, acceleration, stabilized, seed)
  os.makedirs(workdir)
  metrics = {key: value for _, key, _ in study.METRICS}
  metrics.update({f'zero_filled_{key}': 0.5 for _, key, _ in study.METRICS}, dice_mean=0.7)
  with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
    json.dump({'metrics': metrics}, f)


def test_report_tables_seeds_and_claims(tmp_path):
  root = str(tmp_path / 'runs')
  for seed, offset in ((0, 0.0), (1, 0.2)):
    write_run(root, 'cascade', 4, False, seed, 1.0 + offset)
    write_run(root, 'cascade_manet', 4, False, seed, 2.0 + offset)
    write_run(root, 'cascade_manet', 4, True, seed, 3.0 + offset)
  for seed, offset in ((0, 0.0), (1, 0.4)):  # x8: (S) ahead by 0.1, within the seed spread of 0.28.
    write_run(root, 'cascade', 8, False, seed, 1.0 + offset)
    write_run(root, 'cascade_manet', 8, True, seed, 1.1 + offset)
  write_run(root, 'unet', 4, False, 0, 2.0)  # One seed each: no spread.
  write_run(root, 'multidecoder_unet', 4, False, 0, 1.0)
  predictions = os.path.join(study.run_dir(root, 'cascade', 4, False, 0), 'predictions')
  os.makedirs(predictions)
  labels = np.zeros((2, 16, 16), np.uint8)
  labels[1, 6:9, 6:10] = 2
  for key, value in (('image', np.ones((2, 16, 16), np.complex64)), ('zero_filled', np.ones((2, 16, 16))),
                     ('segmentation', labels), ('recon', np.ones((2, 16, 16), np.complex64))):
    np.save(os.path.join(predictions, f'{key}.npy'), value)
  results = study.collect(root)
  assert len(results[('CascadeNet -> MANet (S)', 4)]) == 2
  mean, std, count = study.summarize(results[('CascadeNet', 4)], 'psnr')
  assert count == 2 and abs(mean - 1.1) < 1e-9 and abs(std - 0.1414) < 1e-3
  out = str(tmp_path / 'results.md')
  study.report(root, out, 'cpu_study')
  text = open(out).read()
  assert '| CascadeNet | 2 | ' in text and '1.1000 ± 0.1414' in text
  assert '*paper: CascadeNet -> MANet (S)*' in text and '*30.0000*' in text  # The paper's F-PSNR at x4.
  assert '| Zero-filled input | 2 |' in text
  # Higher is better for PSNR/SSIM but lower for MSE, so a run that is higher everywhere wins 2 of 3 metrics.
  # The (S) runs are ahead by 1.0 against spreads of 0.14: beyond the spread on both metrics it wins.
  assert ('x4: Stabilization helps CascadeNet -> MANet on the F- metrics: **partly (2 of 3 metrics); 2 of 3 beyond '
          'the spread; 1 of 3 against it beyond the spread**') in text
  assert ('x4: Solo CascadeNet beats CascadeNet -> MANet on the global metrics: **partly (1 of 3 metrics); 1 of 3 '
          'beyond the spread; 2 of 3 against it beyond the spread**') in text
  assert ('x8: Segmentation-aware CascadeNet -> MANet (S) beats solo CascadeNet on the F- metrics: **partly (2 of 3 '
          'metrics); 0 of 3 beyond the spread; 0 of 3 against it beyond the spread**') in text
  assert ('x4: Solo UNet beats Multi-Decoder UNet on the global metrics: **partly (2 of 3 metrics); one seed, no '
          'spread**') in text
  assert 'x8: Stabilization helps CascadeNet -> MANet on the F- metrics: **not run yet**' in text
  assert 'reduced-scale study' in text and 'phantom_medium' in text
  assert '![fig2_table2_x4.png](figures/fig2_table2_x4.png)' in text
  assert os.path.exists(tmp_path / 'figures' / 'fig2_table2_x4.png')


def test_run_skips_finished_runs(tmp_path, monkeypatch):
  root = str(tmp_path / 'runs')
  write_run(root, 'unet', 4, False, 0, 1.0)
  calls = []
  monkeypatch.setattr(study.subprocess, 'run', lambda command, **kwargs: calls.append(command))
  study.run(root, 'cpu_study', seeds=[0], experiments=['unet'], accelerations=[4, 8])
  assert len(calls) == 1 and '--config=configs/unet.py:x8,cpu_study' in calls[0]


def write_slices(workdir, ids, metrics):
  """A finished run with per_slice.json: `metrics` maps keys to per-slice lists in the order of `ids` (None =
  NaN); metrics.json holds their means."""
  os.makedirs(workdir)
  means = {k: float(np.nanmean(np.array(v, float))) for k, v in metrics.items()}
  with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
    json.dump({'metrics': dict(means, num_examples=len(ids))}, f)
  with open(os.path.join(workdir, 'per_slice.json'), 'w') as f:
    json.dump({'ids': list(ids), 'metrics': {k: list(v) for k, v in metrics.items()}}, f)


def row_metrics(rng, num_slices, shift):
  """Per-slice values of every table metric: the slice's own difficulty, plus `shift` in the better direction (MSE
  goes down by it), plus a little noise."""
  base = rng.normal(0, 1, num_slices)
  values = {}
  for _, key, sign in study.METRICS:
    values[key] = list(10 + base + sign * shift + rng.normal(0, 0.05, num_slices))
  values['dice_mean'] = list(np.full(num_slices, 0.5 + 0.1 * shift))
  return values


def test_paired_differences_and_statistics_match_numpy_and_scipy():
  better = {0: {'ids': ['a', 'b', 'c', 'd'], 'metrics': {'psnr': np.array([3.0, 5.0, np.nan, 1.0])}},
            1: {'ids': ['b', 'a', 'c', 'd'], 'metrics': {'psnr': np.array([6.0, 2.0, 4.0, 1.5])}},
            2: {'ids': ['a'], 'metrics': {'psnr': np.array([100.0])}}}  # No partner run: left out.
  worse = {0: {'ids': ['d', 'c', 'b', 'a'], 'metrics': {'psnr': np.array([2.0, 1.0, 4.0, 1.0])}},
           1: {'ids': ['a', 'b', 'c', 'e'], 'metrics': {'psnr': np.array([1.0, 3.0, 3.5, 0.0])}}}
  differences, names, seeds = study.paired_differences(better, worse, 'psnr')
  # a: (3 - 1, 2 - 1) -> 1.5; b: (5 - 4, 6 - 3) -> 2; c: seed 0 NaN, seed 1 0.5; d: seed 0 only, -1.
  assert names == ['a', 'b', 'c', 'd'] and seeds == [0, 1]
  np.testing.assert_allclose(differences, [1.5, 2.0, 0.5, -1.0])
  lower_is_better, _, _ = study.paired_differences(better, worse, 'psnr', sign=-1)
  np.testing.assert_allclose(lower_is_better, -differences)

  stats = study.paired_statistics(differences)
  means = differences[np.random.default_rng(study.BOOTSTRAP_SEED).integers(
      0, 4, size=(study.BOOTSTRAP_RESAMPLES, 4))].mean(axis=1)
  np.testing.assert_allclose([stats['low'], stats['high']], np.percentile(means, [2.5, 97.5]))
  assert stats['effect'] == np.mean(differences) and stats['slices'] == 4
  np.testing.assert_allclose(stats['p'], scipy.stats.wilcoxon(differences).pvalue)
  assert study.paired_statistics(np.zeros(5))['p'] == 1.0


def test_bootstrap_interval_covers_the_true_difference_and_excludes_zero():
  rng = np.random.default_rng(3)
  clear = 0.5 + rng.normal(0, 0.3, 200)  # The true mean difference is 0.5.
  stats = study.paired_statistics(clear)
  assert 0 < stats['low'] < 0.5 < stats['high'] and stats['p'] < 1e-6
  null = rng.normal(0, 0.3, 200)
  unclear = study.paired_statistics(null)
  assert unclear['low'] < 0 < unclear['high']
  against = study.paired_statistics(-clear)
  assert study.paired_verdict([stats, stats]) == 'holds'
  assert study.paired_verdict([unclear, against]) == 'does not hold'
  assert study.paired_verdict([unclear, unclear]) == 'inconclusive: every interval holds 0'
  assert study.paired_verdict([stats, unclear, against]) == 'partly (1 of 3 metrics for it, 1 against it)'


def test_report_states_paired_verdicts(tmp_path):
  root = str(tmp_path / 'runs')
  rng = np.random.default_rng(0)
  ids = [f'fs_{i:04d}/0/{i % 3}' for i in range(30)]
  for seed in (0, 1):
    write_slices(study.run_dir(root, 'cascade', 4, False, seed), ids, row_metrics(rng, 30, 0.0))
    joint = row_metrics(rng, 30, 1.0)  # Better than CascadeNet on every metric, by far more than the noise.
    joint['f_psnr'][0] = None  # A slice without heart: left out of the F- pairs.
    write_slices(study.run_dir(root, 'cascade_manet', 4, True, seed), ids, joint)
    write_slices(study.run_dir(root, 'cascade_manet', 4, False, seed), ids, row_metrics(rng, 30, 1.0))
  write_run(root, 'unet', 4, False, 0, 2.0)  # Older runs without per_slice.json.
  write_run(root, 'multidecoder_unet', 4, False, 0, 1.0)
  out = str(tmp_path / 'results.md')
  study.report(root, out, 'cpu_study')
  text = open(out).read()
  slices = study.collect_slices(root)
  line = next(l for l in text.splitlines()
              if l.startswith('- x4: Segmentation-aware CascadeNet -> MANet (S) beats solo CascadeNet'))
  assert line.startswith('- x4: Segmentation-aware CascadeNet -> MANet (S) beats solo CascadeNet on the F- metrics: '
                         '**holds** (')
  for name, key, sign in study.METRICS:
    if key in study.FOCUSED:
      differences, names, _ = study.paired_differences(slices[('CascadeNet -> MANet (S)', 4)],
                                                       slices[('CascadeNet', 4)], key, sign)
      assert len(names) == (29 if key == 'f_psnr' else 30)
      stats = study.paired_statistics(differences)
      np.testing.assert_allclose(stats['effect'], 1.0, atol=0.05)
      assert study._format_statistics(name, stats) in line
  assert '2 seeds, 29/30 slices' in line
  # MSE lower and PSNR/SSIM higher on the joint model: solo CascadeNet is significantly behind on all three.
  assert '- x4: Solo CascadeNet beats CascadeNet -> MANet (S) on the global metrics: **does not hold** (' in text
  # Two rows that differ only by noise: no interval clear of 0.
  assert ('- x4: Stabilization helps CascadeNet -> MANet on the F- metrics: **inconclusive: every interval holds 0** '
          in text)
  assert ('x4: Solo UNet beats Multi-Decoder UNet on the global metrics: **partly (2 of 3 metrics); one seed, no '
          'spread** (') in text and 'No per_slice.json in these runs' in text
  assert '| CascadeNet | 2 | ' in text  # The mean ± std tables stay.


def test_sweep_runs_every_weight_once(tmp_path, monkeypatch, capsys):
  root = str(tmp_path / 'runs')
  done = study.sweep_dir(root, 8, 0.1, 0)
  os.makedirs(done)
  open(os.path.join(done, 'metrics.json'), 'w').write('{"metrics": {}}')
  calls = []
  monkeypatch.setattr(study.subprocess, 'run', lambda command, **kwargs: calls.append((command, kwargs['cwd'])))
  study.main(['sweep', f'--root={root}', '--switch=cpu_study', '--seeds=0', '--weights=0,0.01,0.1,1,10',
              '--accelerations=4,8'])
  assert len(calls) == 9
  command, cwd = calls[1]
  workdir = os.path.join(root, 'sweep', 'cascade_manet_x4_stab_w0.01', 'seed0')
  assert command[1:] == ['main.py', '--config=configs/cascade_manet.py:x4_stab,cpu_study',
                         '--config.seg_loss_weight=0.01', '--config.log_loss_grad_norms=True', '--config.seed=0',
                         '--config.progress_bar=False', f'--workdir={workdir}']
  assert os.path.exists(os.path.join(cwd, 'main.py'))
  workdirs = [c[-1] for c, _ in calls]
  assert f'--workdir={os.path.join(root, "sweep", "cascade_manet_x8_stab_w0", "seed0")}' in workdirs
  assert f'--workdir={done}' not in workdirs
  assert '--config.seg_loss_weight=0' in calls[0][0] and '--config.seg_loss_weight=10' in calls[4][0]
  assert '[study] 9 runs to do (1 already done).' in capsys.readouterr().out


def test_run_tables_in_order_at_paper_scale_prints_the_plan(tmp_path, monkeypatch, capsys):
  calls = []
  monkeypatch.setattr(study.subprocess, 'run', lambda command, **kwargs: calls.append(command))
  study.main(['run', f'--root={tmp_path}', '--switch=', '--tables=2,1', '--seeds=0', '--seconds_per_step=0.5'])
  configs = [c[2] for c in calls]
  assert len(configs) == 16
  assert configs[:6] == ['--config=configs/cascade.py:x4', '--config=configs/cascade_manet.py:x4',
                         '--config=configs/cascade_manet.py:x4_stab', '--config=configs/cascade.py:x8',
                         '--config=configs/cascade_manet.py:x8', '--config=configs/cascade_manet.py:x8_stab']
  assert configs[6] == '--config=configs/unet.py:x4'
  out = capsys.readouterr().out
  # The paper-scale phantom: 155 training slices (estimated from its config unless prepared), batch 16, 100 epochs.
  assert '[study] 16 runs to do (0 already done).' in out
  assert '16 run(s): 900 steps (100 epochs x 9 steps of global batch 16; train split 155 slices' in out
  assert 'expected: 14400 training steps x 0.5 s/step = 2.0 h' in out


def test_sweep_report_table_and_figure(tmp_path):
  root = str(tmp_path / 'runs')
  rng = np.random.default_rng(1)
  ids = [f's{i:02d}/0/0' for i in range(20)]
  base = rng.normal(30, 1, 20)
  for acceleration in (4, 8):
    for weight, gain in ((0.0, 0.0), (0.1, 0.5), (1.0, 1.0), (10.0, -0.5)):
      for seed in (0, 1):
        noise = rng.normal(0, 0.05, 20)
        metrics = {'psnr': list(base + gain + noise), 'f_psnr': list(base - 2 + 2 * gain + noise),
                   'dice_mean': list(np.full(20, 0.1 + 0.05 * weight))}
        write_slices(study.sweep_dir(root, acceleration, weight, seed), ids, metrics)
  for seed, scale in ((0, 1.0), (1, 3.0)):  # Logged gradient norms of the x8, w = 1 runs; step 10 written twice.
    writer = reporting.SummaryWriter(study.sweep_dir(root, 8, 1.0, seed))
    for step, recon, seg in ((5, 0.1, 0.4), (10, 0.9, 9.0), (10, 0.3, 0.8)):
      writer.write_scalars(step, {'train_recon_grad_norm': recon * scale, 'train_seg_grad_norm': seg * scale})
    writer.close()
  out = str(tmp_path / 'docs' / 'results.md')
  os.makedirs(os.path.dirname(out))
  study.report(root, out, 'cpu_study')
  text = open(out).read()
  assert '## Segmentation loss weight (CascadeNet -> MANet (S))' in text
  assert '![loss_weight.png](figures/loss_weight.png)' in text
  assert os.path.getsize(tmp_path / 'docs' / 'figures' / 'loss_weight.png') > 1000
  sweep = study.collect_sweep(root)
  assert sorted(sweep) == [(a, w) for a in (4, 8) for w in (0.0, 0.1, 1.0, 10.0)]
  section = text.split('## Segmentation loss weight')[1]
  row = next(l for l in section.split('**x8**')[1].splitlines() if l.startswith('| 1 | 2 |'))
  psnr = study.sweep_summary(sweep[(8, 1.0)], 'psnr')
  np.testing.assert_allclose(psnr[0], base.mean() + 1.0, atol=0.05)
  difference = study.sweep_summary(sweep[(8, 1.0)], 'f_psnr', sweep[(8, 0.0)])
  np.testing.assert_allclose(difference[0], 2.0, atol=0.05)
  assert difference[1] > 1.9 and difference[2] < 2.1
  assert row.startswith(f'| 1 | 2 | {psnr[0]:.4f} [{psnr[1]:.4f}, {psnr[2]:.4f}] |')
  # Means over logged steps (the resumed step's later value) and seeds: recon (0.2 + 0.6) / 2, seg (0.6 + 1.8) / 2.
  assert row.endswith(f'| {difference[0]:+.4f} [{difference[1]:+.4f}, {difference[2]:+.4f}] | 0.4 | 1.2 |')
  assert sweep[(8, 1.0)][1]['grad_norms'] == {'recon_grad_norm': pytest.approx(0.6),
                                               'seg_grad_norm': pytest.approx(1.8)}
  assert sweep[(4, 1.0)][0]['grad_norms'] == {}  # Not logged: '-' cells.
  assert '| 0 | 2 |' in text and '| - | - |' in text  # Weight 0 is its own baseline.


def test_read_scalars_reads_tensorboard_files_without_tensorflow_and_names_a_corrupt_one(tmp_path):
  writer = reporting.SummaryWriter(str(tmp_path))
  writer.write_scalars(1, {'train_loss': 0.5, 'eval_psnr': 20.0})
  writer.write_scalars(2, {'train_loss': 0.25})
  writer.write_scalars(2, {'train_loss': 0.125})  # A resumed run rewrites step 2.
  writer.close()
  scalars = reporting.read_scalars(str(tmp_path))
  assert scalars == {'train_loss': [(1, 0.5), (2, 0.25), (2, 0.125)], 'eval_psnr': [(1, 20.0)]}
  assert reporting.last_values(scalars['train_loss']) == {1: 0.5, 2: 0.125}
  assert reporting.read_scalars(str(tmp_path / 'nothing')) == {}
  (path,) = [p for p in (tmp_path / 'tensorboard').iterdir()]
  path.write_bytes(path.read_bytes()[:-7])
  with pytest.raises(ValueError, match=rf'{path}: truncated record'):
    reporting.read_scalars(str(tmp_path))


def write_attention(workdir, energy, area=0.1):
  folder = os.path.join(workdir, 'attention')
  os.makedirs(folder)
  interval = lambda v: {'mean': v, 'low': v - 0.01, 'high': v + 0.01}
  with open(os.path.join(folder, 'attention.json'), 'w') as f:
    json.dump({'num_slices': 36, 'energy_share': interval(energy), 'area_share': interval(area),
               'share_to_area_ratio': interval(energy / area)}, f)
  with open(os.path.join(folder, 'attention.png'), 'wb') as f:
    f.write(b'png of ' + workdir.encode())


def test_attention_runs_the_segrecon_rows_and_the_untrained_control_then_reports_them(tmp_path, monkeypatch,
                                                                                         capsys):
  root = str(tmp_path / 'runs')
  flagship = study.run_dir(root, 'cascade_manet', 4, True, 0)
  control = study.sweep_dir(root, 4, 0.0, 0)
  for workdir in (flagship, study.run_dir(root, 'unet_unet', 8, False, 0), control,
                  study.run_dir(root, 'multidecoder_unet', 4, True, 0), study.run_dir(root, 'cascade', 4, False, 0)):
    write_slices(workdir, ['a/0/0'], {'psnr': [20.0]})
  write_attention(study.run_dir(root, 'unet_unet', 8, False, 0), 0.3)  # Done already: skipped.
  calls = []
  monkeypatch.setattr(study.subprocess, 'run', lambda command, **kwargs: calls.append(command))
  study.main(['attention', f'--root={root}', '--switch=cpu_study', '--seeds=0'])
  assert '[study] pseudo-attention: 2 run(s) to do (1 already done).' in capsys.readouterr().out
  assert [c[1:] for c in calls] == [
      ['main.py', '--config=configs/cascade_manet.py:x4_stab,cpu_study', '--config.seed=0',
       '--config.progress_bar=False', f'--workdir={flagship}', '--mode=attention'],
      ['main.py', '--config=configs/cascade_manet.py:x4_stab,cpu_study', '--config.seg_loss_weight=0',
       '--config.log_loss_grad_norms=True', '--config.seed=0', '--config.progress_bar=False', f'--workdir={control}',
       '--mode=attention']]
  write_attention(flagship, 0.8)
  write_attention(control, 0.2)
  out = str(tmp_path / 'docs' / 'results.md')
  os.makedirs(os.path.dirname(out))
  study.report(root, out, 'cpu_study')
  text = open(out).read()
  section = text.split('## Pseudo-attention of the segmentation loss')[1]
  assert '| CascadeNet -> MANet (S) | 4 | 0 | 36 | 80.0 [79.0, 81.0] % | 10.0 [9.0, 11.0] % | 8.00 [7.99, 8.01] |' in section
  assert '| CascadeNet -> MANet (S), seg_loss_weight 0 | 4 | 0 | 36 | 20.0 [19.0, 21.0] % |' in section
  assert '| UNet -> UNet | 8 | 0 | 36 | 30.0 [29.0, 31.0] % |' in section
  assert '![attention_x4.png](figures/attention_x4.png)' in section and 'attention_x8.png' not in section
  assert open(tmp_path / 'docs' / 'figures' / 'attention_x4.png', 'rb').read() == b'png of ' + flagship.encode()
