"""scripts/compact_results.py: committed results (JSON) rewritten smaller, their values unchanged."""
import importlib.util
import json
import math
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location('compact_results', REPO / 'scripts' / 'compact_results.py')
compact_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compact_results)


def test_indented_results_are_rewritten_smaller_with_the_same_values(tmp_path):
    data = {'configs': {'delen_n16': {'p50_ms': 5.7, 'p99_ms': float('nan'), 'exits': [0, 0, 0, 100]}},
            'note': 'Dělen'}
    path = tmp_path / 'e2e.json'
    path.write_text(json.dumps(data, indent=2))
    before, after = compact_results.compact_json(path)
    assert after < before == len(json.dumps(data, indent=2).encode())
    back = json.loads(path.read_text())
    assert math.isnan(back['configs']['delen_n16']['p99_ms'])
    assert json.dumps(back) == json.dumps(data)
    assert compact_results.compact_json(path) == (after, after)   # already compact: left as it is


def test_a_file_that_is_not_json_raises_and_is_left_alone(tmp_path):
    path = tmp_path / 'broken.json'
    path.write_text('{"a": ')
    with pytest.raises(ValueError):
        compact_results.compact_json(path)
    assert path.read_text() == '{"a": '


def test_a_report_among_the_files_stops_the_run_before_anything_is_rewritten(tmp_path, capsys):
    results = tmp_path / 'e2e.json'
    results.write_text(json.dumps({'a': [1, 2]}, indent=2))
    report = tmp_path / 'e2e.md'
    report.write_text('| table |\n')
    assert compact_results.main([str(results), str(report)]) == 2
    assert 'neither a plot (.png) nor results (.json)' in capsys.readouterr().err
    assert results.read_text() == json.dumps({'a': [1, 2]}, indent=2) and report.read_text() == '| table |\n'
