# Sourced by the scripts/device_*.sh scripts, from the repository root, on a GPU machine of the `device` tool
# (python 3.12 + torch + transformers there): installs the MuJoCo wheels (.whl/) and the EGL loaders (.gl/)
# that travel next to this tree, and sets up headless EGL rendering.
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD MUJOCO_GL=egl PYTHONUNBUFFERED=1
