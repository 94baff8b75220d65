"""core/batch_cost.BatchCost: per call + per frame, learnt online."""
import math

import pytest

from delen_ros.core.batch_cost import BatchCost


def test_nothing_measured_predicts_zero():
    cost = BatchCost()
    assert not cost.measured and cost.predict_ms(8) == 0.0 and cost.predict_ms(1, margin=3) == 0.0


def test_one_batch_size_is_read_as_per_frame():
    cost = BatchCost()
    for _ in range(10):
        cost.add(2, 1.0)
    assert cost.per_call_ms == 0.0 and cost.per_frame_ms == pytest.approx(0.5)
    assert cost.predict_ms(8) == pytest.approx(4.0)


def test_a_fixed_cost_per_call_is_found_as_such():
    """The GPU's case: the same wall time whatever the batch; a per-frame rate would make a batch
    of 32 look 32 times a batch of 1."""
    cost = BatchCost()
    for b in [1, 3, 2, 1, 5, 8, 1, 2] * 4:
        cost.add(b, 0.4)
    assert cost.per_call_ms == pytest.approx(0.4) and cost.per_frame_ms == pytest.approx(0.0, abs=1e-9)
    assert cost.predict_ms(32) == pytest.approx(0.4)


def test_a_linear_cost_is_found_and_old_calls_are_forgotten():
    cost = BatchCost(forget=0.8)
    for b in [1, 2, 4, 8] * 5:
        cost.add(b, 0.1 + 0.3 * b)   # a CPU: per frame
    assert cost.per_call_ms == pytest.approx(0.1) and cost.per_frame_ms == pytest.approx(0.3)
    for b in [1, 2, 4, 8] * 20:
        cost.add(b, 0.5)             # moved to a GPU
    assert cost.predict_ms(8) == pytest.approx(0.5, abs=0.01)


def test_negative_slopes_and_intercepts_are_clamped():
    cost = BatchCost()
    for b, ms in [(1, 1.0), (4, 0.5)] * 5:   # cheaper with more frames: noise
        cost.add(b, ms)
    assert cost.per_frame_ms == 0.0 and cost.per_call_ms == pytest.approx(0.75, abs=0.02)   # the (weighted) mean
    cost = BatchCost()
    for b, ms in [(1, 0.1), (4, 2.0)] * 5:   # the line would cross zero below batch 1
        cost.add(b, ms)
    assert cost.per_call_ms == 0.0 and cost.per_frame_ms > 0


def test_margin_adds_the_mean_deviation_and_bad_input_is_ignored():
    cost = BatchCost()
    for b, ms in [(1, 0.3), (2, 0.5), (1, 0.4), (2, 0.4)] * 3:
        cost.add(b, ms)
    assert cost.dev_ms > 0 and cost.predict_ms(2, margin=2) == pytest.approx(cost.predict_ms(2) + 2 * cost.dev_ms)
    before = (cost.per_call_ms, cost.per_frame_ms, cost.dev_ms)
    for b, ms in [(0, 1.0), (2, math.nan), (2, -1.0), (2, math.inf)]:
        cost.add(b, ms)
    assert (cost.per_call_ms, cost.per_frame_ms, cost.dev_ms) == before


def test_forget_and_outlier_are_validated():
    for bad in (0.0, 1.0, -0.5, math.nan):
        with pytest.raises(ValueError):
            BatchCost(forget=bad)
    for bad in (0.5, math.nan, -1.0):
        with pytest.raises(ValueError):
            BatchCost(outlier=bad)


def test_per_call_off_reads_every_cost_per_frame():
    cost = BatchCost(per_call=False)
    for b in [1, 3, 2, 1, 5, 8, 1, 2] * 4:
        cost.add(b, 0.4)
    assert cost.per_call_ms == 0.0 and cost.per_frame_ms > 0 and cost.predict_ms(32) > 4 * cost.predict_ms(1)


def test_a_lone_stall_counts_as_at_most_four_predictions_and_a_lasting_change_is_learnt():
    cost = BatchCost()
    for b in [1, 2, 4, 8] * 5:
        cost.add(b, 0.5)
    cost.add(4, 50.0)   # the GIL held elsewhere for 50 ms
    assert cost.predict_ms(4) < 0.5 * 1.3
    unclamped = BatchCost.per_frame_only()   # before session 9: stalls in full
    for b in [1, 2, 4, 8] * 5:
        unclamped.add(b, 0.5)
    unclamped.add(4, 50.0)
    assert unclamped.predict_ms(4) > 2.0
    for b in [1, 2, 4, 8] * 30:
        cost.add(b, 5.0)   # a slower path for good
    assert cost.predict_ms(4) == pytest.approx(5.0, rel=0.05)
