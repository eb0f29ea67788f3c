#!/usr/bin/env bash
# flaxlstm on one CUDA GPU, in one device command of under 10 minutes: populations (the
# per-member step cost and whole sweeps, population vs sequential processes), correctness of
# every LSTM path against the CPU, the train-step benchmark against PyTorch's cuDNN LSTM
# at the seed and default (ett) shapes, and the sLSTM step against the xlstm package's CUDA
# kernel (GPU_CHECK_ONLY=slstm runs those alone, in a call of their own), and large models:
# the largest stack per GPU, MFU, the mLSTM's chunkwise form (GPU_CHECK_ONLY=large).
#
#   here, with pip and the internet (once):   bash experiments/benchmarks/gpu_check.sh --fetch-wheels
#   on the GPU machine, from the repo root:   bash experiments/benchmarks/gpu_check.sh OUT_DIR
#
# --fetch-wheels puts the Python packages a bare GPU image may lack (ml_collections,
# tensorboardX) into .whl/ for Python 3.12; on the GPU the script installs them from there
# (no network) beside the image's jax, torch and flax.
# Stages run in order of priority, each with its own time limit inside one budget
# (GPU_CHECK_BUDGET seconds, default 550), and write into a work folder as they go; after
# each stage the folder is packed into OUT_DIR/gpu_check.tgz (one file: a device tool may
# bring back only a few), so a stage that fails or runs long leaves the others' results.
# Record the figures in BENCHMARKS.md (GPU model, versions, step times, ratios, memory).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" -d .whl 'ml_collections>=1.0,<2' 'tensorboardX>=2.6,<3'
fi

OUT=${1:-${OUT:-gpu_check_out}}
W=${GPU_CHECK_WORK:-/tmp/gpu_check}
mkdir -p "$OUT" "$W"
# No preallocation: PyTorch shares the GPU with JAX in the benchmark, and every process of
# a sequential sweep would otherwise reserve most of the card's memory at start.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_PREALLOCATE=false
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/flaxlstm_site .whl/*.whl && export PYTHONPATH="/tmp/flaxlstm_site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"  # this checkout, not an installed flaxlstm
pack() {  # plots and event files stay behind: the tables and logs are what is read
  tar czf "$OUT/gpu_check.tgz" --exclude='*.png' --exclude=tensorboard --exclude=checkpoints \
    -C "$W" . 2>/dev/null || true
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  nproc
  "$PY" - <<'PYEOF'
import importlib, platform
print("python", platform.python_version())
for m in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "torch", "ml_collections"):
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
} 2>&1 | tee "$W/env.txt"
pack

BUDGET=${GPU_CHECK_BUDGET:-550}
T0=$(date +%s)
stage() {  # stage NAME SECONDS CMD...: run with a limit, log to W/NAME.log, say how it went
  local name=$1 limit=$2; shift 2
  # GPU_CHECK_ONLY=slstm runs only the stages whose names start with it (a second call).
  if [[ -n "${GPU_CHECK_ONLY:-}" && "$name" != "$GPU_CHECK_ONLY"* ]]; then return 0; fi
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  if (( left < 20 )); then echo "== $name: skipped (${left}s of the budget left)"; return 99; fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit}s): $*"
  local start=$(date +%s)
  timeout "$limit" "$@" >"$W/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$W/$name.log"
  echo "== $name: exit $rc, $(( $(date +%s) - start )) s"
  pack
  return "$rc"
}

# 1. Populations: the per-member cost of a step (one member at a time vs all at once).
stage pop_step 75 "$PY" experiments/benchmarks/population_step.py --shape ett,seed \
  --members 12 --rounds 3
# 2. The 3-seed table as one population and as sequential processes, timed end to end.
stage sweep_seeds 150 "$PY" experiments/benchmarks/population_sweep.py \
  --sweeps "${SEEDS_SWEEP:-experiments/sweeps/seeds.py}" --modes population,sequential \
  --json "$W/sweep_seeds.json"
# 3. The dropout ablation (27 runs) as populations, then three of its runs as sequential
#    processes: 27 sequential runs do not fit the budget, so their time is estimated from
#    the six sequential runs measured here and the steps each population member took.
rm -rf "$W/dropout"
stage sweep_dropout 190 "$PY" -m flaxlstm.cli sweep "${DROPOUT_SWEEP:-experiments/sweeps/dropout.py}" \
  --population --workdir "$W/dropout"
stage sweep_sample 100 "$PY" experiments/benchmarks/population_sweep.py \
  --sweeps "${SAMPLE_SWEEP:-experiments/benchmarks/dropout_sample.py}" --modes sequential \
  --json "$W/sweep_sample.json"
stage estimate 20 "$PY" experiments/benchmarks/population_sweep.py \
  --estimate "$W/dropout/results.csv" --measured "$W/sweep_seeds.json,$W/sweep_sample.json"
# 4. Correctness of the fused, autodiff and cuDNN paths against the CPU.
stage correctness 70 "$PY" experiments/benchmarks/gpu_check.py --out "$W/correctness.md"
# 5. One train step against PyTorch's cuDNN LSTM.
for shape in seed ett; do
  stage "bench_$shape" 60 "$PY" experiments/benchmarks/train_step.py --shape "$shape" \
    --peers "${PEERS:-flaxlstm,flaxlstm_cudnn,flaxlstm_bf16,torch,torch_bf16}" --steps 20 \
    --warmup 3 --gemm-size 8192 --out "$W/bench.md" --json "$W/bench.jsonl"
done
stage summary 20 "$PY" experiments/benchmarks/gpu_check.py --summarize "$W/bench.jsonl" \
  --out "$W/summary.md"
# 6. sLSTM: a train step of one TiRex-shaped block and of one layer over 2,048 steps, our
#    fused and autodiff paths vs the xlstm package's CUDA kernel (when it builds here; else
#    its row fails and ours still print). flashrnn is not installed by this script.
for shape in tirex_block long_layer; do
  stage "slstm_$shape" 90 "$PY" experiments/benchmarks/slstm_step.py --shape "$shape" \
    --steps 10 --peers "${SLSTM_PEERS:-fused,autodiff,xlstm}" --xlstm-backend cuda
done
# 7. Large models (GPU_CHECK_ONLY=large runs these alone): the largest LSTM, sLSTM and
#    xLSTM stacks whose step fits 70 GiB of one GPU (XLA's memory analysis, compile only),
#    the MFU a wide LSTM's training reaches (metrics.json: flops_per_step, mfu against the
#    device's peak), and the mLSTM's chunkwise form against mlstm_kernels' at T 1k/4k.
stage large_search 150 "$PY" experiments/benchmarks/largest_model.py --devices 1 \
  --budget-gib 70 --remat both --skip-timing --json "$W/largest.jsonl"
stage large_mfu 120 "$PY" -m flaxlstm.cli train --workdir "$W/mfu_run" --quiet \
  --config.model.hidden_sizes=2048,2048 --config.train.batch_size=256 \
  --config.train.max_steps=60 --config.train.eval_every_steps=60
stage large_mlstm 90 "$PY" experiments/benchmarks/mlstm_chunkwise.py --lengths 1024,4096 \
  --calls 5 --steps 500
echo "== done in $(( $(date +%s) - T0 )) s"
