#!/usr/bin/env bash
# Set everything up (idempotent) and run the whole test suite: unit, integration over real DDS
# (node in its own process, loopback only), and launch tests (skipped where ROS `launch` is absent).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
source "${DELEN_VENV:-$ROOT/.venv}/delen_env.sh"
export ROS_DOMAIN_ID=$(( ($$ % 150) + 50 ))   # per run, so parallel runs don't cross-talk
cd "$ROOT"
exec python -m pytest -p no:cacheprovider "${@:-test}"
