"""The engine's ledger, read: the part of :class:`~delen_ros.core.engine.Engine` that answers ``~/status``,
``/diagnostics`` and health checks (``Engine`` inherits it).

Counters are copied under the worker's lock and everything derived from them (percentiles, rates,
shares) is computed outside it, so that a status read costs the worker microseconds. The state read
here (apps' ledgers, the worker's counters, the runner) is the engine's; this module keeps none of its own.
"""
from __future__ import annotations

import collections
import math

import numpy as np

from .arrivals import percentile, percentiles
from .choice_margin import margin_ms
from .results import AppStats, WorkerStats

__all__ = ['StatsMixin']


class StatsMixin:
    """Reading the engine's ledger, for :class:`~delen_ros.core.engine.Engine` (see the module docstring)."""

    def stats(self, app_id: str, *, reset: bool = False, recheck_s: float = 1.0) -> AppStats:
        """The ledger of ``app_id`` (see :class:`AppStats`). The window is copied under the worker's
        lock; percentiles are computed outside it.

        :param reset: start a new window after reading (for per-period status).
        :param recheck_s: re-run admission (:meth:`check_schedulable`) when the last run is older
            than this, s (0: now; ``math.inf``: never from here).
        :raises KeyError: unknown app (the message lists the known ones).
        """
        self._recheck_if_older(recheck_s)
        with self._cond:
            try:
                app = self._apps[app_id]
            except KeyError:
                raise KeyError(f'unknown app {app_id!r}; known: {sorted(self._apps)}') from None
            now = self.clock()
            window_s = max(0.0, (now - app.window_start_ns) / 1e9)
            latencies = [r[0] for r in app.results]
            w = dict(w_in=app.w_in, w_out=app.w_out, w_dropped=app.w_dropped, w_met=app.w_met,
                     w_latency_met=app.w_latency_met, w_measured=app.w_measured, w_energy=app.w_energy,
                     w_accuracy=app.w_accuracy, w_exits=tuple(app.w_exits), w_late_dropped=app.w_late_dropped)
            counters = dict(app_id=app_id, bounds=app.bounds, frames_in=app.frames_in, results_out=app.results_out,
                            dropped=app.dropped,
                            dropped_overflow=app.dropped_overflow, dropped_late=app.dropped_late, failed=app.failed,
                            expired=app.expired, dropped_malformed=app.dropped_malformed,
                            served_late=app.served_late, late_policy=app.late_policy.value,
                            choice_margin_ms=margin_ms(app.choice_margin))
            rate_hz, reason = app.rate_hz(now), app.reason
            if reset:
                app.reset_window(now)
        # outside the lock: percentiles and the rest
        latency_p50, latency_p99 = percentiles(latencies, (50, 99))
        decided = max(w['w_in'], w['w_out'] + w['w_dropped'])
        out = w['w_out']
        if not reason and out == 0 and w['w_late_dropped'] > 0:
            floor = self.exit_latency_ms()[0]
            reason = (f'no result for {w["w_late_dropped"]} frame(s): all were late; the fastest exit takes '
                      f'{floor:.3g} ms end to end now (bound {counters["bounds"].max_latency_ms:g} ms)')
        return AppStats(
            **counters, window_s=window_s, window_frames_in=w['w_in'], window_results=out,
            window_dropped=w['w_dropped'],
            rate_in_hz=w['w_in'] / window_s if window_s > 0 else 0.0,
            rate_out_hz=out / window_s if window_s > 0 else 0.0,
            attainment=w['w_met'] / out if out else math.nan,
            frame_attainment=w['w_met'] / decided if decided else math.nan,
            latency_attainment=w['w_latency_met'] / decided if decided else math.nan,
            latency_p50_ms=latency_p50, latency_p99_ms=latency_p99,
            latency_max_ms=max(latencies) if latencies else math.nan,
            mean_energy_mj=w['w_energy'] / out if out else math.nan,
            mean_expected_accuracy=w['w_accuracy'] / out if out else math.nan,
            energy_measured_fraction=w['w_measured'] / out if out else math.nan,
            exit_counts=w['w_exits'], window_unanswered=max(0, w['w_in'] - out - w['w_dropped']),
            window_energy_mj=w['w_energy'], rate_measured_hz=rate_hz, unschedulable_reason=reason)

    def worker_stats(self, *, reset: bool = False) -> WorkerStats:
        """The worker's step count, batch sizes, busy time and decision overhead (see :class:`WorkerStats`)."""
        with self._cond:
            us, device, pre = list(self._decision_us), list(self._device_ms), list(self._pre_frame_ms)
            steps, batched, busy_ns, energy_mj = self._steps, self._batched, self._busy_ns, self._energy_mj
            pipelined = self._pipelined
            elapsed_s = max(0.0, (self.clock() - self._worker_stats_ns) / 1e9)
            if reset:
                self._reset_worker_stats()
        decision_p50, decision_p99 = percentiles(us, (50, 99))
        step_p50, step_p99 = percentiles(device, (50, 99))
        return WorkerStats(
            steps=steps, mean_batch=batched / steps if steps else math.nan,
            busy_s=busy_ns / 1e9, decision_us_mean=float(np.mean(us)) if us else math.nan,
            decision_us_p50=decision_p50, decision_us_p99=decision_p99, step_ms_p50=step_p50, step_ms_p99=step_p99,
            preprocess_ms_per_frame=self.preprocess_cost.predict_ms(1), preprocess_ms_p99=percentile(pre, 99),
            energy_scale=self._energy.scale if self._energy is not None else None,
            corrections=self.corrector.snapshot(), overhead_ms=self.overhead_ms(), energy_mj=energy_mj,
            idle_energy_mj=getattr(self, 'idle_power_w', 0.0) * elapsed_s * 1000.0, pipelined_runs=pipelined)

    def graph_count(self) -> int:
        """CUDA graphs the runner has captured (cheap, for a status line)."""
        return getattr(self._runner, 'graph_count', 0)

    def graph_report(self) -> dict[str, int | bool]:
        """For ``/diagnostics``: graphs captured, how many run on cuDNN (the others on PyTorch's
        own convolutions, faster there or not tried yet), whether 1x1 convolutions run as matrix
        products (``conv_kernels``), and whether every capture and cuDNN trial
        is done (until then the background thread competes with serving)."""
        backends = self._runner.conv_backends() if hasattr(self._runner, 'conv_backends') else {}
        state = self._runner.capture_state() if hasattr(self._runner, 'capture_state') else None
        return {'graphs_captured': self.graph_count(),
                'graphs_on_cudnn': sum(b == 'cudnn' for b in backends.values()),
                'pointwise_matmul': bool(getattr(self._runner, 'pointwise_matmul', False)),
                'graphs_settled': state is None or not getattr(self._runner, 'cuda_graphs', False) or state.settled}

    def pending(self, app_id: str) -> int:
        """Frames of ``app_id`` queued or under way (0 for an app not registered); cheap."""
        with self._cond:
            app = self._apps.get(app_id)
            if app is None:
                return 0
            return max(0, app.frames_in - app.results_out - app.dropped)

    def measured_rate_hz(self, app_id: str) -> float | None:
        """``app_id``'s frame rate as measured now (``None``: not yet, or not registered); cheap."""
        with self._cond:
            app = self._apps.get(app_id)
            return None if app is None else app.rate_hz(self.clock())

    def totals(self) -> tuple[int, int]:
        """``(results delivered, requests failed)`` summed over the registered apps; cheap (no
        percentiles), for a health check that polls."""
        with self._cond:
            apps = self._apps.values()
            return sum(a.results_out for a in apps), sum(a.failed for a in apps)

    def worker_counters(self) -> dict[str, int]:
        """For ``/diagnostics``, cheap (no percentiles): failures of the worker outside a step, frames
        left to the worker to upload (load shed), frames stopped at the first exit meeting their bounds
        while their app was behind, or where a step by choice would have made waiting work start too late,
        runs launched before the last one was looked at."""
        return {'engine_worker_errors': self.worker_errors, 'uploads_left_to_worker': self.uploads_left_to_worker,
                'stops_behind': self.stops_behind, 'stops_yielded': self.stops_yielded,
                'pipelined_runs': self._pipelined}

    def _reset_worker_stats(self) -> None:
        self._steps = self._batched = self._busy_ns = self._pipelined = 0
        self._energy_mj = 0.0
        self._worker_stats_ns = self.clock()
        self._decision_us: collections.deque[float] = collections.deque(maxlen=10_000)
        self._device_ms: collections.deque[float] = collections.deque(maxlen=10_000)
        self._pre_frame_ms: collections.deque[float] = collections.deque(maxlen=10_000)
