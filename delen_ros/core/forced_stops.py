"""How often an app's frames are stopped early by its latency or energy bound where its accuracy
cascade would have gone on: what the cascade then plans for (``Profile.cascade(forced=...)``).

A cascade sends its least confident frames to the deep exits. When the deadline does not leave time
for them (this 2-core CPU beside its cameras: a frame reaches ``+lite0`` of ``cifar10_committee``
~21 ms after its stamp, and ``+lite2`` would end past a 33 ms bound), the policy stops them where they
are, with an answer less accurate than the plan counted on: 1.6-2.4 % of such an app's frames missed
its accuracy bound as judged, though the stream met it (session 34). Measured, those stops can be
planned for: the earlier exits' thresholds tighten just enough that the stream, forced stops
included, keeps the bound, and a forced stop follows the plan.
"""
from __future__ import annotations

import collections
import math

#: rates are rounded up to this step: a plan changes only when the measured rate crosses one, and the
#: plan never counts on fewer forced stops than measured
RATE_STEP = 0.05


class ForcedStops:
    """Per exit, the share of the last ``window`` frames going on from it (by the plan) that a bound
    stopped there instead. Written by the engine's worker (:meth:`note`); :attr:`rates` is a tuple
    replaced whole, read from any thread.

    :param num_exits: the model's exits (the final one is never forced: a frame ends there anyway).
    :param min_seen: frames an exit must have seen before its rate counts (one stop of one frame
        says little).
    """

    def __init__(self, num_exits: int, *, window: int = 200, min_seen: int = 5):
        if num_exits < 1 or window < 1 or min_seen < 1:
            raise ValueError('num_exits, window and min_seen must be positive')
        self._outcomes = [collections.deque(maxlen=window) for _ in range(max(0, num_exits - 1))]
        self._forced = [0] * len(self._outcomes)
        self.min_seen = min_seen
        #: per exit, the share planned for (rounded up to RATE_STEP); () while none was forced
        self.rates: tuple[float, ...] = ()

    def note(self, exit_index: int, *, forced: bool) -> None:
        """A frame answered at ``exit_index``: it went on from every exit before (by the plan), and at
        this one it was ``forced`` to stop, or stopped by the plan (confident, or the final exit)."""
        for k in range(min(exit_index, len(self._outcomes))):
            self._add(k, False)
        if forced and exit_index < len(self._outcomes):
            self._add(exit_index, True)
        self.rates = self._rates()

    def _add(self, k: int, forced: bool) -> None:
        seen = self._outcomes[k]
        if len(seen) == seen.maxlen:
            self._forced[k] -= seen[0]
        seen.append(forced)
        self._forced[k] += forced

    def _rates(self) -> tuple[float, ...]:
        rates = tuple(_round_up(self._forced[k] / len(seen)) if len(seen) >= self.min_seen else 0.0
                      for k, seen in enumerate(self._outcomes))
        return rates if any(rates) else ()


def _round_up(rate: float) -> float:
    return min(1.0, math.ceil(rate / RATE_STEP - 1e-9) * RATE_STEP)
