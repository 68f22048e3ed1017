#!/usr/bin/env bash
# Train a task's policy on a GPU machine of the `device` tool (python 3.12 + torch + transformers there;
# MuJoCo, the SO-101 assets and the GL loaders travel as wheels/debs in .whl/ and .gl/ next to this tree).
#   scripts/device_train.sh TASK [vla_train args...]       (TASK: touch, pick_place, so101_touch)
# Writes $OUT/ckpt/{vision_encoder/,action_head.pt,train_metrics.json} and $OUT/train.log.
set -o pipefail
cd "$(dirname "$0")/.."
TASK="$1"; shift
. scripts/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
if [ -n "${EXPERT_CHECK:-}" ]; then
  python3 -m vla_ros.training.expert_check --task "$TASK" --episodes "$EXPERT_CHECK" --workers 16 \
    --out "$OUT/expert_check.json" | tail -4
fi
python3 -m vla_ros.training.cli --task "$TASK" "$@" --progress false --out-dir "$OUT/ckpt" --work-dir /tmp/runs \
  2>&1 | tee "$OUT/train.log"
# The policies each DAgger round started from (the work dir's round*/), in case a later phase went wrong.
tar cf "$OUT/rounds.tar" -C /tmp/runs . 2>/dev/null || true
