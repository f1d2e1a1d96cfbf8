"""Entry point: trains, evaluates or predicts with one experiment config.

  python main.py --config=configs/cascade_manet.py:x8_stab --workdir=/tmp/segrecon/cascade_manet_x8_stab
  python main.py --config=configs/cascade_manet.py:x8_stab --workdir=... --mode=eval
  python main.py --config=configs/cascade_manet.py:x8_stab --workdir=... --mode=predict [--input=FILE_OR_FOLDER]
  python main.py --config=configs/cascade_manet.py:x8_stab --workdir=... --mode=attention

Intentionally kept short: everything happens in segrecon_jax.training (train, inference) and
segrecon_jax.study.attention (the segmentation loss's gradient on the reconstruction against the heart box).
"""

import errno
import logging
import os
import re
import sys
from typing import Optional

from absl import app
from absl import flags
from ml_collections import config_flags

from segrecon_jax.data import layouts
from segrecon_jax.study import attention
from segrecon_jax.training import checkpoints
from segrecon_jax.training import config_checks
from segrecon_jax.training import inference
from segrecon_jax.training import input_pipeline
from segrecon_jax.training import parallel
from segrecon_jax.training import train
from segrecon_jax.training import warm_start
from segrecon_jax.training import workdir as workdir_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. configs/cascade_manet.py:x8_stab.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard files, tables and figures.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'attention'],
                  'train (ends with an evaluation), eval, predict or attention (pseudo-attention figure).')
flags.DEFINE_string('input', '', 'predict: a file of a data layout (OCMR .h5, NIfTI or HDF5 magnitude, or a layout '
                    'you registered), or a folder of them (labels optional), instead of the eval split.')
flags.mark_flags_as_required(['config', 'workdir'])


# ---------------------------------------------------------------------------------------------------------------
# User errors: one paragraph that names the file or field, exit code 2. Anything else is a bug: a traceback, exit 1.

USER_ERRORS = (config_checks.ConfigError, checkpoints.ResumeError, workdir_lib.WorkdirLockedError, NotADirectoryError,
               FileNotFoundError, *layouts.FORMAT_ERRORS, parallel.BatchSizeError,
               train.NonFiniteError, input_pipeline.StaleDatasetError, input_pipeline.CorruptDatasetError,
               warm_start.WarmStartError, inference.EmptyReferenceError)
_OS_HINTS = {errno.ENOSPC: 'the disk is full: free space, or choose a --workdir / config.data_dir on another disk',
             errno.EDQUOT: 'the disk quota is exceeded: free space, or choose another --workdir / config.data_dir',
             errno.EROFS: 'a read-only file system: choose a writable --workdir / config.data_dir',
             errno.EACCES: 'permission denied: choose a --workdir / config.data_dir you may write',
             errno.EPERM: 'operation not permitted: choose a --workdir / config.data_dir you may write'}


def _os_error_message(error: OSError) -> str:
  """The outermost message, with the innermost OSError that names a file (the one that failed) and a hint."""
  chain, cause = [], error
  while cause is not None and cause not in chain:
    chain.append(cause)
    cause = cause.__cause__ or cause.__context__
  failed = next((e for e in reversed(chain) if isinstance(e, OSError) and e.filename), error)
  message = str(error) if not error.filename else f'{error.filename}: {error.strerror or error}'
  if failed is not error and str(failed.filename) not in message:
    message += f' ({failed.filename}: {failed.strerror or failed})'
  hint = _OS_HINTS.get(failed.errno) or _OS_HINTS.get(error.errno)
  if isinstance(error, FileExistsError) and 'rename' in str(error):
    hint = 'another process prepared the same dataset at the same time; run again to reuse it'
  return message.rstrip('.') + (f'; {hint}.' if hint else '')


def user_error_message(error: BaseException) -> Optional[str]:
  """The one paragraph for an error of the user's input or machine; None for anything else (a bug)."""
  text = str(error).strip()
  if isinstance(error, USER_ERRORS):
    return text
  if isinstance(error, OSError) and 'Failed loading config file' in text:  # raised when FLAGS.config is first read
    return _flag_error_message(error, sys.argv)
  os_code = re.search(r"\[os_error_code='?(\d+)'?\]", text)
  if isinstance(error, ValueError) and os_code and int(os_code.group(1)) in _OS_HINTS:
    # TensorStore (orbax writing a checkpoint) failed on the machine, not on damaged data: a full disk, a read-only
    # or forbidden folder. It reports the errno in its text, not as an OSError.
    failed = re.findall(r'(?:local file|Failed writing:) "([^"]+)"', text)
    return (f'cannot write {failed[-1] if failed else "a checkpoint file"}: '
            f'{os.strerror(int(os_code.group(1)))}; {_OS_HINTS[int(os_code.group(1))]}.')
  if isinstance(error, ValueError) and 'tensorstore' in text:  # orbax reading a damaged checkpoint
    path = re.search(r'local file "([^"]+)"', text)
    step = re.search(r'^(.*/checkpoints/\d+)/', path.group(1)) if path else None
    return (f'a checkpoint file cannot be read (damaged or truncated): {text.split(" [tensorstore_spec")[0]}. '
            + (f'Delete {step.group(1)} to resume from the checkpoint before it, or use a new --workdir.'
               if step else 'Use a new --workdir.'))
  if isinstance(error, RuntimeError) and 'Riegeli' in text:  # array_record's checksums
    return (f'a prepared dataset file is damaged: {text}. Delete the dataset folder under config.data_dir '
            '(<data_dir>/<dataset>/<config>) to prepare it again.')
  if isinstance(error, ValueError) and text.startswith('config.'):  # a config check made where the data is known
    return text
  if isinstance(error, OSError):
    return _os_error_message(error)
  return None


def _flag_error_message(error: BaseException, argv) -> str:
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


def parse_flags(argv):
  """absl's flag parsing, with a config override that names no field (a typo), has a bad value or repeats a tuple
  field, or a config file that is missing or raises, as one paragraph, exit code 2."""
  try:
    remaining = FLAGS(argv)
    config_checks.check_tuple_overrides_once(FLAGS, argv)
    return remaining
  except config_checks.ConfigError as e:
    sys.stderr.write(f'main.py: {e}\n')
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError, OSError, flags.Error) as e:
    sys.stderr.write(f'main.py: {_flag_error_message(e, argv)}\n')
    sys.exit(2)


def main(argv):
  try:
    config_checks.check_config(FLAGS.config)  # Every check that needs no data, before any is built.
    run(argv)
  except train.TrainingInterrupted as e:  # SIGTERM or SIGINT: checkpoint written, workdir released.
    sys.stderr.write(f'main.py: {e}\n')
    sys.exit(e.exit_code)
  except Exception as e:  # pylint: disable=broad-except
    message = user_error_message(e)
    if message is None:
      raise
    sys.stderr.write(f'main.py: {message}\n')
    sys.exit(2)

# ---------------------------------------------------------------------------------------------------------------


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
