#!/usr/bin/env bash
# Run THERE (one H200): the result outlet against the node publishing itself (result_outlet:=node), interleaved
# on one host, in one call (session 37, issue 8):
#   bash scripts/device/outlet_ab.sh OUT ARM ...      ARM: n (the outlet, as shipped) or o (result_outlet:=node)
# Each arm is e2e_gpu.sh's sweep of the real node over DDS: cifar10_committee on CIFAR-10 photos, NS cameras (16,32)
# x 30 Hz 640x480, a 33 ms bound, both policies and the echo node, DURATION (10) s measured. Then MIXED_ARMS
# (e.g. "n o") runs of issue 10's mixed set (mixed_runs.sh). One archive, OUT/outlet_ab.tgz, rewritten after
# every arm (e2e.json / e2e.md and each arm's log). Carry [".whl", ".devdata/cifar10_test.packed.npz"].
set -uo pipefail
OUT="${1:?usage: outlet_ab.sh OUT ARM ...}"; shift
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
keep=/tmp/outlet_ab; rm -rf "$keep"; mkdir -p "$keep" "$OUT"
bash scripts/device/setup_offline.sh > "$keep/setup.log" 2>&1 || { tail -30 "$keep/setup.log"; exit 1; }
if [ -f .devdata/cifar10_test.packed.npz ]; then   # the camera players replay the test photos (unpacked outside the checkout)
  python3 -c "import sys; from delen_ros.tools.cifar_pack import unpack_jpeg_npz as u; u(*sys.argv[1:])" \
    .devdata/cifar10_test.packed.npz /tmp/outlet_ab_cifar10_test.npz && export DELEN_CIFAR10=/tmp/outlet_ab_cifar10_test.npz
fi
i=0
for arm in "$@"; do
  i=$((i + 1)); params=""; [ "$arm" = o ] && params="result_outlet:=node"
  env ENGINE=0 MODEL=cifar10_committee SOURCE=cifar10 NS="${NS:-16,32}" DURATION="${DURATION:-10}" NODE_PARAMS="$params" \
    TOTAL_S="${ARM_S:-200}" bash scripts/device/e2e_gpu.sh "/tmp/outlet_ab_$i" > "$keep/$i$arm.log" 2>&1
  mkdir -p "$keep/$i$arm"; cp /tmp/outlet_ab_$i/e2e/e2e.json /tmp/outlet_ab_$i/e2e/e2e.md "$keep/$i$arm/" 2>/dev/null
  echo "== arm $i$arm [$params] done at $(date +%T)"; grep -h "^| " "$keep/$i$arm/e2e.md" 2>/dev/null | cut -c1-160 | head -8
  tar czf "$OUT/outlet_ab.tgz" -C "$keep" .
done
for arm in ${MIXED_ARMS:-}; do
  i=$((i + 1)); name="M$i$arm"
  [ "$arm" = o ] && export "EXTRA_$name=--node-param result_outlet:=node"
  mkdir -p /tmp/outlet_ab_mixed
  OUT=/tmp/outlet_ab_mixed bash scripts/device/mixed_runs.sh "$name" > "$keep/$name.log" 2>&1
  cp -r "/tmp/mixed_runs/x/$name" "$keep/" 2>/dev/null
  echo "== mixed $name done at $(date +%T)"; tail -3 "$keep/$name.log"
  tar czf "$OUT/outlet_ab.tgz" -C "$keep" .
done
