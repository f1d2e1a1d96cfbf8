"""Base configuration shared by every experiment; experiment files override fields, never redefine them.

Presets and switches (`configs/<experiment>.py:<preset>[,<switch>...]`) are parsed by `parse_arg` below:
  presets   x4, x8 (acceleration; no stabilization), x4_stab, x8_stab (the paper's "(S)" rows, joint models only)
  switches  runlocal (a CPU smoke run: small phantom, 64x64 images, narrow networks, a few epochs)
            demo (the README's main job: runlocal's widths on the 64x64 phantom_medium, trained with a faster
            optimizer long enough to learn visibly; see `apply_demo`)
            cpu_study (the reduced-scale reproduction study of docs/results.md: runlocal's widths on the larger
            64x64 phantom_medium, trained longer with a faster optimizer; see `apply_cpu_study`)
            paper_regime (cpu_study's data, image size and widths trained with the paper's optimizer for 100
            epochs at batch 16; see `apply_paper_regime`)
"""

import ml_collections
from ml_collections import config_dict

ACCELERATION_PRESETS = {
    'x4': dict(acceleration=4, stabilization=False),
    'x8': dict(acceleration=8, stabilization=False),
    'x4_stab': dict(acceleration=4, stabilization=True),
    'x8_stab': dict(acceleration=8, stabilization=True),
}
SWITCHES = ('runlocal', 'demo', 'cpu_study', 'paper_regime')


def get_config():
  """The fields every experiment has, with paper defaults (section 2.4) where the paper gives them."""
  config = ml_collections.ConfigDict()

  # Data.
  config.dataset = 'ocmr'  # TFDS dataset name (tfds_ocmr/).
  config.dataset_config = 'phantom'  # TFDS builder config: 'phantom' (built-in), 'real' (OCMR files) or 'nifti'.
  config.data_dir = ''  # TFDS data_dir; '' means the TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  config.manual_dir = ''  # 'real': OCMR fs_*.h5 files + labels/; 'nifti': a NIfTI/HDF5 folder (tfds_ocmr/README.md).
  config.train_split = 'train'  # Split trained on.
  config.eval_split = 'test'  # Split evaluated on.
  config.num_classes = 4  # Background, LV blood pool, LV myocardium, RV blood pool.
  # Settings of the dataset config (tfds_ocmr.OcmrConfig); None keeps the dataset config's own value. Each distinct
  # setting is prepared into its own TFDS folder (e.g. ocmr/real_128x128) and stored with the checkpoint.
  config.image_size = config_dict.placeholder(int)  # Square side H = W served (phantom 128, real / nifti 256).
  config.test_fraction = config_dict.placeholder(float)  # Target share of examples in test (the paper's 28/183).
  config.split_seed = config_dict.placeholder(int)  # Seed of the subject shuffle that picks the test subjects (0).
  config.include_unlabelled = config_dict.placeholder(bool)  # Also serve unlabelled frames (False).
  config.label_mapping = config_dict.placeholder(tuple)  # nifti: file label v -> ours [v] (ACDC's (0, 3, 2, 1)).
  config.phase_seed = config_dict.placeholder(int)  # nifti: seed of the simulated smooth image phase (0).

  # Undersampling.
  config.acceleration = 8  # R: each training/eval mask keeps round(W / R) phase-encode lines.
  config.num_acs = 8  # Central autocalibration lines in every mask (paper: 8).
  # Test masks come from this seed and each example's id (subject, slice, frame): identical for every model, and
  # unchanged when the dataset is rebuilt or its split reordered.
  config.eval_mask_seed = 1234

  # Stabilization curriculum (paper eq. 1).
  config.stabilization = False  # Ramp the sampled fraction from 1 - eps down to 1 / R over `patience` epochs.
  config.patience = 20  # P: epochs of the ramp (the paper gives no value; 20 of 100 epochs is our choice).
  config.eps = 0.01  # The ramp starts at sampled fraction 1 - eps (paper: "a small number close to 0").
  # Distinct fractions of the ramp; each compiles the train step once. None = the exact eq. 1 (P + 1 levels: one
  # per ramp epoch, then 1 / R); an integer quantizes the ramp's exponent to that many points on the same curve.
  # Typed `object` so that the command line takes both (`--config.schedule_levels=None`, `=4`); checked in
  # config_checks.
  config.schedule_levels = config_dict.placeholder(object)
  config.schedule_levels = 6

  # Model: a plain dict read by segrecon_jax.models.get_model; experiment files set it.
  config.model = ml_collections.ConfigDict({'name': 'unet'})

  # Loss (paper: l1-l2 reconstruction term + Dice segmentation term, equal weights).
  config.recon_loss_weight = 1.0  # Weight of the l1 + l2 reconstruction loss.
  config.seg_loss_weight = 1.0  # Weight of the generalized Dice loss (ignored by solo reconstruction models).
  config.l1_weight = 1.0  # Weight of l1 inside the reconstruction loss.
  config.l2_weight = 1.0  # Weight of l2 inside the reconstruction loss.
  # Log the norms of the reconstruction and segmentation terms' gradients with respect to the reconstruction
  # network's parameters (train_recon_grad_norm, train_seg_grad_norm): a second, 2-wide backward pass through the
  # whole model per step (a markedly slower step, docs/benchmarks.md); the sweep turns it on.
  config.log_loss_grad_norms = False
  # Automatic balancing of the two terms (models that segment; logged as train_seg_weight_effective): 'none' (the
  # fixed weights above), 'grad_norm' (the Dice weight makes its gradient norm on the reconstruction network
  # balance_ratio x the l1-l2 term's, a moving average; costs the 2-wide backward pass of log_loss_grad_norms every
  # step) or 'uncertainty' (Kendall et al. 2018: learned log-variances s_i, sum_i exp(-s_i) w_i L_i + s_i).
  config.loss_balancing = 'none'
  config.balance_ratio = 1.0  # grad_norm: wanted Dice / l1-l2 gradient-norm ratio on the reconstruction network.
  config.balance_momentum = 0.9  # grad_norm: momentum of the Dice weight's moving average over steps, in [0, 1).
  config.uncertainty_learning_rate = 1e-2  # uncertainty: constant Adam rate of the log-variances s_i (own rate).
  # Explicit focus: the l1-l2 term's pixels weighted 1 + focus_weight * region (the F- metrics' heart box with
  # focus_margin_fraction), normalised to mean 1 per slice so the loss keeps its scale; 0 = off.
  config.focus_weight = 0.0
  # Where the focus box comes from: 'reference' (the reference labels, a training-time oracle) or 'prediction'
  # (the segmentation network's argmax, no gradient; models that segment only).
  config.focus_source = 'reference'

  # Optimization (paper section 2.4).
  config.optimizer = 'adam'  # Only Adam is used in the paper.
  config.learning_rate = 1e-4  # Adam learning rate.
  # 'constant' (the paper) or 'cosine' (a half-cosine decay to 0 over the run's steps; then num_epochs may not
  # change on resume).
  config.lr_schedule = 'constant'
  config.b1 = 0.99  # Adam beta1 (paper: 0.99).
  config.b2 = 0.999  # Adam beta2.
  config.batch_size = 16  # Global batch, split evenly over all devices of all hosts.
  config.num_epochs = 100  # Training epochs over the train split (the paper does not say; our choice).
  config.half_precision = False  # Compute in bfloat16 (params stay float32).

  # Evaluation and metrics.
  # Margin added on each side of the heart bounding box for the F- metrics, as a share of the image side: the
  # paper's 8 pixels at 128x128 (round(fraction * H) pixels; 4 at 64x64).
  config.focus_margin_fraction = 8 / 128
  config.eval_every_epochs = 10  # Evaluate on eval_split every N epochs (and always at the end).
  config.eval_batch_size = 16  # Global eval batch.

  # Bookkeeping.
  config.seed = 0  # Seeds initialization, masks, data order.
  config.log_every_steps = 10  # Train scalars to TensorBoard every N steps.
  config.checkpoint_every_epochs = 5  # Orbax checkpoint every N epochs (and always at the end).
  config.max_checkpoints_to_keep = 2  # Older checkpoints are deleted.
  config.compilation_cache_dir = '~/.cache/segrecon_jax/jax_cache'  # Persistent XLA cache; '' disables it.
  # Compile the train step's programs (compiled.TrainSteps: the update, and a mask sampler per sampled fraction of the
  # schedule) on background threads, in order, while the earlier levels train (parallel.AheadOfTimeSteps); False
  # compiles each when its first epoch starts.
  config.compile_ahead = True
  # Threads compiling ahead; 0 = parallel.default_compile_workers(): 1 on CPU (the compiles would take the train
  # step's cores), 2 on a GPU/TPU host, whose cores are otherwise idle.
  config.compile_workers = 0
  config.distributed = False  # Call jax.distributed.initialize() (multi-host GPU/TPU; see README, Multi-host).
  config.coordinator_address = ''  # With distributed: 'host:port' of process 0; '' detects SLURM / TPU pods.
  config.num_processes = 0  # With coordinator_address: the number of processes.
  config.process_id = 0  # With coordinator_address: this process's id, 0 .. num_processes - 1.
  config.progress_bar = True  # tqdm bar on a terminal.
  config.num_summary_images = 2  # Examples shown in TensorBoard image summaries.

  # Runtime only: how the layers are computed, never part of the model (segrecon_jax/models/layers.py). Every value
  # computes the same function with the same parameters, so a checkpoint trains, resumes and evaluates under any.
  config.conv_impl = 'auto'  # 'auto' (native CPU kernels on CPU where they build, else XLA), 'xla' or 'native'.
  config.upconv_impl = 'auto'  # U-Net up-convolutions: 'auto' ('dense' on CPU, else 'xla'), 'xla' or 'dense'.
  return config


def parse_arg(arg, presets, allow_stabilization=True):
  """Splits 'preset[,switch...]' and checks every part against the valid names.

  Returns:
    (preset fields dict, set of switches).
  """
  valid = {k: v for k, v in presets.items() if allow_stabilization or not v.get('stabilization')}
  parts = [p.strip() for p in (arg or '').split(',') if p.strip()]
  if not parts or parts[0] not in valid:
    raise ValueError(f'Unknown or missing preset {parts[0] if parts else arg!r}: valid presets are '
                     f'{sorted(valid)} (switches after a comma: {list(SWITCHES)}).')
  switches = set(parts[1:])
  unknown = switches - set(SWITCHES)
  if unknown:
    raise ValueError(f'Unknown switch(es) {sorted(unknown)} in {arg!r}: valid switches are {list(SWITCHES)}.')
  return dict(valid[parts[0]]), switches


def small_image_acs(acceleration) -> int:
  """ACS lines at 64 phase-encode lines: the paper's 8 wherever they leave at least as many lines drawn at random
  (x4 keeps 16 = 8 ACS + 8 drawn), else half the kept lines (x8 keeps 8 = 4 ACS + 4 drawn; 8 ACS would make
  every x8 mask the same low-pass one)."""
  return min(8, round(64 / acceleration) // 2)


def apply_runlocal(config):
  """Shrinks data, image size, widths and epochs to a CPU smoke run."""
  config.dataset_config = 'phantom_small'
  config.num_acs = small_image_acs(config.acceleration)
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_epochs = 20
  config.patience = 10
  config.schedule_levels = 3
  config.eval_every_epochs = 10
  config.checkpoint_every_epochs = 5
  config.log_every_steps = 5
  config.num_summary_images = 1
  return config


def apply_demo(config):
  """The README's main job: a short CPU run that visibly learns (its duration is in the README).

  runlocal's widths and batch on `phantom_medium` (204 train / 36 test 64x64 slices). Adam at lr 2e-3, b1 0.9,
  decayed along a half cosine to 0 (the paper's constant lr 1e-4, b1 0.99 barely moves these networks in a few
  hundred steps; at a constant 1e-3 the mean Dice was 0.60 after 500 steps, 0.62 after 700), 20 epochs = 500
  steps, and the exact eq. 1 ramp over P = 2 epochs (3 levels, so 3 compiles of the train step). The README runs it at x4:
  16 of the 64 phase-encode lines with the paper's 8 ACS lines, as many lines as the paper's x8 keeps at 128x128
  (at x8, 64x64 keeps 8 lines, and 500 steps gain under 2 dB).
  """
  apply_runlocal(config)
  config.dataset_config = 'phantom_medium'
  config.num_epochs = 20
  config.patience = 2
  config.schedule_levels = None
  config.learning_rate = 2e-3
  config.lr_schedule = 'cosine'
  config.b1 = 0.9
  config.eval_every_epochs = 20
  config.checkpoint_every_epochs = 10
  config.log_every_steps = 25
  return config


def apply_cpu_study(config):
  """The reduced-scale reproduction study of docs/results.md, sized for its rows x seeds on 2 cores.

  runlocal's image size, widths and batch, on `phantom_medium` (the 64x64 phantom with 4x phantom_small's subjects:
  204 train / 36 test slices; on phantom_small's 51 slices the U-Nets memorised the anatomy and stayed at the
  zero-filled quality), for 16 epochs (~400 steps), with the exact eq. 1 ramp over P = 8 epochs (9 levels). The
  paper's Adam (constant lr 1e-4, b1 0.99) barely moves the small models in so few steps, so the study uses the
  demo's optimizer, lr 2e-3 (b1 0.9) decayed along a half cosine; docs/results.md states this beside its tables.
  """
  apply_runlocal(config)
  config.dataset_config = 'phantom_medium'
  config.num_epochs = 16
  config.patience = 8
  config.schedule_levels = None
  config.learning_rate = 2e-3
  config.lr_schedule = 'cosine'
  config.b1 = 0.9
  config.eval_every_epochs = 16
  config.checkpoint_every_epochs = 8
  return config


def apply_paper_regime(config):
  """cpu_study's data (`phantom_medium`), image size and widths, trained in the paper's regime (section 2.4).

  Adam at the paper's constant lr 1e-4, b1 0.99, for 100 epochs at the paper's batch of 16: phantom_medium's 204
  train slices give 12 steps an epoch, 1,200 steps (3x cpu_study's 400 at twice its batch). The stabilization ramp
  runs over P = 20 epochs (the paper gives no P; this is the base config's 20 of 100 epochs) with the exact eq. 1
  schedule (21 levels; a level compiles only the mask sampler). Evaluation every 2 epochs (24 steps, 50 points) so
  the early training curves, where a joint model may stall, are visible.
  """
  apply_cpu_study(config)
  config.learning_rate = 1e-4
  config.lr_schedule = 'constant'
  config.b1 = 0.99
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_epochs = 100
  config.patience = 20
  config.schedule_levels = None
  config.eval_every_epochs = 2
  config.checkpoint_every_epochs = 10
  config.log_every_steps = 12
  return config


def build(base_fields, arg, presets=ACCELERATION_PRESETS, allow_stabilization=True):
  """Base config + experiment fields + preset + switches; the common body of every experiment's get_config."""
  config = get_config()
  preset, switches = parse_arg(arg, presets, allow_stabilization)
  config.update(base_fields)
  config.update(preset)
  scales = switches & {'runlocal', 'demo', 'cpu_study', 'paper_regime'}
  if len(scales) > 1:
    raise ValueError(f'Switches runlocal, demo, cpu_study and paper_regime exclude each other (each sets the whole '
                     f'training scale; paper_regime already has cpu_study\'s data and widths); {arg!r} has '
                     f'{sorted(scales)}.')
  if 'paper_regime' in switches:
    apply_paper_regime(config)
  elif 'cpu_study' in switches:
    apply_cpu_study(config)
  elif 'demo' in switches:
    apply_demo(config)
  elif 'runlocal' in switches:
    apply_runlocal(config)
  if switches & {'demo', 'cpu_study', 'paper_regime'}:
    switches = switches | {'runlocal'}  # The experiment files shrink the widths as for runlocal.
  return config, switches
