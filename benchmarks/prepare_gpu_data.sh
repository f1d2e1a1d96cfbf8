#!/bin/bash
# Prepares the TFDS datasets benchmarks/gpu_checks.sh trains on into gpu_data/tfds (ignored by git), on a CPU host,
# so that the device call carries them (the device `run` tool carries ignored paths, 64 MiB in all):
#
#   bash benchmarks/prepare_gpu_data.sh            # ocmr/phantom (the paper-scale 128x128 phantom)
#   DATASETS="phantom phantom_small" bash benchmarks/prepare_gpu_data.sh
#
# Each dataset is built once (a prepared one is left as it is); the script ends with the folder's size.
set -eu
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-gpu_data/tfds}
PY=${PY:-.venv/bin/python}
mkdir -p "$DATA_DIR"
for name in ${DATASETS:-phantom}; do
  PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$PY" -c "
import sys, tensorflow_datasets as tfds, tfds_ocmr
builder = tfds.builder('ocmr/' + sys.argv[1], data_dir=sys.argv[2])
builder.download_and_prepare(file_format='array_record')
print(sys.argv[1], {k: v.num_examples for k, v in builder.info.splits.items()})
" "$name" "$DATA_DIR"
done
du -sh "$DATA_DIR" "$DATA_DIR"/ocmr/*
