#!/usr/bin/env bash
# Run THERE (one H200, no ROS needed): session 46's check of the device preprocessing's resize.
#   1. the CUDA unit tests of preprocessing, runner, fused steps and engine (when .devdata/pytest is carried);
#   2. benchmarks/resize_paths.py: each exit's accuracy and the profile's cascades on the 10 000 test photos,
#      through the CPU path, the device path and the device path as before (bilinear growth);
#   3. delen_bench (issue 9's engine bench: always_final and delen, steady and bursty, BENCH_S s each) with
#      the device path as shipped, then as before (resize_paths.py --as-before);
#   4. benchmarks/lone_frame.py (where a lone frame's time goes).
#   device call, carry [".whl", ".devdata/cifar10_test.packed.npz", ".devdata/pytest"]:
#     bash scripts/device/resize_ab.sh "$OUT"
set -u
OUT="$1"; mkdir -p "$OUT"
# shellcheck source=scripts/device/photos_env.sh
source scripts/device/photos_env.sh
MODEL="${MODEL:-cifar10_committee}"
if [ -d .devdata/pytest ]; then
  python3 -m pip install -q --no-index --no-deps --target "$WORK/pt" .devdata/pytest/*.whl
  PYTHONPATH="$WORK/pt:${PYTHONPATH:-}" timeout 240 python3 -m pytest -q -p no:cacheprovider test/test_area_resize.py \
    test/test_preprocess.py test/test_runner.py test/test_fused_steps.py test/test_engine.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
fi
timeout 120 python3 benchmarks/resize_paths.py --model "$MODEL" --device cuda --out "$OUT/resize_paths" 2>&1 | grep -v Warning
bench() {   # $1: folder; the rest: the command's prefix
  local dir="$1"; shift
  timeout 150 "$@" delen_ros.tools.bench --model "$MODEL" --device cuda --cuda-graphs --energy-meter nvml \
    --profile "models/profiles/${MODEL}__cuda-nvidia-h200.json" --duration "${BENCH_S:-20}" --warmup 1 \
    --scenarios steady,bursty --policies always_final,delen --frame-count 3000 --out "$OUT/$dir" 2>&1 | tail -25
}
echo "== bench, device path as shipped"; bench bench_new python3 -m
echo "== bench, device path as before"; bench bench_before python3 benchmarks/resize_paths.py --as-before -m
echo "== lone frame"
DELEN_TRACE="$WORK/trace.jsonl" timeout 90 python3 benchmarks/lone_frame.py --model "$MODEL" --device cuda \
  --cuda-graphs --frames 240 --out "$OUT/lone" 2>&1 | grep -v Warning | tail -20
