# Sourced (not run) by device scripts that need no A/B prelude (lone_frame.sh, resize_ab.sh), from the repository
# root with OUT set: the offline set-up (its log in $OUT/setup.log), the ROS environment, and the carried CIFAR-10
# test photos unpacked outside the checkout (DELEN_CIFAR10); WORK: a scratch folder.
bash scripts/device/setup_offline.sh > "$OUT/setup.log" 2>&1 || { tail "$OUT/setup.log"; exit 1; }
# shellcheck disable=SC1091
source .whl/env.sh
WORK=$(mktemp -d)
python3 -c "import sys; from delen_ros.tools.cifar_pack import unpack_jpeg_npz as u; u(*sys.argv[1:])" \
  .devdata/cifar10_test.packed.npz "$WORK/cifar10_test.npz"
export DELEN_CIFAR10="$WORK/cifar10_test.npz" PYTHONUNBUFFERED=1
