#!/usr/bin/env bash
# GPU benchmark: run from the repository root on a CUDA machine (written for 16 cores + one H200: under ~8 minutes).
#
#   bash benchmarks/gpu.sh            # PYTHON=... to choose the interpreter, WORK=... for the synthetic data (default: temp dir)
#
# Three runs, each writing its JSON under benchmarks/ (and BENCHMARKS.md re-rendered from all of them), quickest first,
# so a run cut short by its time limit leaves the earlier results in place:
#   1. train:  2 epochs of configs/knee.yaml on synthetic MRNet-size data (384 train + 48 valid studies, 3 planes of
#              17-51 slices, 256² -> 224²), compact uint8 cache and augmentation on the GPU: studies/s and GPU memory;
#   2. loader: old data path next to new at the knee shape (the new path's batch augmentation on the GPU);
#   3. model sections at the knee shape: throughput, fusion, scaling, and fast paths with bf16 and torch.compile each
#              on and off (default fp32, bf16, compile, bf16 + compile).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
WORK_ARGS=()
if [[ -n "${WORK:-}" ]]; then mkdir -p "$WORK" && WORK_ARGS=(--work-dir "$WORK"); fi
export WANDB_MODE=disabled PYTHONWARNINGS=ignore

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: CUDA is not available here')" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

status=0
step() {  # step SECONDS ARGS...: one bench run under a time limit
  local limit=$1; shift
  echo "== transmed bench $* (limit ${limit}s)"
  local start=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$PYTHON" -m transmed.bench --device cuda "${WORK_ARGS[@]}" "$@" || {
    echo "!! transmed bench $* failed or ran past ${limit}s (exit $?)"; status=1; }
  echo "== $((SECONDS - start)) s"
}

step 150 --sections train --out benchmarks/cuda-train.json
step 120 --sections loader --out benchmarks/cuda-loader.json
step 300 --sections throughput,fusion,scaling,fast_paths --out benchmarks/cuda-full.json
"$PYTHON" -m transmed.bench --render
exit $status
