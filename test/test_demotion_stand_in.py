"""benchmarks/demotion_stand_in.py, the re-check's demotion rules on the engine alone: a short run of each
rule wires the engine as it says and counts every app."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'))
import demotion_stand_in  # noqa: E402


@pytest.mark.parametrize('rule', demotion_stand_in.RULES)
def test_a_short_run_counts_every_app_and_no_old_frame_means_nobody_demoted(rule):
    r = demotion_stand_in.run(rule=rule, seed=1, cameras=4, rate_hz=30.0, tight_ms=200.0, loose_ms=300.0,
                              step_ms=[0.1] * 4, pre_call_ms=0.0, transport_ms=0.5, tail_share=0.0,
                              tail_ms=(0.0, 0.0), delivery_ms=0.1, duration_s=0.5, warmup_s=1.2)
    assert r['rule'] == rule and sorted(r['apps']) == ['cam00', 'cam01', 'cam02', 'cam03']
    assert all(a['sent'] >= 10 for a in r['apps'].values())
    assert min(r['tight_within'] + r['loose_within']) > 0.5   # loose bounds, little load: nearly every frame in time
    assert r['demoted'] == [] and r['flagged'] == []
