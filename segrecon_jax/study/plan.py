"""What the study runs: the paper's rows, the loss-weight sweep and the loss comparison, each as a list of runs
(label, `main.py` flags, workdir), and the study settings (switch and config overrides) that every run of a root
shares."""

import dataclasses
import json
import os
from typing import List, Optional, Sequence, Tuple

from segrecon_jax import models
from segrecon_jax.training import reporting
from segrecon_jax.training import workdir

# (table, experiment config, stabilization), in the paper's order.
_EXPERIMENTS = ((1, 'unet', False), (1, 'multidecoder_unet', False), (1, 'multidecoder_unet', True),
                (1, 'unet_unet', False), (1, 'unet_unet', True), (2, 'cascade', False), (2, 'cascade_manet', False),
                (2, 'cascade_manet', True))
# (table, method as the paper names it (the registry's display name), experiment config, stabilization)
ROWS = tuple((table, reporting.row_name(models.display_name(experiment), stabilized), experiment, stabilized)
             for table, experiment, stabilized in _EXPERIMENTS)
ACCELERATIONS = (4, 8)
TABLES = (1, 2)
# (column, metric key, +1 when higher is better / -1 when lower is), the paper's columns.
METRICS = (('MSE (x10^3)', 'mse_x1e3', -1), ('PSNR', 'psnr', 1), ('SSIM', 'ssim', 1),
           ('F-MSE (x10^3)', 'f_mse_x1e3', -1), ('F-PSNR', 'f_psnr', 1), ('F-SSIM', 'f_ssim', 1))
SIGNS = {key: sign for _, key, sign in METRICS}
NAMES = {key: name for name, key, _ in METRICS} | {'dice_mean': 'Dice'}
FOCUSED = ('f_mse_x1e3', 'f_psnr', 'f_ssim')
GLOBAL = ('mse_x1e3', 'psnr', 'ssim')

# The paper's Tables 1 and 2 (OCMR, their own labels; MSE x 10^3), in METRICS order. Theirs, not ours.
PAPER = {
    ('UNet', 4): (1.7693, 26.9204, 0.6247, 1.9009, 25.5002, 0.5926),
    ('Multi-Decoder UNet', 4): (1.9693, 26.3084, 0.6651, 2.0209, 25.3396, 0.6318),
    ('Multi-Decoder UNet (S)', 4): (1.7530, 27.1221, 0.7082, 1.7109, 25.8338, 0.6735),
    ('UNet -> UNet', 4): (1.9509, 25.4176, 0.5227, 2.5709, 24.6887, 0.5488),
    ('UNet -> UNet (S)', 4): (1.7474, 27.0973, 0.6729, 1.8174, 26.4023, 0.6475),
    ('UNet', 8): (2.2378, 25.4062, 0.6583, 2.7243, 24.3128, 0.6033),
    ('Multi-Decoder UNet', 8): (2.4312, 25.1512, 0.6532, 2.9125, 24.0712, 0.6219),
    ('Multi-Decoder UNet (S)', 8): (2.2441, 25.2193, 0.6646, 2.6217, 24.7312, 0.6422),
    ('UNet -> UNet', 8): (3.1743, 23.2683, 0.5491, 3.4719, 23.0352, 0.5428),
    ('UNet -> UNet (S)', 8): (2.2782, 25.2931, 0.6529, 2.4174, 24.9023, 0.6375),
    ('CascadeNet', 4): (0.6698, 32.1988, 0.9113, 1.0342, 29.1253, 0.8331),
    ('CascadeNet -> MANet', 4): (0.7640, 31.5884, 0.8563, 1.1980, 28.3712, 0.8131),
    ('CascadeNet -> MANet (S)', 4): (0.7114, 31.4328, 0.8991, 0.9731, 30.0000, 0.8828),
    ('CascadeNet', 8): (1.2825, 28.4301, 0.8259, 1.7826, 25.5156, 0.7728),
    ('CascadeNet -> MANet', 8): (1.7603, 25.2837, 0.7265, 2.4456, 23.3219, 0.6673),
    ('CascadeNet -> MANet (S)', 8): (1.3226, 27.4895, 0.8217, 1.5453, 26.3421, 0.7931),
}

# The loss-weight sweep: CascadeNet -> MANet (S) over seg_loss_weight (0 = solo reconstruction, same network).
SWEEP_EXPERIMENT = 'cascade_manet'
SWEEP_WEIGHTS = (0.0, 0.01, 0.1, 1.0, 10.0)
# The pseudo-attention (`main.py --mode=attention`): the SegRecon rows, the sweep's w = 0 run (a segmentation network
# never trained, whose Dice gradient on the reconstruction is the control) and the segmenting loss methods.
ATTENTION_EXPERIMENTS = ('unet_unet', 'cascade_manet')


@dataclasses.dataclass(frozen=True)
class LossMethod:
  """One way of training the reconstruction, compared against solo CascadeNet (docs/results.md, loss section)."""
  name: str  # Folder name under ROOT/losses/.
  label: str  # Name in the tables and figure.
  experiment: str  # configs/<experiment>.py.
  stabilized: bool
  overrides: Tuple[Tuple[str, object], ...]  # Config fields set on top of the preset.


# Region weight of the explicit-focus methods (config.focus_weight): with the loss normalised to mean weight 1 per
# slice, a heart box of about a tenth of the image then carries about a third of the l1-l2 term instead of a tenth.
FOCUS_WEIGHT = 4.0
# The loss comparison. The fixed weights 1 (the paper) and the solo baseline are Table 2's own runs, not repeated here.
# grad_norm at balance_ratio 0.1 asks the Dice term for a tenth of the l1-l2 term's gradient norm on the
# reconstruction network: the share the best fixed weight of the sweep (w = 0.01) gave it on the phantom.
LOSS_METHODS = (
    LossMethod('w0.01', 'CascadeNet -> MANet (S), w = 0.01', 'cascade_manet', True, (('seg_loss_weight', 0.01),)),
    LossMethod('grad_norm', 'CascadeNet -> MANet (S), grad-norm balancing', 'cascade_manet', True,
               (('loss_balancing', 'grad_norm'),)),
    LossMethod('grad_norm_0.1', 'CascadeNet -> MANet (S), grad-norm balancing at ratio 0.1', 'cascade_manet', True,
               (('loss_balancing', 'grad_norm'), ('balance_ratio', 0.1))),
    LossMethod('uncertainty', 'CascadeNet -> MANet (S), uncertainty weights', 'cascade_manet', True,
               (('loss_balancing', 'uncertainty'),)),
    LossMethod('focus_prediction', 'CascadeNet -> MANet (S), grad-norm 0.1 + focus (predicted)', 'cascade_manet',
               True, (('loss_balancing', 'grad_norm'), ('balance_ratio', 0.1), ('focus_weight', FOCUS_WEIGHT),
                      ('focus_source', 'prediction'))),
    LossMethod('focus_reference', 'CascadeNet + focus (reference, oracle)', 'cascade', False,
               (('focus_weight', FOCUS_WEIGHT), ('focus_source', 'reference'))),
    # The recommended balancing with cross-entropy added to the Dice term (losses.SEG_LOSSES): on ACDC the Dice term
    # alone left the right ventricle unlearned in most runs. Its Dice reference is the two-stage baseline trained
    # with the same segmentation loss (two_stage_ce).
    LossMethod('grad_norm_0.1_ce', 'CascadeNet -> MANet (S), grad-norm 0.1, Dice + cross-entropy', 'cascade_manet',
               True, (('loss_balancing', 'grad_norm'), ('balance_ratio', 0.1), ('seg_loss', 'dice_ce'))),
    # The same without the stabilization ramp: trained at 1 / R from the first step, like solo CascadeNet, so that
    # a joint-minus-solo difference holds the loss's share alone, not the curriculum's.
    LossMethod('grad_norm_0.1_ce_noramp', 'CascadeNet -> MANet, grad-norm 0.1, Dice + cross-entropy (no ramp)',
               'cascade_manet', False,
               (('loss_balancing', 'grad_norm'), ('balance_ratio', 0.1), ('seg_loss', 'dice_ce'))),
)
# Pairs of loss methods (or baselines) that differ in one ingredient: (with it, without it, what it is). The report
# pairs them slice by slice, so that each ingredient's own share of a method's gain has its interval.
LOSS_INGREDIENTS = (
    ('focus_prediction', 'grad_norm_0.1', 'the predicted focus (f = 4), at grad-norm ratio 0.1'),
    ('grad_norm_0.1', 'grad_norm', 'grad-norm ratio 0.1 instead of 1'),
    ('grad_norm_0.1', 'w0.01', 'grad-norm ratio 0.1 instead of the fixed w = 0.01'),
    ('grad_norm_0.1_ce', 'grad_norm_0.1', 'cross-entropy added to the Dice term, at grad-norm ratio 0.1'),
    ('grad_norm_0.1_ce', 'grad_norm_0.1_ce_noramp', 'the stabilization ramp, at grad-norm 0.1, Dice + cross-entropy'),
)

LOSS_BASELINES = ((models.display_name('cascade'), 'cascade', False),
                  (reporting.row_name(models.display_name('cascade_manet'), True) + ', w = 1', 'cascade_manet', True))

class StudyError(ValueError):
  """A call the study refuses, or runs that failed: the command line prints the message as one paragraph and exits
  with code 2 (as main.py does for a user error)."""


# Fields every run of the study sets itself: overrides may not touch them.
MANAGED_FIELDS = ('seed', 'acceleration', 'stabilization', 'workdir', 'progress_bar')


@dataclasses.dataclass(frozen=True)
class Run:
  label: str  # For the log, e.g. 'CascadeNet x4 seed 0'.
  flags: Tuple[str, ...]  # main.py's config flags.
  workdir: str


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every run under one study root shares: the config switch and config overrides (`--config.key=value`,
  e.g. the data: `--config.dataset_config=nifti --config.manual_dir=DIR --config.image_size=128`)."""
  switch: str = 'cpu_study'
  overrides: Tuple[str, ...] = ()

  def __post_init__(self):
    for flag in self.overrides:
      if not flag.startswith('--config.') or '=' not in flag:
        raise ValueError(f'study override {flag!r}: expected --config.<field>=<value>, as for main.py')
      field = flag[len('--config.'):].split('=', 1)[0].split('.')[0]
      if field in MANAGED_FIELDS:
        raise ValueError(f'study override {flag!r}: the study sets config.{field} itself for every run')

  def describe(self) -> str:
    return f"--switch='{self.switch}'" + ''.join(f' {flag}' for flag in self.overrides)


SETTINGS_FILE = 'study.json'  # ROOT/study.json: the Settings every run under the root was started with.


def save_settings(root: str, settings: Settings) -> None:
  """Records `settings` in ROOT/study.json, or checks they equal the recorded ones (a root is one study: runs
  trained on other data or at another scale must not mix into its tables)."""
  recorded = load_settings(root)
  if recorded is not None and recorded != settings:
    raise StudyError(f'{os.path.join(root, SETTINGS_FILE)} records the study settings {recorded.describe()}, but '
                     f'this call has {settings.describe()}: use the same settings, or another --root')
  if recorded is None:
    workdir.write_text_atomic(os.path.join(root, SETTINGS_FILE),
                              json.dumps({'switch': settings.switch, 'overrides': list(settings.overrides)}, indent=2))


def load_settings(root: str) -> Optional[Settings]:
  path = os.path.join(root, SETTINGS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  return Settings(record.get('switch', ''), tuple(record.get('overrides', ())))


def config_arg(experiment: str, acceleration: int, stabilized: bool, switch: str) -> str:
  preset = f'x{acceleration}' + ('_stab' if stabilized else '')
  return f'configs/{experiment}.py:{preset}' + (f',{switch}' if switch else '')


def run_dir(root: str, experiment: str, acceleration: int, stabilized: bool, seed: int) -> str:
  return os.path.join(root, f'{experiment}_x{acceleration}' + ('_stab' if stabilized else ''), f'seed{seed}')


def sweep_dir(root: str, acceleration: int, weight: float, seed: int) -> str:
  return os.path.join(root, 'sweep', f'{SWEEP_EXPERIMENT}_x{acceleration}_stab_w{weight:g}', f'seed{seed}')


def loss_dir(root: str, method: str, acceleration: int, seed: int) -> str:
  return os.path.join(root, 'losses', f'{method}_x{acceleration}', f'seed{seed}')


def _flags(settings: Settings, experiment: str, acceleration: int, stabilized: bool, seed: int,
           fields: Sequence[Tuple[str, object]] = ()) -> Tuple[str, ...]:
  return ((f'--config={config_arg(experiment, acceleration, stabilized, settings.switch)}',)
          + tuple(f'--config.{k}={v:g}' if isinstance(v, float) else f'--config.{k}={v}' for k, v in fields)
          + (f'--config.seed={seed}',) + settings.overrides)


def table_runs(root: str, settings: Settings, seeds: Sequence[int], tables: Sequence[int] = TABLES,
               accelerations: Sequence[int] = ACCELERATIONS,
               experiments: Optional[Sequence[str]] = None) -> List[Run]:
  """Every (row, acceleration, seed): seed by seed; within a seed the tables in the order of `tables`, each at every
  acceleration."""
  runs = []
  for seed in seeds:
    for table in tables:
      for acceleration in accelerations:
        for number, method, experiment, stabilized in ROWS:
          if number == table and (not experiments or experiment in experiments):
            runs.append(Run(f'{method} x{acceleration} seed {seed}',
                            _flags(settings, experiment, acceleration, stabilized, seed),
                            run_dir(root, experiment, acceleration, stabilized, seed)))
  return runs


def sweep_fields(weight: float) -> Tuple[Tuple[str, object], ...]:
  return (('seg_loss_weight', float(weight)), ('log_loss_grad_norms', True))


def sweep_runs(root: str, settings: Settings, seeds: Sequence[int], weights: Sequence[float] = SWEEP_WEIGHTS,
               accelerations: Sequence[int] = ACCELERATIONS) -> List[Run]:
  """CascadeNet -> MANet (S) at every (acceleration, seg_loss_weight, seed), logging both terms' gradient norms."""
  return [Run(f'{models.display_name(SWEEP_EXPERIMENT)} (S) x{acceleration} seg_loss_weight {weight:g} seed {seed}',
              _flags(settings, SWEEP_EXPERIMENT, acceleration, True, seed, sweep_fields(weight)),
              sweep_dir(root, acceleration, weight, seed))
          for seed in seeds for acceleration in accelerations for weight in weights]


def loss_methods(names: Optional[Sequence[str]] = None) -> List[LossMethod]:
  known = {m.name: m for m in LOSS_METHODS}
  unknown = sorted(set(names or ()) - set(known))
  if unknown:
    raise StudyError(f'--methods: unknown loss method(s) {unknown}: known are {sorted(known)}')
  return [m for m in LOSS_METHODS if not names or m.name in names]


def loss_runs(root: str, settings: Settings, seeds: Sequence[int], methods: Optional[Sequence[str]] = None,
              accelerations: Sequence[int] = ACCELERATIONS) -> List[Run]:
  """Every (loss method, acceleration, seed) into ROOT/losses/<method>_x<R>/seed<k>; seed by seed."""
  return [Run(f'{method.label} x{acceleration} seed {seed}',
              _flags(settings, method.experiment, acceleration, method.stabilized, seed, method.overrides),
              loss_dir(root, method.name, acceleration, seed))
          for seed in seeds for acceleration in accelerations for method in loss_methods(methods)]


def attention_runs(root: str, settings: Settings, seeds: Sequence[int],
                   accelerations: Sequence[int] = ACCELERATIONS) -> List[Run]:
  """Every SegRecon row, sweep w = 0 run and segmenting loss method of `seeds` (finished or not)."""
  runs = []
  for seed in seeds:
    for acceleration in accelerations:
      runs += table_runs(root, settings, [seed], accelerations=[acceleration], experiments=ATTENTION_EXPERIMENTS)
      runs += sweep_runs(root, settings, [seed], [0.0], [acceleration])
      segmenting = [m.name for m in LOSS_METHODS if models.segments(m.experiment)]
      runs += loss_runs(root, settings, [seed], segmenting, [acceleration])
  return runs


# Convergence (docs/results.md): solo CascadeNet and joint loss methods (by default the recommended one) trained
# CONVERGENCE_FACTOR times the switch's epochs (the ramp and the evaluations scaled alike), evaluated
# CONVERGENCE_POINTS times along the way, so the paired gain can be drawn against training steps; beside them the
# two-stage baseline of each method's segmentation loss at the same budget, its Dice reference.
CONVERGENCE_FACTOR = 4
CONVERGENCE_POINTS = 8
RECOMMENDED = 'grad_norm_0.1'  # The loss method the README recommends (LOSS_METHODS).
CONVERGENCE_SOLO = 'cascade'  # Folder name of solo CascadeNet under ROOT/converge/.


def converge_dir(root: str, name: str, acceleration: int, seed: int) -> str:
  return os.path.join(root, 'converge', f'{name}_x{acceleration}', f'seed{seed}')


def _converge_schedule(epochs: int, patience: int) -> Tuple[Tuple[str, int], ...]:
  total = CONVERGENCE_FACTOR * epochs
  every = max(total // CONVERGENCE_POINTS, 1)
  return (('num_epochs', total), ('patience', CONVERGENCE_FACTOR * patience), ('eval_every_epochs', every),
          ('checkpoint_every_epochs', every))


def converge_runs(root: str, settings: Settings, seeds: Sequence[int], epochs: int, patience: int,
                  accelerations: Sequence[int] = ACCELERATIONS,
                  methods: Optional[Sequence[str]] = None) -> Tuple[List[Run], List[Run]]:
  """(solo CascadeNet and every loss method in `methods` (default: RECOMMENDED), for every acceleration and seed, at
  CONVERGENCE_FACTOR x `epochs` (the switch's num_epochs) with the ramp over CONVERGENCE_FACTOR x `patience` epochs;
  the two-stage baselines at that budget that those methods' Dice is held to (two_stage_reference), each starting
  from the first list's solo run: MANet trained as long on its frozen outputs), which the runner starts once that run
  has finished."""
  chosen = loss_methods(methods or [RECOMMENDED])
  references = list(dict.fromkeys(two_stage_reference(m.overrides) for m in chosen if models.segments(m.experiment)))
  schedule = _converge_schedule(epochs, patience)
  suffix = f', {CONVERGENCE_FACTOR}x the epochs'
  first, second = [], []
  for seed in seeds:
    for acceleration in accelerations:
      solo = converge_dir(root, CONVERGENCE_SOLO, acceleration, seed)
      first.append(Run(f'{models.display_name("cascade")} x{acceleration} seed {seed}{suffix}',
                       _flags(settings, 'cascade', acceleration, False, seed, schedule), solo))
      first += [Run(f'{m.label} x{acceleration} seed {seed}{suffix}',
                    _flags(settings, m.experiment, acceleration, m.stabilized, seed, m.overrides + schedule),
                    converge_dir(root, m.name, acceleration, seed)) for m in chosen]
      second += [Run(f'{BASELINE_LABELS[name]} x{acceleration} seed {seed}{suffix}',
                     _flags(settings, 'cascade_manet', acceleration, False, seed,
                            _two_stage_fields(solo, name) + schedule),
                     converge_dir(root, name, acceleration, seed)) for name in references]
  return first, second


# Baselines beside end-to-end training (docs/results.md), each from a solo CascadeNet:
#   two_stage   Table 2's solo CascadeNet run, frozen, then MANet trained on its outputs for the switch's epochs
#               (training/warm_start.py: init_from, freeze_recon; stop_gradient spares the frozen backward pass).
#   finetune    solo CascadeNet for the first half of the switch's epochs (ROOT/baselines/pretrain_x<R>), then the
#               joint model with the recommended balancing from it for the second half: the same total steps as the
#               end-to-end runs. Not stabilized: the ramp is a cold start's curriculum, and the network starts
#               trained at 1 / R.
#   two_stage_ce  two_stage with the segmentation loss Dice + cross-entropy: the Dice reference of the methods
#               trained with that loss.
BASELINES = ('two_stage', 'finetune', 'two_stage_ce')
BASELINE_LABELS = {'two_stage': 'two-stage: CascadeNet, then MANet on its frozen outputs',
                   'two_stage_ce': 'two-stage, MANet trained with Dice + cross-entropy',
                   'finetune': 'CascadeNet pretrained, then fine-tuned jointly (grad-norm 0.1)',
                   'pretrain': 'CascadeNet, first half of the epochs (the fine-tune\'s start)'}


# The two-stage baselines by the segmentation loss their MANet trains with (losses.SEG_LOSSES; 'dice' is the
# config's default). A method's Dice is held to the one trained with its own segmentation loss.
TWO_STAGES = {'two_stage': 'dice', 'two_stage_ce': 'dice_ce'}


def _two_stage_fields(solo_workdir: str, name: str = 'two_stage') -> Tuple[Tuple[str, object], ...]:
  """The config of two-stage baseline `name` (TWO_STAGES) from that solo run."""
  seg_loss = (('seg_loss', TWO_STAGES[name]),) if TWO_STAGES[name] != TWO_STAGES['two_stage'] else ()
  return (('init_from', solo_workdir), ('freeze_recon', True), ('model.stop_gradient', True)) + seg_loss


def two_stage_reference(overrides: Sequence[Tuple[str, object]]) -> str:
  """The two-stage baseline (TWO_STAGES) whose Dice a method with these config overrides is held to: the one
  trained with the same segmentation loss."""
  seg_loss = dict(overrides).get('seg_loss', TWO_STAGES['two_stage'])
  return next(name for name, loss in TWO_STAGES.items() if loss == seg_loss)


def baseline_dir(root: str, name: str, acceleration: int, seed: int) -> str:
  return os.path.join(root, 'baselines', f'{name}_x{acceleration}', f'seed{seed}')


def baseline_runs(root: str, settings: Settings, seeds: Sequence[int], epochs: int,
                  accelerations: Sequence[int] = ACCELERATIONS) -> Tuple[List[Run], List[Run]]:
  """(the runs the baselines start from: Table 2's solo CascadeNet and the half-length pretraining; the baselines
  themselves), for every acceleration and seed. Each run of the second list starts from one of the first
  (`--config.init_from`), which the runner waits for."""
  first, second = [], []
  pretrain_epochs = max(epochs // 2, 1)
  recommended = next(m.overrides for m in LOSS_METHODS if m.name == RECOMMENDED)
  for seed in seeds:
    for acceleration in accelerations:
      first += table_runs(root, settings, [seed], [2], [acceleration], ['cascade'])
      pretrain = baseline_dir(root, 'pretrain', acceleration, seed)
      first.append(Run(f'{BASELINE_LABELS["pretrain"]} x{acceleration} seed {seed}',
                       _flags(settings, 'cascade', acceleration, False, seed, (('num_epochs', pretrain_epochs),)),
                       pretrain))
      solo = run_dir(root, 'cascade', acceleration, False, seed)
      second += [Run(f'{BASELINE_LABELS[name]} x{acceleration} seed {seed}',
                     _flags(settings, 'cascade_manet', acceleration, False, seed, _two_stage_fields(solo, name)),
                     baseline_dir(root, name, acceleration, seed)) for name in TWO_STAGES]
      second.append(Run(f'{BASELINE_LABELS["finetune"]} x{acceleration} seed {seed}',
                        _flags(settings, 'cascade_manet', acceleration, False, seed,
                               recommended + (('init_from', pretrain), ('num_epochs', epochs - pretrain_epochs))),
                        baseline_dir(root, 'finetune', acceleration, seed)))
  return first, second
