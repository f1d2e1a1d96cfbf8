#!/bin/bash
# Runs study runs (`python -m segrecon_jax.study run|sweep|losses`) on one GPU of a lent device machine, several
# `main.py` processes sharing it (`--jobs`), and brings the finished runs back to a study root here. Three steps:
#
#   1. here, with network:  ROOT=/work/study/paper DATASET=phantom_medium bash benchmarks/study_on_gpu.sh prepare
#      -> gpu_data/study_root (ROOT's study.json and the metrics.json of its finished runs, so they are skipped),
#         gpu_data/tfds/ocmr/DATASET (the prepared dataset) and gpu_data/wheels (benchmarks/prepare_gpu_data.sh);
#   2. on the device (carry gpu_data; OUT is set there):
#         bash benchmarks/study_on_gpu.sh device run --switch=paper_regime --tables=2 --seeds=0,1 --jobs=9
#      -> OUT/study.log and OUT/runs_<n>.tgz: the runs finished before TIME_LIMIT seconds (default 480), without
#         checkpoint arrays (an unfinished run does not come back; at most 6 archives of up to 4 runs each);
#   3. here:  ROOT=/work/study/paper bash benchmarks/study_on_gpu.sh unpack DIR_OF_THE_ARCHIVES
#      -> each run into ROOT (a run already finished there is kept), then `study report` as usual.
#
# GPU runs are not bit-identical to CPU runs: a study that mixes them states which seeds ran where.
set -eu -o pipefail
cd "$(dirname "$0")/.."
step=${1:?usage: study_on_gpu.sh prepare|device|unpack ...}
shift
case "$step" in
  prepare)
    : "${ROOT:?ROOT=the study root to continue}" "${DATASET:?DATASET=the dataset config its runs read}"
    rm -rf gpu_data/study_root && mkdir -p gpu_data/study_root gpu_data/tfds/ocmr
    cp "$ROOT/study.json" gpu_data/study_root/
    (cd "$ROOT" && find . -name metrics.json -path '*seed*' -print0 | xargs -0 -r cp --parents -t "$OLDPWD/gpu_data/study_root")
    rm -rf "gpu_data/tfds/ocmr/$DATASET"
    cp -r "${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}/ocmr/$DATASET" gpu_data/tfds/ocmr/
    DATASETS= WHEELS=${WHEELS:-1} bash benchmarks/prepare_gpu_data.sh
    du -sh gpu_data/*
    ;;
  device)
    : "${OUT:?OUT=the folder whose files come back}"
    PY=${PY:-python3}  # The device image's Python (its CUDA jax, flax, optax, orbax) plus the wheels.
    if [ "${WHEELS:-1}" = 1 ]; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        gpu_data/wheels/*.whl > "$OUT/pip.log" 2>&1
      export PYTHONPATH=/tmp/site
    fi
    export TFDS_DATA_DIR=$PWD/gpu_data/tfds XLA_PYTHON_CLIENT_PREALLOCATE=false
    export PYTHONUNBUFFERED=1
    root=/tmp/study_root
    rm -rf "$root" && cp -r gpu_data/study_root "$root"
    { nvidia-smi -L || true; "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$OUT/study.log"
    action=${1:?the study action: run, sweep or losses}
    shift
    timeout "${TIME_LIMIT:-480}" "$PY" -m segrecon_jax.study "$action" --root="$root" "$@" 2>&1 |
      grep -v DeprecationWarning | tee -a "$OUT/study.log" || echo "[study_on_gpu] study exit $?" | tee -a "$OUT/study.log"
    cd "$root"
    mapfile -t finished < <(comm -23 <(find . -name metrics.json -path '*seed*' -printf '%h\n' | sort) \
      <(cd "$OLDPWD/gpu_data/study_root" && find . -name metrics.json -path '*seed*' -printf '%h\n' | sort))
    echo "[study_on_gpu] ${#finished[@]} run(s) finished: ${finished[*]}" | tee -a "$OUT/study.log"
    for ((i = 0; i < ${#finished[@]}; i += 4)); do
      tar czf "$OUT/runs_$((i / 4)).tgz" --exclude='checkpoints/*/state' "${finished[@]:i:4}"
    done
    ;;
  unpack)
    : "${ROOT:?ROOT=the study root the runs belong to}"
    for archive in "${1:?the folder holding runs_*.tgz}"/runs_*.tgz; do
      for run in $(tar tzf "$archive" | grep '/metrics.json$' | xargs -n1 dirname); do
        if [ -f "$ROOT/$run/metrics.json" ]; then
          echo "kept $ROOT/$run (finished here)"
        else
          rm -rf "${ROOT:?}/$run" && tar xzf "$archive" -C "$ROOT" "$run" && echo "unpacked $ROOT/$run"
        fi
      done
    done
    ;;
  *) echo "unknown step '$step': prepare, device or unpack" >&2; exit 2 ;;
esac
