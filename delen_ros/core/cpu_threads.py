"""How many intra-op threads torch gets for inference on a CPU that other work shares, ROS-free.

Torch's default is one thread per core, and its intra-op threads wait for one another at every operator:
when any other thread or process takes a core, each operator waits for the thread that lost it. On this
2-core VM, ``cifar10_committee`` to its final exit at batch 1 took 23.0 ms (p50) on two threads alone and
57.7 ms (p90 241 ms) beside one busy process, against 29.3 and 30.1 ms on one thread (session 31). The
node never has the CPU to itself: its receivers take the frames, the cameras and DDS run beside it. Under
that load the steps ran at about twice the profile, so an app admitted on the profile missed.
"""
from __future__ import annotations

import os

__all__ = ['auto_intra_op_threads', 'usable_cpus']


def usable_cpus() -> int:
    """The cores this process may run on (its affinity where the OS tells it, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)


def auto_intra_op_threads(device_type: str, cpus: int | None = None) -> int:
    """Intra-op threads for serving on ``device_type`` (``'cpu'``, ``'cuda'``): on a CPU half of the
    cores this process may run on, at least one, leaving the others to the receivers, the cameras and
    DDS; ``0`` (torch's default) where the network runs on an accelerator.

    >>> auto_intra_op_threads('cpu', cpus=2), auto_intra_op_threads('cpu', cpus=16), auto_intra_op_threads('cuda', cpus=16)
    (1, 8, 0)
    """
    if device_type != 'cpu':
        return 0
    return max(1, (usable_cpus() if cpus is None else cpus) // 2)
