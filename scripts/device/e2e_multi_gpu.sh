#!/usr/bin/env bash
# Run THERE (a 2- or 4-GPU machine): offline set-up, then three end-to-end sweeps of real nodes over DDS
# (delen_e2e_bench), 30 Hz cameras, a 33 ms bound, full depth (always_final) by default:
#   1gpu   one node on cuda:0                                    (the reference)
#   pool   one node driving every GPU (devices: [cuda:0, ...])   (issue 12: >= 1.8x with 2, >= 3.5x with 4)
#   nodes  one node per GPU in namespaces /n0.. behind delen_placer (hosts stood in for on one machine)
# and summary.json: per sweep, the most cameras served with every camera's frames within the bound
# (attainment_min_app >= MIN_ATTAIN) and the ratio to 1gpu. Writes 8 files to OUT: run.log, summary.json,
# {1gpu,pool,nodes}.json (e2e.json of each sweep), {1gpu,pool,nodes}.md.
# Only when asked (SWEEPS=failover, or added to the list), issue 12's failover:
#   failover  one node per GPU (2 nodes on cuda:0 when there is one GPU) behind delen_placer; node /n0 is
#             SIGKILLed KILL_AT s into the window (--kill-node-at); per config the recovery time of its apps
#             and the other apps' attainment before / during / after; adds failover.json, failover.md,
#             e2e_failover*.png and summary.json's "failover".
#
#   here:  bash scripts/device/fetch_wheels.sh                  (once; makes .whl)
#   there: bash scripts/device/e2e_multi_gpu.sh "$OUT"          (device call, kind nvidia-h200-x2 or -x4,
#          carry [".whl"], plus ".devdata" if it holds frames)
#
# Settings (environment): MODEL (efficientnet_lite0), POLICIES (always_final), RATE (30), BOUNDS (33),
# SIZE (640x480), SOURCE (auto), MAX_BATCH (32), DURATION (5), WARMUP (2), DRAIN (2),
# NS1 (camera counts on one GPU; default 8,16,24,32,48,64), NSG (with every GPU; default NS1 x GPUs),
# SWEEPS (1gpu,pool,nodes), BUDGET_S (seconds per sweep, default 150: the three sweeps fit one 10-minute call only with set-up cached; else run them in separate calls with SWEEPS=1gpu, SWEEPS=pool,nodes), MIN_ATTAIN (0.99),
# NODE_PARAMS ("key=value ..."), EXTRA (more delen_e2e_bench arguments); for failover: NSF (camera counts,
# default 4), KILL_AT (4), FAILOVER_DURATION (10: >= 5 s after the kill), LIVENESS_S / CHECK_S (the placer's
# liveness_timeout_s / check_period_s; default the placer's own).
set -uo pipefail
OUT="${1:?usage: e2e_multi_gpu.sh OUT_DIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee "$OUT/run.log") 2>&1
t0=$(date +%s)
bash scripts/device/setup_offline.sh || exit 1
# shellcheck disable=SC1091
source .whl/env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
nvidia-smi --query-gpu=index,name,power.draw,utilization.gpu --format=csv || true
G=$(python3 -c "import torch; print(torch.cuda.device_count())")
DEVICES=$(python3 -c "print(','.join(f'cuda:{i}' for i in range($G)))")
echo "[e2e_multi_gpu] $G GPU(s) ($DEVICES), $(nproc --all) CPU cores (nproc alone obeys OMP_NUM_THREADS); set-up done in $(( $(date +%s) - t0 )) s"
NS1="${NS1:-8,16,24,32,48,64}"
NSG="${NSG:-$(python3 -c "print(','.join(str(int(n) * $G) for n in '$NS1'.split(',')))")}"
NODE_ARGS=()
for kv in ${NODE_PARAMS:-}; do NODE_ARGS+=(--node-param "$kv"); done
COMMON=(--model "${MODEL:-efficientnet_lite0}" --policies "${POLICIES:-always_final}" --rate "${RATE:-30}"
        --size "${SIZE:-640x480}" --bounds "${BOUNDS:-33}" --source "${SOURCE:-auto}" --max-batch "${MAX_BATCH:-32}"
        --duration "${DURATION:-5}" --warmup "${WARMUP:-2}" --drain "${DRAIN:-2}" --no-echo "${NODE_ARGS[@]}")
sweep() {   # name, camera counts, extra arguments...
  local name="$1" ns="$2"; shift 2
  echo "[e2e_multi_gpu] sweep $name: cameras $ns, $* ($(( $(date +%s) - t0 )) s)"
  rm -rf "/tmp/delen_e2e_$name"
  # SIGINT at the budget: the bench stops its processes and writes the configurations that ran.
  timeout -s INT "${BUDGET_S:-150}" python3 -m delen_ros.tools.e2e_bench "${COMMON[@]}" --ns "$ns" "$@" \
    --out "/tmp/delen_e2e_$name/out" --workdir "/tmp/delen_e2e_$name/work" ${EXTRA:-}
  echo "[e2e_multi_gpu] sweep $name exit status $?"
  cp "/tmp/delen_e2e_$name/out/e2e.json" "$OUT/$name.json" 2>/dev/null || true
  cp "/tmp/delen_e2e_$name/out/e2e.md" "$OUT/$name.md" 2>/dev/null || true
}
IFS=',' read -ra RUN <<< "${SWEEPS:-1gpu,pool,nodes}"
for s in "${RUN[@]}"; do
  case "$s" in
    1gpu) sweep 1gpu "$NS1" --device cuda:0 ;;
    pool) [ "$G" -gt 1 ] && sweep pool "$NSG" --device cuda:0 --devices "$DEVICES" ;;
    nodes) [ "$G" -gt 1 ] && sweep nodes "$NSG" --device cuda:0 --devices "$DEVICES" --nodes "$G" ;;
    failover)
      FAIL_ARGS=(--kill-node-at "${KILL_AT:-4}" --duration "${FAILOVER_DURATION:-10}")
      [ -n "${LIVENESS_S:-}" ] && FAIL_ARGS+=(--liveness-timeout-s "$LIVENESS_S")
      [ -n "${CHECK_S:-}" ] && FAIL_ARGS+=(--check-period-s "$CHECK_S")
      if [ "$G" -gt 1 ]; then
        sweep failover "${NSF:-4}" --device cuda:0 --devices "$DEVICES" --nodes "$G" "${FAIL_ARGS[@]}"
      else
        sweep failover "${NSF:-4}" --device cuda:0 --nodes 2 "${FAIL_ARGS[@]}"
      fi
      cp /tmp/delen_e2e_failover/out/e2e_failover*.png "$OUT/" 2>/dev/null || true ;;
    *) echo "[e2e_multi_gpu] unknown sweep $s (1gpu, pool, nodes, failover)" ;;
  esac
done
python3 - "$OUT" "${MIN_ATTAIN:-0.99}" "$G" <<'PY'
import json, pathlib, sys
out, floor, gpus = pathlib.Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
summary = {'gpus': gpus, 'min_attainment_per_camera': floor, 'sweeps': {}}
for name in ('1gpu', 'pool', 'nodes'):
    path = out / f'{name}.json'
    if not path.exists():
        continue
    rows = []
    for c in json.loads(path.read_text())['configs'].values():
        t = c.get('total') or {}
        rows.append({'config': c['name'], 'cameras': c['config']['cameras'], 'error': c.get('error'),
                     'attainment_min_app': t.get('attainment_min_app'), 'attainment': t.get('attainment'),
                     'results_hz': t.get('results_hz'), 'e2e_p99_ms': t.get('e2e_p99_ms')})
    served = [r['cameras'] for r in rows if not r['error'] and (r['attainment_min_app'] or 0) >= floor]
    summary['sweeps'][name] = {'rows': rows, 'max_cameras': max(served, default=0)}
base = summary['sweeps'].get('1gpu', {}).get('max_cameras') or 0
for name, s in summary['sweeps'].items():
    s['ratio_to_1gpu'] = s['max_cameras'] / base if base else None
if (out / 'failover.json').exists():   # issue 12: recovery <= 2 s, the other apps unaffected
    summary['failover'] = {}
    for c in json.loads((out / 'failover.json').read_text())['configs'].values():
        f = c.get('failover') or {}
        g = f.get('groups', {}).get('untouched', {})
        summary['failover'][c['name']] = {
            'error': c.get('error'), 'moved_apps': f.get('moved_apps'), 'recovery_s_max': f.get('recovery_s_max'),
            'recovery_s': {a: v['recovery_s'] for a, v in f.get('apps', {}).items() if v.get('moved')},
            'untouched_attainment': {p: g.get(p, {}).get('attainment') for p in ('before', 'outage', 'after')}}
(out / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
for name, s in summary['sweeps'].items():
    print(f"[e2e_multi_gpu] {name}: {s['max_cameras']} cameras within the bound"
          + (f" ({s['ratio_to_1gpu']:.2f}x one GPU)" if s['ratio_to_1gpu'] else ''))
for name, f in summary.get('failover', {}).items():
    print(f"[e2e_multi_gpu] failover {name}: recovery {f['recovery_s_max']} s (moved {f['moved_apps']}), "
          f"untouched apps within bound before / outage / after {f['untouched_attainment']}")
PY
echo "[e2e_multi_gpu] done in $(( $(date +%s) - t0 )) s; files: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
