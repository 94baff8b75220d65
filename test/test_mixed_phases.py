"""benchmarks/mixed_phases.py, the mixed set on the engine alone: its phase groups, and a short run of each
variant that wires the engine as it says."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'))
import mixed_phases  # noqa: E402


def test_cameras_come_in_groups_at_random_phases_a_group_s_cameras_one_after_another():
    offsets = mixed_phases.phases(3, cameras=8, groups=4, period_ms=33.3, within_ms=0.2)
    assert len(offsets) == 8 and all(0 <= o < 33.3 for o in offsets)
    for g in range(4):   # cameras g and g + 4 share a publisher
        assert (offsets[g + 4] - offsets[g]) % 33.3 == pytest.approx(0.2)
    assert offsets == mixed_phases.phases(3, cameras=8, groups=4, period_ms=33.3, within_ms=0.2)
    assert offsets != mixed_phases.phases(4, cameras=8, groups=4, period_ms=33.3, within_ms=0.2)


@pytest.mark.parametrize('variant', mixed_phases.VARIANTS)
def test_a_short_run_counts_every_app_and_no_choice_keeps_the_tight_apps_at_their_first_exit(variant):
    r = mixed_phases.run(variant=variant, seed=1, cameras=4, groups=2, rate_hz=30.0, tight_ms=200.0, loose_ms=300.0,
                         min_accuracy=0.7, step_ms=[0.1] * 4, pre_call_ms=0.0, transport_ms=0.5, delivery_ms=0.1,
                         duration_s=0.4, warmup_s=0.1, batch_cost=0.25)
    assert sorted(r['apps']) == ['cam00', 'cam01', 'cam02', 'cam03']
    assert all(a['sent'] >= 10 for a in r['apps'].values())
    assert r['worst_within'] > 0.5   # loose bounds, little load: nearly every frame in time on any machine
    tight_final = r['tight_final_exit_share']
    if variant == 'no_choice':
        assert tight_final == [0.0, 0.0]
    else:   # nothing waits long: a tight app with no accuracy bound goes deep by choice
        assert tight_final[1] > 0.5
