#!/usr/bin/env bash
# Run THERE in the background of an end-to-end sweep: samples every delen node process once, with
# py-spy (a wheel in .whl), for SPY_S seconds after it has run SPY_AFTER_S seconds (past configure and
# warm-up), so that a sweep shows where each configuration's node spends its time.
#   bash scripts/device/spy_nodes.sh OUT_DIR &        (stops by itself after SPY_TOTAL_S)
# Writes OUT_DIR/spy_<pid>.txt (py-spy raw: one "stack count" line per stack, threads included) and
# OUT_DIR/spy_<pid>.cmd (the node's command line: its parameters say which configuration it was).
# SPY_GIL=1 (any non-empty value): py-spy --gil, only the thread holding the GIL.
OUT_DIR="${1:?usage: spy_nodes.sh OUT_DIR}"
SPY_S="${SPY_S:-6}"; SPY_AFTER_S="${SPY_AFTER_S:-12}"; SPY_TOTAL_S="${SPY_TOTAL_S:-600}"
command -v py-spy >/dev/null || { echo "[spy_nodes] no py-spy"; exit 0; }
mkdir -p "$OUT_DIR"
declare -A seen
end=$(( $(date +%s) + SPY_TOTAL_S ))
while [ "$(date +%s)" -lt "$end" ]; do
  for pid in $(pgrep -f "delen_ros.ros.node" || true); do
    [ -n "${seen[$pid]:-}" ] && continue
    age=$(ps -o etimes= -p "$pid" 2>/dev/null | tr -d ' ')
    [ -z "$age" ] && continue
    if [ "$age" -ge "$SPY_AFTER_S" ]; then
      seen[$pid]=1
      tr '\0' ' ' < "/proc/$pid/cmdline" > "$OUT_DIR/spy_$pid.cmd" 2>/dev/null
      cat "$(grep -o -- '--params-file [^ ]*' "$OUT_DIR/spy_$pid.cmd" | cut -d' ' -f2)" >> "$OUT_DIR/spy_$pid.cmd" 2>/dev/null
      # SPY_GIL=1: only the thread holding the GIL is sampled (who keeps the others waiting)
      timeout $(( SPY_S + 5 )) py-spy record -p "$pid" -d "$SPY_S" -r 200 -f raw --threads ${SPY_GIL:+--gil} --nonblocking \
        -o "$OUT_DIR/spy_$pid.txt" >/dev/null 2>&1 &
    fi
  done
  sleep 1
done
