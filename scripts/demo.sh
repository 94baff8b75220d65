#!/usr/bin/env bash
# Set everything up (idempotent) and run the demo: the delen node serving three cameras to three
# applications with different bounds, a live table, then a summary and plot in out/demo/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
source "${DELEN_VENV:-$ROOT/.venv}/delen_env.sh"
export ROS_DOMAIN_ID=$(( ($$ % 150) + 50 ))
cd "$ROOT"
exec delen_demo "$@"
