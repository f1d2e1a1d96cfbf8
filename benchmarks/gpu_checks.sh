#!/bin/bash
# Paper-scale Tables 2 (then 1) and the speed comparison with PyTorch, in one device call of about 9 minutes on one
# H100/H200 (issue 27). Prepare first, on a CPU host: `bash benchmarks/prepare_gpu_data.sh` (the 128x128 phantom
# into gpu_data/tfds, the wheels the device image lacks into gpu_data/wheels); the device call carries gpu_data:
#
#   bash benchmarks/gpu_checks.sh                          # on the device; OUT=DIR for the results (default below)
#   DRY_RUN=1 OUT=/tmp/gpu_dry bash benchmarks/gpu_checks.sh   # the same parts at a tiny scale, on a CPU, in minutes
#   PARTS=speed bash benchmarks/gpu_checks.sh               # some of the parts: table2, table1, speed
#
# Parts, each under its own time limit and all within BUDGET seconds from the start:
#   1. Table 2 at paper scale (switch '' : 128x128 phantom, paper widths, Adam 1e-4 b1 0.99, batch 16, EPOCHS
#      epochs, 8 ACS lines, eq. 1 with config.patience): CascadeNet, CascadeNet -> MANet, CascadeNet -> MANet (S) at
#      x4 and x8, through `segrecon_jax.study run`, several processes on the one GPU at once (T2_LANES), each on its
#      own seeds, until T_TRAIN seconds have passed; then `study report`.
#   2. Table 1 at paper scale (T1_LANES), in what is left of T_TRAIN once Table 2's lanes have ended.
#   3. Speed: `benchmarks/train_step.py` against the PyTorch reference, eager and torch.compile, TF32 on both sides,
#      at batch 16, then batch BIG_BATCH, then bfloat16, each under the time then left.
# Written to OUT (at most 8 files come back from the device): summary.txt (the log: versions, plan, each part's exit
# status and seconds, the tables), versions.txt, results_paper.md (the study report), bench.md (the speed tables),
# bundle.tar.gz (every log, metrics.json, per_slice.json, report figure and benchmark JSON; no checkpoints) and
# tensorboard.tar.gz. The summary and the bundle are refreshed after every part, so a time-out keeps what finished.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
DRY_RUN=${DRY_RUN:-0}
OUT=${OUT:-/tmp/gpu_checks}
WORK=${WORK:-/tmp/gpu_checks_work}  # Workdirs and logs; only the files listed above go to OUT.
mkdir -p "$OUT" "$WORK/logs"
START=$SECONDS
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
log() { echo "[$(date -u +%H:%M:%S) +$((SECONDS - START)) s] $*" | tee -a "$SUMMARY"; }
left() { echo $((START + BUDGET - SECONDS)); }  # Seconds left of the whole budget.

if [ "$DRY_RUN" = 1 ]; then
  # Tiny: runlocal's 64x64 phantom_small and narrow networks, 1 epoch, one seed, one Table 1 lane; the benchmark
  # at 64x64 (x4: 16 lines, 8 of them ACS), batch 2, one step. Parts, limits and files are those of a device run.
  BUDGET=${BUDGET:-1500}
  T_TRAIN=${T_TRAIN:-900}
  SWITCH=${SWITCH-runlocal}
  DATASET=${DATASET:-phantom_small}
  DATA_DIR=${DATA_DIR:-$REPO/gpu_data/tfds_dry}
  EPOCHS=${EPOCHS:-1}
  BATCH=8
  T2_LANES=${T2_LANES:-"2:cascade:4:0:0 2:cascade_manet:8:0:20"}
  T1_LANES=${T1_LANES:-"1:unet:4:0:0"}
  T1_MIN=${T1_MIN:-10}
  BENCH_ARGS=${BENCH_ARGS:-"--image_size=64 --preset=x4_stab --steps=1 --pipeline_config="}
  SMALL_BATCH=2
  BIG_BATCH=${BIG_BATCH:-4}
  BENCH_EXPERIMENTS=${BENCH_EXPERIMENTS:-cascade}
else
  BUDGET=${BUDGET:-540}  # The whole script, seconds: a 600 s device call with room for the transfers.
  T_TRAIN=${T_TRAIN:-330}  # Parts 1 and 2: training ends this many seconds after it starts.
  SWITCH=${SWITCH-}  # '' = paper scale.
  DATASET=${DATASET:-phantom}
  DATA_DIR=${DATA_DIR:-$REPO/gpu_data/tfds}
  EPOCHS=${EPOCHS:-}  # Empty: the paper's 100 if they fit in T_TRAIN (estimated below), else the most that fit.
  BATCH=16
  # table:experiment:acceleration:seeds:delay, one process at a time per lane, the lanes side by side. The
  # CascadeNet -> MANet lanes run their two rows (plain, then (S)) per seed. The step is not launch-bound at batch 16
  # (the cascade's step is about 1 TFLOP), so the lanes share the GPU's time more than they fill its idle gaps:
  # 4 lanes, each seed after seed, put seed 0 of every row first.
  T2_LANES=${T2_LANES:-"2:cascade:4:0,1,2,3:0 2:cascade:8:0,1,2,3:0 2:cascade_manet:4:0,1,2:0
    2:cascade_manet:8:0,1,2:0"}
  T1_LANES=${T1_LANES:-"1:unet:4:0,1:0 1:unet:8:0,1:0 1:multidecoder_unet:4:0:0 1:multidecoder_unet:8:0:0
    1:unet_unet:4:0:0 1:unet_unet:8:0:0"}
  T1_MIN=${T1_MIN:-120}  # Table 1 starts only with at least this many seconds of T_TRAIN left.
  BENCH_ARGS=${BENCH_ARGS:-"--steps=20 --pipeline_config="}
  SMALL_BATCH=16  # The paper's batch.
  BIG_BATCH=${BIG_BATCH:-128}  # Where the GPU is no longer launch-bound.
  BENCH_EXPERIMENTS=${BENCH_EXPERIMENTS:-cascade,cascade_manet}
fi
# Epoch estimate (when EPOCHS is empty): a lane's first seed runs up to 2 rows, each RUN_OVERHEAD_S (start, data,
# cold compile, evaluations, checkpoints) plus its steps at PACKED_STEP_S, the flagship's step while the 4 lanes
# share the GPU: about the sum of the 4 lanes' steps alone (the H200 table of docs/benchmarks.md: cascade 0.016 s,
# cascade_manet 0.027 s; 2 x 0.016 + 2 x 0.027 = 0.086 s).
RUN_OVERHEAD_S=${RUN_OVERHEAD_S:-60}
PACKED_STEP_S=${PACKED_STEP_S:-0.09}
TF32=${TF32:-on}
PARTS=${PARTS:-"table2 table1 speed"}  # Which parts run, e.g. PARTS=speed to redo the speed comparison alone.
PEAK_TF32_TFLOPS=${PEAK_TF32_TFLOPS:-495}  # H100/H200 SXM dense tensor-core peaks (NVIDIA's data sheets).
PEAK_BF16_TFLOPS=${PEAK_BF16_TFLOPS:-989}
ROOT=$WORK/paper
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=$(command -v python3); fi
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TFDS_DATA_DIR=$DATA_DIR
# Several processes share the GPU: none may take it all (with preallocation off this caps each one's allocator).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.1}
BENCH_MEM_FRACTION=${BENCH_MEM_FRACTION:-0.45}  # The benchmark runs alone, PyTorch's process beside it (batch 128).
log "gpu_checks: DRY_RUN=$DRY_RUN BUDGET=$BUDGET T_TRAIN=$T_TRAIN SWITCH='$SWITCH' DATA_DIR=$DATA_DIR OUT=$OUT" \
    "WORK=$WORK commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

# --- Setup: the carried wheels, versions. ---------------------------------------------------------------------
if [ -d gpu_data/wheels ] && [ "$DRY_RUN" != 1 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    gpu_data/wheels/*.whl > "$WORK/logs/pip.log" 2>&1
  log "wheels: rc=$? ($(ls gpu_data/wheels | wc -l) from gpu_data/wheels into /tmp/site)"
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
{
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  else
    echo 'no nvidia-smi (no NVIDIA GPU)'
  fi
  timeout 120 "$PY" -c "
import sys, jax, jaxlib, flax, optax, numpy
print('python', sys.version.split()[0], '| jax', jax.__version__, '| jaxlib', jaxlib.__version__, '| flax',
      flax.__version__, '| optax', optax.__version__, '| numpy', numpy.__version__)
print('jax devices', jax.devices())
from importlib import metadata
def version(name):
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None
print('packages', {n: version(n) for n in ('orbax-checkpoint', 'etils', 'protobuf', 'tensorflow-datasets', 'grain',
                                           'array_record', 'ml-collections', 'segmentation-models-pytorch', 'timm')})
try:
  from jax._src.lib import cuda_versions
  print('jax CUDA', {k: getattr(cuda_versions, k)() for k in dir(cuda_versions) if k.endswith('_get_version')})
except Exception as e:
  print('jax CUDA versions: unavailable (%s)' % type(e).__name__)
try:
  import torch
  print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(),
        '| GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else None)
except ImportError as e:
  print('torch: not importable (%s)' % e)
" 2>&1
} > "$OUT/versions.txt"
cat "$OUT/versions.txt" >> "$SUMMARY"
HAVE_TORCH=0
grep -q '^torch [0-9]' "$OUT/versions.txt" && HAVE_TORCH=1
log "setup done (torch importable: $HAVE_TORCH)"

bundle() {  # Refreshes OUT/bundle.tar.gz and OUT/tensorboard.tar.gz from WORK (no checkpoints, no predictions).
  (cd "$WORK" && find . -type f \( -name '*.json' -o -name '*.md' -o -name '*.txt' -o -name '*.log' \
     -o -name '*.png' \) -not -path '*/checkpoints/*' -not -path '*/predictions/*' -print0 \
     | tar czf "$OUT/bundle.tar.gz.tmp" --null -T - && mv "$OUT/bundle.tar.gz.tmp" "$OUT/bundle.tar.gz")
  (cd "$WORK" && find . -type f -path '*/tensorboard/*' -print0 \
     | tar czf "$OUT/tensorboard.tar.gz.tmp" --null -T - && mv "$OUT/tensorboard.tar.gz.tmp" "$OUT/tensorboard.tar.gz")
}

want() { [[ " $(echo $PARTS) " == *" $1 "* ]]; }  # Is part $1 in PARTS?

# --- The dataset and the epochs (parts 1 and 2). -------------------------------------------------------------------
if want table2 || want table1; then
info=$DATA_DIR/ocmr/$DATASET/1.0.0/dataset_info.json
if [ ! -f "$info" ]; then
  log "ocmr/$DATASET is not prepared in $DATA_DIR: preparing it now (run benchmarks/prepare_gpu_data.sh beforehand)"
  DATASETS=$DATASET WHEELS=0 DATA_DIR=$DATA_DIR PY=$PY timeout "$(left)" bash benchmarks/prepare_gpu_data.sh \
    > "$WORK/logs/prepare.log" 2>&1
  log "prepare: rc=$?"
fi
TRAIN_SIZE=$("$PY" -c "import json, sys; d = json.load(open(sys.argv[1]))
print([int(s['shardLengths'][0]) if len(s['shardLengths']) == 1 else sum(map(int, s['shardLengths']))
       for s in d['splits'] if s['name'] == 'train'][0])" "$info" 2>/dev/null || echo 155)
STEPS_PER_EPOCH=$((TRAIN_SIZE / BATCH))
if [ -z "$EPOCHS" ]; then
  read -r EPOCHS estimate <<< "$(awk -v t="$T_TRAIN" -v o="$RUN_OVERHEAD_S" -v s="$PACKED_STEP_S" \
    -v k="$STEPS_PER_EPOCH" 'BEGIN { per_row = t / 2 - o; e = int(per_row / (k * s) / 10) * 10;
      if (e > 100) e = 100; if (e < 10) e = 10; printf "%d %.0f\n", e, 2 * (o + 100 * k * s) }')"
  if [ "$EPOCHS" = 100 ]; then
    log "epochs: the paper's 100 fit: a CascadeNet -> MANet lane's first seed (2 rows) is estimated at $estimate s" \
        "of T_TRAIN=$T_TRAIN s (RUN_OVERHEAD_S=$RUN_OVERHEAD_S per run, PACKED_STEP_S=$PACKED_STEP_S)"
  else
    log "epochs: 100 do NOT fit: a CascadeNet -> MANet lane's first seed (2 rows) would take about $estimate s of" \
        "T_TRAIN=$T_TRAIN s (RUN_OVERHEAD_S=$RUN_OVERHEAD_S, PACKED_STEP_S=$PACKED_STEP_S); using EPOCHS=$EPOCHS"
  fi
fi
CONFIG_FLAGS=("--config.data_dir=$DATA_DIR")
PATIENCE_NOTE="the preset's config.patience (20 at paper scale)"
if [ "$DRY_RUN" = 1 ] || [ "$EPOCHS" != 100 ]; then
  CONFIG_FLAGS+=("--config.num_epochs=$EPOCHS")
  if [ "$DRY_RUN" != 1 ] && [ "$EPOCHS" -lt 40 ]; then  # Keep the ramp's share of the run: P = 20 of 100 epochs.
    CONFIG_FLAGS+=("--config.patience=$((EPOCHS / 5 > 0 ? EPOCHS / 5 : 1))")
    PATIENCE_NOTE="P = $((EPOCHS / 5 > 0 ? EPOCHS / 5 : 1)) (20% of the epochs, as 20 of 100)"
  fi
fi
log "data: ocmr/$DATASET, train split $TRAIN_SIZE slices -> $STEPS_PER_EPOCH steps/epoch of batch $BATCH;" \
    "$EPOCHS epochs = $((EPOCHS * STEPS_PER_EPOCH)) steps per run; $PATIENCE_NOTE; extra config flags:" \
    "${CONFIG_FLAGS[*]}"

# Does `study run` take extra --config.X=Y flags? Asked of a study whose one run is already done (nothing runs).
probe=$WORK/probe
mkdir -p "$probe/cascade_x4/seed0" && echo '{}' > "$probe/cascade_x4/seed0/metrics.json"
if timeout 120 "$PY" -m segrecon_jax.study run --root="$probe" --switch="$SWITCH" --tables=2 --experiments=cascade \
    --accelerations=4 --seeds=0 "${CONFIG_FLAGS[@]}" > "$WORK/logs/study_probe.log" 2>&1; then
  STUDY_FLAGS=1
  log "study run takes --config.* flags: the runs go through segrecon_jax.study run"
else
  STUDY_FLAGS=0
  log "study run does not take --config.* flags (see logs/study_probe.log): each run is main.py with the study's" \
      "flags and workdir layout (ROOT/<experiment>_x<R>[_stab]/seed<k>), which study report reads the same"
fi

fi

# --- Parts 1 and 2: training lanes. -------------------------------------------------------------------------------
rows_of() {  # The preset suffixes of an experiment's rows: '' (plain) and, for joint models, '_stab'.
  case $1 in cascade|unet) echo "plain" ;; *) echo "plain _stab" ;; esac
}

lane() {  # lane SPEC END: the runs of one experiment at one acceleration, seed after seed, until SECONDS=END.
  local spec=$1 end=$2 table experiment acc seeds delay
  IFS=: read -r table experiment acc seeds delay <<< "$spec"
  local name="t${table}_${experiment}_x${acc}_s${seeds//,/-}" lane_log
  lane_log=$WORK/logs/$name.log
  sleep "$delay"
  local t0=$SECONDS lane_limit=$((end - SECONDS)) limit
  if [ "$lane_limit" -lt 10 ]; then
    log "lane $name: not started, $lane_limit s left"
    return
  fi
  if [ "$STUDY_FLAGS" = 1 ]; then
    timeout -k 10 "$lane_limit" "$PY" -m segrecon_jax.study run --root="$ROOT" --switch="$SWITCH" --tables="$table" \
      --experiments="$experiment" --accelerations="$acc" --seeds="$seeds" "${CONFIG_FLAGS[@]}" \
      > "$lane_log" 2>&1 < /dev/null
  else
    for seed in ${seeds//,/ }; do
      for row in $(rows_of "$experiment"); do
        local suffix=${row#plain} workdir preset
        workdir=$ROOT/${experiment}_x${acc}${suffix}/seed$seed
        preset=x$acc$suffix${SWITCH:+,$SWITCH}
        [ -f "$workdir/metrics.json" ] && continue
        limit=$((end - SECONDS))
        [ "$limit" -lt 10 ] && break 2
        mkdir -p "$workdir"
        echo "[lane] $experiment x$acc$suffix seed $seed: main.py --config=configs/$experiment.py:$preset" \
             "--config.seed=$seed ${CONFIG_FLAGS[*]} (limit $limit s)" >> "$lane_log"
        timeout -k 10 "$limit" "$PY" main.py --config="configs/$experiment.py:$preset" --config.seed="$seed" \
          "${CONFIG_FLAGS[@]}" --config.progress_bar=False --workdir="$workdir" >> "$workdir/log.txt" 2>&1 < /dev/null
        echo "[lane]   rc=$?" >> "$lane_log"
      done
    done
  fi
  local done_runs
  done_runs=$(find "$ROOT" -path "*/${experiment}_x${acc}*/seed*/metrics.json" 2>/dev/null | wc -l)
  log "lane $name: ended after $((SECONDS - t0)) s (limit $lane_limit s); $done_runs finished runs of" \
      "$experiment x$acc"
}

run_lanes() {  # run_lanes END SPEC...: every lane at once (each after its delay); waits for all.
  local end=$1 pids=()
  shift
  for spec in "$@"; do
    lane "$spec" "$end" &
    pids+=($!)
  done
  wait "${pids[@]}"
}

train_end=$((SECONDS + T_TRAIN))
[ "$train_end" -gt $((START + BUDGET)) ] && train_end=$((START + BUDGET))
if want table2; then
  # shellcheck disable=SC2086
  log "part 1 (Table 2): lanes $(echo $T2_LANES) until +$((train_end - START)) s"
  t0=$SECONDS
  # shellcheck disable=SC2086
  run_lanes "$train_end" $T2_LANES
  log "part 1 (Table 2): $(find "$ROOT" -name metrics.json | wc -l) runs finished in $((SECONDS - t0)) s"
  bundle
fi
if ! want table1; then
  :
elif [ $((train_end - SECONDS)) -ge "$T1_MIN" ]; then
  # shellcheck disable=SC2086
  log "part 2 (Table 1): lanes $(echo $T1_LANES) until +$((train_end - START)) s"
  t0=$SECONDS
  # shellcheck disable=SC2086
  run_lanes "$train_end" $T1_LANES
  log "part 2 (Table 1): ended after $((SECONDS - t0)) s"
else
  log "part 2 (Table 1): skipped, $((train_end - SECONDS)) s of T_TRAIN left (T1_MIN=$T1_MIN)"
fi
leftovers=$(pgrep -f "workdir=$ROOT" | wc -l)  # A check only: timeout ended each lane's process group.
[ "$leftovers" -gt 0 ] && log "WARNING: $leftovers training processes still alive after the lanes"

# The report, with a note of what this call ran.
if want table2 || want table1; then
  t0=$SECONDS
  timeout 120 "$PY" -m segrecon_jax.study report --root="$ROOT" --switch="$SWITCH" --out="$WORK/results_paper.md" \
    > "$WORK/logs/report.log" 2>&1
  log "report: rc=$? after $((SECONDS - t0)) s"
  if [ -f "$WORK/results_paper.md" ]; then
    {
      echo
      echo "## This device run"
      echo
      echo "$(head -1 "$OUT/versions.txt"); $(grep -m1 '^python' "$OUT/versions.txt")."
      echo "benchmarks/gpu_checks.sh (DRY_RUN=$DRY_RUN) at commit $(git rev-parse --short HEAD 2>/dev/null)," \
           "$(date -u +%F):"
      echo "$EPOCHS epochs of $STEPS_PER_EPOCH steps (train split $TRAIN_SIZE slices, batch $BATCH), $PATIENCE_NOTE;"
      echo "extra config flags: \`${CONFIG_FLAGS[*]}\`; runs through" \
           "$([ "$STUDY_FLAGS" = 1 ] && echo 'study run' || echo 'main.py') (Scale above: as in the presets);"
      echo "lanes sharing the GPU (table:experiment:R:seeds:delay): $(echo $T2_LANES) | Table 1: $(echo $T1_LANES)."
      echo "Finished runs: $(cd "$ROOT" 2>/dev/null && find . -name metrics.json | sed 's|^\./||; s|/metrics.json||' \
           | sort | tr '\n' ' ')"
    } >> "$WORK/results_paper.md"
    cp "$WORK/results_paper.md" "$OUT/results_paper.md"
  fi
  bundle
fi

# --- Part 3: speed against PyTorch. -------------------------------------------------------------------------------
BENCH_MD=$OUT/bench.md
: > "$BENCH_MD"
bench() {  # bench NAME EXTRA_ARGS...: one benchmark invocation under the time left (less 15 s for the bundle).
  local name=$1 limit
  shift
  limit=$(( $(left) - 15 ))
  if [ "$limit" -lt 30 ]; then
    log "bench $name: skipped, $limit s left"
    return
  fi
  local torch_args=()
  [ "$HAVE_TORCH" = 1 ] && torch_args=(--torch_python="$(command -v "$PY" || echo "$PY")" --torch_modes=eager,compile)
  local t0=$SECONDS
  # shellcheck disable=SC2086
  XLA_PYTHON_CLIENT_MEM_FRACTION=$BENCH_MEM_FRACTION timeout -k 10 "$limit" "$PY" benchmarks/train_step.py \
    --experiments="$BENCH_EXPERIMENTS" $BENCH_ARGS \
    --tf32="$TF32" "${torch_args[@]}" --json="$WORK/bench_$name.json" "$@" > "$WORK/logs/bench_$name.log" 2>&1 \
    < /dev/null
  log "bench $name: rc=$? after $((SECONDS - t0)) s (limit $limit s)"
  {
    echo "### $name: $* (TF32 $TF32, torch: $([ "$HAVE_TORCH" = 1 ] && echo 'eager and torch.compile' || echo 'none'))"
    echo
    grep -E '^(Device:|PyTorch [0-9])' "$WORK/logs/bench_$name.log"
    grep -hE '^\|' "$WORK/logs/bench_$name.log"
    # The achieved share of the GPU's nominal dense tensor-core peak (bench JSON rows, ours and PyTorch's).
    "$PY" - "$WORK/bench_$name.json" "$PEAK_TF32_TFLOPS" "$PEAK_BF16_TFLOPS" <<'EOF' 2>&1
import json, sys
path, tf32_peak, bf16_peak = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
try:
  result = json.load(open(path))
except (OSError, ValueError) as e:
  sys.exit(f'no JSON ({e})')
peak = (bf16_peak if result['half_precision'] else tf32_peak) * 1e12
kind = 'bfloat16' if result['half_precision'] else 'TF32'
print(f'\nShare of the nominal dense peak ({peak / 1e12:.0f} TFLOP/s, {kind}; '
      f'measured matmul ceiling {result["matmul_ceiling_flops_per_s"] / 1e12:.1f} TFLOP/s):')
for row in result['rows']:
  flops = row['flops_per_step']
  cells = [f'ours {row["step_median_s"] * 1e3:.2f} ms {flops / row["step_median_s"] / peak:.2%}']
  for field, label in (('torch_step_s', 'PyTorch eager'), ('torch_compile_step_s', 'PyTorch compiled')):
    if row.get(field):
      cells.append(f'{label} {row[field] * 1e3:.2f} ms {flops / row[field] / peak:.2%}')
  print(f'- {row["experiment"]} (batch {result["batch"]}, {flops / 1e9:.1f} GFLOP/step): ' + ', '.join(cells))
for row in (result.get('torch') or {}).get('rows', []):
  if 'error' in row:
    print(f'- PyTorch {row["experiment"]} ({row["mode"]}) failed: {row["error"][:300]}')
  elif row.get('mode') == 'compile':
    print(f'- PyTorch {row["experiment"]} compiled: first step (compile) {row["first_step_s"]:.1f} s')
EOF
    echo
  } >> "$BENCH_MD"
  bundle
}
if want speed; then
  log "part 3 (speed): $(left) s left"
  bench "b${SMALL_BATCH}_fp32" --batch="$SMALL_BATCH"
  bench "b${BIG_BATCH}_fp32" --batch="$BIG_BATCH"
  bench "b${SMALL_BATCH}_bf16" --batch="$SMALL_BATCH" --half_precision
  cat "$BENCH_MD" >> "$SUMMARY"
fi
log "done: $(ls "$OUT" | tr '\n' ' ')"
bundle
