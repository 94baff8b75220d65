"""Torch's intra-op threads for serving on a shared CPU (core/cpu_threads.py; ROS-free)."""
from delen_ros.core.cpu_threads import auto_intra_op_threads


def test_half_the_cores_on_a_cpu_at_least_one():
    assert [auto_intra_op_threads('cpu', cpus=n) for n in (1, 2, 3, 8, 16)] == [1, 1, 1, 4, 8]


def test_torchs_default_where_the_network_runs_on_an_accelerator():
    assert auto_intra_op_threads('cuda', cpus=16) == 0


def test_the_cores_this_process_may_run_on_by_default():
    assert auto_intra_op_threads('cpu') >= 1
