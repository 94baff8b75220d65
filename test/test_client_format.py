"""delen_client's text for a SetBounds answer (ros/client.py format_plan; no DDS)."""
import pytest

pytest.importorskip('rclpy', reason='rclpy (ROS 2 wheels) not installed')

from delen_ros.ros.client import format_plan  # noqa: E402
from delen_ros.srv import SetBounds  # noqa: E402


def _answer(**fields) -> SetBounds.Response:
    return SetBounds.Response(feasible_latency_ms=[2.0, 9.5], feasible_accuracy=[0.66, 0.94],
                              feasible_energy_mj=[4.0, 13.0], **fields)


def test_a_refusal_that_says_what_would_fit_shows_it():
    text = format_plan(_answer(accepted=False, message="'nav' at 30 Hz does not fit", would_fit_max_latency_ms=12.5))
    assert text.startswith("rejected: 'nav' at 30 Hz does not fit")
    assert 'feasible here: latency 2.00-9.50 ms' in text
    assert text.endswith('would fit beside the admitted apps: max_latency_ms >= 12.50')


def test_a_refusal_without_an_answer_and_an_acceptance_say_nothing_of_it():
    assert 'would fit' not in format_plan(_answer(accepted=False, message='infeasible bounds'))
    text = format_plan(_answer(accepted=True, result_topic='/delen/nav/result', planned_exit=2, token='t0k'))
    assert text.startswith('accepted: results on /delen/nav/result') and 'would fit' not in text and 't0k' in text
