"""What one call for a batch costs, learnt online as ``per_call + per_frame x batch``.

Preprocessing is the engine's case. On a CPU it is per frame (one resize each); on a GPU the
worker only launches a few kernels for the whole batch, so its wall time is nearly the same at
batch 1 and 32 (H200 host: ~0.3-0.5 ms of Python a call). A per-frame rate learnt from wall time /
batch size then depends on the batches seen, and feeds back: after a transient, small batches
measure a high per-frame rate, which makes every larger batch look too slow for the most urgent
frame's slack, so batches stay small (the metastable state of issue 8, session 9).

:class:`BatchCost` fits both terms by least squares with exponential forgetting over the calls
seen. While every call had the same batch size, the two cannot be told apart, and the cost is
taken as per frame (the conservative reading for larger batches).
"""
from __future__ import annotations

import math

__all__ = ['BatchCost']


class BatchCost:
    """``ms(batch) = per_call_ms + per_frame_ms x batch``, from ``(batch, ms)`` calls.

    :param forget: weight kept by the past at each new call (0 < forget < 1): ~``1 / (1 - forget)``
        calls make the estimate.
    :param per_call: false: every cost read as per frame (before session 9; the A/B).
    :param outlier: a call counts as at most this many times its prediction (a lone stall: a page
        fault, the GIL held elsewhere; a lasting change is still learnt, geometrically); ``None``: as
        measured (before session 9).
    """

    __slots__ = ('forget', 'per_call', 'outlier', 'per_call_ms', 'per_frame_ms', 'dev_ms',
                 '_s0', '_s1', '_s2', '_t0', '_t1')

    def __init__(self, forget: float = 0.95, *, per_call: bool = True, outlier: float | None = 4.0):
        if not 0.0 < forget < 1.0:
            raise ValueError(f'forget must be in (0, 1), got {forget!r}')
        if outlier is not None and not outlier >= 1.0:
            raise ValueError(f'outlier must be >= 1 or None, got {outlier!r}')
        self.forget = forget
        self.per_call = per_call
        self.outlier = outlier
        self.per_call_ms = 0.0
        self.per_frame_ms = 0.0
        self.dev_ms = 0.0   # mean |residual| of a call, ms
        self._s0 = self._s1 = self._s2 = self._t0 = self._t1 = 0.0

    @classmethod
    def per_frame_only(cls) -> 'BatchCost':
        """The model before session 9 (the A/B): every cost per frame, every stall taken in full."""
        return cls(per_call=False, outlier=None)

    @property
    def measured(self) -> bool:
        return self._s0 > 0.0

    def add(self, batch: int, ms: float) -> None:
        """One call: ``batch`` frames in ``ms`` milliseconds (non-finite or negative: ignored)."""
        if batch < 1 or not math.isfinite(ms) or ms < 0.0:
            return
        if self.measured:
            predicted = self.predict_ms(batch)
            if self.outlier is not None:
                ms = min(ms, self.outlier * max(predicted, 1e-3))
            self.dev_ms += 0.25 * (abs(ms - predicted) - self.dev_ms)
        else:
            self.dev_ms = ms / 4
        f = self.forget
        self._s0 = f * self._s0 + 1.0
        self._s1 = f * self._s1 + batch
        self._s2 = f * self._s2 + batch * batch
        self._t0 = f * self._t0 + ms
        self._t1 = f * self._t1 + batch * ms
        self._fit()

    def _fit(self) -> None:
        s0, s1, s2, t0, t1 = self._s0, self._s1, self._s2, self._t0, self._t1
        spread = s0 * s2 - s1 * s1   # s0^2 x the weighted variance of the batch sizes
        if not self.per_call or spread <= 1e-6 * s0 * s2:   # one batch size so far: per frame
            self.per_call_ms, self.per_frame_ms = 0.0, t1 / s2
            return
        per_frame = (s0 * t1 - s1 * t0) / spread
        per_call = (t0 - per_frame * s1) / s0
        if per_frame < 0.0:    # cheaper with more frames: noise; all of it per call
            per_call, per_frame = t0 / s0, 0.0
        elif per_call < 0.0:   # all of it per frame
            per_call, per_frame = 0.0, t1 / s2
        self.per_call_ms, self.per_frame_ms = per_call, per_frame

    def predict_ms(self, batch: int, margin: float = 0.0) -> float:
        """A call's cost for ``batch`` frames, plus ``margin`` mean deviations (0 before any call)."""
        if not self.measured:
            return 0.0
        return self.per_call_ms + self.per_frame_ms * batch + margin * self.dev_ms
