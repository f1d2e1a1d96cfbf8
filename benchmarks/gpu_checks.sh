#!/bin/bash
# The GPU checks of docs/benchmarks.md ("GPU"), in one go, on a GPU host whose Python has requirements.txt and
# benchmarks/requirements-torch.txt installed (a CUDA jax, a CUDA torch):
#
#   OUT=/tmp/gpu_checks bash benchmarks/gpu_checks.sh
#
# 1. the benchmark in float32 with the PyTorch reference on the same GPU; 2. a paper-scale stabilized run of the
# flagship (x8_stab, 128x128 phantom, EPOCHS epochs, cold compilation cache): its log's per-program compile and
# wait seconds and metrics.json; 3. the benchmark in bfloat16 with PyTorch's bfloat16 autocast; 4. the compile
# seconds per level, whole step against the split one. Each part has a time limit (T_* seconds) and writes to OUT.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-$(command -v python3)}
DATA_DIR=${DATA_DIR:-$OUT/tfds}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import jax, flax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__,
'torch', torch.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"

part() {  # part NAME LIMIT COMMAND...: runs COMMAND under a time limit, its output in OUT/NAME.log.
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: rc=$? after $((SECONDS - start)) s" | tee -a "$OUT/gpu.txt"
}

part bench_fp32 "${T_FP32:-600}" "$PY" -m segrecon_jax.benchmark --steps=10 --torch_python="$PY" \
  --pipeline_config= --json="$OUT/bench_fp32.json"
part main "${T_MAIN:-900}" "$PY" main.py --config=configs/cascade_manet.py:x8_stab --workdir="$OUT/main" \
  --config.data_dir="$DATA_DIR" --config.num_epochs="${EPOCHS:-100}" --config.progress_bar=False \
  --config.compilation_cache_dir="$OUT/jax_cache"
part bench_bf16 "${T_BF16:-600}" "$PY" -m segrecon_jax.benchmark --half_precision --steps=10 \
  --torch_python="$PY" --pipeline_config= --json="$OUT/bench_bf16.json"
part compile_levels "${T_LEVELS:-600}" "$PY" benchmarks/compile_levels.py --experiment=cascade_manet \
  --preset=x8_stab --workers="${WORKERS:-1}"
grep -h '^|' "$OUT"/bench_fp32.log "$OUT"/bench_bf16.log "$OUT"/compile_levels.log
grep -hE 'compiled in|Train step compiles' "$OUT/main.log"
