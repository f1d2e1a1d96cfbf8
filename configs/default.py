"""Base configuration shared by every experiment; experiment files override fields, never redefine them.

Presets and switches (`configs/<experiment>.py:<preset>[,<switch>...]`) are parsed by `parse_arg` below:
  presets   x4, x8 (acceleration; no stabilization), x4_stab, x8_stab (the paper's "(S)" rows, joint models only)
  switches  runlocal (a CPU smoke run: small phantom, 64x64 images, narrow networks, a few epochs)
            demo (the README's main job: runlocal's widths on the 64x64 phantom_medium, trained with a faster
            optimizer long enough to learn visibly)
            cpu_study (the reduced-scale reproduction study of docs/results.md: runlocal's widths on the larger
            64x64 phantom_medium, trained longer with a faster optimizer)
            paper_regime (cpu_study's data, image size and widths trained with the paper's optimizer for 100
            epochs at batch 16)
            acdc_study (cpu_study's widths, the U-Nets' excepted, and optimizer on real anatomy: a labelled
            magnitude folder such as ACDC's 2-D slices, `--config.manual_dir=DIR`, served at 64x64 from a 160-pixel
            field of view)
Each switch is one entry of `SWITCH_FIELDS` below, applied by `apply_switch`.

The fields themselves, with their defaults, roles and meanings, are declared once, in segrecon_jax/settings.py;
`get_config` builds the base config from there.
"""

from segrecon_jax import settings

ACCELERATION_PRESETS = {
    'x4': dict(acceleration=4, stabilization=False),
    'x8': dict(acceleration=8, stabilization=False),
    'x4_stab': dict(acceleration=4, stabilization=True),
    'x8_stab': dict(acceleration=8, stabilization=True),
}

_SMALL_BATCH = dict(batch_size=8, eval_batch_size=8)  # runlocal's batch, for the 64x64 phantoms.
_EXACT_RAMP = dict(schedule_levels=None)  # The exact eq. 1 ramp: P + 1 levels, a mask-sampler compile each.
# The demo's optimizer: Adam at lr 2e-3, b1 0.9, decayed along a half cosine to 0 (the paper's constant lr 1e-4, b1
# 0.99 barely moves these small networks in a few hundred steps; at a constant 1e-3 the demo's mean Dice was 0.60
# after 500 steps, 0.62 after 700).
_FAST_ADAM = dict(learning_rate=2e-3, lr_schedule='cosine', b1=0.9)

# What each switch sets over the preset; under every one the images are 64x64 (`small_image_acs` lines of ACS, one
# summary image) and the experiment files shrink the widths as for runlocal.
SWITCH_FIELDS = {
    # A CPU smoke run: phantom_small, a few epochs, a 3-level ramp over P = 10 epochs.
    'runlocal': dict(dataset_config='phantom_small', **_SMALL_BATCH, num_epochs=20, patience=10, schedule_levels=3,
                     eval_every_epochs=10, checkpoint_every_epochs=5, log_every_steps=5),
    # The README's main job, a short CPU run that visibly learns (its duration is in the README): phantom_medium (204
    # train / 36 test 64x64 slices), 20 epochs = 500 steps, the ramp over P = 2 epochs (3 levels). The README runs
    # it at x4: 16 of the 64 phase-encode lines with the paper's 8 ACS lines, as many lines as the paper's x8 keeps
    # at 128x128 (at x8, 64x64 keeps 8 lines, and 500 steps gain under 2 dB).
    'demo': dict(dataset_config='phantom_medium', **_SMALL_BATCH, **_EXACT_RAMP, **_FAST_ADAM, num_epochs=20,
                 patience=2, eval_every_epochs=20, checkpoint_every_epochs=10, log_every_steps=25),
    # The reduced-scale reproduction study of docs/results.md, sized for its rows x seeds on 2 cores: phantom_medium
    # (on phantom_small's 51 slices the U-Nets memorised the anatomy and stayed at the zero-filled quality), 16
    # epochs (~400 steps), the ramp over P = 8 epochs (9 levels), the demo's optimizer (docs/results.md says so
    # beside its tables).
    'cpu_study': dict(dataset_config='phantom_medium', **_SMALL_BATCH, **_EXACT_RAMP, **_FAST_ADAM, num_epochs=16,
                      patience=8, eval_every_epochs=16, checkpoint_every_epochs=8, log_every_steps=5),
    # cpu_study's data, image size and widths in the paper's regime (section 2.4): the base config's Adam (constant
    # lr 1e-4, b1 0.99), batch 16 and 100 epochs (phantom_medium's 204 train slices give 12 steps an epoch, 1,200
    # steps), the ramp over the base config's P = 20 epochs (21 levels), and evaluation every 2 epochs (24 steps, 50
    # points) so the early training curves, where a joint model may stall, are visible.
    'paper_regime': dict(dataset_config='phantom_medium', **_EXACT_RAMP, eval_every_epochs=2,
                         checkpoint_every_epochs=10, log_every_steps=12),
    # The real-anatomy study of docs/results.md, sized for Table 2 x 3 seeds in about 3 hours on 2 cores: the `nifti`
    # config on the folder in --config.manual_dir (ACDC's 2-D slices: 70 patients, ~1,110 train / ~200 test slices
    # by the paper's test share), the 160 x 160 source pixels around each image centre served at 64x64 (over 99% of
    # ACDC's heart pixels, tfds_ocmr/README.md; a 64x64 crop keeps 73%), cpu_study's optimizer, epochs and ramp
    # (16 epochs of ~139 steps, P = 8), evaluated every 4 epochs for the training curves.
    'acdc_study': dict(dataset_config='nifti', image_size=64, field_of_view=160, **_SMALL_BATCH, **_EXACT_RAMP,
                       **_FAST_ADAM, num_epochs=16, patience=8, eval_every_epochs=4, checkpoint_every_epochs=4,
                       log_every_steps=10),
}
SWITCHES = tuple(SWITCH_FIELDS)


def get_config():
  """The fields every experiment has, with paper defaults (section 2.4) where the paper gives them; each is declared,
  with its role and meaning, in segrecon_jax/settings.py."""
  return settings.base_config()


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


UNET_FEATURES = (32, 64, 128, 256)  # The paper's U-Nets (section 2.3): depth 4.


def unet_features(switches) -> tuple:
  """The widths of every U-Net of Table 1: half the paper's under runlocal and the switches that shrink like it,
  the paper's under acdc_study (on real anatomy at x4 the half-width UNet gained 1.7 dB over the zero-filled input
  even in 24 epochs, the paper's widths 1.95 dB in the switch's 16; docs/results.md)."""
  if 'runlocal' in switches and 'acdc_study' not in switches:
    return tuple(f // 2 for f in UNET_FEATURES)
  return UNET_FEATURES


def small_image_acs(acceleration) -> int:
  """ACS lines at 64 phase-encode lines: the paper's 8 wherever they leave at least as many lines drawn at random
  (x4 keeps 16 = 8 ACS + 8 drawn), else half the kept lines (x8 keeps 8 = 4 ACS + 4 drawn; 8 ACS would make
  every x8 mask the same low-pass one)."""
  return min(8, round(64 / acceleration) // 2)


def apply_switch(config, switch: str):
  """Sets the 64x64 images' ACS lines and summary images, then `SWITCH_FIELDS[switch]`, over `config`."""
  config.num_acs = small_image_acs(config.acceleration)
  config.num_summary_images = 1
  config.update(SWITCH_FIELDS[switch])
  return config


def build(base_fields, arg, presets=ACCELERATION_PRESETS, allow_stabilization=True):
  """Base config + experiment fields + preset + switches; the common body of every experiment's get_config."""
  config = get_config()
  preset, switches = parse_arg(arg, presets, allow_stabilization)
  config.update(base_fields)
  config.update(preset)
  scales = switches & set(SWITCH_FIELDS)
  if len(scales) > 1:
    raise ValueError(f'Switches {", ".join(SWITCHES)} exclude each other (each sets the whole '
                     f'training scale; paper_regime already has cpu_study\'s data and widths); {arg!r} has '
                     f'{sorted(scales)}.')
  for switch in scales:
    apply_switch(config, switch)
  if switches & {'demo', 'cpu_study', 'paper_regime', 'acdc_study'}:
    switches = switches | {'runlocal'}  # The experiment files shrink the widths as for runlocal.
  return config, switches
