#!/bin/bash
# Prepares, on a CPU host with network, what benchmarks/gpu_checks.sh needs on the device machine, into gpu_data/
# (ignored by git), so that the device call carries it (the device `run` tool carries ignored paths, 64 MiB in all
# with the working tree):
#   gpu_data/tfds    the TFDS datasets trained on: ocmr/phantom (the paper-scale 128x128 phantom, 155 train / 28
#                    test slices), built once (a prepared one is left as it is);
#   gpu_data/wheels  the Python packages of requirements.txt and benchmarks/requirements-torch.txt that the device
#                    image lacks (it has its own CUDA jax, flax, optax, orbax, torch, timm; see the device notes),
#                    as Python 3.12 manylinux wheels; gpu_checks.sh installs them into /tmp/site there.
#
#   bash benchmarks/prepare_gpu_data.sh                       # both
#   DATASETS="phantom phantom_small" WHEELS=0 bash benchmarks/prepare_gpu_data.sh
#
# It ends with the sizes: the two folders and the working tree must stay well under 64 MiB together.
set -eu
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-gpu_data/tfds}
WHEEL_DIR=${WHEEL_DIR:-gpu_data/wheels}
PY=${PY:-.venv/bin/python}
# Pinned as in requirements.txt / requirements-torch.txt; the rest are their dependencies missing on the device,
# and protobuf, which googleapis-common-protos 1.76 needs at >= 6.33.5 (the image's version is not documented).
WHEEL_PINS="ml-collections==1.1.0 tensorflow-datasets==4.9.10 importlib_resources==7.1.0 array_record==0.8.6
  grain==0.2.18 ismrmrd==1.15.0 xsdata==26.10 nibabel==5.4.2 tensorboardX==2.6.5 dm-tree==0.1.10 immutabledict==4.3.1
  simple-parsing==0.1.9 docstring_parser==0.18.0 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0
  termcolor==3.3.0 toml==0.10.2 portpicker==1.6.0 protobuf==7.36.2 segmentation-models-pytorch==0.6.0 fastmri==0.3.0"
SDIST_PINS="promise==2.3"  # No wheel on PyPI: built here (pure Python).

mkdir -p "$DATA_DIR"
for name in ${DATASETS-phantom}; do  # DATASETS= (empty): none
  PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$PY" -c "
import sys, tensorflow_datasets as tfds, tfds_ocmr
builder = tfds.builder('ocmr/' + sys.argv[1], data_dir=sys.argv[2])
builder.download_and_prepare(file_format='array_record')
print(sys.argv[1], {k: v.num_examples for k, v in builder.info.splits.items()})
" "$name" "$DATA_DIR"
done
if [ "${WHEELS:-1}" = 1 ]; then
  mkdir -p "$WHEEL_DIR"
  platforms=""
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
    platforms="$platforms --platform $p"
  done
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    -d "$WHEEL_DIR" $WHEEL_PINS
  # shellcheck disable=SC2086
  "$PY" -m pip wheel -q --no-deps -w "$WHEEL_DIR" $SDIST_PINS
fi
du -sh "$DATA_DIR" "$DATA_DIR"/ocmr/* "$WHEEL_DIR" 2>/dev/null || true
echo "working tree (tracked files): $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes"
