#!/usr/bin/env bash
# Run THERE (one H200, 16 cores): the node's data path, A/B in one call. After the offline set-up and
# the CUDA unit tests of the data path (when pytest wheels are carried in .devdata/pytest):
#   new        the shipped path: C receivers (auto), frames uploaded at submit; NS_NEW cameras, both policies
#   repeat     the shipped path again, NS_AB cameras, POLICIES_AB (is a run's outcome stable?)
#   trial_batch1 DELEN_TRIAL_BATCH1=1: batch 1's cuDNN trial in the background while serving (before session 9);
#              NS_AB cameras, POLICIES_AB
#   pre_per_frame DELEN_PRE_PER_FRAME=1: preprocessing's cost read per frame only (before session 9's
#              core/batch_cost); NS_AB cameras, POLICIES_AB
#   status_whole DELEN_STATUS_PARTS=1: the status period in one tick, held whole (ros/status_round.py); NS_AB, POLICIES_AB
#   nofuse     fuse_steps:=false (one step per worker turn) on NS_AB cameras, delen
#   cudnn_first DELEN_NATIVE_FIRST=0: graphs captured on cuDNN from the start; NS_AB cameras, delen
#   trials_bg  cudnn_trials:=serving: the larger sizes' cuDNN trials in the background once serving, not in
#              configure (issue 8's configure <= 5 s; the default since session 21); NS_AB cameras, POLICIES_AB
#   matmul_kernels conv_kernels:=matmul: 1x1 convolutions as matrix products, no cuDNN (configure in ~2.6 s
#              instead of ~6.5 s, steps slower at batch 8-32); NS_AB cameras, POLICIES_AB
#   blocking_sync DELEN_BLOCKING_SYNC=1: the worker sleeps in CUDA waits (blocking events) instead of spinning
#              (the default since session 13); NS_AB cameras, POLICIES_AB
#   spin_sync  DELEN_BLOCKING_SYNC=0: CUDA's spinning wait, the default before session 13; NS_AB cameras, POLICIES_AB
#   per_batch  DELEN_CORRECTOR_PER_BATCH=1: step times learnt per batch size (before session 8); NS_AB cameras,
#              POLICIES_AB (delen,always_final)
#   no_upload  DELEN_UPLOAD_AHEAD=0: the worker stages and uploads each batch itself; NS_AB cameras, delen
#   py_recv    DELEN_RECEIVER=python: the Python receivers of session 3; NS_AB cameras, delen
#   arrival    latency_from:=arrival on NS_AB cameras, delen: the timeline splits the way in from the queue
#   gil        gil_switch_interval_ms:=GIL_MS (0.5) on NS_AB cameras, both policies
#   nodes2     NS_NODES2 (32,48) cameras at RATE_NODES (30) Hz on two nodes sharing the GPU behind delen_placer, both policies
#   nodes4     NS_NODES4 (32,48) cameras on four nodes sharing the GPU behind delen_placer, POLICIES_NODES4 (delen)
#   failover   NSF (8) cameras on two nodes behind delen_placer, /n0 killed (scripts/device/e2e_multi_gpu.sh)
#   mixed      bounds BOUNDS_MIXED in turn on NS_MIXED cameras, POLICIES_MIXED (delen), DURATION_MIXED s, MIXED_EXTRA
#              (more delen_e2e_bench arguments, e.g. --pool 300); LATENCY@ACCURACY entries (33@0.9124) add an
#              accuracy bound, scored at the result topic (issues 9 and 10); MIXED_ENV: environment for the node
#              (e.g. DELEN_TURN_COST=1, DELEN_LATE_RIDERS=0, or DELEN_TRACE=/tmp/trace/node_{pid}.jsonl for the
#              flight recorder: then python3 -m delen_ros.tools.trace_report FILE; see benchmarks/h200/recheck_session25)
#   sat        throughput at saturation (issue 8: served >= 0.9 x the engine): NS_SAT (32) cameras at each of
#              RATES_SAT ("60 120") Hz, POLICIES_SAT (always_final, full depth as the engine bench), the engine
#              bench first (ENGINE_SAT=1); one folder per rate, sat_<rate>/; SAT_EXTRA (e.g. --no-echo)
#   ahead      DELEN_UPLOAD_WHEN_BEHIND=1: every frame uploaded on arrival, also for apps the worker is behind
#              (before session 12); NS_SAT cameras at each of RATES_AHEAD ("90 120") Hz, POLICIES_SAT, no echo
#   sat_ab     the environment SAT_AB_ENV (e.g. DELEN_RAW_COPY=0, DELEN_PIPELINE=off) on NS_SAT cameras at each of
#              RATES_SAT_AB ("120") Hz, POLICIES_SAT, no echo; ENGINE_SAT_AB=1: the engine bench first, in that
#              environment too
#   nopin      DELEN_PIN_RINGS=0: frames staged through pinned buffers, not uploaded from their registered
#              rings; NS_SAT cameras at RATE_NOPIN (60) Hz, POLICIES_SAT, no echo
#   admission  the same cameras and bounds (NS_ADM 16, BOUNDS_ADM 5,10,33), delen, registered twice (issue 10):
#              --register service (the node starts with none; each app asks ~/set_bounds, loosest bound first,
#              REGISTER_GAP_S apart, beside the admitted apps' measured load), then param (all in the apps
#              parameter), so the report runs every refused request anyway ("Refused requests run anyway");
#              ADM_REPEATS (1) times: admission/, admission_2/, ...; ADM_EXTRA: more delen_e2e_bench arguments;
#              ADM_ENV: environment for the node. An A/B in one call: the script twice, e.g.
#              "ADM_ENV= bash ... $OUT/a; ADM_ENV=DELEN_TURN_COST=1 bash ... $OUT/b"
# py-spy samples every node (scripts/device/spy_nodes.sh). One archive comes back: OUT/ab.tgz.
#   device call, carry [".whl", ".devdata/cifar10_test.npz", ".devdata/pytest"]:
#     bash scripts/device/e2e_data_path_ab.sh "$OUT"
#   here: tar xzf OUT/ab.tgz -C somewhere; delen_e2e_bench --replot somewhere/new/e2e/e2e.json --out ...
# KERNELS_PROBE=1, RETIME=1 (RETIME_EXTRA) and FOLD_AB=1: see below (the kernels alone; the profiles re-timed before the parts).
# BENCH_FIRST=1 runs delen_bench (issue 9's engine bench, committed profile) before the parts: BENCH_S seconds
# (5) of each of BENCH_SCENARIOS (steady,bursty,overload) and BENCH_POLICIES (all five); BENCH_EXTRA: more
# delen_bench arguments (e.g. --frame-count 3000 for 60 s at 15 Hz without repeating a frame).
# NODES_EXTRA: more delen_e2e_bench arguments for nodes2 / nodes4 (e.g. --no-echo).
# Settings: NS_NEW (16,32,48), NS_AB (32), NS_NODES2 (32,48), NS_NODES4 (32,48), POLICIES_NEW (delen,always_final), POLICIES_NODES2 (delen,always_final), POLICIES_NODES4 (delen), NS_MIXED (16), GIL_MS (0.5), BOUNDS_MIXED (5,10,33), DURATION (5),
# NS_ADM (16), BOUNDS_ADM (5,10,33), REGISTER_GAP_S (0.5), TOTAL_S (570), SKIP (space-separated parts to leave out,
# e.g. "py_recv mixed"; the admission part alone: SKIP="new no_upload py_recv arrival gil nodes2 nodes4 failover mixed").
set -uo pipefail
OUT="${1:?usage: e2e_data_path_ab.sh OUT_DIR}"
mkdir -p "$OUT"   # a folder that does not exist yet (OUT/a, OUT/b for an A/B in one call) lost a whole call's archive
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/device/ab_prelude.sh
source scripts/device/ab_prelude.sh
if ls .devdata/pytest/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/delen_pytest .devdata/pytest/*.whl \
    && PYTHONPATH="/tmp/delen_pytest:${PYTHONPATH:-}" timeout 150 python3 -m pytest -q -p no:cacheprovider \
      test/test_preprocess.py test/test_runner.py test/test_engine.py test/test_graph_sizes.py \
      test/test_background_capture.py test/test_fused_steps.py test/test_preload.py test/test_pointwise.py 2>&1 | tail -15
  echo "[ab] CUDA tests done at $(( $(date +%s) - t0 )) s"
fi
# KERNELS_PROBE=1: scripts/device/conv_kernels_probe.py (its VARIANTS) on cuda:0 before any node: the kernels alone
if [ "${KERNELS_PROBE:-0}" = 1 ]; then
  timeout 300 python3 scripts/device/conv_kernels_probe.py "$WORK/conv_kernels_probe.json" 2>&1 | grep -v '^ \|^{\|^}' | tail -30
  echo "[ab] kernels probe done at $(( $(date +%s) - t0 )) s"
fi
# RETIME=1: re-time the committed H200 profiles of $MODEL (cudnn and matmul kernels) through the runner as it
# serves now (delen_profile --accuracy-from the committed one: accuracy, calibration and samples kept), written
# into models/profiles so that every part below serves with them; copies in $WORK/profiles.
# RETIME_EXTRA: the same for more models, cuDNN kernels only, no plots (e.g. "cifar10_resnet9 fashion_mnist")
retime() {   # MODEL KERNELS [more delen_profile arguments]
  local model=$1 kernels=$2 name="${1}__cuda-nvidia-h200"
  [ "$kernels" = matmul ] && name="${name}__matmul"
  mkdir -p "$WORK/profiles"
  cp "models/profiles/$name.json" "$WORK/profiles/$name.committed.json"
  timeout 200 python3 -m delen_ros.tools.profile "$model" --device cuda --cuda-graphs --conv-kernels "$kernels" \
    --subtract-idle --energy-window-s 0.6 --accuracy-from "$WORK/profiles/$name.committed.json" --quiet \
    --out models/profiles "${@:3}" 2>&1 | tail -8
  cp models/profiles/"$name".* "$WORK/profiles/"
}
if [ "${RETIME:-0}" = 1 ]; then
  for kernels in cudnn matmul; do retime "$MODEL" "$kernels"; done
  echo "[ab] re-timed at $(( $(date +%s) - t0 )) s"
fi
if [ -n "${RETIME_EXTRA:-}" ]; then
  for extra in ${RETIME_EXTRA}; do retime "$extra" cudnn --no-plots; done
  echo "[ab] re-timed at $(( $(date +%s) - t0 )) s"
fi
# FOLD_AB=1: benchmarks/fold_ab.py on cuda:0 (the network folded for inference against as trained, through the runner)
if [ "${FOLD_AB:-0}" = 1 ]; then
  PYTHONPATH="$ROOT:${PYTHONPATH:-}" timeout 240 python3 benchmarks/fold_ab.py --device cuda --out "$WORK/fold_ab" 2>&1 | tail -12
  echo "[ab] fold A/B done at $(( $(date +%s) - t0 )) s"
fi
# UPLOAD_PATHS=1: what one frame's upload costs the receiving thread, staged / in place / pageable (benchmarks/upload_paths.py)
if [ "${UPLOAD_PATHS:-0}" = 1 ]; then
  timeout 120 python3 benchmarks/upload_paths.py --out "$WORK/upload_paths" 2>&1 | tail -6
fi
# PIPELINE_CHECK=1: the engine's pipeline on and off over one backlog, engine only: same answers? how much faster?
if [ "${PIPELINE_CHECK:-0}" = 1 ]; then
  mkdir -p "$WORK/pipeline_check"
  PYTHONPATH="$ROOT:${PYTHONPATH:-}" timeout 150 python3 benchmarks/pipeline_check.py --model "$MODEL" \
    --out "$WORK/pipeline_check/pipeline_check.json" 2>&1 | tail -4
  echo "[ab] pipeline check rc ${PIPESTATUS[0]} at $(( $(date +%s) - t0 )) s"
fi
# PROFILE_FIRST=1: profile models/$MODEL here first (scripts/device/train_cifar.sh with
# MODEL_DIR=models: CUDA graphs, NVML above idle, delen_bench), and serve the parts below with it
if [ "${PROFILE_FIRST:-0}" = 1 ]; then
  MODEL_DIR=models TEST_NPZ="${PROFILE_TEST_NPZ:-.devdata/cifar10_test.packed.npz}" \
    bash scripts/device/train_cifar.sh "${PROFILE_NPZ:-.devdata/cifar10_train.packed.npz}" "$WORK/profile" 2>&1 | tail -60
  echo "[ab] profile done at $(( $(date +%s) - t0 )) s"
fi
# BENCH_FIRST=1: delen_bench (engine only, every policy, CIFAR-10 test frames, CUDA graphs, NVML above
# idle) with the committed H200 profile: issue 9's energy and latency ratios at an accuracy bound
if [ "${BENCH_FIRST:-0}" = 1 ]; then
  timeout "${BENCH_TIMEOUT_S:-150}" python3 -m delen_ros.tools.bench --model "$MODEL" --device cuda --cuda-graphs \
    --energy-meter nvml --profile "models/profiles/${MODEL}__cuda-nvidia-h200.json" --duration "${BENCH_S:-5}" \
    --warmup 1 --scenarios "${BENCH_SCENARIOS:-steady,bursty,overload}" \
    --policies "${BENCH_POLICIES:-always_final,check_after_stage,delen,fixed_confidence,static_exit}" \
    ${BENCH_EXTRA:-} --out "$WORK/bench" 2>&1 | tail -45
  echo "[ab] bench done at $(( $(date +%s) - t0 )) s"
fi
# each node sampled in its measuring window (delen_e2e_bench writes the mark when the window opens)
export DELEN_E2E_WINDOW_MARK="$WORK/window.mark"
SPY_MARK="$DELEN_E2E_WINDOW_MARK" bash scripts/device/spy_nodes.sh "$WORK/spy" & SPY=$!
skip() { [[ " ${SKIP:-} " == *" $1 "* ]]; }
D="${DURATION:-5}"
# the e2e script counts TOTAL_S from its own start: give each part what is left of ours, less the later parts
skip new || TOTAL_S=$(( $(left) - 150 )) NS="${NS_NEW:-16,32,48}" POLICIES="${POLICIES_NEW:-delen,always_final}" DURATION="$D" \
  bash scripts/device/e2e_gpu.sh "$WORK/new"
# the shipped path again on NS_AB cameras: at 32 cameras one run in three or so used to collapse
skip repeat || TOTAL_S=$(( $(left) - 5 - ${AFTER_REPEAT_S:-150} )) ENGINE=0 NS="${NS_AB:-32}" \
  POLICIES="${POLICIES_AB:-delen,always_final}" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/repeat"
# batch 1's cuDNN trial in the background while serving (the default before session 9)
skip trial_batch1 || DELEN_TRIAL_BATCH1=1 TOTAL_S=$(( $(left) - 5 - ${AFTER_TRIAL_BATCH1_S:-150} )) ENGINE=0 \
  NS="${NS_AB:-32}" POLICIES="${POLICIES_AB:-delen,always_final}" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/trial_batch1"
# preprocessing's cost read per frame only (before session 9's BatchCost), and the status tick held whole
skip pre_per_frame || DELEN_PRE_PER_FRAME=1 TOTAL_S=$(( $(left) - 5 - ${AFTER_PRE_PER_FRAME_S:-150} )) ENGINE=0 \
  NS="${NS_AB:-32}" POLICIES="${POLICIES_AB:-delen,always_final}" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/pre_per_frame"
skip status_whole || DELEN_STATUS_PARTS=1 TOTAL_S=$(( $(left) - 5 - ${AFTER_STATUS_WHOLE_S:-150} )) ENGINE=0 \
  NS="${NS_AB:-32}" POLICIES="${POLICIES_AB:-delen,always_final}" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/status_whole"
# the same cameras one step per worker turn (fuse_steps:=false): what fused steps buy
skip nofuse || TOTAL_S=$(( $(left) - 5 - ${AFTER_NOFUSE_S:-120} )) ENGINE=0 NS="${NS_AB:-32}" POLICIES=delen \
  NODE_PARAMS="fuse_steps:=false" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/nofuse"
# graphs on cuDNN from the start (before native first): big batches run as batch-1 replays until cuDNN's set-up is done
skip cudnn_first || DELEN_NATIVE_FIRST=0 TOTAL_S=$(( $(left) - 5 - ${AFTER_CUDNN_FIRST_S:-200} )) ENGINE=0 NS="${NS_AB:-32}" \
  POLICIES=delen DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/cudnn_first"
# the cuDNN trials in the background once serving: configure in natively captured graphs only; what the first seconds cost
skip trials_bg || TOTAL_S=$(( $(left) - 5 - ${AFTER_TRIALS_BG_S:-150} )) ENGINE=0 NS="${NS_AB:-32}" \
  POLICIES="${POLICIES_AB:-delen,always_final}" NODE_PARAMS="cudnn_trials:=serving" DURATION="$D" \
  bash scripts/device/e2e_gpu.sh "$WORK/trials_bg"
# 1x1 convolutions as matrix products and no cuDNN (session 20's quick start): configure and 32 cameras
skip matmul_kernels || TOTAL_S=$(( $(left) - 5 - ${AFTER_MATMUL_KERNELS_S:-150} )) ENGINE=0 NS="${NS_AB:-32}" \
  POLICIES="${POLICIES_AB:-delen,always_final}" NODE_PARAMS="conv_kernels:=matmul" DURATION="$D" \
  bash scripts/device/e2e_gpu.sh "$WORK/matmul_kernels"
# step times learnt per (step, batch size), as before session 8 (the A/B of the pooled corrector)
skip per_batch || DELEN_CORRECTOR_PER_BATCH=1 TOTAL_S=$(( $(left) - 5 - ${AFTER_PER_BATCH_S:-200} )) ENGINE=0 \
  NS="${NS_AB:-32}" POLICIES="${POLICIES_AB:-delen,always_final}" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/per_batch"
# the worker sleeps in CUDA waits instead of spinning (node CPU per frame; issue 8's 0.5 ms target)
skip blocking_sync || DELEN_BLOCKING_SYNC=1 TOTAL_S=$(( $(left) - 5 - ${AFTER_BLOCKING_SYNC_S:-150} )) ENGINE=0 \
  NS="${NS_AB:-32}" POLICIES="${POLICIES_AB:-delen,always_final}" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/blocking_sync"
# CUDA's spinning wait, the default before session 13 (DELEN_BLOCKING_SYNC=0)
skip spin_sync || DELEN_BLOCKING_SYNC=0 TOTAL_S=$(( $(left) - 5 - ${AFTER_SPIN_SYNC_S:-150} )) ENGINE=0 \
  NS="${NS_AB:-32}" POLICIES="${POLICIES_AB:-delen,always_final}" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/spin_sync"
skip no_upload || DELEN_UPLOAD_AHEAD=0 TOTAL_S=$(( $(left) - 100 )) ENGINE=0 NS="${NS_AB:-32}" POLICIES=delen \
  DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/no_upload"
skip py_recv || DELEN_RECEIVER=python TOTAL_S=$(( $(left) - 50 )) ENGINE=0 NS="${NS_AB:-32}" POLICIES=delen \
  DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/py_recv"
# where a 32-camera frame's time goes: arrival at the node, not the stamp, so that the timeline
# separates the way in (receivers, hand-over) from the scheduler's queue
skip arrival || TOTAL_S=$(( $(left) - 5 - ${AFTER_ARRIVAL_S:-330} )) ENGINE=0 NS="${NS_AB:-32}" POLICIES=delen \
  NODE_PARAMS="latency_from:=arrival" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/arrival"
# a shorter GIL switch interval: a thread that gave the GIL up (a CUDA call, a copy) gets it back sooner
skip gil || TOTAL_S=$(( $(left) - 5 - ${AFTER_GIL_S:-250} )) ENGINE=0 NS="${NS_AB:-32}" \
  NODE_PARAMS="gil_switch_interval_ms:=${GIL_MS:-0.5}" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/gil"
# where configure's seconds go (issue 8: configure -> first result <= 5 s), under py-spy
if ! skip configure; then
  mkdir -p "$WORK/configure"
  spy=(); command -v py-spy >/dev/null && spy=(py-spy record -r 200 -f raw -o "$WORK/configure/spy_configure.txt" --)
  "${spy[@]}" python3 scripts/device/configure_profile.py "$WORK/configure/lazy.json" 2>&1 | tail -3
  # A/B: graphs on cuDNN from the start (before native first: its set-up per new shape was most of the captures)
  [ "${CONFIGURE_NATIVE:-1}" = 1 ] && DELEN_NATIVE_FIRST=0 python3 scripts/device/configure_profile.py \
    "$WORK/configure/cudnn_first.json" 2>&1 | tail -2
  # A/B: the cuDNN trials while serving (cudnn_trials:=serving); cuDNN's pre-v8 API (session 18: set-up in tens
  # of ms a graph instead of 0.5-1.8 s, but its kernels half as fast at batch 32)
  # A/B: 1x1 convolutions as matrix products, no cuDNN (conv_kernels:=matmul)
  [ "${CONFIGURE_MATMUL:-1}" = 1 ] && CONV_KERNELS=matmul python3 scripts/device/configure_profile.py \
    "$WORK/configure/matmul_kernels.json" 2>&1 | tail -2
  [ "${CONFIGURE_TRIALS_BG:-1}" = 1 ] && CUDNN_TRIALS=serving python3 scripts/device/configure_profile.py \
    "$WORK/configure/trials_bg.json" 2>&1 | tail -2
  # A/B: the trials before serving (cudnn_trials:=configure; the default until session 21)
  [ "${CONFIGURE_TRIALS_BEFORE:-1}" = 1 ] && CUDNN_TRIALS=configure python3 scripts/device/configure_profile.py \
    "$WORK/configure/trials_before.json" 2>&1 | tail -2
  # A/B: batch 1's cuDNN trial too, in the background (DELEN_TRIAL_BATCH1=1): native or cuDNN at batch 1, per graph
  [ "${CONFIGURE_TRIAL_BATCH1:-0}" = 1 ] && DELEN_TRIAL_BATCH1=1 python3 scripts/device/configure_profile.py \
    "$WORK/configure/trial_batch1.json" 2>&1 | tail -2
  [ "${CONFIGURE_V7:-0}" = 1 ] && TORCH_CUDNN_V8_API_DISABLED=1 python3 scripts/device/configure_profile.py \
    "$WORK/configure/cudnn_v7_api.json" 2>&1 | tail -2
  # import torch, twice: cold and warm page cache (and whether its bytecode is cached)
  for i in 1 2; do python3 -X importtime -c 'import torch' 2>"$WORK/configure/importtime_$i.txt"; done
  python3 -c 'import torch, pathlib, sys; p = pathlib.Path(torch.__file__).parent; print("torch", torch.__version__, sys.version.split()[0], "pyc files", len(list(p.rglob("*.pyc"))), "py files", len(list(p.rglob("*.py"))))'
  tail -3 "$WORK/configure/importtime_2.txt"
  echo "[ab] configure profile done at $(( $(date +%s) - t0 )) s"
fi
# the same cameras on two delen nodes (namespaces, each its own process and GIL) on the one GPU,
# behind delen_placer: apps placed by the nodes' own admission
skip nodes2 || TOTAL_S=$(( $(left) - 5 - ${AFTER_NODES2_S:-95} )) ENGINE=0 NS="${NS_NODES2:-32,48}" RATE="${RATE_NODES:-30}" \
  POLICIES="${POLICIES_NODES2:-delen,always_final}" EXTRA="--nodes 2 ${NODES_EXTRA:-}" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/nodes2"
skip nodes4 || TOTAL_S=$(( $(left) - 5 - ${AFTER_NODES4_S:-95} )) ENGINE=0 NS="${NS_NODES4:-32,48}" RATE="${RATE_NODES:-30}" \
  POLICIES="${POLICIES_NODES4:-delen}" EXTRA="--nodes 4 ${NODES_EXTRA:-}" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/nodes4"
# issue 12 on one GPU: two nodes behind delen_placer, /n0 killed 4 s into the window
skip failover || BUDGET_S=$(( $(left) - 5 - ${AFTER_FAILOVER_S:-45} )) SWEEPS=failover NSF="${NSF:-8}" POLICIES=delen \
  bash scripts/device/e2e_multi_gpu.sh "$WORK/failover"
skip mixed || env ${MIXED_ENV:-} TOTAL_S=$(( $(left) - 5 - ${AFTER_MIXED_S:-80} )) ENGINE=0 NS="${NS_MIXED:-16}" POLICIES="${POLICIES_MIXED:-delen}" \
  BOUNDS="${BOUNDS_MIXED:-5,10,33}" DURATION="${DURATION_MIXED:-$D}" EXTRA="${MIXED_EXTRA:-}" bash scripts/device/e2e_gpu.sh "$WORK/mixed"
# issue 8's throughput at saturation: full depth, as many frames as the engine bench serves alone
if ! skip sat; then
  engine=${ENGINE_SAT:-1}
  rates=(${RATES_SAT:-60 120})
  for i in "${!rates[@]}"; do
    rate=${rates[$i]}
    # an equal share of what is left after the later parts' reserve, per rate still to run
    share=$(( ($(left) - 5 - ${AFTER_SAT_S:-150}) / (${#rates[@]} - i) ))
    TOTAL_S="$share" ENGINE="$engine" NS="${NS_SAT:-32}" RATE="$rate" \
      POLICIES="${POLICIES_SAT:-always_final}" EXTRA="${SAT_EXTRA:-}" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/sat_$rate"
    engine=0
  done
fi
# the A/B of session 12's load shedding: every frame uploaded on arrival, even for apps the worker is
# behind (DELEN_UPLOAD_WHEN_BEHIND=1, as before); NS_SAT cameras at each of RATES_AHEAD ("90 120") Hz, no echo
if ! skip ahead; then
  rates=(${RATES_AHEAD:-90 120})
  for i in "${!rates[@]}"; do
    rate=${rates[$i]}
    share=$(( ($(left) - 5 - ${AFTER_AHEAD_S:-150}) / (${#rates[@]} - i) ))
    DELEN_UPLOAD_WHEN_BEHIND=1 TOTAL_S="$share" ENGINE=0 NS="${NS_SAT:-32}" RATE="$rate" \
      POLICIES="${POLICIES_SAT:-always_final}" EXTRA="--no-echo" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/ahead_$rate"
  done
fi
# any other A/B at saturation: the environment SAT_AB_ENV (e.g. DELEN_RAW_COPY=0) on NS_SAT cameras at each
# of RATES_SAT_AB ("120") Hz, no echo; one folder per rate, sat_ab_<rate>/
if ! skip sat_ab; then
  rates=(${RATES_SAT_AB:-120})
  for i in "${!rates[@]}"; do
    rate=${rates[$i]}
    share=$(( ($(left) - 5 - ${AFTER_SAT_AB_S:-150}) / (${#rates[@]} - i) ))
    env ${SAT_AB_ENV:-} TOTAL_S="$share" ENGINE="${ENGINE_SAT_AB:-0}" NS="${NS_SAT:-32}" RATE="$rate" \
      POLICIES="${POLICIES_SAT:-always_final}" EXTRA="--no-echo" DURATION="$D" bash scripts/device/e2e_gpu.sh "$WORK/sat_ab_$rate"
  done
fi
# the same without registering the frame rings with CUDA (each frame staged through a pinned buffer, as before session 11)
skip nopin || DELEN_PIN_RINGS=0 TOTAL_S=$(( $(left) - 5 - ${AFTER_NOPIN_S:-150} )) ENGINE=0 NS="${NS_SAT:-32}" \
  RATE="${RATE_NOPIN:-60}" POLICIES="${POLICIES_SAT:-always_final}" EXTRA="--no-echo" DURATION="$D" \
  bash scripts/device/e2e_gpu.sh "$WORK/nopin"
# issue 10 at the result topic: the apps registered one by one through ~/set_bounds (service), then the
# same apps all in the node's apps parameter (param); no echo (the mixed part has the transport floor)
if ! skip admission; then
  for i in $(seq 1 "${ADM_REPEATS:-1}"); do
    dir=admission; [ "$i" -gt 1 ] && dir="admission_$i"
    # each repeat but the last leaves the later ones an equal share of what is left
    share=$(( ($(left) - 5) / (${ADM_REPEATS:-1} - i + 1) ))
    env ${ADM_ENV:-} TOTAL_S="$share" ENGINE=0 NS="${NS_ADM:-16}" POLICIES=delen BOUNDS="${BOUNDS_ADM:-5,10,33}" \
      DURATION="$D" EXTRA="--register service,param --register-gap-s ${REGISTER_GAP_S:-0.5} --no-echo ${ADM_EXTRA:-}" \
      bash scripts/device/e2e_gpu.sh "$WORK/$dir"
  done
fi
kill "$SPY" 2>/dev/null
echo "[ab] done in $(( $(date +%s) - t0 )) s"
tar czf "$OUT/ab.tgz" -C "$WORK" .
