#!/usr/bin/env bash
# flaxlstm on one CUDA GPU, in a few minutes: correctness of every LSTM path against the
# CPU, the train-step benchmark against PyTorch's cuDNN LSTM (fp32, bf16) and Keras-JAX at
# the seed, large and default (ett) shapes, and the default experiment end to end.
#
#   here, with pip and the internet (once):   bash experiments/benchmarks/gpu_check.sh --fetch-wheels
#   on the GPU machine, from the repo root:   bash experiments/benchmarks/gpu_check.sh OUT_DIR
#
# --fetch-wheels puts the Python packages a bare GPU image may lack (ml_collections,
# tensorboardX, keras and its namex/optree) into .whl/ for Python 3.12; on the GPU the
# script installs them from there (no network) beside the image's jax, torch and flax.
# Each stage has its own time limit and writes into OUT_DIR as it goes, so a stage that
# fails or runs long leaves the others' results:
#   env.txt, correctness.md, bench.md, bench.jsonl, summary.md, e2e.txt, metrics_*.json
# Record the figures in BENCHMARKS.md (GPU model, versions, step times, ratios, memory).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" -d .whl \
    'ml_collections>=1.0,<2' 'tensorboardX>=2.6,<3' 'keras>=3,<4' namex optree
fi

OUT=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=2
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/flaxlstm_site .whl/*.whl && export PYTHONPATH="/tmp/flaxlstm_site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"  # this checkout, not an installed flaxlstm

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$PY" - <<'PYEOF'
import importlib, platform
print("python", platform.python_version())
for m in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "torch", "keras", "ml_collections"):
  try:
    print(m, importlib.import_module(m).__version__)
  except Exception as e:  # noqa: BLE001 - a missing peer is reported, not fatal
    print(m, "missing:", type(e).__name__, e)
import jax
print("devices", jax.devices())
try:
  import torch
  print("torch cuda", torch.cuda.is_available(), torch.backends.cudnn.version())
except Exception as e:  # noqa: BLE001
  print("torch", e)
PYEOF
} 2>&1 | tee "$OUT/env.txt"

# The whole check stays inside one device command (10 min): each stage gets at most what
# is left of BUDGET seconds, and a stage with under 20 s left is skipped, saying so.
BUDGET=${GPU_CHECK_BUDGET:-540}
T0=$(date +%s)
stage() {  # stage NAME SECONDS CMD...: run with a limit, log to OUT/NAME.log, say how it went
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  if (( left < 20 )); then echo "== $name: skipped (${left}s of the budget left)"; return 99; fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc"
  return "$rc"
}

stage correctness 90 "$PY" experiments/benchmarks/gpu_check.py --out "$OUT/correctness.md"
peers=flaxlstm,flaxlstm_cudnn,flaxlstm_bf16,torch,torch_bf16,keras
for shape in seed ett large; do
  stage "bench_$shape" 110 "$PY" experiments/benchmarks/train_step.py --shape "$shape" \
    --peers "$peers" --steps 20 --warmup 3 --gemm-size 8192 \
    --out "$OUT/bench.md" --json "$OUT/bench.jsonl"
done
stage summary 20 "$PY" experiments/benchmarks/gpu_check.py --summarize "$OUT/bench.jsonl" \
  --out "$OUT/summary.md"
for impl in auto cudnn; do
  rm -rf "/tmp/flaxlstm_gpu_$impl"
  start=$(date +%s)
  stage "e2e_$impl" 100 "$PY" -m flaxlstm.cli train --workdir "/tmp/flaxlstm_gpu_$impl" \
    --config.model.cell.implementation="$impl"
  rc=$?
  (( rc == 99 )) || echo "e2e $impl: exit $rc, $(( $(date +%s) - start )) s wall" | tee -a "$OUT/e2e.txt"
  cp "/tmp/flaxlstm_gpu_$impl/metrics.json" "$OUT/metrics_$impl.json" 2>/dev/null || true
done
