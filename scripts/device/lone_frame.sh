#!/usr/bin/env bash
# Run THERE (one H200): where a lone frame's time goes in the engine (benchmarks/lone_frame.py), per model and
# environment, no ROS. One JSON per run in OUT/<model>/<variant>/, one archive OUT/lone.tgz.
#   device call, carry [".whl", ".devdata/cifar10_test.packed.npz"]:
#     MODELS="cifar10_committee cifar10_lite0" VARIANTS="default spin" bash scripts/device/lone_frame.sh "$OUT"
# Variants: default (as shipped), spin (DELEN_BLOCKING_SYNC=0), no_upload (DELEN_UPLOAD_AHEAD=0), or NAME=ENV=VALUE.
set -u
OUT="$1"; mkdir -p "$OUT"
# shellcheck source=scripts/device/photos_env.sh
source scripts/device/photos_env.sh
for model in ${MODELS:-cifar10_committee cifar10_lite0}; do
  for v in ${VARIANTS:-default spin}; do
    case "$v" in
      default) envs=() ;;
      spin) envs=(DELEN_BLOCKING_SYNC=0) ;;
      no_upload) envs=(DELEN_UPLOAD_AHEAD=0) ;;
      *=*) envs=("${v#*=}"); v="${v%%=*}" ;;
    esac
    echo "== $model $v ${envs[*]:-}"
    env "${envs[@]}" DELEN_TRACE="$WORK/trace.jsonl" python3 benchmarks/lone_frame.py --model "$model" --device cuda \
      --cuda-graphs --frames "${FRAMES:-300}" --out "$OUT/$model/$v" 2>&1 | grep -v Warning
  done
done
cd "$OUT" && tar czf lone.tgz --exclude=lone.tgz ./*
