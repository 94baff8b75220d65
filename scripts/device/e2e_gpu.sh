#!/usr/bin/env bash
# Run THERE (the GPU machine): offline set-up, the engine-only reference (delen_bench), then the end-to-end
# sweep of the real node over DDS (delen_e2e_bench) on CUDA. Writes 8 files to OUT (what a device call
# returns at most): run.log, engine_bench.json, logs.tgz (every process's log), e2e/{e2e.json, e2e.md,
# e2e_answered.png, e2e_latency.png, e2e_resources.png}.
#
#   here:  bash scripts/device/fetch_wheels.sh                 (once; makes .whl, ~40 MB)
#   there: bash scripts/device/e2e_gpu.sh "$OUT"               (device call with carry [".whl"], plus
#          ".devdata" when it holds frames, e.g. .devdata/en_frames.npz for the engine bench)
#   then here: cp -r OUT/e2e benchmarks/h200/ (and OUT/engine_bench.json beside it)
#
# Settings (environment): MODEL (efficientnet_lite0), NS (1,3,8,16,32), POLICIES (delen,always_final),
# RATE (30), SIZE (640x480), BOUNDS (33: ms, comma-separated = mixed, assigned to cameras in turn),
# SOURCE (auto: the model's data set where shipped, else synthetic frames; or cifar10, a folder, ...),
# DURATION (6), WARMUP (2), DRAIN (2), MAX_BATCH (32), NODE_PARAMS (space-separated "name:=value" node
# parameters, each forwarded as --node-param and given to the node as -p name:=value, e.g.
# NODE_PARAMS="ingress_processes:=2 torch_threads:=4"; recorded in e2e.json and e2e.md), ECHO_DESERIALIZE
# (1: the echo builds a Python Image per frame, as before the node went raw; default: raw, as the node),
# ENGINE (1: run delen_bench first), BENCH_ARGS (extra delen_bench arguments),
# TOTAL_S (560: the sweep is interrupted at this many seconds from the start, so the whole script ends inside
# a 600 s device call, and writes what ran), EXTRA (more delen_e2e_bench args).
set -uo pipefail
OUT="${1:?usage: e2e_gpu.sh OUT_DIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee "$OUT/run.log") 2>&1
MODEL="${MODEL:-efficientnet_lite0}"
t0=$(date +%s)
bash scripts/device/setup_offline.sh || exit 1
# shellcheck disable=SC1091
source .whl/env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
nvidia-smi --query-gpu=name,driver_version,power.draw,power.limit,utilization.gpu --format=csv || true
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" || true
echo "[e2e_gpu] $(nproc --all) CPU cores (nproc alone obeys OMP_NUM_THREADS); set-up done in $(( $(date +%s) - t0 )) s"

ENGINE_ARGS=()
if [ "${ENGINE:-1}" != 0 ]; then
  FRAMES=()
  [ -f .devdata/en_frames.npz ] && [ "$MODEL" = efficientnet_lite0 ] && FRAMES=(--frames .devdata/en_frames.npz --calibration-count 150)
  # Engine alone, no ROS: served frames/s under overload (always_final), batched and per frame.
  if timeout 150 python3 -m delen_ros.tools.bench --model "$MODEL" --device cuda --scenarios overload \
      --policies always_final --duration 3 --warmup 1 --cuda-graphs "${FRAMES[@]}" ${BENCH_ARGS:-} \
      --pipeline "${DELEN_PIPELINE:-off}" \
      --out /tmp/delen_engine_bench > /tmp/delen_engine_bench.log 2>&1; then
    cp /tmp/delen_engine_bench/bench.json "$OUT/engine_bench.json"
    ENGINE_ARGS=(--engine-bench "$OUT/engine_bench.json")
    grep -A2 "== overload" /tmp/delen_engine_bench.log || true
  else
    echo "[e2e_gpu] engine bench failed (the sweep runs without the reference):"; tail -30 /tmp/delen_engine_bench.log
  fi
  echo "[e2e_gpu] engine bench done at $(( $(date +%s) - t0 )) s"
fi

NODE_ARGS=()
for kv in ${NODE_PARAMS:-}; do NODE_ARGS+=(--node-param "$kv"); done
[ "${ECHO_DESERIALIZE:-0}" != 0 ] && NODE_ARGS+=(--echo-deserialize)
[ ${#NODE_ARGS[@]} -gt 0 ] && echo "[e2e_gpu] node/echo options: ${NODE_ARGS[*]}"
rm -rf /tmp/delen_e2e_work
# SIGINT at the budget: the bench stops its processes and writes the configurations that ran.
BUDGET_S=$(( ${TOTAL_S:-560} - ($(date +%s) - t0) ))
echo "[e2e_gpu] sweep budget ${BUDGET_S} s"
timeout -s INT "$BUDGET_S" python3 -m delen_ros.tools.e2e_bench --model "$MODEL" --device cuda \
  --ns "${NS:-1,3,8,16,32}" --policies "${POLICIES:-delen,always_final}" --rate "${RATE:-30}" \
  --size "${SIZE:-640x480}" --bounds "${BOUNDS:-33}" --source "${SOURCE:-auto}" --max-batch "${MAX_BATCH:-32}" \
  --duration "${DURATION:-6}" --warmup "${WARMUP:-2}" --drain "${DRAIN:-2}" "${NODE_ARGS[@]}" "${ENGINE_ARGS[@]}" \
  --out "$OUT/e2e" --workdir /tmp/delen_e2e_work ${EXTRA:-}
rc=$?
tar czf "$OUT/logs.tgz" -C /tmp/delen_e2e_work . 2>/dev/null || true
echo "[e2e_gpu] done in $(( $(date +%s) - t0 )) s (sweep exit status $rc); files: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
exit $rc
