"""Checks of an experiment config's values before anything runs: each bad value gets one paragraph naming the field."""

import collections
import numbers
import os
import re
from typing import Optional, Sequence, Tuple

from absl import flags

from segrecon_jax import losses
from segrecon_jax import models
from segrecon_jax import mri
from segrecon_jax import settings
from segrecon_jax.models import layers
from segrecon_jax.training import balancing
from segrecon_jax.training import steps
from segrecon_jax.training import warm_start


# JAX keys (`jax.random.PRNGKey`, `jax.random.key`) keep a seed's low 32 bits (64-bit mode is off): seed 2**32 gives
# the keys of seed 0. The seeds that map one-to-one onto keys are 0 .. KEY_SEEDS - 1.
KEY_SEEDS = 2**32


ConfigError = settings.ConfigError  # Declared with the fields, so that any layer may raise it.


def _number(config, field: str):
  value = config[field]
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ConfigError(f'config.{field}={value!r}: expected a number.')
  return value


def _at_least(config, field: str, minimum, what: str) -> None:
  if _number(config, field) < minimum:
    raise ConfigError(f'config.{field}={config[field]!r}: {what}.')


def _integer(config, field: str, minimum: int, what: str) -> None:
  value = _number(config, field)
  if not float(value).is_integer() or value < minimum:
    raise ConfigError(f'config.{field}={config[field]!r}: {what}.')


def check_config(config) -> None:
  """Raises ConfigError for a value that would fail later (or train nonsense); see each message for what is valid."""
  _check_declared(config)
  _at_least(config, 'acceleration', 1, 'the acceleration R must be >= 1 (1 = fully sampled, the paper uses 4 and '
            '8); each mask keeps round(W / R) phase-encode lines')
  _at_least(config, 'num_epochs', 1, 'train for at least 1 epoch (eval and predict of a trained workdir need no '
            'training: use --mode=eval or --mode=predict)')
  for field in ('batch_size', 'eval_batch_size', 'log_every_steps', 'eval_every_epochs', 'checkpoint_every_epochs',
                'max_checkpoints_to_keep'):
    _at_least(config, field, 1, 'must be a positive integer')
    if int(config[field]) != config[field]:
      raise ConfigError(f'config.{field}={config[field]!r}: must be a positive integer.')
  _integer(config, 'num_acs', 0, 'the number of autocalibration lines must be an integer >= 0 (the paper: 8)')
  for field in ('seed', 'eval_mask_seed'):
    if field in config:
      _check_key_seed(config, field)
  _at_least(config, 'compile_workers', 0, 'compile threads must be >= 0 (0 = 1 on CPU, 2 on a GPU/TPU host)')
  if not 0 <= _number(config, 'focus_margin_fraction') < 0.5:
    raise ConfigError(f'config.focus_margin_fraction={config.focus_margin_fraction!r}: the margin around the heart '
                      'box is a share of the image side in [0, 0.5) (the paper: 8 / 128 = 0.0625).')
  if not _number(config, 'learning_rate') > 0:
    raise ConfigError(f'config.learning_rate={config.learning_rate!r}: must be > 0 (the paper: 1e-4).')
  for field in ('b1', 'b2'):
    if not 0 <= _number(config, field) < 1:
      raise ConfigError(f'config.{field}={config[field]!r}: Adam betas must lie in [0, 1) (the paper: b1=0.99).')
  try:
    steps.create_optimizer(config)  # Its schedules (steps.LR_SCHEDULES) are the valid config.lr_schedule values.
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for field in ('recon_loss_weight', 'seg_loss_weight'):
    _at_least(config, field, 0, 'loss weights must be >= 0')
  problem = warm_start.check(config) if 'init_from' in config else None
  if problem:
    raise ConfigError(problem)
  if config.stabilization:
    _at_least(config, 'patience', 1, 'the stabilization ramp needs P >= 1 epochs')
    if not 0 < _number(config, 'eps') < 1:
      raise ConfigError(f'config.eps={config.eps!r}: the ramp starts at sampled fraction 1 - eps; eps must lie in '
                        '(0, 1) (a small number close to 0, e.g. 0.01).')
  if config.get('schedule_levels') is not None:
    _integer(config, 'schedule_levels', 2, 'the quantized ramp needs an integer of at least 2 levels (None: the '
             'exact eq. 1, one level per ramp epoch)')
  _check_data_fields(config)
  for field, valid in (('conv_impl', layers.CONV_IMPLS), ('upconv_impl', layers.UPCONV_IMPLS)):
    if config.get(field, 'auto') not in valid:
      raise ConfigError(f'config.{field}={config[field]!r}: expected one of {valid} (runtime only: how the layers '
                        'are computed; see segrecon_jax/models/layers.py).')
  try:
    entry = models.spec(config.model)
    model = models.get_model(config.model)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.model: {e}') from None
  if config.stabilization and not entry.segments:
    raise ConfigError(f'config.stabilization=True needs a joint model; {config.model.name!r} reconstructs only '
                      '(use the x4 or x8 preset).')
  _check_loss_fields(config, entry)
  _check_manual_dir(config)
  shape = _served_image_shape(config)
  if shape is not None:
    _check_image_fits_model(config, entry.size_multiple(model), shape)
    _check_masks(config, shape[1])
  if entry.segments:
    _check_classes(config, entry, model)


def _check_key_seed(config, field: str) -> None:
  """A seed of JAX keys: an integer in 0 .. KEY_SEEDS - 1, the range where different seeds give different keys."""
  value = _number(config, field)
  if 0 <= value < KEY_SEEDS and float(value).is_integer():  # The range first: float() of a huge int overflows.
    return
  detail = ''
  if isinstance(value, numbers.Integral) and value >= KEY_SEEDS:
    detail = (f": JAX keys keep only a seed's low 32 bits, so it would run with the keys of seed {value % KEY_SEEDS}"
              if value < 2**63 else ': JAX cannot make a key of it (a 64-bit signed integer at most)')
  raise ConfigError(f'config.{field}={value!r}: seeds must be integers >= 0 and < 2**32 = {KEY_SEEDS}{detail}.')


def _check_declared(config) -> None:
  """Every top-level field is one that segrecon_jax/settings.py declares: a field set nowhere else is read by
  nothing (a misspelt or removed knob)."""
  unknown = sorted(set(config.keys()) - set(settings.BY_NAME)) if hasattr(config, 'keys') else []
  if unknown:
    raise ConfigError(f'config.{", config.".join(unknown)}: not a config field; every field is declared, with its '
                      'role, in segrecon_jax/settings.py (remove the field, or declare it there; a registered '
                      'loss-balancing scheme declares its own when it is registered).')


def _check_loss_fields(config, entry: models.ModelSpec) -> None:
  """The loss balancing and explicit focus of configs/default.py's Loss section, for the model of registry `entry`.
  The balancing scheme (training/balancing.py) checks the fields it reads."""
  name = config.get('loss_balancing', balancing.NONE)
  one_term = 'reconstructs only' if entry.task == models.RECONSTRUCTION else 'segments only'
  try:
    scheme = balancing.get(name)
    if name != balancing.NONE and entry.task != models.JOINT:
      raise ValueError(f'config.loss_balancing={name!r} balances the reconstruction and Dice terms; '
                       f"{config.model.name!r} {one_term} and has one term (use 'none').")
    scheme.check(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if 'focus_weight' in config:
    _at_least(config, 'focus_weight', 0, 'the extra weight of the heart box\'s pixels must be >= 0 (0 = no focus)')
  focus = config.get('focus_weight', 0.0)
  if focus and not entry.reconstructs:
    raise ConfigError(f'config.focus_weight={focus!r} weighs the pixels of the reconstruction term; '
                      f'{config.model.name!r} segments only and has none (use 0).')
  seg_loss = config.get('seg_loss', 'dice')
  if seg_loss not in losses.SEG_LOSSES:
    raise ConfigError(f"config.seg_loss={seg_loss!r}: expected 'dice' (generalized Dice, the paper's) or "
                      "'dice_ce' (generalized Dice + pixel-mean cross-entropy).")
  source = config.get('focus_source', 'reference')
  if source not in ('reference', 'prediction'):
    raise ConfigError(f"config.focus_source={source!r}: expected 'reference' (the reference labels) or "
                      "'prediction' (the segmentation network's own argmax).")
  if focus and source == 'prediction' and not entry.segments:
    raise ConfigError(f"config.focus_source='prediction' takes the focus box from the segmentation network; "
                      f"{config.model.name!r} reconstructs only (use 'reference').")



def _check_manual_dir(config) -> None:
  manual_dir = config.get('manual_dir') if hasattr(config, 'get') else None
  if manual_dir and not os.path.isdir(os.path.expanduser(manual_dir)):
    what = 'does not exist' if not os.path.exists(os.path.expanduser(manual_dir)) else 'is not a directory'
    raise ConfigError(f'config.manual_dir={manual_dir!r} {what}: it must be the folder of your OCMR files (the '
                      '`real` config) or of your NIfTI/HDF5 files (`nifti`); see tfds_ocmr/README.md.')


def _served_image_shape(config) -> Optional[Tuple[int, int]]:
  """(H, W) of the images the dataset serves, from the configs alone (None when the dataset is not `ocmr`)."""
  if config.get('dataset') != 'ocmr':
    return None
  import tfds_ocmr  # pylint: disable=g-import-not-at-top  (imports TFDS)
  try:
    builder_config = tfds_ocmr.configure(config.dataset_config, **settings.data_builder_fields(config))
  except (KeyError, ValueError) as e:
    raise ConfigError(f'config.dataset_config={config.dataset_config!r} with the data fields of the config: '
                      f'{str(e).strip(chr(34) + chr(39))}') from None
  height, width = builder_config.image_size
  return int(height), int(width)


def _check_masks(config, width: int) -> None:
  """Every mask keeps round(W / R) >= 1 lines, the ACS block included (eq. 1 never goes below 1 / R)."""
  lines = int(round(width / config.acceleration))
  where = f'the {width} phase-encode lines of the {config.dataset_config!r} images'
  if config.num_acs > width:
    raise ConfigError(f'config.num_acs={config.num_acs}: more autocalibration lines than {where}.')
  if lines < 1:
    raise ConfigError(f'config.acceleration={config.acceleration!r} keeps round({width} / {config.acceleration}) = '
                      f'{lines} of {where}: the network would see all-zero input. Use an acceleration of at most '
                      f'{2 * width} (the paper: 4 or 8).')
  if lines < config.num_acs:
    raise ConfigError(f'config.acceleration={config.acceleration!r} keeps {lines} of {where}, fewer than '
                      f'config.num_acs={config.num_acs} autocalibration lines: lower num_acs or the acceleration, '
                      'or use larger images.')


def _check_image_fits_model(config, multiple: int, shape: Tuple[int, int]) -> None:
  """H and W are multiples of the model's `multiple` (its registry entry's `size_multiple`)."""
  if shape[0] % multiple or shape[1] % multiple:
    size = 'config.image_size' if config.get('image_size') is not None else 'the image size'
    raise ConfigError(f'{size}={config.get("image_size") or shape[0]!r}: model {config.model.name!r} halves the '
                      f'image {multiple.bit_length() - 1} times, so H and W must be multiples of {multiple} '
                      f'(the {config.dataset_config!r} images are {shape[0]}x{shape[1]}); e.g. '
                      f'{max(multiple, shape[0] // multiple * multiple)}.')


def data_label_classes(config) -> Optional[int]:
  """The number of label values of the data (0 .. n - 1), or None when the dataset's labels are unknown here.

  Every `ocmr` config serves the same classes: OCMR label files are checked to hold 0..3 and NIfTI labels are
  mapped onto them (`label_mapping`).
  """
  if getattr(config, 'dataset', None) != 'ocmr':
    return None
  from segrecon_jax.data import labels  # pylint: disable=g-import-not-at-top
  return labels.NUM_CLASSES


def _check_classes(config, entry: models.ModelSpec, model) -> None:
  """The label set comes from the data: num_classes and the model's segmentation outputs (as its registry `entry`
  counts them, where it does) must both cover it."""
  classes = data_label_classes(config)
  outputs = entry.num_classes(model) if entry.num_classes is not None else None
  if classes is not None and config.num_classes != classes:
    from segrecon_jax.data import labels  # pylint: disable=g-import-not-at-top
    effect = ('fewer would drop labels from the loss and the metrics' if config.num_classes < classes
              else 'more would train and score classes that no example has')
    raise ConfigError(f'config.num_classes={config.num_classes!r}: the {config.dataset!r} data hold {classes} label '
                      f'values (0..{classes - 1}: {", ".join(labels.CLASS_NAMES)}), so num_classes must be '
                      f'{classes} ({effect}).')
  if outputs is not None and outputs != config.num_classes:
    field = f'model.{entry.num_classes_field}'
    raise ConfigError(f'config.{field}={outputs}: the model outputs {outputs} segmentation logits, but '
                      f'config.num_classes={config.num_classes}; set {field}={config.num_classes}.')


def _check_data_fields(config) -> None:
  """The dataset settings of configs/default.py (None keeps the dataset config's value)."""
  def value(field):
    return config.get(field) if hasattr(config, 'get') else None
  image_size = value('image_size')
  if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8):
    raise ConfigError(f'config.image_size={image_size!r}: expected the square image side in pixels, an integer '
                      '>= 8 (a multiple of 16 for the 4-level U-Nets, e.g. 64, 128 or 256), or None for the dataset '
                      'config\'s own size.')
  test_fraction = value('test_fraction')
  if test_fraction is not None and not 0 < _number(config, 'test_fraction') < 1:
    raise ConfigError(f'config.test_fraction={test_fraction!r}: the share of examples in the test split must lie '
                      'in (0, 1) (the paper: 28/183).')
  for field in ('split_seed', 'phase_seed'):
    if value(field) is not None:
      _at_least(config, field, 0, 'seeds must be integers >= 0')
      if int(config[field]) != config[field]:
        raise ConfigError(f'config.{field}={config[field]!r}: seeds must be integers >= 0.')
  field_of_view = value('field_of_view')
  if field_of_view is not None and (isinstance(field_of_view, bool) or not isinstance(field_of_view, int)
                                    or field_of_view < 0):
    raise ConfigError(f'config.field_of_view={field_of_view!r}: expected 0 (each image centre-cropped or zero-padded '
                      'to image_size) or the side, in source pixels, of the square around the image centre that is '
                      'resampled to image_size (e.g. 160 for ACDC).')
  mapping = value('label_mapping')
  if mapping is not None:
    num_classes = data_label_classes(config) or value('num_classes') or 4
    if (not isinstance(mapping, (tuple, list)) or not mapping
        or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < num_classes for v in mapping)):
      raise ConfigError(f'config.label_mapping={mapping!r}: expected a tuple giving, for each label value v of your '
                        f'files, our class at position v (0..{num_classes - 1}: background, LV blood pool, '
                        'myocardium, RV blood pool); ACDC (1 RV, 2 myocardium, 3 LV) is (0, 3, 2, 1), M&Ms '
                        '(1 LV, 2 myocardium, 3 RV) is (0, 1, 2, 3).')


def check_tuple_overrides_once(flag_values: flags.FlagValues, argv: Sequence[str], name: str = 'config') -> None:
  """Raises ConfigError when a tuple field of the config flag `name` is given more than once in `argv`.

  ml_collections joins the values of a repeated tuple override (`--config.model.seg.features='(4,8)'` and then
  `'(8,16)'` set (4, 8, 8, 16)), while every other flag keeps its last value; which of the two a user meant cannot
  be told, so a tuple field is set by one value, the whole tuple. Call after `flag_values(argv)` parsed the flags.
  """
  given = collections.defaultdict(list)
  args = list(argv[1:])
  for i, arg in enumerate(args):
    if arg == '--':  # absl: the arguments after it are not flags
      break
    match = re.fullmatch(rf'--?({re.escape(name)}\.[^=]+)(?:=(.*))?', arg, re.DOTALL)
    if match:  # `--config.x=v`, or `--config.x v` with the value in the next argument
      given[match.group(1)].append(match.group(2) if match.group(2) is not None else
                                   (args[i + 1] if i + 1 < len(args) else ''))
  for field, values in given.items():
    if len(values) > 1 and field in flag_values and isinstance(flag_values[field], flags.MultiFlag):
      flag = flag_values[field]
      raise ConfigError(f'--{field} is given {len(values)} times ({", ".join(map(repr, values))}), which '
                        f'ml_collections would join into {tuple(flag.value)}: a tuple field takes one value, the '
                        f"whole tuple. Give it once, e.g. --{field}='{flag.parser.parse(values[-1])}' for the last "
                        'one.')


def check_masks_fit(config, width: int, what: str) -> None:
  """The check of the masks that needs the data's width: a clear error, before any tracing, when the target masks
  would keep fewer lines than the ACS block."""
  lines = mri.num_sampled_lines(width, 1.0 / config.acceleration)
  if lines < config.num_acs:
    raise ConfigError(f'config.acceleration={config.acceleration} keeps {lines} of the {width} phase-encode lines '
                      f'of {what}, fewer than config.num_acs={config.num_acs} autocalibration lines: lower num_acs '
                      'or use larger images')


def flag_error_message(error: BaseException, argv) -> str:
  """The paragraph for a command line that absl or ml_collections refused: a missing config file, a config file that
  raised (its last line), an override that names no field or has a bad value."""
  config = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')), None)
  config_file = config.split(':', 1)[0] if config else None
  if config_file and not os.path.isfile(config_file):
    return (f'--config={config}: no such config file {config_file!r} (from {os.getcwd()}); the experiment configs '
            'are configs/*.py, e.g. --config=configs/cascade_manet.py:x8_stab.')
  message = str(error).strip().replace('\\n', ' ').replace('\n', ' ').replace("\\'", "'")
  if len(message) > 1 and message[0] == message[-1] and message[0] in '\'"':
    message = message[1:-1]
  if 'Traceback (most recent call last)' in message:  # a config file's own exception: its last line says it
    raised = list(re.finditer(r'\b[A-Za-z_.]*(Error|Exception): ', message))
    message = message.split('Traceback (most recent call last):')[0] + (message[raised[-1].start():] if raised else '')
  overrides = [a for a in argv[1:] if a.startswith('--config.')]
  return (f'bad flag {" ".join(overrides) or " ".join(argv[1:])}: {message}\n'
          'Every field of the config and its meaning is in configs/default.py (and the experiment file).')
