"""Entry point: trains, evaluates or predicts with one experiment config.

  python main.py --config=configs/cascade_manet.py:x8_stab --workdir=/tmp/segrecon/cascade_manet_x8_stab
  python main.py --config=configs/cascade_manet.py:x8_stab --workdir=... --mode=eval
  python main.py --config=configs/cascade_manet.py:x8_stab --workdir=... --mode=predict [--input=fs_0001_1_5T.h5]
  python main.py --config=configs/cascade_manet.py:x8_stab --workdir=... --mode=attention

Intentionally kept short: everything happens in segrecon_jax.train (training), segrecon_jax.inference and
segrecon_jax.attention (the segmentation loss's gradient on the reconstruction against the heart box).
"""

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from segrecon_jax import attention
from segrecon_jax import checkpoints
from segrecon_jax import config_checks
from segrecon_jax import inference
from segrecon_jax import train
from segrecon_jax import workdir as workdir_lib
from segrecon_jax.data import magnitude
from segrecon_jax.data import ocmr

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. configs/cascade_manet.py:x8_stab.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard files, tables and figures.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'attention'],
                  'train (ends with an evaluation), eval, predict or attention (pseudo-attention figure).')
flags.DEFINE_string('input', '', 'predict: an OCMR-format .h5 file (labels optional) instead of the eval split.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl's flag parsing, with a config override that names no field (a typo) or has a bad value as one paragraph."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
    message = str(e).strip().replace('\\n', ' ').replace('\n', ' ').replace("\\'", "'")
    if len(message) > 1 and message[0] == message[-1] and message[0] in '\'"':
      message = message[1:-1]
    overrides = [a for a in argv[1:] if a.startswith('--config.')]
    sys.stderr.write(f'main.py: bad flag {" ".join(overrides) or " ".join(argv[1:])}: {message}\n'
                     'Every field of the config and its meaning is in configs/default.py (and the experiment file).\n')
    sys.exit(2)


# Errors that are the user's input, not a bug: printed as one paragraph, exit code 2, nothing already written lost.
USER_ERRORS = (config_checks.ConfigError, checkpoints.ResumeError, workdir_lib.WorkdirLockedError, NotADirectoryError,
               FileNotFoundError, ocmr.OCMRFormatError, magnitude.MagnitudeFormatError)


def main(argv):
  try:
    run(argv)
  except USER_ERRORS as e:
    sys.stderr.write(f'main.py: {e}\n')
    sys.exit(2)
  except train.TrainingInterrupted as e:  # SIGTERM or SIGINT: checkpoint written, workdir released.
    sys.stderr.write(f'main.py: {e}\n')
    sys.exit(e.exit_code)


def run(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)  # Orbax and TFDS log every save and shard at INFO.
  if FLAGS.mode == 'train':
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    out_dir = inference.predict(FLAGS.config, FLAGS.workdir,
                                out_dir=os.path.join(FLAGS.workdir, inference.TRAINING_PREDICTIONS_DIR))
    print(f'Done: table in {FLAGS.workdir}/results.md (all metrics in metrics.json), figures in {out_dir}, '
          f'TensorBoard in {FLAGS.workdir}/tensorboard')
  elif FLAGS.mode == 'eval':
    inference.evaluate(FLAGS.config, FLAGS.workdir)
    out_dir = inference.eval_dir(FLAGS.workdir, FLAGS.config)
    print(f'Wrote {out_dir}/results.md and {out_dir}/metrics.json (per slice: per_slice.json)')
  elif FLAGS.mode == 'attention':
    with inference.reading_lock(FLAGS.workdir):  # Never while the workdir trains.
      record = attention.pseudo_attention(FLAGS.config, FLAGS.workdir)
    print(f"Wrote {record['json_path']} and {record['figure_path']}: {record['energy_share']['mean']:.1%} of the "
          f"segmentation loss gradient's energy in the heart box, which covers {record['area_share']['mean']:.1%} "
          'of the image')
  else:
    out_dir = inference.predict(FLAGS.config, FLAGS.workdir, FLAGS.input)
    print(f'Wrote predictions (.npy) and figures (.png) to {out_dir}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
