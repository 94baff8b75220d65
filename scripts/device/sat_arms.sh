#!/usr/bin/env bash
# Run THERE (one H200): arms of an A/B at saturation, interleaved on one host, in one call (issue 8).
#   bash scripts/device/sat_arms.sh OUT "NAME|ENV ..." "NAME|ENV ..." ...
# Each arm is e2e_data_path_ab.sh's part sat_ab with SAT_AB_ENV=ENV (e.g. "o1|DELEN_RAW_COPY_GIL=release",
# "c1|NODE_PARAMS=cudnn_trials:=configure", "s1|WARMUP=30"; empty: as shipped): 32 cameras x 120 Hz,
# cifar10_committee, a 33 ms bound, POLICIES_SAT (both), 10 s measured after WARMUP (2) s, no echo. The first arm runs the engine
# bench at the same load first (the reference). ARM_S (90) seconds an arm, FIRST_ARM_S (200) the first; an arm
# that would end past DEADLINE_S (560) from the start is left out. One archive, rewritten after every arm (a
# call cut short keeps what ended): OUT/arms.tgz, each arm's log, e2e.json / e2e.md (and engine_bench.json).
set -uo pipefail
OUT="${1:?usage: sat_arms.sh OUT NAME|ENV ...}"; shift
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export MODEL=cifar10_committee RATES_SAT_AB=120 DURATION=10 POLICIES_SAT=${POLICIES_SAT:-always_final,delen} AFTER_SAT_AB_S=0
# one line: e2e_data_path_ab.sh matches a part between spaces (a newline ran the part before it)
export SKIP="admission ahead arrival blocking_sync configure cudnn_first failover gil matmul_kernels new no_upload nodes2 nodes4 nofuse nopin per_batch pre_per_frame py_recv repeat spin_sync status_whole trial_batch1 trials_bg mixed sat"
export BENCH_ARGS="--overload-apps 32 --overload-factor 100 --overload-max-hz 3840 --overload-bound-ms 33"
keep=/tmp/sat_arms; rm -rf "$keep"; mkdir -p "$keep" "$OUT"
first=1; start=$(date +%s)
for arm in "$@"; do
  name=${arm%%|*}; env_=${arm#*|}
  [ "$name" = "$arm" ] && env_=''
  [ "$first" = 1 ] && total=${FIRST_ARM_S:-200} || total=${ARM_S:-90}
  [[ "$env_" == *WARMUP=* ]] && total=$(( total + ${env_##*WARMUP=} * 2 ))
  if [ $(( $(date +%s) - start + total )) -gt "${DEADLINE_S:-560}" ]; then
    echo "== arm $name left out: $total s would end past ${DEADLINE_S:-560} s"; continue
  fi
  env ENGINE_SAT_AB=$first TOTAL_S="$total" SAT_AB_ENV="$env_" \
    bash scripts/device/e2e_data_path_ab.sh "/tmp/sat_arm_$name" > "$keep/$name.log" 2>&1
  mkdir -p "/tmp/sat_arm_x/$name" "$keep/$name"
  tar xzf "/tmp/sat_arm_$name/ab.tgz" -C "/tmp/sat_arm_x/$name"
  find "/tmp/sat_arm_x/$name" \( -name e2e.json -o -name e2e.md -o -name engine_bench.json \) -exec cp {} "$keep/$name/" \;
  echo "== arm $name ($env_) done at $(date +%T)"
  grep -h "^| " "$keep/$name/e2e.md" 2>/dev/null | head -6
  first=0
  tar czf "$OUT/arms.tgz" -C "$keep" .
done
