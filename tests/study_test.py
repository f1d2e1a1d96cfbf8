"""Tests of the study: its plan, runner, cross-seed verdicts and report on synthetic run folders, and one real study
run on a NIfTI folder written here."""

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from segrecon_jax.data import phantom_nifti
from segrecon_jax import stats
from segrecon_jax.study import claims
from segrecon_jax.study import cli
from segrecon_jax.study import plan
from segrecon_jax.study import report
from segrecon_jax.study import results
from segrecon_jax.study import runner
from segrecon_jax.training import reporting
from segrecon_jax.training import writer as writer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(workdir, ids, metrics, scalars=()):
  """A finished run: per-slice metrics, metrics.json with their means (and zero-filled values), optional scalars."""
  os.makedirs(workdir, exist_ok=True)
  reporting.write_per_slice(workdir, {'ids': ids, 'metrics': metrics})
  means = {key: float(np.nanmean(values)) for key, values in metrics.items()}
  means.update({f'zero_filled_{key}': 0.5 for key in metrics}, num_examples=len(ids))
  with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
    json.dump({'metrics': means}, f)
  if scalars:
    writer = writer_lib.SummaryWriter(workdir)
    for step, values in scalars:
      writer.write_scalars(step, values)
    writer.close()


def row_metrics(rng, base, shift, noise=0.05):
  """Every metric of the paper's columns: `base` + `shift` (MSE: - shift, lower is better) + noise."""
  size = base.size
  found = {}
  for _, key, sign in plan.METRICS:
    found[key] = base + sign * shift + rng.normal(0, noise, size)
  found['dice_mean'] = np.full(size, 0.7)
  return found


def test_plan_flags_order_and_overrides(tmp_path):
  settings = plan.Settings('', ('--config.dataset_config=nifti', '--config.manual_dir=/data/acdc'))
  runs = plan.table_runs(str(tmp_path), settings, [0], tables=[2, 1])
  assert [r.flags[0] for r in runs[:3]] == ['--config=configs/cascade.py:x4', '--config=configs/cascade_manet.py:x4',
                                            '--config=configs/cascade_manet.py:x4_stab']
  assert runs[6].flags[0] == '--config=configs/unet.py:x4' and len(runs) == 16
  assert runs[0].flags[1:] == ('--config.seed=0', '--config.dataset_config=nifti', '--config.manual_dir=/data/acdc')
  assert runs[0].workdir == os.path.join(str(tmp_path), 'cascade_x4', 'seed0')
  sweep = plan.sweep_runs('/r', plan.Settings('cpu_study'), [1], [0.01], [8])
  assert sweep[0].flags == ('--config=configs/cascade_manet.py:x8_stab,cpu_study', '--config.seg_loss_weight=0.01',
                            '--config.log_loss_grad_norms=True', '--config.seed=1')
  losses = plan.loss_runs('/r', plan.Settings('cpu_study'), [0], ['focus_reference'], [4])
  assert losses[0].flags[0] == '--config=configs/cascade.py:x4,cpu_study'
  assert '--config.focus_source=reference' in losses[0].flags
  with pytest.raises(ValueError, match='unknown loss method'):
    plan.loss_methods(['nope'])
  with pytest.raises(ValueError, match='sets config.seed itself'):
    plan.Settings('', ('--config.seed=3',))
  with pytest.raises(ValueError, match='expected --config.<field>=<value>'):
    plan.Settings('', ('--data_dir=/x',))


def test_settings_are_recorded_and_a_root_refuses_other_data(tmp_path, monkeypatch, capsys):
  calls = []
  monkeypatch.setattr(runner.subprocess, 'Popen', _fake_popen(calls))
  root = str(tmp_path / 'runs')
  data = ['--config.image_size=48', f'--config.data_dir={tmp_path / "tfds"}']
  cli.main(['run', f'--root={root}', '--switch=runlocal', '--experiments=cascade', '--accelerations=8'] + data)
  assert [c[2:] for c in calls] == [['--config=configs/cascade.py:x8,runlocal', '--config.seed=0'] + data +
                                    ['--config.progress_bar=False', f'--workdir={root}/cascade_x8/seed0']]
  assert plan.load_settings(root) == plan.Settings('runlocal', tuple(data))
  refusal = _refused(capsys, ['run', f'--root={root}', '--switch=runlocal', '--config.image_size=64'])
  assert re.search('records the study settings .*image_size=48.* but this call has', refusal)
  assert 'config.no_such_field' in _refused(capsys, ['run', f'--root={tmp_path / "other"}',
                                                     '--config.no_such_field=1'])  # A typo fails before anything runs.
  assert len(calls) == 1
  with pytest.raises(SystemExit):
    cli.main(['run', f'--root={root}', '--data_dir=/x'])
  assert 'unrecognized arguments: --data_dir=/x' in capsys.readouterr().err


def _refused(capsys, argv):
  """The one paragraph that `cli.main(argv)` ends with (exit code 2)."""
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  err = capsys.readouterr().err
  assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
  assert err.startswith('python -m segrecon_jax.study ')
  return err


def test_a_refused_override_records_nothing_and_report_refuses_a_root_without_a_study(tmp_path, monkeypatch, capsys):
  calls = []
  monkeypatch.setattr(runner.subprocess, 'Popen', _fake_popen(calls))
  root = str(tmp_path / 'runs')
  args = ['run', f'--root={root}', '--switch=runlocal', '--experiments=cascade', '--accelerations=4']
  refusal = _refused(capsys, args + ['--config.bogus_field=1'])
  assert '--config.bogus_field=1: AttributeError' in refusal and 'names no field of the config' in refusal
  assert not os.path.exists(os.path.join(root, plan.SETTINGS_FILE)) and not calls
  cli.main(args)  # The corrected call is not refused by what the typo left behind.
  assert plan.load_settings(root) == plan.Settings('runlocal') and len(calls) == 1
  out = str(tmp_path / 'results.md')
  assert 'no such folder' in _refused(capsys, ['report', f'--root={root}_typo', f'--out={out}'])
  os.makedirs(tmp_path / 'empty')
  assert 'holds no study' in _refused(capsys, ['report', f'--root={tmp_path / "empty"}', f'--out={out}'])
  assert not os.path.exists(out)
  assert 'unknown loss method' in _refused(capsys, ['losses', f'--root={root}', '--switch=runlocal', '--methods=nope'])


def _fake_popen(calls, fail=(), in_flight=None, polls=None):
  """A stand-in for subprocess.Popen: records each command, finishes at its second poll (or at `polls[workdir]`;
  exit 1 where the workdir is one of `fail`), and records in `in_flight` how many were running whenever one is
  started."""
  running = []

  class FakeProcess:

    def __init__(self, command, **kwargs):
      del kwargs
      calls.append(command)
      self.workdir = command[-1].split('=', 1)[1]
      self.polls, self.returncode = 0, None
      running.append(self)
      if in_flight is not None:
        in_flight.append(len(running))

    def poll(self):
      self.polls += 1
      if self.polls >= (polls or {}).get(self.workdir, 2) and self.returncode is None:
        self.returncode = 1 if self.workdir in fail else 0
        running.remove(self)
      return self.returncode

  return FakeProcess


def test_runs_in_parallel_jobs_and_names_every_failed_run(tmp_path, monkeypatch, capsys):
  calls, in_flight = [], []
  failing = plan.run_dir(str(tmp_path), 'cascade_manet', 4, False, 0)
  monkeypatch.setattr(runner.subprocess, 'Popen', _fake_popen(calls, fail=[failing], in_flight=in_flight))
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['run', f'--root={tmp_path}', '--switch=', '--tables=2', '--seeds=0', '--accelerations=4', '--jobs=2'])
  captured = capsys.readouterr()
  assert exit_info.value.code == 2 and len(captured.err.strip().splitlines()) == 1, captured.err
  assert re.match(r'python -m segrecon_jax.study run: 1 run\(s\) failed: .*log\.txt', captured.err)
  assert len(calls) == 3  # The failure stops nothing: every run is started.
  assert max(in_flight) == 2
  assert 'FAILED (exit 1)' in captured.out
  with pytest.raises(SystemExit):
    cli.main(['run', f'--root={tmp_path}', '--jobs=zero'])


def test_sigint_stops_every_run_with_its_checkpoint_and_says_how_to_resume(tmp_path, monkeypatch, capfd):
  """Ctrl-C at `study run --jobs=2` while two runs train: each is sent one SIGINT (they run in sessions of their own,
  so the terminal's does not reach them a second time), the study waits for both to exit, starts no other run and
  ends with the command that resumes, exit code 130."""
  started = []

  class TrainingProcess:
    """A main.py run that trains until it gets a signal, then writes its checkpoint and exits 128 + the signal."""

    def __init__(self, command, **kwargs):
      self.command, self.kwargs, self.signals, self.returncode, self.polls = command, kwargs, [], None, 0
      started.append(self)

    def poll(self):
      self.polls += 1
      if len(started) == 2 and self.polls == 3 and not self.signals:
        signal.raise_signal(signal.SIGINT)  # Both runs training: the user presses Ctrl-C.
      if self.signals and self.returncode is None:
        self.returncode = 128 + self.signals[0]
      return self.returncode

    def send_signal(self, signum):
      self.signals.append(signum)

  monkeypatch.setattr(runner.subprocess, 'Popen', TrainingProcess)
  argv = ['run', f'--root={tmp_path}', '--switch=', '--tables=2', '--seeds=0', '--accelerations=4', '--jobs=2']
  # As at a terminal, also when the suite itself runs in the background (nohup, `&`), where SIGINT is ignored from
  # the start and the study rightly leaves it ignored: this test would then wait for a signal that never comes.
  inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with pytest.raises(SystemExit) as exit_info:
      cli.main(argv)
  except KeyboardInterrupt:
    pytest.fail('the SIGINT escaped as a KeyboardInterrupt')
  finally:
    restored = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, inherited)
  err = capfd.readouterr().err
  assert exit_info.value.code == 128 + signal.SIGINT
  assert [p.signals for p in started] == [[signal.SIGINT], [signal.SIGINT]]  # 2 of the 3 runs; the third never
  assert all(p.kwargs.get('start_new_session') for p in started)
  assert '[study] SIGINT received: sent to the 2 running run(s); each stops after its current step' in err
  last = err.strip().splitlines()[-1]
  assert last.startswith('python -m segrecon_jax.study run: SIGINT: the study stopped. 2 run(s) were stopped, each '
                         'after its current step with a checkpoint')
  assert f'CascadeNet x4 seed 0 (exit 130, log: {plan.run_dir(str(tmp_path), "cascade", 4, False, 0)}' in last
  assert '1 run(s) not started' in last
  assert last.endswith(f'To resume, run the same command again: python -m segrecon_jax.study {" ".join(argv)}')
  assert restored is signal.default_int_handler  # the handling from before the study is back


def test_run_skips_finished_runs_and_prints_the_plan(tmp_path, monkeypatch, capsys):
  calls = []
  monkeypatch.setattr(runner.subprocess, 'Popen', _fake_popen(calls))
  done = plan.run_dir(str(tmp_path), 'cascade', 4, False, 0)
  write_run(done, ['a'], {'psnr': np.array([1.0])})
  cli.main(['run', f'--root={tmp_path}', '--switch=', '--tables=2', '--seeds=0', '--seconds_per_step=0.5'])
  out = capsys.readouterr().out
  assert len(calls) == 5 and f'--workdir={done}' not in [c[-1] for c in calls]
  # The paper-scale phantom: 155 training slices (estimated from its config unless prepared), batch 16, 100 epochs.
  assert '[study] 5 runs to do (1 already done).' in out
  assert '5 run(s): 900 steps (100 epochs x 9 steps of global batch 16; train split 155 slices' in out
  assert 'expected: 4500 training steps x 0.5 s/step = 0.6 h' in out


def _three_seed_root(root):
  """Table 2 at x4 with 3 seeds: (S) ahead of solo by 0.5 on every metric and seed; the unstabilized joint row
  ahead of (S) in two seeds, behind in the third."""
  rng = np.random.default_rng(0)
  ids = [f'p{i:02d}/0/0' for i in range(30)]
  base = rng.normal(30, 1, 30)
  for seed in range(3):
    write_run(plan.run_dir(root, 'cascade', 4, False, seed), ids, row_metrics(rng, base, 0.0),
              scalars=[(s, {'eval_psnr': 20 + s / 10}) for s in (10, 20)])
    write_run(plan.run_dir(root, 'cascade_manet', 4, True, seed), ids, row_metrics(rng, base, 0.5),
              scalars=[(s, {'eval_psnr': 21 + s / 10, 'eval_f_psnr': 20.0, 'eval_dice_mean': s / 40})
                       for s in (10, 20, 30)])
    write_run(plan.run_dir(root, 'cascade_manet', 4, False, seed), ids,
              row_metrics(rng, base, (1.0, 1.0, -1.5)[seed]))
  return ids


def test_cross_seed_verdicts_and_report(tmp_path):
  root = str(tmp_path / 'runs')
  _three_seed_root(root)
  found = results.collect(root)
  assert sorted(found[('CascadeNet -> MANet (S)', 4)]) == [0, 1, 2]
  verdicts = {(v.claim.text, v.acceleration): v for v in claims.evaluate(found)}
  aware = verdicts[('Segmentation-aware CascadeNet -> MANet (S) beats solo CascadeNet on the F- metrics', 4)]
  assert aware.verdict == stats.HOLDS and aware.seeds == 3 and aware.slices == [30]
  expected = stats.compare(results.per_slice(found[('CascadeNet -> MANet (S)', 4)]),
                           results.per_slice(found[('CascadeNet', 4)]), 'f_psnr')
  assert aware.metrics['f_psnr'] == expected and expected['effect'] == pytest.approx(0.5, abs=0.03)
  assert expected['low'] > 0.4 and expected['interval'] == 'seeds and slices'
  stabilization = verdicts[('Stabilization helps CascadeNet -> MANet on the F- metrics', 4)]
  # Per seed the unstabilized row leads by 0.5 / 0.5 and trails by 2.0: across seeds no metric's interval is clear.
  np.testing.assert_allclose(stabilization.metrics['f_psnr']['seed_effects'], [-0.5, -0.5, 2.0], atol=0.05)
  assert stabilization.verdict == stats.INCONCLUSIVE
  assert verdicts[('Solo CascadeNet beats CascadeNet -> MANet (S) on the global metrics', 4)].verdict == stats.FAILS
  assert verdicts[('Solo UNet beats UNet -> UNet on the global metrics', 8)].verdict == 'not run'
  out = str(tmp_path / 'docs' / 'results.md')
  report.report(root, out)
  text = open(out).read()
  assert '## Table 2 (CascadeNet and MANet; 3 seeds (0, 1, 2))' in text
  assert '| CascadeNet -> MANet (S) | 3 | ' in text
  # Only what ran: no Table 1, no x8 block, the claims without runs listed once, not as rows or details.
  assert '## Table 1 (U-Net family; not run yet)\n\nNot run under this root.' in text
  assert '| **x8** |' not in text and '| **x4** |' in text
  assert 'Not run under this root (no runs of both rows at any acceleration): ' in text
  assert '| Solo UNet beats UNet -> UNet on the global metrics |' not in text
  assert 'no per-slice results of both rows yet' not in text
  assert claims.format_verdict(aware) in text
  # Each row against solo, paired per seed and slice, the interval over both (the same statistics as the claims').
  assert 'Against solo CascadeNet, paired slice by slice on the seeds both ran' in text
  paired = text.split('Against solo CascadeNet, paired')[1].split('## Do the paper')[0]
  psnr = stats.compare(results.per_slice(found[('CascadeNet -> MANet (S)', 4)]),
                       results.per_slice(found[('CascadeNet', 4)]), 'psnr')
  per_seed = ' / '.join(f'{e:+.2f}' for e in expected['seed_effects'])
  row = next(line for line in paired.splitlines() if line.startswith('| CascadeNet -> MANet (S) |'))
  assert row.startswith(f'| CascadeNet -> MANet (S) | 4 | 0, 1, 2 | {psnr["effect"]:+.2f} [{psnr["low"]:+.2f}, '
                        f'{psnr["high"]:+.2f}] | {expected["effect"]:+.2f} [{expected["low"]:+.2f}, '
                        f'{expected["high"]:+.2f}] | ') and row.endswith(f' | {per_seed} |')
  assert paired.count('| CascadeNet -> MANet ') == 2
  # Seeds without the row's F-PSNR (e.g. runs from before a metric existed) drop out of its seeds, its interval
  # and its per-seed column.
  for seed in (1, 2):
    record = found[('CascadeNet -> MANet', 4)][seed]['per_slice']
    record['metrics'] = {k: v for k, v in record['metrics'].items() if k != 'f_psnr'}
  line = next(l for l in report.paired_table(found, 2).splitlines() if l.startswith('| CascadeNet -> MANet |'))
  single = stats.compare(results.per_slice(found[('CascadeNet -> MANet', 4)]),
                         results.per_slice(found[('CascadeNet', 4)]), 'f_psnr')
  assert line.startswith('| CascadeNet -> MANet | 4 | 0 | ') and line.endswith(' | - |')
  assert f'| {single["effect"]:+.2f} [{single["low"]:+.2f}, {single["high"]:+.2f}] |' in line
  assert single['interval'] == 'slices'
  assert 'Against solo UNet' not in text  # Table 1 did not run.
  summary = text.split('## Verdicts at a glance')[1].split('## Table 1')[0]
  assert (f'| Segmentation-aware CascadeNet -> MANet (S) beats solo CascadeNet on the F- metrics | **holds**: F-PSNR '
          f'{expected["effect"]:+.2f} [{expected["low"]:+.2f}, {expected["high"]:+.2f}] dB, 3 seeds | not run |'
          ) in summary
  # Training curves from scalars.jsonl: only the joint rows with 3+ evaluations.
  assert '![curves_x4.png](figures/results/curves_x4.png)' in text
  assert os.path.getsize(tmp_path / 'docs' / 'figures' / 'results' / 'curves_x4.png') > 1000


def test_scalars_jsonl_written_beside_tensorboard_and_read_back(tmp_path):
  writer = writer_lib.SummaryWriter(str(tmp_path))
  writer.write_scalars(1, {'train_loss': 0.5, 'eval_psnr': 20.0})
  writer.write_scalars(2, {'train_loss': 0.25})
  writer.write_scalars(2, {'train_loss': 0.125})  # A resumed run rewrites step 2: the later value wins.
  writer.close()
  assert os.listdir(tmp_path / 'tensorboard')
  assert writer_lib.read_scalars(str(tmp_path)) == {'train_loss': {1: 0.5, 2: 0.125}, 'eval_psnr': {1: 20.0}}
  assert writer_lib.read_scalars(str(tmp_path / 'nothing')) == {}
  path = tmp_path / writer_lib.SCALARS_FILE
  path.write_text(path.read_text() + '{"step": 3, "train_lo')  # Cut by a kill: skipped.
  assert writer_lib.read_scalars(str(tmp_path))['train_loss'] == {1: 0.5, 2: 0.125}
  path.write_text('{"step": 1, "a": 1}\nnot json\n{"step": 2, "a": 2}\n')
  with pytest.raises(ValueError, match=rf'{path}: line 2 is not a scalars record'):
    writer_lib.read_scalars(str(tmp_path))


def test_sweep_report_reads_grad_norms_from_jsonl(tmp_path):
  root = str(tmp_path / 'runs')
  rng = np.random.default_rng(1)
  ids = [f's{i:02d}/0/0' for i in range(20)]
  base = rng.normal(30, 1, 20)
  for weight, gain in ((0.0, 0.0), (1.0, 1.0)):
    for seed, scale in ((0, 1.0), (1, 3.0)):
      metrics = {'psnr': base + gain + rng.normal(0, 0.05, 20), 'f_psnr': base - 2 + 2 * gain,
                 'dice_mean': np.full(20, 0.1 + 0.5 * weight)}
      scalars = [(5, {'train_recon_grad_norm': 0.1 * scale, 'train_seg_grad_norm': 0.4 * scale}),
                 (10, {'train_recon_grad_norm': 0.3 * scale, 'train_seg_grad_norm': 0.8 * scale})]
      write_run(plan.sweep_dir(root, 8, weight, seed), ids, metrics, scalars if weight else ())
  out = str(tmp_path / 'results.md')
  report.report(root, out)
  text = open(out).read()
  sweep = results.collect_sweep(root)
  difference = report.sweep_summary(sweep[(8, 1.0)], 'f_psnr', sweep[(8, 0.0)])
  assert difference[0] == pytest.approx(2.0) and difference[1] == pytest.approx(2.0)
  row = next(l for l in text.split('## Segmentation loss weight')[1].splitlines() if l.startswith('| 1 | 2 |'))
  # Means over logged steps and seeds: recon (0.2 + 0.6) / 2, seg (0.6 + 1.8) / 2.
  assert row.endswith(f'| {difference[0]:+.4f} [{difference[1]:+.4f}, {difference[2]:+.4f}] | 0.4 | 1.2 |')
  assert '| 0 | 2 |' in text and '| - | - |' in text  # Weight 0 is its own baseline, without logged norms.
  assert os.path.getsize(tmp_path / 'figures' / 'results' / 'loss_weight.png') > 1000


def test_loss_comparison_target(tmp_path):
  """A method ahead of solo on the F- metrics by 0.3 at both accelerations, losing 0.2 dB PSNR, meets the target;
  one losing 1 dB does not."""
  root = str(tmp_path / 'runs')
  rng = np.random.default_rng(2)
  ids = [f's{i:02d}/0/0' for i in range(25)]
  base = rng.normal(28, 1, 25)
  for acceleration in (4, 8):
    for seed in (0, 1, 2):
      def metrics(psnr_shift, focus_shift):
        found = row_metrics(rng, base, 0.0, noise=0.02)
        found['psnr'] = found['psnr'] + psnr_shift
        found['f_psnr'] = found['f_psnr'] + focus_shift
        found['f_ssim'] = found['f_ssim'] + focus_shift / 10
        return found
      write_run(plan.run_dir(root, 'cascade', acceleration, False, seed), ids, metrics(0, 0))
      write_run(plan.loss_dir(root, 'grad_norm', acceleration, seed), ids, metrics(-0.2, 0.3),
                scalars=[(10, {'train_seg_weight_effective': 0.02})])
      write_run(plan.loss_dir(root, 'w0.01', acceleration, seed), ids, metrics(-1.0, 0.3))
      if acceleration == 4 and seed < 2:
        write_run(plan.loss_dir(root, 'grad_norm_0.1', acceleration, seed), ids, metrics(-0.2, 0.1))
  comparison = report.loss_comparison(root)
  assert comparison['met_everywhere'] == ['grad_norm']
  row = next(r for r in comparison['rows'] if r['name'] == 'grad_norm' and r['acceleration'] == 8)
  assert row['seeds'] == [0, 1, 2] and row['seg_weight'] == pytest.approx(0.02)
  assert row['differences']['f_psnr']['effect'] == pytest.approx(0.3, abs=0.02)
  assert row['differences']['psnr']['effect'] == pytest.approx(-0.2, abs=0.02)
  out = str(tmp_path / 'results.md')
  report.report(root, out)
  text = open(out).read()
  assert 'Meets the target at every acceleration: grad_norm.' in text
  # Ingredients: pairs of methods both run, on the seeds both ran (grad_norm_0.1: x4, seeds 0 and 1 only).
  ingredients = {row['what']: row for row in report.ingredient_rows(root)}
  assert sorted(ingredients) == ['grad-norm ratio 0.1 instead of 1',
                                 'grad-norm ratio 0.1 instead of the fixed w = 0.01']
  ratio = ingredients['grad-norm ratio 0.1 instead of 1']
  assert ratio['acceleration'] == 4 and ratio['seeds'] == [0, 1]
  assert ratio['differences']['f_psnr']['effect'] == pytest.approx(-0.2, abs=0.02)
  assert ingredients['grad-norm ratio 0.1 instead of the fixed w = 0.01']['differences']['psnr']['effect'] == \
      pytest.approx(0.8, abs=0.02)
  assert '| grad-norm ratio 0.1 instead of 1 | 4 | 2 | ' in text.split('### What each ingredient adds')[1]
  assert os.path.getsize(tmp_path / 'figures' / 'results' / 'loss_tradeoff.png') > 1000


def write_attention(workdir, energy, area=0.1):
  folder = os.path.join(workdir, 'attention')
  os.makedirs(folder)
  interval = lambda v: {'mean': v, 'low': v - 0.01, 'high': v + 0.01}
  with open(os.path.join(folder, 'attention.json'), 'w') as f:
    json.dump({'num_slices': 36, 'energy_share': interval(energy), 'area_share': interval(area),
               'share_to_area_ratio': interval(energy / area)}, f)
  with open(os.path.join(folder, 'attention.png'), 'wb') as f:
    f.write(b'png of ' + workdir.encode())


def test_attention_runs_the_segmenting_runs_and_the_untrained_control(tmp_path, monkeypatch, capsys):
  root = str(tmp_path / 'runs')
  flagship = plan.run_dir(root, 'cascade_manet', 4, True, 0)
  control = plan.sweep_dir(root, 4, 0.0, 0)
  for workdir in (flagship, plan.run_dir(root, 'unet_unet', 8, False, 0), control,
                  plan.run_dir(root, 'multidecoder_unet', 4, True, 0), plan.run_dir(root, 'cascade', 4, False, 0)):
    write_run(workdir, ['a/0/0'], {'psnr': np.array([20.0])})
  write_attention(plan.run_dir(root, 'unet_unet', 8, False, 0), 0.3)  # Done already: skipped.
  calls = []
  monkeypatch.setattr(runner.subprocess, 'run', lambda command, **kwargs: calls.append(command))
  cli.main(['attention', f'--root={root}', '--switch=cpu_study', '--seeds=0'])
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
  report.report(root, out)
  found = results.collect_attention(root)
  assert found[('CascadeNet -> MANet (S)', 4)][0][0]['share_to_area_ratio']['mean'] == pytest.approx(8.0)
  assert sorted(found) == [('CascadeNet -> MANet (S)', 4), ('CascadeNet -> MANet (S), seg_loss_weight 0', 4),
                           ('UNet -> UNet', 8)]
  figure = tmp_path / 'docs' / 'figures' / 'results' / 'attention_x4.png'
  assert open(figure, 'rb').read() == b'png of ' + flagship.encode()


@pytest.mark.slow
def test_study_runs_on_a_nifti_folder(tmp_path):
  """The study on data of the user's: a NIfTI folder (ACDC layout) written here, passed with --config.* flags;
  one real run trains, and the report names the data and the settings."""
  folder = str(tmp_path / 'acdc_like')
  phantom_nifti.write_folder(folder, num_patients=4, seed=0, recon_size=(40, 32))
  root = str(tmp_path / 'study')
  overrides = ['--config.dataset_config=nifti', f'--config.manual_dir={folder}', '--config.image_size=32',
               f'--config.data_dir={tmp_path / "tfds"}', '--config.compilation_cache_dir=',
               '--config.num_epochs=1', '--config.batch_size=4', '--config.eval_batch_size=4',
               '--config.num_acs=2', '--config.model.features=4', '--config.model.num_cascades=2',
               '--config.model.num_layers=2']
  command = [sys.executable, '-m', 'segrecon_jax.study', 'run', f'--root={root}', '--switch=runlocal',
             '--tables=2', '--experiments=cascade', '--accelerations=4'] + overrides
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  workdir = plan.run_dir(root, 'cascade', 4, False, 0)
  log = open(os.path.join(workdir, 'log.txt')).read() if os.path.exists(os.path.join(workdir, 'log.txt')) else ''
  assert done.returncode == 0, done.stdout + done.stderr + log
  assert '[study] 1 runs to do (0 already done).' in done.stdout
  metrics = results.read_metrics(workdir)
  assert np.isfinite(metrics['psnr']) and metrics['num_examples'] > 0
  assert results.stored_meta(workdir)['data']['dataset_config'].startswith('nifti')
  out = str(tmp_path / 'results.md')
  subprocess.run([sys.executable, '-m', 'segrecon_jax.study', 'report', f'--root={root}', f'--out={out}'],
                 cwd=REPO, check=True, capture_output=True, timeout=300)
  text = open(out).read()
  assert text.startswith('# Reproduction study: Tables 1 and 2 on `nifti')
  assert f'--config.manual_dir={folder}' in text and 'Data `ocmr/nifti` (source magnitude, images [32, 32]' in text
  assert '| CascadeNet | 1 | ' in text and '## Table 1 (U-Net family; not run yet)' in text
