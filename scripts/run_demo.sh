#!/usr/bin/env bash
# Main job: set up the environment, run the whole stack in closed loop on the simulated
# MuJoCo arm (recording a rosbag2/MCAP bag) and print the evaluation report.
# The task is pick-and-place ("put the red cube on the yellow pad") unless VLA_TASK=touch or --task touch.
# Extra arguments go to `python -m vla_ros.bringup` (e.g. --planner vlm, --episodes 10, --task touch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup_env.sh"
RUN="${VLA_RUN_DIR:-$ROOT/runs/demo_$(date +%Y%m%d_%H%M%S)}"
mkdir -p "$RUN"
cd "$ROOT"
"$ROOT/.venv/bin/python" -m vla_ros.bringup --task "${VLA_TASK:-pick_place}" --episodes "${VLA_EPISODES:-5}" --processes \
  --record "$RUN/bag" --report "$RUN/report" "$@"
echo "report: $RUN/report/report.html"
