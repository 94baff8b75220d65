#!/usr/bin/env bash
# Run THERE in the background of an end-to-end sweep: samples every delen node process once, with
# py-spy (a wheel in .whl), so that a sweep shows where each configuration's node spends its time.
#   bash scripts/device/spy_nodes.sh OUT_DIR &        (stops by itself after SPY_TOTAL_S)
# When: with SPY_MARK (a file path; export DELEN_E2E_WINDOW_MARK to the same path for delen_e2e_bench),
# every node alive when the bench opens a measuring window (it writes the file), for SPY_S seconds
# of that window; without it, each node SPY_AFTER_S seconds after it started (a guess at "past
# configure and warm-up" that a slow start defeats).
# Writes OUT_DIR/spy_<pid>.txt (py-spy raw: one "stack count" line per stack, threads included) and
# OUT_DIR/spy_<pid>.cmd (the node's command line: its parameters say which configuration it was).
# SPY_GIL=1 (any non-empty value): py-spy --gil, only the thread holding the GIL.
# SPY_ORDERED=1: speedscope format (samples in time order, so a spell can be placed in the window;
# benchmarks/spy_timeline.py reads it) with --idle (what a waiting thread waits on), as spy_<pid>.json.
OUT_DIR="${1:?usage: spy_nodes.sh OUT_DIR}"
SPY_S="${SPY_S:-4}"; SPY_AFTER_S="${SPY_AFTER_S:-12}"; SPY_TOTAL_S="${SPY_TOTAL_S:-600}"; SPY_MARK="${SPY_MARK:-}"
command -v py-spy >/dev/null || { echo "[spy_nodes] no py-spy"; exit 0; }
mkdir -p "$OUT_DIR"
declare -A seen
spy() {   # spy PID: its command line and parameters, then SPY_S seconds of samples in the background
  local pid=$1
  seen[$pid]=1
  tr '\0' ' ' < "/proc/$pid/cmdline" > "$OUT_DIR/spy_$pid.cmd" 2>/dev/null
  cat "$(grep -o -- '--params-file [^ ]*' "$OUT_DIR/spy_$pid.cmd" | cut -d' ' -f2)" >> "$OUT_DIR/spy_$pid.cmd" 2>/dev/null
  local format=(-f raw -o "$OUT_DIR/spy_$pid.txt")
  [ -n "${SPY_ORDERED:-}" ] && format=(-f speedscope --idle -o "$OUT_DIR/spy_$pid.json")
  timeout $(( SPY_S + 5 )) py-spy record -p "$pid" -d "$SPY_S" -r 200 "${format[@]}" --threads ${SPY_GIL:+--gil} \
    --nonblocking >/dev/null 2>&1 &
}
end=$(( $(date +%s) + SPY_TOTAL_S ))
mark_seen=""
while [ "$(date +%s)" -lt "$end" ]; do
  if [ -n "$SPY_MARK" ]; then
    stamp=$(stat -c %y "$SPY_MARK" 2>/dev/null || true)
    if [ -n "$stamp" ] && [ "$stamp" != "$mark_seen" ]; then
      mark_seen=$stamp
      for pid in $(pgrep -f "delen_ros.ros.node" || true); do [ -z "${seen[$pid]:-}" ] && spy "$pid"; done
    fi
    sleep 0.2
    continue
  fi
  for pid in $(pgrep -f "delen_ros.ros.node" || true); do
    [ -n "${seen[$pid]:-}" ] && continue
    age=$(ps -o etimes= -p "$pid" 2>/dev/null | tr -d ' ')
    [ -n "$age" ] && [ "$age" -ge "$SPY_AFTER_S" ] && spy "$pid"
  done
  sleep 1
done
