"""Tests of the reproduction-study report on synthetic run folders (no training)."""

import json
import os

import numpy as np

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
