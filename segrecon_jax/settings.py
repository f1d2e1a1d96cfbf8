"""Every top-level config field, declared once: its default, its role and what it means.

`configs/default.py` builds the base config from `FIELDS` (`base_config`); experiment files and switches override
values, never add fields. The role of a field decides who reads it, so no other module keeps a list of fields:
the config checks (`training/config_checks.py` refuses a field that is not here), the resume policy
(`training/checkpoints.py`: `names(RESUMABLE, DATA_PLACE, RUNTIME)` may change on resume, the rest may not; eval
and predict need the checkpoint's `names(MODEL)`), the data pipeline and the TFDS builder (`names(DATA_BUILDER)`,
in this order, name a derived dataset config) and the study (`names(DATA, DATA_BUILDER, DATA_PLACE)` say which
dataset a run reads).
"""

import dataclasses
from typing import Any, Dict, Optional, Tuple

import ml_collections
from ml_collections import config_dict

# Roles.
DATA = 'data'  # Which examples are served: changes the training.
DATA_BUILDER = 'data_builder'  # A setting of the TFDS `ocmr` builder config (None keeps the config's own value).
DATA_PLACE = 'data_place'  # Where the data live on this machine: may change on resume.
TRAINING = 'training'  # Changes the training (or what its evaluation measures): equal on resume.
RESUMABLE = 'resumable'  # May change on resume: the steps already taken stay the same experiment's.
MODEL = 'model'  # The model and its numerics: training, eval and predict need the checkpoint's.
RUNTIME = 'runtime'  # How and where the run computes (devices, caches, kernels, display): never what.
ROLES = (DATA, DATA_BUILDER, DATA_PLACE, TRAINING, RESUMABLE, MODEL, RUNTIME)


class ConfigError(ValueError):
  """A config field with a value the run cannot use; the message names the field and what is valid."""


@dataclasses.dataclass(frozen=True)
class Field:
  """One top-level config field. `placeholder`: the type of a field whose value may be None (`image_size`)."""
  name: str
  default: Any
  role: str
  doc: str
  placeholder: Optional[type] = None


FIELDS = (
    # Data.
    Field('dataset', 'ocmr', DATA, 'TFDS dataset name (tfds_ocmr/).'),
    Field('dataset_config', 'phantom', DATA,
          "TFDS builder config: 'phantom' (built-in), 'real' (OCMR files) or 'nifti'."),
    Field('data_dir', '', DATA_PLACE,
          "TFDS data_dir; '' means the TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets)."),
    Field('manual_dir', '', DATA_PLACE,
          "'real': OCMR fs_*.h5 files + labels/; 'nifti': a NIfTI/HDF5 folder (tfds_ocmr/README.md)."),
    Field('train_split', 'train', DATA, 'Split trained on.'),
    Field('eval_split', 'test', RESUMABLE, 'Split evaluated on.'),
    Field('num_classes', 4, MODEL, 'Background, LV blood pool, LV myocardium, RV blood pool.'),
    # Settings of the dataset config (tfds_ocmr.OcmrConfig); None keeps the dataset config's own value. Each
    # distinct setting is prepared into its own TFDS folder (e.g. ocmr/real_128x128) and stored with the checkpoint.
    Field('image_size', None, DATA_BUILDER, 'Square side H = W served (phantom 128, real / nifti 256).', int),
    Field('test_fraction', None, DATA_BUILDER, "Target share of examples in test (the paper's 28/183).", float),
    Field('split_seed', None, DATA_BUILDER, 'Seed of the subject shuffle that picks the test subjects (0).', int),
    Field('include_unlabelled', None, DATA_BUILDER, 'Also serve unlabelled frames (False).', bool),
    Field('label_mapping', None, DATA_BUILDER, "nifti: file label v -> ours [v] (ACDC's (0, 3, 2, 1)).", tuple),
    Field('phase_seed', None, DATA_BUILDER, 'nifti: seed of the simulated smooth image phase (0).', int),
    # A small image_size crops the heart out of a large image; a field of view resamples instead (ACDC at 64x64 or
    # 128x128: 160 source pixels keep over 99% of the heart, tfds_ocmr/README.md).
    Field('field_of_view', None, DATA_BUILDER,
          'nifti: side in source pixels of the centred square served resampled to image_size (0: crop / pad).', int),

    # Undersampling.
    Field('acceleration', 8, TRAINING, 'R: each training/eval mask keeps round(W / R) phase-encode lines.'),
    Field('num_acs', 8, TRAINING, 'Central autocalibration lines in every mask (paper: 8).'),
    # Test masks come from this seed and each example's id (subject, slice, frame): identical for every model, and
    # unchanged when the dataset is rebuilt or its split reordered.
    Field('eval_mask_seed', 1234, TRAINING, 'Seed of the test masks.'),

    # Stabilization curriculum (paper eq. 1).
    Field('stabilization', False, TRAINING,
          'Ramp the sampled fraction from 1 - eps down to 1 / R over `patience` epochs (eq. 1).'),
    Field('patience', 20, TRAINING,
          "Eq. 1's P: epochs of the ramp (the paper gives no value; 20 of 100 epochs is our choice)."),
    Field('eps', 0.01, TRAINING,
          "Eq. 1's epsilon: the ramp starts at sampled fraction 1 - eps (paper: \"a small number close to 0\")."),
    # Distinct fractions of the ramp; each compiles the train step's mask sampler once. None = the exact eq. 1
    # (P + 1 levels: one per ramp epoch, then 1 / R); an integer quantizes the ramp's exponent to that many points
    # on the same curve. Typed `object` so that the command line takes both (`--config.schedule_levels=None`, `=4`).
    Field('schedule_levels', 6, TRAINING, 'Levels of the ramp: None (exact eq. 1) or an integer >= 2.', object),

    # Model: a plain dict read by segrecon_jax.models.get_model; experiment files set it.
    Field('model', {'name': 'unet'}, MODEL, 'The model config dict (configs/<experiment>.py).'),
    Field('half_precision', False, MODEL, 'Compute in bfloat16 (params stay float32).'),

    # Loss (paper: l1-l2 reconstruction term + Dice segmentation term, equal weights).
    Field('recon_loss_weight', 1.0, TRAINING, 'Weight of the l1 + l2 reconstruction loss.'),
    Field('seg_loss_weight', 1.0, TRAINING,
          'Weight of the segmentation loss (ignored by solo reconstruction models).'),
    Field('seg_loss', 'dice', TRAINING,
          "Segmentation loss: 'dice' (generalized Dice, the paper's) or 'dice_ce' (+ pixel-mean cross-entropy)."),
    # Log the norms of the reconstruction and segmentation terms' gradients with respect to the reconstruction
    # network's parameters (train_recon_grad_norm, train_seg_grad_norm): a second, 2-wide backward pass through the
    # whole model per step (a markedly slower step, docs/benchmarks.md); the sweep turns it on.
    Field('log_loss_grad_norms', False, TRAINING, 'Log the two loss terms\' gradient norms.'),
    # Automatic balancing of the two terms (joint models; logged as train_seg_weight_effective): 'none' (the
    # fixed weights above), 'grad_norm' (the Dice weight makes its gradient norm on the reconstruction network
    # balance_ratio x the l1-l2 term's, a moving average; costs the 2-wide backward pass of log_loss_grad_norms
    # every step) or 'uncertainty' (Kendall et al. 2018: learned log-variances s_i, sum_i exp(-s_i) w_i L_i + s_i).
    Field('loss_balancing', 'none', TRAINING,
          "A scheme of training/balancing.py by name: 'none', 'grad_norm', 'uncertainty' or a registered one."),
    Field('balance_ratio', 1.0, TRAINING,
          'grad_norm: wanted Dice / l1-l2 gradient-norm ratio on the reconstruction network.'),
    Field('balance_momentum', 0.9, TRAINING,
          "grad_norm: momentum of the Dice weight's moving average over steps, in [0, 1)."),
    Field('uncertainty_learning_rate', 1e-2, TRAINING,
          'uncertainty: constant Adam rate of the log-variances s_i (own rate).'),
    # Explicit focus: the l1-l2 term's pixels weighted 1 + focus_weight * region (the F- metrics' heart box with
    # focus_margin_fraction), normalised to mean 1 per slice so the loss keeps its scale; 0 = off.
    Field('focus_weight', 0.0, TRAINING, "Extra weight of the heart box's pixels in the l1-l2 term."),
    # Where the focus box comes from: 'reference' (the reference labels, a training-time oracle) or 'prediction'
    # (the segmentation network's argmax, no gradient; models that segment only).
    Field('focus_source', 'reference', TRAINING, "'reference' or 'prediction'."),

    # Warm starts (training/warm_start.py), for the two-stage and pretrain-then-fine-tune baselines.
    Field('init_from', '', TRAINING,
          "Workdir of a trained run whose networks initialise this one (the same model, or a solo reconstruction "
          "run as a joint model's recon_net); '' = random."),
    # Two-stage training: with init_from a trained reconstruction, the segmentation network learns on its frozen
    # outputs. The frozen network's parameters and batch statistics stay as loaded.
    Field('freeze_recon', False, TRAINING, "Joint models: never update the reconstruction network."),

    # Optimization (paper section 2.4): Adam.
    Field('learning_rate', 1e-4, TRAINING, 'Adam learning rate.'),
    Field('lr_schedule', 'constant', TRAINING,
          "'constant' (the paper) or 'cosine' (a half-cosine decay to 0 over the run's steps; then num_epochs may "
          'not change on resume).'),
    Field('b1', 0.99, TRAINING, 'Adam beta1 (paper: 0.99).'),
    Field('b2', 0.999, TRAINING, 'Adam beta2.'),
    Field('batch_size', 16, TRAINING, 'Global batch, split evenly over all devices of all hosts.'),
    Field('num_epochs', 100, RESUMABLE, 'Training epochs over the train split (the paper does not say; our choice).'),

    # Evaluation and metrics.
    # Margin added on each side of the heart bounding box for the F- metrics, as a share of the image side: the
    # paper's 8 pixels at 128x128 (round(fraction * H) pixels; 4 at 64x64).
    Field('focus_margin_fraction', 8 / 128, TRAINING, 'Heart-box margin of the F- metrics, a share of the side.'),
    Field('eval_every_epochs', 10, RESUMABLE, 'Evaluate on eval_split every N epochs (and always at the end).'),
    Field('eval_batch_size', 16, RESUMABLE, 'Global eval batch.'),

    # Bookkeeping.
    Field('seed', 0, TRAINING, 'Seeds initialization, masks, data order.'),
    Field('log_every_steps', 10, RESUMABLE, 'Train scalars to TensorBoard every N steps.'),
    Field('checkpoint_every_epochs', 5, RESUMABLE, 'Orbax checkpoint every N epochs (and always at the end).'),
    Field('max_checkpoints_to_keep', 2, RESUMABLE, 'Older checkpoints are deleted.'),
    Field('num_summary_images', 2, RESUMABLE, 'Examples shown in TensorBoard image summaries.'),

    # Runtime only.
    Field('compilation_cache_dir', '~/.cache/segrecon_jax/jax_cache', RUNTIME,
          "Persistent XLA cache; '' disables it."),
    # Compile the train step's programs (compiled.TrainSteps: the update, and a mask sampler per sampled fraction
    # of the schedule) on background threads, in order, while the earlier levels train (parallel.AheadOfTimeSteps);
    # False compiles each when its first epoch starts.
    Field('compile_ahead', True, RUNTIME, 'Compile the later levels of the schedule ahead, in the background.'),
    # 0 = parallel.default_compile_workers(): 1 on CPU (the compiles would take the train step's cores), 2 on a
    # GPU/TPU host, whose cores are otherwise idle.
    Field('compile_workers', 0, RUNTIME, 'Threads compiling ahead; 0 = the default of the platform.'),
    Field('distributed', False, RUNTIME,
          'Call jax.distributed.initialize() (multi-host GPU/TPU; docs/usage.md, Several hosts).'),
    Field('coordinator_address', '', RUNTIME,
          "With distributed: 'host:port' of process 0; '' detects SLURM / TPU pods."),
    Field('num_processes', 0, RUNTIME, 'With coordinator_address: the number of processes.'),
    Field('process_id', 0, RUNTIME, "With coordinator_address: this process's id, 0 .. num_processes - 1."),
    Field('progress_bar', True, RUNTIME, 'tqdm bar on a terminal.'),
    # How the layers are computed, never part of the model (segrecon_jax/models/layers.py). Every value computes
    # the same function with the same parameters, so a checkpoint trains, resumes and evaluates under any.
    Field('conv_impl', 'auto', RUNTIME,
          "'auto' (native CPU kernels on CPU where they build, else XLA), 'xla' or 'native'."),
    Field('upconv_impl', 'auto', RUNTIME,
          "U-Net up-convolutions: 'auto' ('dense' on CPU, else 'xla'), 'xla' or 'dense'."),
)
BY_NAME = {field.name: field for field in FIELDS}


def names(*roles: str) -> Tuple[str, ...]:
  """The fields of `roles`, in declaration order."""
  unknown = sorted(set(roles) - set(ROLES))
  if unknown:
    raise ValueError(f'unknown role(s) {unknown}: expected some of {list(ROLES)} (segrecon_jax/settings.py)')
  return tuple(field.name for field in FIELDS if field.role in roles)


def declare(field: Field) -> None:
  """Adds a field declared outside this file: the knob of a loss-balancing scheme registered from a user's script
  (`training/balancing.py`). Configs built afterwards (`base_config`) have it and the checks accept it. Its role must
  be TRAINING (equal on resume, like every loss setting). Declaring a field again as it is declared does nothing.

  Raises:
    ValueError: another declaration of a declared name, or another role.
  """
  global FIELDS
  existing = BY_NAME.get(field.name)
  if existing is not None:
    if existing != field:
      raise ValueError(f'config.{field.name} is declared already, as {existing}; a field is declared once.')
    return
  if field.role != TRAINING:
    raise ValueError(f'settings.declare({field.name!r}): role {field.role!r}; a declared field has role TRAINING '
                     "('training': equal on resume).")
  FIELDS = FIELDS + (field,)
  BY_NAME[field.name] = field


def data_builder_fields(config) -> Dict[str, Any]:
  """`{field: value}` of the DATA_BUILDER fields that `config` sets (None keeps the dataset config's own value).
  `config` is a ConfigDict or any object with the fields as attributes; a missing field counts as None."""
  values = {name: getattr(config, name, None) for name in names(DATA_BUILDER)}
  return {name: value for name, value in values.items() if value is not None}


def base_config() -> ml_collections.ConfigDict:
  """A ConfigDict with every field at its default (`configs/default.py`'s `get_config`)."""
  config = ml_collections.ConfigDict()
  for field in FIELDS:
    if isinstance(field.default, dict):
      config[field.name] = ml_collections.ConfigDict(field.default)
    elif field.placeholder is not None:
      config[field.name] = config_dict.placeholder(field.placeholder)
      if field.default is not None:
        config[field.name] = field.default
    else:
      config[field.name] = field.default
  return config
