"""How much more of its deadline an app's steps taken by choice keep free, learnt from its own results.

An app whose objective is accuracy (``MAX_ACCURACY``, the default without an accuracy bound) goes on
past the exit that meets its bounds for as long as the next step is predicted to end before the
deadline, less the policy's ``choice_headroom`` of the bound. Where the host's step times spread wider
than that headroom, such frames are published late: on an H200 at 16 cameras, 10 ms apps' steps to
exits 2-3 ran 6-8 ms against ~3 ms predicted in the first seconds of service, and 3 of a kept app's 4
late results in a traced run were such steps.

:class:`ChoiceMargin` adds to that headroom by stochastic approximation of a quantile (Robbins-Monro):
each result that went past the first exit moves it up by ``step`` when it was published after the
deadline, and down by ``step * target / (1 - target)`` when it was not. It settles where about
``target`` of those results are late, never below 0 (the policy's headroom alone) nor above
``ceiling`` of the bound. The engine owns one per app (:class:`~delen_ros.core.app_ledger.AppLedger`),
made anew when its bounds change.
"""
from __future__ import annotations

__all__ = ['ChoiceMargin', 'TARGET_LATE_SHARE', 'margin_ms']

#: the share of an app's results past its first exit published after the deadline the margin aims for:
#: well under the 1 % an admitted app may miss, which other causes share
TARGET_LATE_SHARE = 0.005


class ChoiceMargin:
    """The extra time, ms, a step taken by choice keeps free before an app's deadline (see the module).

    :param bound_ms: the app's latency bound.
    :param step_share: a late result's step up, as a share of the bound (0.05: 0.5 ms of 10 ms; a
        frame late by more than that moves it a step at a time, frame after frame).
    :param ceiling_share: the most it keeps, as a share of the bound.
    :param target: the share of late results it settles at (:data:`TARGET_LATE_SHARE`).
    """

    def __init__(self, bound_ms: float, *, step_share: float = 0.05, ceiling_share: float = 0.5,
                 target: float = TARGET_LATE_SHARE):
        if not bound_ms > 0:
            raise ValueError(f'bound_ms must be > 0, got {bound_ms!r}')
        if not 0 < target < 1:
            raise ValueError(f'target must be in (0, 1), got {target!r}')
        self.ms = 0.0
        self._up = step_share * bound_ms
        self._down = self._up * target / (1.0 - target)
        self._ceiling = ceiling_share * bound_ms

    def note(self, *, late: bool) -> None:
        """One result past the first exit: published after the deadline (``late``) or not."""
        self.ms = min(self._ceiling, self.ms + self._up) if late else max(0.0, self.ms - self._down)

    def __repr__(self) -> str:
        return f'ChoiceMargin({self.ms:.3g} ms)'


def margin_ms(margin: ChoiceMargin | None) -> float:
    """What ``margin`` keeps free now, ms; 0 for an app that keeps none (takes no step by choice)."""
    return 0.0 if margin is None else margin.ms
