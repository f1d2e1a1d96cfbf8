"""One process of a real multi-process job on this machine, started by tests/multihost_test.py.

  python tests/multihost_worker.py WORKDIR DATA_DIR COORDINATOR NUM_PROCESSES PROCESS_ID REPORT.json

Trains and predicts the tiny config of tests/train_test.py as `main.py --mode=train` does, with
`config.distributed` and an explicit coordinator, and records in REPORT.json what this process saw and which files
under WORKDIR it opened for writing or created (Python audit events), so the test can check that only process 0
writes. The parent sets XLA_FLAGS (local device count) and JAX_PLATFORMS=cpu.
"""

import json
import logging
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.join(_ROOT, 'tests'))


def main(workdir, data_dir, coordinator, num_processes, process_id, report_path):
  written = []
  workdir_abs = os.path.abspath(workdir)

  def audit(event, args):
    if event == 'open' and isinstance(args[0], str) and args[1] and set(str(args[1])) & set('wax+'):
      path = args[0]
    elif event in ('os.mkdir', 'os.rename', 'os.remove', 'shutil.rmtree') and isinstance(args[0], str):
      path = args[0]
    else:
      return
    if os.path.abspath(path).startswith(workdir_abs):
      written.append(f'{event} {os.path.relpath(os.path.abspath(path), workdir_abs)}')

  sys.addaudithook(audit)
  logging.getLogger().setLevel(logging.INFO)
  import jax  # pylint: disable=g-import-not-at-top
  import train_test  # pylint: disable=g-import-not-at-top
  from segrecon_jax.training import inference  # pylint: disable=g-import-not-at-top
  from segrecon_jax.training import train  # pylint: disable=g-import-not-at-top

  config = train_test.two_epochs(data_dir)
  config.distributed = True
  config.coordinator_address, config.num_processes, config.process_id = coordinator, num_processes, process_id
  results = train.train_and_evaluate(config, workdir)
  inference.predict(config, workdir, out_dir=os.path.join(workdir, inference.TRAINING_PREDICTIONS_DIR))
  report = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                device_count=jax.device_count(), local_device_count=jax.local_device_count(),
                results={k: float(v) for k, v in results.items()}, written=written)
  with open(report_path, 'w') as f:
    json.dump(report, f)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
