"""The node's status period spread over several ticks (ros/status_round.py; ROS-free)."""
import pytest

from delen_ros.ros.status_round import StatusRound

TOPICS = [f'/cam{i:02d}/image_raw' for i in range(10)]


def test_each_topic_reported_once_a_round_in_parts_of_about_equal_size():
    round_ = StatusRound(4, now_ns=0)
    seen, sizes, closing = [], [], []
    for tick in range(4):
        part = round_.topics(reversed(TOPICS))
        seen += part
        sizes.append(len(part))
        closing.append(round_.closing)
        round_.done(1.0, now_ns=tick)
    assert sorted(seen) == TOPICS                       # all, none twice
    assert sizes == [3, 3, 2, 2] and closing == [False, False, False, True]
    assert round_.part == 0                             # a new round


def test_one_part_is_the_whole_tick():
    round_ = StatusRound(1, now_ns=0)
    assert round_.closing and round_.topics(TOPICS) == TOPICS


def test_a_round_gathers_for_diagnostics_and_reports_its_longest_tick():
    round_ = StatusRound(2, now_ns=0)
    round_.stats['a'] = 'stats of a'
    round_.done(3.0, now_ns=500_000_000)
    round_.stats['b'] = 'stats of b'
    assert round_.closing and set(round_.stats) == {'a', 'b'}
    assert round_.round_s(1_000_000_000) == pytest.approx(1.0)
    round_.done(5.0, now_ns=1_000_000_000)
    assert round_.stats == {} and round_.longest_tick_ms == 5.0
    assert round_.round_start_ns == 1_000_000_000


def test_a_topics_period_runs_from_its_last_report():
    round_ = StatusRound(4, now_ns=0)
    assert round_.period_s('/a', 250_000_000) == pytest.approx(0.25)    # first: from the round's start
    assert round_.period_s('/a', 1_250_000_000) == pytest.approx(1.0)
    round_.forget([])
    assert round_.period_s('/a', 2_000_000_000) == pytest.approx(2.0)   # forgotten: from the round's start


def test_parts_must_be_positive():
    with pytest.raises(ValueError, match='parts'):
        StatusRound(0, now_ns=0)


def test_diagnostics_apart_is_one_more_tick_that_reports_no_topic():
    round_ = StatusRound(2, now_ns=0, diagnostics_apart=True)
    assert round_.ticks == 3
    shares, closing = [], []
    for tick in range(3):
        shares.append(round_.topics(TOPICS))
        closing.append(round_.closing)
        round_.done(1.0, now_ns=tick)
    assert sorted(shares[0] + shares[1]) == TOPICS and shares[2] == []
    assert closing == [False, False, True] and round_.part == 0


def test_a_ticker_ticks_on_its_own_thread_until_stopped():
    import threading
    import time

    from delen_ros.ros.status_round import Ticker
    threads, count = set(), [0]

    def tick():
        threads.add(threading.current_thread().name)
        count[0] += 1
    ticker = Ticker(tick, 0.01, name='delen-test')
    ticker.start()
    deadline = time.monotonic() + 5.0
    while count[0] < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    ticker.stop()
    stopped_at = count[0]
    time.sleep(0.05)
    assert stopped_at >= 5 and count[0] == stopped_at          # none after stop() returned
    assert threads == {'delen-test'}


def test_a_ticker_that_overruns_skips_rather_than_bunching_up():
    import time

    from delen_ros.ros.status_round import Ticker
    starts = []

    def slow_tick():
        starts.append(time.monotonic())
        time.sleep(0.05)                                        # five periods
    ticker = Ticker(slow_tick, 0.01, name='delen-test')
    ticker.start()
    time.sleep(0.3)
    ticker.stop()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps and min(gaps) >= 0.055                          # the overrun plus a period, not back to back


def test_a_ticker_needs_a_positive_period():
    from delen_ros.ros.status_round import Ticker
    with pytest.raises(ValueError, match='period_s'):
        Ticker(lambda: None, 0.0, name='x')


def test_a_status_parts_ab_switch_that_is_no_count_keeps_the_default(caplog):
    from delen_ros.ros.status_round import _status_parts
    assert _status_parts('3') == 3 and _status_parts('0') == 1
    assert _status_parts('many') == 8
    assert "DELEN_STATUS_PARTS='many' is not a whole number: 8 parts" in caplog.text
