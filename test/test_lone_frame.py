"""benchmarks/lone_frame.py: a lone frame's phases, cut at the flight recorder's spans, cover its
latency, one worker turn each. A short real run on the CPU in its own process (the recorder is made at
import, from ``DELEN_TRACE``); it asserts no speed."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PARTS = ('submit', 'wake', 'plan', 'input', 'launch', 'wait', 'decide', 'deliver')   # lone_frame.json's keys


@pytest.fixture(scope='module')
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp('lone')
    done = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'lone_frame.py'), '--model', 'fashion_mnist',
                           '--frames', '25', '--gap-ms', '2', '--out', str(out)],
                          env={**os.environ, 'DELEN_TRACE': str(out / 'trace.jsonl')},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / 'lone_frame.json').read_text())


@pytest.mark.parametrize('policy', ['delen', 'always_final'])
def test_the_phases_of_a_lone_frame_add_up_to_its_latency(report, policy):
    run = report[policy]
    assert run['frames'] == 20 and run['turns'] == 1   # a fifth of warm-up left out; one fused run a frame
    assert all(run[p] >= 0 for p in PARTS)
    # the spans cover the frame: what falls between them is a small part of it
    assert -0.01 <= run['other'] < 0.25 * run['total']


def test_without_a_recorder_it_says_how_to_get_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'DELEN_TRACE'}
    done = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'lone_frame.py'), '--out', str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and 'DELEN_TRACE' in done.stderr
