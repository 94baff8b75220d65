"""The ``delen_node`` process around the node: shared memory that dead DDS processes left reclaimed,
parameters checked, executor chosen, GIL switch interval set, lifecycle driven (``autostart``), spun
until Ctrl-C / SIGTERM, then torn down."""
from __future__ import annotations

import importlib
import sys
import threading
from typing import Any, Callable, Sequence

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn

from ..core.thread_names import name_os_thread
from . import params
from .dds_shm import Reclaimed, reclaim_zombie_segments, uses_fast_dds
from .multi_device import device_list
from .rejections import clean_message

__all__ = ['make_executor', 'preload_cuda_libraries', 'preload_inference_libraries', 'run_node']


def make_executor(kind: str):
    """The executor named by the ``executor`` parameter.

    ``single`` is the default because the node's callbacks are short (an image callback queues a
    view of the message; inference and publication run on the engine's worker): one thread keeps up,
    while rclpy's ``MultiThreadedExecutor`` spins on busy callback groups and, through the GIL,
    starves the worker (0-0.2 answered frames/s on 16 cores).
    """
    if kind == 'single':
        return SingleThreadedExecutor()
    if kind == 'multi':
        return MultiThreadedExecutor(num_threads=8)
    if kind == 'events':
        from rclpy.experimental import EventsExecutor
        return EventsExecutor()
    raise ValueError(f"executor must be 'single', 'events' or 'multi', got {kind!r}")


def _in_background(name: str, work: Callable[[], object]) -> threading.Thread:
    """Run ``work()`` on a daemon thread; its errors are dropped: configure does the same work
    again and reports them."""
    def run() -> None:
        name_os_thread()
        try:
            work()
        except Exception:   # noqa: BLE001 - see above
            pass
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def preload_inference_libraries() -> threading.Thread:
    """Import torch and the engine on a background thread, from the process's start.

    The import takes 2-6 s on an H200 host, and configure is the first to need it: done here, it
    overlaps rclpy's start-up and the wait for a lifecycle manager, not configure (a configure that
    comes sooner waits on Python's import lock for what is left).
    """
    return _in_background('delen-preload', lambda: importlib.import_module('delen_ros.core.engine'))


def preload_cuda_libraries(device: str) -> threading.Thread | None:
    """When ``device`` may be CUDA (``auto``, ``cuda*``), load cuDNN and cuBLAS on a background thread
    (about a second, while rclpy starts): configure would pay for it otherwise, and waits for this
    thread's work instead of overlapping it (``warm_cuda_libraries``). The GPU's idle power is read at
    configure, once this process's context is up (``energy.idle_power_with_context_w``)."""
    if not (device == 'auto' or device.startswith('cuda')):
        return None

    def load() -> None:
        from delen_ros.core.runner import warm_cuda_libraries
        warm_cuda_libraries(device)
    return _in_background('delen-preload-cuda', load)


def run_node(node_class: Any, argv: Sequence[str] | None = None) -> int:
    """Run a ``node_class()`` lifecycle node until Ctrl-C / SIGTERM. Returns the exit status: 1, with
    one line on stderr, for a bad parameter or (with ``autostart``) a failed configure or activate."""
    from rclpy.exceptions import ParameterException
    args = list(sys.argv if argv is None else argv)
    if params.asks_for_help(args):   # before anything starts: a node that configured was no answer
        print(params.usage(), end='')
        return 0
    preload_inference_libraries()
    reclaimed = reclaim_zombie_segments() if uses_fast_dds() else Reclaimed()
    rclpy.init(args=args)
    try:
        node = node_class()
        if reclaimed.segments:
            node.get_logger().info(f'reclaimed {reclaimed} that processes which died had left in /dev/shm')
        settings = params.read(node)
        executor = make_executor(settings.executor)
    except (ParameterException, params.ParameterError, ValueError, ImportError) as exc:
        print(f'delen_node: {params.describe_error(exc)}', file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    except KeyboardInterrupt:   # Ctrl-C while the node is made: a shutdown, not a traceback
        rclpy.try_shutdown()
        return 0
    try:
        devices = device_list(settings.devices)
    except ValueError:   # a device named twice: configure says so
        devices = []
    preload_cuda_libraries(devices[0] if devices else settings.device)
    if settings.gil_switch_interval_ms > 0:
        sys.setswitchinterval(settings.gil_switch_interval_ms / 1000.0)
    executor.add_node(node)
    status = 0
    try:
        if node.get_parameter('autostart').value:
            # a transition that fails because Ctrl-C / SIGTERM closed the context is a shutdown, not an error
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return 1 if node.context.ok() else 0   # on_configure logged the one-line reason
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                return 1 if node.context.ok() else 0
        else:
            node.get_logger().info('waiting for lifecycle transitions (autostart false)')
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RCLError:
        # A shutdown signal that lands between the executor's check of its context and its next
        # wait set makes rcl raise this instead of ExternalShutdownException (seen once under SIGINT).
        if node.context.ok():
            raise
    finally:
        try:
            node.close()
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            print(f'delen_node: shutdown: {clean_message(exc)}', file=sys.stderr)
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return status
