#!/usr/bin/env bash
# Run THERE (one H200, 16 cores): the end-to-end sweep with receiver processes (ingress_processes auto)
# and, in the same call, the node taking frames itself (ingress_processes:=0) at the loads where it
# fell short; py-spy samples every node (scripts/device/spy_nodes.sh). One archive comes back.
#   device call, carry [".whl", ".devdata/cifar10_test.npz"]:  bash scripts/device/e2e_ingress_ab.sh "$OUT"
#   here: tar xzf OUT/ab.tgz -C somewhere; delen_e2e_bench --replot somewhere/auto/e2e/e2e.json --out ...
# Then mixed latency bounds (BOUNDS_MIXED 5,10,33 ms in turn, NS_MIXED 16 cameras, policy delen).
# Settings: NS_AUTO (1,8,16,32), NS_OFF (16,32), DURATION (5), TOTAL_S (570), PRE (a command run first,
# after set-up, e.g. a CUDA test).
set -uo pipefail
OUT="${1:?usage: e2e_ingress_ab.sh OUT_DIR}"
mkdir -p "$OUT"   # a folder that does not exist yet (OUT/a, OUT/b for an A/B in one call) lost a whole call's archive
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/device/ab_prelude.sh
source scripts/device/ab_prelude.sh
if [ -n "${PRE:-}" ]; then echo "[ab] PRE: $PRE"; timeout 120 bash -c "$PRE"; echo "[ab] PRE done at $(( $(date +%s) - t0 )) s"; fi
bash scripts/device/spy_nodes.sh "$WORK/spy" & SPY=$!
# the e2e script counts TOTAL_S from its own start: give each run what is left of ours
TOTAL_S=$(( $(left) - 140 )) NS="${NS_AUTO:-1,8,16,32}" DURATION="${DURATION:-5}" \
  bash scripts/device/e2e_gpu.sh "$WORK/auto"
TOTAL_S=$(( $(left) - 45 )) ENGINE=0 NS="${NS_OFF:-16,32}" DURATION="${DURATION:-5}" \
  NODE_PARAMS="ingress_processes:=0" bash scripts/device/e2e_gpu.sh "$WORK/off"
# issue 10: mixed latency bounds, the shipped defaults
TOTAL_S=$(( $(left) - 5 )) ENGINE=0 NS="${NS_MIXED:-16}" POLICIES=delen BOUNDS="${BOUNDS_MIXED:-5,10,33}" \
  DURATION="${DURATION:-5}" bash scripts/device/e2e_gpu.sh "$WORK/mixed"
kill "$SPY" 2>/dev/null
echo "[ab] done in $(( $(date +%s) - t0 )) s"
tar czf "$OUT/ab.tgz" -C "$WORK" .
