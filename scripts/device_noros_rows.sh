#!/usr/bin/env bash
# Closed-loop evaluation rows without ROS (vla_train --eval-only) of one checkpoint on a GPU machine of the
# `device` tool, many sim processes at once: the same seeds for every row, one feature switched per row.
# Usage: [TASK=so101_touch] [ROWS="full pruning_off"] scripts/device_noros_rows.sh <checkpoint dir> <first seed>
#        <episodes> [workers]
# (TASK: the task preset, default pick_place; ROWS: which rows, default all six below)
# Writes $OUT/noros/<row>/eval_metrics.json and $OUT/noros/rows.log.
set -o pipefail
cd "$(dirname "$0")/.."
ckpt=$1; seed=$2; episodes=$3; workers=${4:-16}
. scripts/device_env.sh
mkdir -p "$OUT/noros"
row() {   # row <name> <vla_train flags...>; the stack's defaults = the task preset + plan cache on
  local name=$1; shift
  case " ${ROWS:-$name} " in *" $name "*) ;; *) return 0 ;; esac
  python3 -m vla_ros.training.cli --task "${TASK:-pick_place}" --eval-only true --init-from "$ckpt" --device cpu \
    --out-dir "$OUT/noros/$name" --eval-episodes "$episodes" --eval-seed "$seed" --workers "$workers" \
    --progress false "$@" 2>&1 | grep '"eval"' | cut -c1-160 | sed "s/^/$name /" | tee -a "$OUT/noros/rows.log"
}
row full --rollout-plan-cache true
row pruning_off --rollout-plan-cache true --perception-set pruning=none
row spatial_coverage --rollout-plan-cache true --perception-set pruning=spatial_coverage
row reuse_off --rollout-plan-cache true --perception-set reuse_enabled=false
row plan_cache_off --rollout-plan-cache false
row delay_300ms --rollout-plan-cache true --rollout-observation-delay-s 0.3
