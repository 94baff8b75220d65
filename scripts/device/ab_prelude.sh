# Sourced (not run) by the A/B device scripts (e2e_ingress_ab.sh, e2e_data_path_ab.sh), from their
# repository root, with OUT set: offline set-up, the ROS environment, the CIFAR-10 frames, a log of
# everything in $WORK/ab.log, and left() (seconds of TOTAL_S, default 570, left since the start).
# MODEL: the model served, default cifar10_committee (the node's; session 44 meant it and ran cifar10_lite0, the old default).
t0=$(date +%s)
WORK=/tmp/delen_ab; rm -rf "$WORK"; mkdir -p "$WORK"
exec > >(tee "$WORK/ab.log") 2>&1
export PYTHONUNBUFFERED=1 DELEN_CIFAR10="$PWD/.devdata/cifar10_test.npz" MODEL="${MODEL:-cifar10_committee}" SOURCE=cifar10
bash scripts/device/setup_offline.sh || exit 1
if [ ! -f .devdata/cifar10_test.npz ] && [ -f .devdata/cifar10_test.packed.npz ]; then
  # only the packed test photos were carried (a third of the bytes): restored outside the checkout
  python3 -c "import sys; from delen_ros.tools.cifar_pack import unpack_jpeg_npz as u; print('unpacked', u(*sys.argv[1:]))" \
    .devdata/cifar10_test.packed.npz "$WORK/cifar10_test.npz" && export DELEN_CIFAR10="$WORK/cifar10_test.npz"
fi
# shellcheck disable=SC1091
source .whl/env.sh
python3 -c "import os; print('cores (affinity)', len(os.sched_getaffinity(0)))"
df -h /dev/shm | tail -1
left() { echo $(( ${TOTAL_S:-570} - ($(date +%s) - t0) )); }
