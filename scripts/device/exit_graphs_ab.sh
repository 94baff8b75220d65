#!/usr/bin/env bash
# Run THERE (one H200, no ROS needed): session 47's A/B of a lone frame's CUDA calls cut down. "new" is as
# shipped: exit graphs (StageRunner.exit_step: stage, head and look in one replay at batch 1) and whole-factor
# growth inside the normalising kernel; "before" turns both off (DELEN_EXIT_GRAPHS=0 DELEN_FOLD_GROWTH=0).
#   1. the CUDA unit tests of preprocessing, runner, fused steps and engine (when .devdata/pytest is carried);
#   2. benchmarks/lone_frame.py: new, exit graphs off, both off;
#   3. delen_bench (issue 9's engine bench: always_final and delen, steady and bursty, BENCH_S s each),
#      in the order ORDER gives (default "new before").
#   device call, carry [".whl", ".devdata/cifar10_test.packed.npz", ".devdata/pytest"]:
#     ORDER="new before" bash scripts/device/exit_graphs_ab.sh "$OUT"     # results: $OUT/ab.tgz
set -u
OUT="$1"; mkdir -p "$OUT"
# shellcheck source=scripts/device/photos_env.sh
source scripts/device/photos_env.sh
MODEL="${MODEL:-cifar10_committee}"
BEFORE=(DELEN_EXIT_GRAPHS=0 DELEN_FOLD_GROWTH=0)
if [ -d .devdata/pytest ] && [ "${TESTS:-1}" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --target "$WORK/pt" .devdata/pytest/*.whl
  PYTHONPATH="$WORK/pt:${PYTHONPATH:-}" timeout 240 python3 -m pytest -q -p no:cacheprovider test/test_area_resize.py \
    test/test_preprocess.py test/test_runner.py test/test_fused_steps.py test/test_engine.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
fi
if [ "${LONE:-1}" = 1 ]; then
  for v in new no_exit_graphs before; do
    case "$v" in new) envs=() ;; no_exit_graphs) envs=(DELEN_EXIT_GRAPHS=0) ;; before) envs=("${BEFORE[@]}") ;; esac
    echo "== lone frame, $v"
    env "${envs[@]}" DELEN_TRACE="$WORK/trace.jsonl" timeout 90 python3 benchmarks/lone_frame.py --model "$MODEL" \
      --device cuda --cuda-graphs --frames "${FRAMES:-240}" --out "$OUT/lone_$v" 2>&1 | grep -v Warning | tail -4
  done
fi
for arm in ${ORDER:-new before}; do
  case "$arm" in new) envs=() ;; before) envs=("${BEFORE[@]}") ;; esac
  echo "== bench, $arm"
  env "${envs[@]}" timeout 150 python3 -m delen_ros.tools.bench --model "$MODEL" --device cuda --cuda-graphs \
    --energy-meter nvml --profile "models/profiles/${MODEL}__cuda-nvidia-h200.json" --duration "${BENCH_S:-20}" \
    --warmup 1 --scenarios steady,bursty --policies always_final,delen --frame-count 3000 \
    --out "$OUT/bench_$arm" 2>&1 | tail -12
done
cd "$OUT" && tar czf ab.tgz --exclude=ab.tgz --exclude=setup.log ./*
