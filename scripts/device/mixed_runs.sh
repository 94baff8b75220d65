#!/bin/bash
# Issue 10's mixed set on one GPU, several runs in turn in one device call (~60 s set-up, ~28 s a run on an H200):
#   bash scripts/device/mixed_runs.sh NAME[:VAR=value ...] ...
# Each NAME is one run of scripts/device/e2e_data_path_ab.sh's mixed part (16 cameras x 30 Hz, BOUNDS, 10 s, no
# echo) with the node's environment VAR=value (an A/B switch read in delen_ros/ros/assembly.py) or none.
# NAME starting with R keeps the recorder's raw rows (--keep-work) and any flight-recorder trace written under
# /tmp/delen_e2e_work (e.g. R1:DELEN_TRACE=/tmp/delen_e2e_work/trace_{pid}.jsonl); EXTRA_<NAME> adds e2e-bench arguments, e.g.
#   EXTRA_D2="--node-param delivery_allowance_ms:=2.0" bash scripts/device/mixed_runs.sh A1 D2 A2:DELEN_POLICY_ALLOWANCE=0
# Results: $OUT/res.tgz (x/NAME/e2e.{json,md}, x/NAME/raw/w.tgz, NAME.log), rewritten after every run so that a
# call cut short keeps the runs it finished (the device tool returns few files: one archive, not one per run).
# MODEL (cifar10_committee), BOUNDS (10,33@0.9415:min_energy). Carry [".whl", ".devdata/cifar10_test.packed.npz"].
# Refusals for another app's running step are judged only where frames of two cameras can meet: add
# "--phase drift" to EXTRA_<NAME> for such runs (session 29: with the default spread phases they never do).
# COLD=1 among a run's VARs is not the node's: before that run the host's page cache is written back and dropped
# (sync; drop_caches), as on a host's first run after set-up (session 39).
# Session 28's five calls ran an earlier form of it (benchmarks/h200/choice_headroom_session28); session 29 ran this one
# (benchmarks/h200/cascade_admission_session29).
set -u
R=/tmp/mixed_runs; mkdir -p "$R/x"
SKIP_ALL="admission ahead arrival blocking_sync configure cudnn_first failover gil matmul_kernels new no_upload nodes2 \
nodes4 nofuse nopin per_batch pre_per_frame py_recv repeat sat sat_ab spin_sync status_whole trial_batch1 trials_bg"
one() {
  local name=$1; shift
  local var="EXTRA_${name}"
  local extra="${!var:-}"
  case $name in R*) extra="$extra --keep-work"; rm -rf /tmp/delen_e2e_work;; esac
  env MODEL="${MODEL:-cifar10_committee}" SKIP="$SKIP_ALL" POLICIES_MIXED=delen BOUNDS_MIXED="${BOUNDS:-10,33@0.9415:min_energy}" \
    DURATION_MIXED=10 MIXED_EXTRA="--pool 600 --no-echo $extra" AFTER_MIXED_S=0 TOTAL_S=100 MIXED_ENV="$*" \
    bash scripts/device/e2e_data_path_ab.sh "$R/$name" > "$R/$name.log" 2>&1
  mkdir -p "$R/x/$name"
  tar xzf "$R/$name/ab.tgz" -C "$R/x/$name" --strip-components=3 ./mixed/e2e/e2e.md ./mixed/e2e/e2e.json
  rm -f "$R/$name/ab.tgz"
  case $name in R*) mkdir -p "$R/x/$name/raw"
    (cd /tmp/delen_e2e_work && find . -name recorder.json -o -name '*.log' -size -3M -o -name '*.jsonl' -size -40M |
       tar czf "$R/x/$name/raw/w.tgz" -T -);; esac
  grep -h "^| delen" "$R/x/$name/e2e.md" | cut -c1-120
  # the run in one line: its worst app, the frames missed, the CPU the hypervisor stole, the early stops
  python3 - "$R/x/$name/e2e.json" <<'PY' 2>/dev/null
import json, sys
c = next(iter(json.load(open(sys.argv[1]))['configs'].values()))
apps, t = c['apps'], c['total']
w = min(apps, key=lambda a: apps[a]['attainment'])
missed = sum(round((1 - a['attainment']) * a['sent']) for a in apps.values())
print(f"worst {w} {100 * apps[w]['attainment']:.1f} %, {missed} frames missed, "
      f"{100 * (t.get('host_cpu_steal_share') or 0):.2f} % CPU stolen, "
      f"stops yielded {t.get('node_stops_yielded', 0)} / behind {t.get('node_stops_behind', 0)}, "
      f"node saw {(t.get('node_host_cpu_stolen_pct') or {}).get('max', 'no')} % stolen at most, "
      f"{(t.get('node_host_cpu_stolen_pct') or {}).get('worst_core_max', 'no')} % of one core")
PY
  # the node's configure time (when its cuDNN trials ended is in a trace: DELEN_TRACE, R runs; the log has no line)
  grep -rh "configured in\|graphs settled after" /tmp/delen_e2e_work --include='*.log' 2>/dev/null | cut -c1-200 | head -3
}
for spec in "$@"; do
  name=${spec%%:*}; vars=""; [ "$spec" != "$name" ] && vars=${spec#*:}
  case " $vars " in *" COLD=1 "*)
    vars=$(echo " $vars " | sed 's/ COLD=1 / /; s/^ *//; s/ *$//')
    t0=$(date +%s.%N); sync; echo 3 > /proc/sys/vm/drop_caches && echo "page cache dropped ($(date +%s.%N) - $t0 s)"
    ;;
  esac
  echo "== $name [$vars] $(date +%T)"
  one "$name" $vars
  (cd "$R" && tar czf "$OUT/res.tgz" x ./*.log)
done
