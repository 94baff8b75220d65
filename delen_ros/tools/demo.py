"""``delen_demo``: one delen node, three cameras, three applications with different bounds, live.

Starts the node and three camera players as child processes (loopback DDS only, a ROS domain of
its own), registers three apps by service call, shows a live table, changes one bound half-way,
and at the end prints a summary and writes ``demo.png`` and ``demo.json`` into ``--out``:

The model is ``cifar10_committee`` and every camera replays CIFAR-10 test photos scaled to 320x240
(true labels travel in ``frame_id``, so every app's accuracy is measured, not assumed):

* **inspection**: an *accuracy* bound, minimum latency otherwise; the table shows the accuracy
  measured against the true labels next to the bound.
* **navigation**: a *latency* bound, as accurate as that allows. Half-way the bound is tightened
  to leave room for about half the network (the time spent outside the network is measured
  first): the exits move earlier. The update carries the token of the registration.
* **battery**: an *energy* bound per inference, as accurate as that budget allows.

Without the CIFAR-10 file (``../shared/data/cifar10/cifar10_jpeg.npz`` or ``$DELEN_CIFAR10``) the
demo says so and runs the ``fashion_mnist`` model on Fashion-MNIST frames, the ``vtest`` pedestrian
video and a ViSP robot sequence instead (only the inspection camera is labelled there).

Bounds are derived from the node's profile on this device (``GetProfile``), so they mean the same
on a CPU and on a GPU. Children are stopped cleanly at the end, on Ctrl-C and on SIGTERM.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import threading
import time
from typing import Any, Sequence

import numpy as np
import yaml

from ..core.thread_names import name_os_thread
from .processes import Children, ros_child_env, sigterm_as_interrupt

__all__ = ['DemoCamera', 'CAMERAS', 'FALLBACK_CAMERAS', 'DEFAULT_MODEL', 'FALLBACK_MODEL', 'NAVIGATION_ALLOWANCE_MS',
           'demo_setup', 'demo_bounds', 'tightened_latency_ms', 'retry_latency_ms', 'Record', 'summarize', 'render_table',
           'write_plot', 'main']


@dataclasses.dataclass(frozen=True)
class DemoCamera:
    """A camera player and the app it feeds."""

    app_id: str
    source: str           # a shipped sequence (see ``delen_camera list``)
    topic: str
    rate_hz: float
    size: str             # WxH or 'native'
    role: str             # what the bound stands for, for the table


DEFAULT_MODEL = 'cifar10_committee'
#: Models trained on CIFAR-10: their cameras replay its labelled test photos, so accuracy is scored.
CIFAR10_MODELS = (DEFAULT_MODEL, 'cifar10_lite0', 'cifar10_lite2', 'cifar10_resnet9')
#: What the demo runs when the CIFAR-10 file is absent (the set-up never downloads it).
FALLBACK_MODEL = 'fashion_mnist'

# cifar10_committee takes ~24 ms per frame to its final exit on this 2-core CPU (a few ms more for
# conversion and resizing to 160 px): three labelled 320x240 streams at these rates would keep the node
# busy under 60 % of the time even at full depth (the bounds stop most frames earlier), leaving room
# for the cameras, DDS and the demo itself.
CAMERAS: tuple[DemoCamera, ...] = (
    DemoCamera('inspection', 'cifar10', '/inspection/image_raw', 8.0, '320x240', 'accuracy bound'),
    DemoCamera('navigation', 'cifar10', '/front_camera/image_raw', 8.0, '320x240', 'latency bound'),
    DemoCamera('battery', 'cifar10', '/rear_camera/image_raw', 8.0, '320x240', 'energy bound'),
)
#: The cameras of the fallback model: only the inspection camera is labelled.
FALLBACK_CAMERAS: tuple[DemoCamera, ...] = (
    DemoCamera('inspection', 'fashion_mnist', '/inspection/image_raw', 10.0, 'native', 'accuracy bound'),
    DemoCamera('navigation', 'vtest', '/front_camera/image_raw', 15.0, '320x240', 'latency bound'),
    DemoCamera('battery', 'visp_mbt_cube', '/rear_camera/image_raw', 10.0, 'native', 'energy bound'),
)
_FALLBACK_SOURCES = {'visp_mbt_cube': ('visp_mire2', 'fashion_mnist'), 'vtest': ('visp_mire2', 'fashion_mnist')}


def demo_setup(model: str, available: Sequence[str]) -> tuple[str, tuple[DemoCamera, ...], str | None]:
    """The model and cameras to run, and a note when the demo falls back.

    :param model: the requested model (``--model``).
    :param available: names of the camera sources installed here (``delen_camera list``).
    :returns: ``(model, cameras, note)``; ``note`` is ``None`` unless :data:`DEFAULT_MODEL` was asked
        for without its ``cifar10`` source, in which case :data:`FALLBACK_MODEL` and its cameras run.
        A CIFAR-10 model (:data:`CIFAR10_MODELS`) gets the CIFAR-10 cameras where the source is
        installed; any other model gets the fallback cameras (their frames fit any model; accuracy is
        scored where a frame is labelled).
    """
    if model in CIFAR10_MODELS and 'cifar10' in available:
        return model, CAMERAS, None
    if model != DEFAULT_MODEL:
        return model, FALLBACK_CAMERAS, None
    from delen_ros.core.datasets import cifar10_path
    return FALLBACK_MODEL, FALLBACK_CAMERAS, (
        f'note: CIFAR-10 not found at {cifar10_path()} (put cifar10_jpeg.npz there or set $DELEN_CIFAR10); '
        f'running the {FALLBACK_MODEL} model on Fashion-MNIST, vtest and ViSP frames instead')


# Time outside the network (conversion, preprocessing, queueing, DDS, publication) that the first
# navigation bound allows for; ~1.5-2.5 ms on a busy 2-core CPU. Not the profile's p99, which a
# loaded machine can inflate a hundredfold.
NAVIGATION_ALLOWANCE_MS = 3.0

# Results of one app awaited before registering the next, and for at most how long (s).
_RESULTS_BEFORE_NEXT_APP = 4
_RATE_MEASURE_TIMEOUT_S = 5.0


def demo_bounds(profile: Any) -> dict[str, dict[str, Any]]:
    """The three apps' ``SetBounds`` fields from a ``GetProfile`` answer.

    inspection: accuracy half-way between exits 1 and 2 (earlier exits only when confident),
    ``MIN_LATENCY`` otherwise; navigation: the final exit's p50 time plus
    :data:`NAVIGATION_ALLOWANCE_MS` for what happens outside the network (conversion, queueing,
    publication), ``MAX_ACCURACY`` within that;
    battery: the cumulative energy of exit 1, ``MAX_ACCURACY`` within that budget.
    Objectives are ``SetBounds``'s named constants (their numbers are the message's business).
    """
    from delen_ros.srv import SetBounds
    acc, lat, energy = (list(map(float, v)) for v in (profile.accuracy, profile.latency_ms, profile.energy_mj))
    n = len(acc)
    k1, k2 = min(1, n - 1), min(2, n - 1)
    return {
        'inspection': {'min_accuracy': round(acc[k1] + 0.5 * (acc[k2] - acc[k1]), 4),
                       'objective': SetBounds.Request.MIN_LATENCY},
        'navigation': {'max_latency_ms': round(lat[-1] + NAVIGATION_ALLOWANCE_MS, 2),
                       'objective': SetBounds.Request.MAX_ACCURACY},
        'battery': {'max_energy_mj': round(energy[k1] * 1.0001, 6), 'objective': SetBounds.Request.MAX_ACCURACY},
    }


def tightened_latency_ms(recent: Sequence['Record'], profile: Any, current_ms: float) -> float:
    """The half-way change: a navigation bound with room for about exit 1, not the final exit.

    What the network does not account for (conversion, queueing, publication) is measured: the
    median latency of recent results minus the profile's time to the exits they stopped at. The new
    bound is that overhead plus the time to half-way between exits 1 and 2; without recent results,
    half the current bound.
    """
    lat = list(map(float, profile.latency_ms))
    if len(recent) < 5:
        return round(current_ms / 2, 2)
    overhead = float(np.median([r.latency_ms - lat[r.exit_index] for r in recent]))
    k1, k2 = min(1, len(lat) - 1), min(2, len(lat) - 1)
    return round(max(lat[0], overhead + lat[k1] + 0.5 * (lat[k2] - lat[k1])), 2)


def _with_room(would_fit_ms: float) -> float:
    """A latency bound the node says would fit, with a little room (+2 %): it fits at the node's
    measurements now, which move."""
    return round(would_fit_ms * 1.02, 2)


def retry_latency_ms(asked_ms: float, current_ms: float, would_fit_ms: float,
                     fastest_ms: float = 0.0) -> tuple[float | None, str]:
    """After a refused tightening, the bound to ask next and why; ``None``: nothing tighter than the
    current bound fits now (``would_fit_ms``: the refusal's ``would_fit_max_latency_ms``, 0 if none;
    ``fastest_ms``: the low end of its feasible latency range, the fastest exit end to end)."""
    if would_fit_ms > 0:
        retry = _with_room(would_fit_ms)
        if retry < current_ms:
            return retry, 'what the node says would fit, +2 %'
        return None, f'the node says only >= {would_fit_ms:.3g} ms would fit now'
    if fastest_ms >= current_ms:
        return None, f'the fastest exit takes {fastest_ms:.3g} ms end to end now: nothing tighter fits'
    if asked_ms < fastest_ms:   # below the fastest exit: half-way from there, not from the ask
        return round((fastest_ms + current_ms) / 2, 2), f'half-way from the fastest exit end to end, {fastest_ms:.3g} ms'
    return round((asked_ms + current_ms) / 2, 2), 'half-way'


def first_fit_latency_ms(asked_ms: float, would_fit_ms: float) -> float | None:
    """After a first latency bound was refused as not fitting beside the apps already admitted: what
    the node says would fit (``would_fit_max_latency_ms``), +2 %; ``None`` where it names nothing
    looser. The first bound is priced from the profile and a fixed allowance, but admission also
    counts the longest run of another app a frame may wait behind: on a 2-core CPU, now and then,
    a few milliseconds more than the allowance."""
    return _with_room(would_fit_ms) if would_fit_ms > asked_ms else None


@dataclasses.dataclass(frozen=True)
class Record:
    """One received result (times in s since the demo started)."""

    t_s: float
    exit_index: int
    latency_ms: float
    stamp_latency_ms: float
    energy_mj: float
    energy_measured: bool
    expected_accuracy: float
    confidence: float
    bounds_met: bool
    correct: bool | None     # None: true label unknown


def summarize(records: Sequence[Record], *, num_exits: int, duration_s: float) -> dict[str, Any]:
    """Figures over ``records``: rate, exit mix, latency p50/p99, energy, accuracy, attainment."""
    n = len(records)
    if n == 0:
        return {'results': 0, 'rate_hz': 0.0}
    lat = np.array([r.latency_ms for r in records])
    scored = [r.correct for r in records if r.correct is not None]
    exits = np.bincount([r.exit_index for r in records], minlength=num_exits)
    return {
        'results': n, 'rate_hz': n / duration_s if duration_s > 0 else 0.0,
        'exit_mix': [float(c) / n for c in exits],
        'latency_p50_ms': float(np.percentile(lat, 50)), 'latency_p99_ms': float(np.percentile(lat, 99)),
        'stamp_latency_p50_ms': float(np.percentile([r.stamp_latency_ms for r in records], 50)),
        'energy_mean_mj': float(np.mean([r.energy_mj for r in records])),
        'energy_measured': bool(all(r.energy_measured for r in records)),
        'expected_accuracy_mean': float(np.mean([r.expected_accuracy for r in records])),
        'accuracy': float(np.mean(scored)) if scored else None, 'scored': len(scored),
        'attainment': float(np.mean([r.bounds_met for r in records])),
    }


# --- the demo's own ROS side ------------------------------------------------------------------------------
class Watcher:
    """Registers the apps and collects their results and status (rclpy, spun in a thread)."""

    def __init__(self, domain_id: int, *, t0: float):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.t0 = t0
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node('delen_demo', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.records: dict[str, list[Record]] = collections.defaultdict(list)
        self.status: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._spin, name='demo-spin', daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        name_os_thread()
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - ends when the context shuts down
            pass

    def call(self, srv_type: type, name: str, request: Any, *, timeout: float) -> Any:
        """Call a service (its client is made once and kept: no discovery churn mid-demo)."""
        if name not in self._clients:
            self._clients[name] = self.node.create_client(srv_type, name)
        client = self._clients[name]
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f'service {name} did not appear within {timeout:g} s')
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                client.remove_pending_request(future)
                raise TimeoutError(f'service {name} did not answer within {timeout:g} s')
            time.sleep(0.01)
        return future.result()

    def follow(self, app_id: str, topic: str) -> None:
        from delen_ros.msg import InferenceResult
        from delen_ros.ros.camera_player import label_from_frame_id

        def on_result(msg: Any) -> None:
            label = label_from_frame_id(msg.header.frame_id)
            record = Record(
                t_s=time.monotonic() - self.t0, exit_index=msg.exit_index, latency_ms=msg.latency_ms,
                stamp_latency_ms=msg.stamp_latency_ms, energy_mj=msg.energy_mj, energy_measured=msg.energy_measured,
                expected_accuracy=msg.expected_accuracy, confidence=msg.confidence, bounds_met=msg.bounds_met,
                correct=None if label is None else label == msg.class_id)
            with self.lock:
                self.records[app_id].append(record)
        self.node.create_subscription(InferenceResult, topic, on_result, 50)

    def wait_for_results(self, app_id: str, *, count: int, timeout: float) -> bool:
        """Wait until ``count`` results of ``app_id`` arrived (``False``: ``timeout`` s passed first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.records.get(app_id, ())) >= count:
                    return True
            time.sleep(0.05)
        return False

    def follow_status(self, topic: str) -> None:
        from delen_ros.msg import AppStatus

        def on_status(msg: Any) -> None:
            with self.lock:
                self.status[msg.app_id] = msg
        self.node.create_subscription(AppStatus, topic, on_status, 10)

    def snapshot(self) -> tuple[dict[str, list[Record]], dict[str, Any]]:
        with self.lock:
            return {k: list(v) for k, v in self.records.items()}, dict(self.status)

    def close(self) -> None:
        import rclpy
        self.executor.shutdown(timeout_sec=2.0)
        rclpy.try_shutdown(context=self.context)   # wakes a spin still waiting
        # joined before the node goes: a thread left inside rclpy when the interpreter exits aborts
        # the process ("terminate called without an active exception", seen on a refused app)
        self._thread.join(timeout=2.0)
        self.node.destroy_node()


# --- output ---------------------------------------------------------------------------------------------------
def _bound_text(fields: dict[str, Any]) -> str:
    parts = []
    if fields.get('max_latency_ms'):
        parts.append(f'lat<={fields["max_latency_ms"]:g}ms')
    if fields.get('min_accuracy'):
        parts.append(f'acc>={fields["min_accuracy"]:.3f}')
    if fields.get('max_energy_mj'):
        parts.append(f'E<={fields["max_energy_mj"]:.3g}mJ')
    return ' '.join(parts) or 'unbounded'


def _fmt(value: float | None, spec: str, missing: str = '-') -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def render_table(records: dict[str, list[Record]], status: dict[str, Any], bounds: dict[str, dict[str, Any]], *,
                 now_s: float, window_s: float, num_exits: int, header: str,
                 cameras: Sequence[DemoCamera] = CAMERAS) -> str:
    """The live table: one row per app (of ``cameras``) over the last ``window_s`` seconds."""
    exits_head = ' '.join(f'e{k}' .rjust(4) for k in range(num_exits))
    lines = [header,
             f'{"app":11s} {"bound":22s} {"res/s":>6s} {exits_head}  {"p50 ms":>7s} {"p99 ms":>7s} '
             f'{"mJ/frame":>9s} {"acc":>6s} {"met":>5s} {"drops":>6s}']
    for cam in cameras:
        recent = [r for r in records.get(cam.app_id, []) if r.t_s >= now_s - window_s]
        s = summarize(recent, num_exits=num_exits, duration_s=min(window_s, max(now_s, 1e-3)))
        st = status.get(cam.app_id)
        mix = ' '.join(f'{100 * m:3.0f}%' for m in s.get('exit_mix', [0.0] * num_exits))
        lines.append(
            f'{cam.app_id:11s} {_bound_text(bounds.get(cam.app_id, {})):22s} {s["rate_hz"]:6.1f} {mix}  '
            f'{_fmt(s.get("latency_p50_ms"), "7.2f")} {_fmt(s.get("latency_p99_ms"), "7.2f")} '
            f'{_fmt(s.get("energy_mean_mj"), "9.4f")} {_fmt(s.get("accuracy"), "6.3f")} '
            f'{_fmt(s.get("attainment"), "5.0%")} {st.dropped if st is not None else 0:6d}')
    return '\n'.join(lines)


def write_plot(path: pathlib.Path, records: dict[str, list[Record]], bounds_before: dict[str, dict[str, Any]],
               bounds_after: dict[str, dict[str, Any]], *, change_s: float, duration_s: float, num_exits: int,
               title: str, cameras: Sequence[DemoCamera] = CAMERAS,
               sources: dict[str, str] | None = None) -> pathlib.Path:
    """One row per app (of ``cameras``): exit mix over time, latency vs bound, energy vs bound, accuracy
    vs bound. ``sources``: each app's camera source as replayed (default: the camera's own)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(cameras), 4, figsize=(18, 3.2 * len(cameras)), squeeze=False)
    bins = np.arange(0.0, duration_s + 1.0, 1.0)
    for row, cam in enumerate(cameras):
        recs = records.get(cam.app_id, [])
        t = np.array([r.t_s for r in recs])
        ax_mix, ax_lat, ax_en, ax_acc = axes[row]
        if len(recs):
            exits = np.array([r.exit_index for r in recs])
            counts = np.array([np.histogram(t[exits == k], bins)[0] for k in range(num_exits)], dtype=float)
            totals = np.maximum(counts.sum(0), 1)
            ax_mix.stackplot(bins[:-1], counts / totals, labels=[f'exit {k}' for k in range(num_exits)], step='post')
            ax_lat.plot(t, [r.latency_ms for r in recs], '.', ms=2, alpha=0.5, label='latency')
            ax_en.plot(t, [r.energy_mj for r in recs], '.', ms=2, alpha=0.5, label='energy / frame')
            ax_acc.plot(t, [r.expected_accuracy for r in recs], '.', ms=2, alpha=0.3, label='expected accuracy')
            scored = [(r.t_s, r.correct) for r in recs if r.correct is not None]
            if scored:
                st, sc = np.array(scored, dtype=float).T
                window = max(1, min(50, len(sc) // 4))
                sums = np.cumsum(np.concatenate([[0.0], sc]))
                counts = np.minimum(np.arange(1, len(sc) + 1), window)
                trailing = (sums[1:] - sums[np.maximum(0, np.arange(1, len(sc) + 1) - window)]) / counts
                ax_acc.plot(st, trailing, '-', lw=1.5, label=f'measured accuracy (last {window} labelled)')
        for ax, key in ((ax_lat, 'max_latency_ms'), (ax_en, 'max_energy_mj'), (ax_acc, 'min_accuracy')):
            for (t_a, t_b), fields in (((0.0, change_s), bounds_before), ((change_s, duration_s), bounds_after)):
                value = fields.get(cam.app_id, {}).get(key)
                if value:
                    ax.hlines(value, t_a, t_b, colors='red', linestyles='--', label='bound' if t_a == 0 else None)
        for ax, name in zip(axes[row], ('exit mix', 'latency (ms)', 'energy (mJ)', 'accuracy')):
            ax.axvline(change_s, color='grey', lw=0.8, ls=':')
            ax.set_title(f'{cam.app_id} ({(sources or {}).get(cam.app_id, cam.source)}): {name}', fontsize=9)
            ax.set_xlim(0, duration_s)
            ax.tick_params(labelsize=8)
            if row == len(cameras) - 1:
                ax.set_xlabel('time (s)', fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc='lower left')
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- main -----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='delen_demo', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--duration', type=float, default=40.0, help='seconds of serving')
    parser.add_argument('--out', default='out/demo', help='folder for demo.png, demo.json and the logs')
    parser.add_argument('--model', default=DEFAULT_MODEL,
                        help=f'model zoo name; {DEFAULT_MODEL} needs the CIFAR-10 file, else {FALLBACK_MODEL} runs')
    parser.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N')
    parser.add_argument('--energy-meter', default='auto', help='auto | jetson | nvml | rapl | estimate')
    parser.add_argument('--policy', default='delen', help='exit policy of the node')
    parser.add_argument('--torch-threads', type=int, default=1,
                        help='CPU threads for torch in the node (0 = all cores; the small model is fastest with 1)')
    parser.add_argument('--rate-scale', type=float, default=1.0, help='multiply every camera rate')
    parser.add_argument('--change-at', type=float, default=0.5, help='fraction of the run when a bound changes')
    parser.add_argument('--startup-timeout', type=float, default=180.0, help='s to wait for the node')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS domain; default $ROS_DOMAIN_ID, else derived from the pid')
    parser.add_argument('--no-live', action='store_true', help='no live table (log lines every 5 s instead)')
    return parser


def _pick_sources(cameras: Sequence[DemoCamera], available: Sequence[str]) -> dict[str, str]:
    """Each camera's source, or a fallback where a Debian data package is missing."""
    picked = {}
    for cam in cameras:
        for name in (cam.source, *_FALLBACK_SOURCES.get(cam.source, ())):
            if name in available:
                picked[cam.app_id] = name
                break
        else:
            raise SystemExit(f'delen_demo: no camera source for {cam.app_id} (wanted {cam.source}); '
                             f'installed: {sorted(available)}')
    return picked


def main(argv: Sequence[str] | None = None) -> int:
    from delen_ros.srv import GetProfile, SetBounds

    args = build_parser().parse_args(argv)
    if args.duration <= 0 or not 0 < args.change_at < 1 or args.rate_scale <= 0:
        raise SystemExit('delen_demo: need --duration > 0, 0 < --change-at < 1, --rate-scale > 0')
    out = pathlib.Path(args.out)
    (out / 'logs').mkdir(parents=True, exist_ok=True)
    domain_id = args.domain_id if args.domain_id is not None else int(
        os.environ.get('ROS_DOMAIN_ID') or 1 + os.getpid() % 100)
    env = ros_child_env(domain_id)
    for key in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'FASTDDS_DEFAULT_PROFILES_FILE'):
        os.environ[key] = env[key]
    from delen_ros.core.datasets import camera_sources
    available = sorted(camera_sources())
    model, cameras, note = demo_setup(args.model, available)
    if note:
        print(f'delen_demo: {note}', flush=True)
    sources = _pick_sources(cameras, available)
    live = sys.stdout.isatty() and not args.no_live
    print(f'delen_demo: ROS domain {domain_id} (loopback only); logs in {out / "logs"}', flush=True)

    params = {'model': model, 'device': args.device, 'energy_meter': args.energy_meter, 'policy': args.policy,
              'state_file': '', 'status_period_s': 1.0, 'torch_threads': args.torch_threads,
              # admission prices a camera at this rate until it has measured it: the demo's own
              'rate_prior_hz': float(max(c.rate_hz for c in cameras))}
    params_path = out / 'logs' / 'node_params.yaml'
    params_path.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}))
    children = Children(out / 'logs', env)
    previous_sigterm = sigterm_as_interrupt()   # Ctrl-C's clean stop on SIGTERM too
    watcher: Watcher | None = None
    t0 = time.monotonic()
    records: dict[str, list[Record]] = {}
    bounds_before: dict[str, dict[str, Any]] = {}
    bounds_after: dict[str, dict[str, Any]] = {}
    change: dict[str, Any] = {}
    change_s = args.duration * args.change_at
    num_exits, profile_info, interrupted = 1, {}, False
    serve_start = t0
    try:
        children.start('node', ['-m', 'delen_ros.ros.node', '--ros-args', '--params-file', str(params_path)])
        for cam in cameras:
            children.start(f'camera_{cam.app_id}', [
                '-m', 'delen_ros.ros.camera_player', sources[cam.app_id], '--topic', cam.topic,
                '--rate', f'{cam.rate_hz * args.rate_scale:g}', '--size', cam.size,
                '--node-name', f'camera_{cam.app_id}'])
        watcher = Watcher(domain_id, t0=t0)
        print(f'waiting for the node (model {model}, device {args.device}) ...', flush=True)
        try:
            profile = watcher.call(GetProfile, '/delen/get_profile', GetProfile.Request(),
                                   timeout=args.startup_timeout)
        except TimeoutError:
            tail = (out / 'logs' / 'node.log').read_text()[-3000:]
            raise SystemExit(f'delen_demo: the node did not come up within {args.startup_timeout:g} s; '
                             f'its log ends:\n{tail}')
        num_exits = len(profile.accuracy)
        profile_info = {'model': profile.model, 'device': profile.device, 'energy_source': profile.energy_source,
                        'accuracy_note': profile.accuracy_note, 'exit_names': list(profile.exit_names),
                        'latency_ms': list(map(float, profile.latency_ms)),
                        'energy_mj': list(map(float, profile.energy_mj)),
                        'accuracy': list(map(float, profile.accuracy))}
        bounds_before = demo_bounds(profile)
        bounds_after = bounds_before
        watcher.follow_status('/delen/status')
        tokens: dict[str, str] = {}  # each app's ownership token: an update without it is refused

        def set_bounds(app_id: str, topic: str, bounds: dict[str, Any], token: str = '') -> Any:
            return watcher.call(SetBounds, '/delen/set_bounds', SetBounds.Request(
                app_id=app_id, image_topic=topic, token=token, **bounds), timeout=10.0)

        # Latency-bound apps last: admission prices a new camera at 30 Hz, and such an app at its
        # cheapest exit (it degrades there under load), so it fits where the others might not.
        for cam in sorted(cameras, key=lambda c: bool(bounds_before[c.app_id].get('max_latency_ms'))):
            if bounds_before[cam.app_id].get('max_latency_ms'):
                # Priced now, not at start-up: bounds run from the camera's stamp, and the serving
                # overhead (transport included) is measured only once the other apps' frames flow.
                fresh = watcher.call(GetProfile, '/delen/get_profile', GetProfile.Request(), timeout=10.0)
                bounds_before[cam.app_id] = demo_bounds(fresh)[cam.app_id]
            response = set_bounds(cam.app_id, cam.topic, bounds_before[cam.app_id])
            asked_ms = bounds_before[cam.app_id].get('max_latency_ms')
            looser_ms = first_fit_latency_ms(asked_ms, float(response.would_fit_max_latency_ms)) \
                if not response.accepted and asked_ms else None
            if looser_ms is not None:   # as a user would: take what the node says fits
                print(f'  {cam.app_id}: lat<={asked_ms:g}ms refused ({response.message.split(": ", 1)[0]}); '
                      f'asking lat<={looser_ms:g}ms, what the node says would fit, +2 %', flush=True)
                bounds_before[cam.app_id] = {**bounds_before[cam.app_id], 'max_latency_ms': looser_ms}
                response = set_bounds(cam.app_id, cam.topic, bounds_before[cam.app_id])
            if not response.accepted:
                raise SystemExit(f'delen_demo: {cam.app_id} rejected: {response.message}')
            tokens[cam.app_id] = response.token
            watcher.follow(cam.app_id, response.result_topic)
            print(f'  {cam.app_id:11s} {sources[cam.app_id]:14s} {cam.role:15s} '
                  f'{_bound_text(bounds_before[cam.app_id]):22s} planned exit {response.planned_exit}', flush=True)
            # Admission control takes a new app's camera at 30 Hz until its frames are measured: let
            # this app's rate be measured before the next one asks (else a 2-core CPU refuses the third).
            watcher.wait_for_results(cam.app_id, count=_RESULTS_BEFORE_NEXT_APP, timeout=_RATE_MEASURE_TIMEOUT_S)
        serve_start = time.monotonic()
        watcher.t0 = serve_start
        changed = False
        last_print = 0.0
        while True:
            now = time.monotonic() - serve_start
            if now >= args.duration:
                break
            dead = children.dead()
            if dead:
                raise SystemExit(f'delen_demo: {", ".join(dead)} exited early; see {out / "logs"}')
            snap, status = watcher.snapshot()
            if not changed and now >= change_s:
                old_ms = bounds_before['navigation']['max_latency_ms']
                recent = [r for r in snap.get('navigation', []) if r.t_s >= now - 5.0]
                new_ms = tightened_latency_ms(recent, profile, old_ms)
                change = {'app_id': 'navigation', 'fields': {'max_latency_ms': new_ms},
                          'why': f'navigation tightens its latency bound {old_ms:g} -> {new_ms:g} ms'}
                bounds_after = {**bounds_before,
                                'navigation': {**bounds_before['navigation'], 'max_latency_ms': new_ms}}
                nav_topic = next(c.topic for c in cameras if c.app_id == 'navigation')
                response = set_bounds('navigation', nav_topic, bounds_after['navigation'], tokens['navigation'])
                if not response.accepted:   # too tight beside the others: ask for what the node says would fit
                    feasible = list(response.feasible_latency_ms)
                    retry_ms, how = retry_latency_ms(new_ms, old_ms, float(response.would_fit_max_latency_ms),
                                                     float(feasible[0]) if feasible else 0.0)
                    print(f'{now:5.1f} s: {new_ms:g} ms refused ({response.message}); '
                          + (f'trying {retry_ms:g} ms ({how})' if retry_ms else f'{how}: keeping {old_ms:g} ms'),
                          flush=True)
                    if retry_ms:
                        new_ms = retry_ms
                        change.update(fields={'max_latency_ms': new_ms},
                                      why=f'navigation tightens its latency bound {old_ms:g} -> {new_ms:g} ms')
                        bounds_after['navigation'] = {**bounds_before['navigation'], 'max_latency_ms': new_ms}
                        response = set_bounds('navigation', nav_topic, bounds_after['navigation'],
                                              tokens['navigation'])
                changed = True
                if response.accepted:
                    tokens['navigation'] = response.token or tokens['navigation']
                else:
                    bounds_after = bounds_before
                change['accepted'] = bool(response.accepted)
                print(f'{now:5.1f} s: {change["why"]}: ' + ('accepted' if response.accepted else response.message),
                      flush=True)
            header = (f'delen demo  t={now:5.1f}/{args.duration:g} s  model {profile.model} on {profile.device}, '
                      f'energy {profile.energy_source}'
                      + (f'   [{change["why"]} at {change_s:.0f} s]' if changed else ''))
            if live:
                table = render_table(snap, status, bounds_after if changed else bounds_before, now_s=now,
                                     window_s=5.0, num_exits=num_exits, header=header, cameras=cameras)
                sys.stdout.write('\x1b[H\x1b[2J' + table + '\n')
                sys.stdout.flush()
            elif now - last_print >= 5.0:
                last_print = now
                print(render_table(snap, status, bounds_after if changed else bounds_before, now_s=now,
                                   window_s=5.0, num_exits=num_exits, header=header, cameras=cameras) + '\n',
                      flush=True)
            time.sleep(0.5)
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM
        interrupted = True
        print('\ndelen_demo: interrupted; stopping ...', flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if watcher is not None:
            records, status = watcher.snapshot()
        codes = children.stop([n for n in children.procs if n != 'node'])
        codes.update(children.stop(['node'] if 'node' in children.procs else []))
        if watcher is not None:
            watcher.close()
    ran_s = min(args.duration, time.monotonic() - serve_start)
    if not records:
        print('delen_demo: no results received', file=sys.stderr)
        return 1
    summary = _summary(records, bounds_before, bounds_after, change, change_s=change_s, ran_s=ran_s,
                       num_exits=num_exits, sources=sources, cameras=cameras)
    print(_summary_text(summary, change))
    report = {'args': vars(args), 'model': model, 'fallback_note': note, 'domain_id': domain_id, 'profile': profile_info, 'sources': sources,
              'exit_codes': codes, 'interrupted': interrupted, 'ran_s': ran_s, 'change_at_s': change_s,
              'change': change, 'bounds_before': bounds_before, 'bounds_after': bounds_after, 'summary': summary,
              'results': {app: [dataclasses.asdict(r) for r in recs] for app, recs in records.items()}}
    (out / 'demo.json').write_text(json.dumps(report, indent=1, default=str) + '\n')
    title = (f'delen_ros demo: {profile_info.get("model")} on {profile_info.get("device")}, energy '
             f'{profile_info.get("energy_source")}; dotted line: {change.get("why", "")}')
    write_plot(out / 'demo.png', records, bounds_before, bounds_after, change_s=change_s, duration_s=max(ran_s, 1.0),
               num_exits=num_exits, title=title, cameras=cameras, sources=sources)
    print(f'wrote {out / "demo.png"} and {out / "demo.json"}')
    bad = {name: code for name, code in codes.items() if code not in (0, None)}
    if bad:
        print(f'delen_demo: children exited with {bad}; see {out / "logs"}', file=sys.stderr)
    return 130 if interrupted else (1 if bad else 0)


def _summary(records, bounds_before, bounds_after, change, *, change_s: float, ran_s: float, num_exits: int,
             sources: dict[str, str], cameras: Sequence[DemoCamera]) -> dict[str, Any]:
    out = {}
    for cam in cameras:
        recs = records.get(cam.app_id, [])
        before = [r for r in recs if r.t_s < change_s]
        after = [r for r in recs if r.t_s >= change_s]
        out[cam.app_id] = {
            'source': sources.get(cam.app_id), 'topic': cam.topic,
            'all': summarize(recs, num_exits=num_exits, duration_s=ran_s),
            'before_change': {'bounds': bounds_before.get(cam.app_id),
                              **summarize(before, num_exits=num_exits, duration_s=min(change_s, ran_s))},
            'after_change': {'bounds': bounds_after.get(cam.app_id),
                             **summarize(after, num_exits=num_exits, duration_s=max(0.0, ran_s - change_s))},
        }
    return out


def _summary_text(summary: dict[str, Any], change: dict[str, Any]) -> str:
    width = shutil.get_terminal_size((100, 20)).columns
    refused = ', refused' if change and not change.get('accepted', True) else ''
    lines = ['', '=' * min(width, 100), 'summary' + (f' ({change["why"]} half-way{refused})' if change else '')]
    for app_id, s in summary.items():
        for phase in ('before_change', 'after_change'):
            p = s[phase]
            if not p.get('results'):
                lines.append(f'  {app_id:11s} {phase:13s} no results')
                continue
            mix = ' '.join(f'{100 * m:.0f}%' for m in p['exit_mix'])
            acc = f'accuracy {p["accuracy"]:.3f} ({p["scored"]} labelled)' if p.get('accuracy') is not None else \
                f'exp. accuracy {p["expected_accuracy_mean"]:.3f}'
            lines.append(f'  {app_id:11s} {phase:13s} {_bound_text(p["bounds"] or {}):22s} {p["results"]:5d} results '
                         f'({p["rate_hz"]:.1f}/s), exits [{mix}], latency p50 {p["latency_p50_ms"]:.2f} / p99 '
                         f'{p["latency_p99_ms"]:.2f} ms, {p["energy_mean_mj"]:.4f} mJ/frame'
                         f'{"" if p["energy_measured"] else " (est.)"}, {acc}, bounds met {p["attainment"]:.1%}')
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
