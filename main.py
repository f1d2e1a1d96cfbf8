"""Entry point: trains, evaluates or predicts with one experiment config.

  python main.py --config=configs/cascade_manet.py:x8_stab --workdir=/tmp/segrecon/cascade_manet_x8_stab
  python main.py --config=configs/cascade_manet.py:x8_stab --workdir=... --mode=eval
  python main.py --config=configs/cascade_manet.py:x8_stab --workdir=... --mode=predict [--input=FILE_OR_FOLDER]
  python main.py --config=configs/cascade_manet.py:x8_stab --workdir=... --mode=attention

Intentionally kept short: everything happens in segrecon_jax.training (train, inference) and
segrecon_jax.study.attention (the segmentation loss's gradient on the reconstruction against the heart box).
"""

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from segrecon_jax.study import attention
from segrecon_jax.training import config_checks
from segrecon_jax.training import errors
from segrecon_jax.training import inference
from segrecon_jax.training import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. configs/cascade_manet.py:x8_stab.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard files, tables and figures.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'attention'],
                  'train (ends with an evaluation), eval, predict or attention (pseudo-attention figure).')
flags.DEFINE_string('input', '', 'predict: a file of a data layout (OCMR .h5, NIfTI or HDF5 magnitude, or a layout '
                    'you registered), or a folder of them (labels optional), instead of the eval split.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl's flag parsing; a config override that names no field (a typo), has a bad value or repeats a tuple field,
  or a config file that is missing or raises, is one paragraph, exit code 2."""
  try:
    remaining = FLAGS(argv)
    config_checks.check_tuple_overrides_once(FLAGS, argv)
    FLAGS.config.keys()  # A config file that failed to load raises at its first use: here, not in main.
    return remaining
  except config_checks.ConfigError as e:
    sys.stderr.write(f'main.py: {e}\n')
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError, OSError, flags.Error) as e:
    sys.stderr.write(f'main.py: {config_checks.flag_error_message(e, argv)}\n')
    sys.exit(2)


def main(argv):
  """Runs the mode; a user error (`errors.user_message`) is its paragraph and exit code 2, a signal that stopped
  training its message and 128 + the signal, anything else a traceback."""
  try:
    config_checks.check_config(FLAGS.config)  # Every check that needs no data, before any is built.
    run(argv)
  except train.TrainingInterrupted as e:  # SIGTERM or SIGINT: checkpoint written, workdir released.
    sys.stderr.write(f'main.py: {e}\n')
    sys.exit(e.exit_code)
  except Exception as e:  # pylint: disable=broad-except
    message = errors.user_message(e)
    if message is None:
      raise
    sys.stderr.write(f'main.py: {message}\n')
    sys.exit(2)


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
    print(f'Wrote predictions (.npy{", .nii.gz" if FLAGS.input else ""}) and figures (.png) to {out_dir}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
