#!/bin/bash
# One device call: environment, then the GPU pipeline benchmark at both scales; JSON + logs to $OUT.
#   (device tool) cd .carry_h19 && bash bench/gpu_run.sh "smolvla openvla"   (FRAMES=20 for a smoke run)
#   EXTRA="--settings a,b,..." picks rows; LIMIT_SMOLVLA / LIMIT_OPENVLA cap each scale's seconds.
set -o pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SCALES=${1:-"smolvla openvla"}
FRAMES=${FRAMES:-150}
EXTRA=${EXTRA:-}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/env.txt"
python3 -c "import torch, transformers, triton, numpy; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__, 'cv2', end=' '); import importlib.util as u; print(u.find_spec('cv2') is not None)" 2>&1 | tee -a "$OUT/env.txt"
for scale in $SCALES; do
  limit=${LIMIT_SMOLVLA:-250}; [ "$scale" = openvla ] && limit=${LIMIT_OPENVLA:-330}
  timeout $limit python3 bench/bench_gpu_pipeline.py --scale "$scale" --frames "$FRAMES" $EXTRA \
      --json "$OUT/gpu_${scale}.json" 2>&1 | grep --line-buffered -v 'it/s\]$' | tee "$OUT/${scale}.log"
  echo "[gpu_run] $scale exit ${PIPESTATUS[0]}"
done
