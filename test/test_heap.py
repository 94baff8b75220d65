"""core/heap.py: each check runs in a fresh interpreter, since a mmap threshold, once set, stays for
the process (and pytest's own allocations would blur the RSS readings)."""
import os
import subprocess
import sys
import textwrap

import pytest

from delen_ros.core import heap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
on_glibc = pytest.mark.skipif(not heap.is_glibc(), reason='glibc malloc only (mallopt, malloc_trim); a no-op elsewhere')

# RSS (MB, from /proc/self/statm) with 24 frame-sized bytes objects alive, then after they are freed.
# A 200 KB block allocated after the frames keeps them below the heap's top (as the node's later
# allocations do), so freeing them cannot shrink the heap by itself: it is bigger than any hole a fresh
# interpreter has, so it does not land below them, and under the 256 KB threshold, so it stays in the heap.
_FRAMES_FREED = textwrap.dedent('''
    import os, sys, time
    from delen_ros.core import heap
    {setup}
    def rss_mb():
        return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
    src = memoryview(os.urandom(921_654))   # one 640x480 rgb8 sensor_msgs/Image, serialized
    warm = bytes(src); del warm             # glibc's dynamic threshold rises above a frame here
    frames = [bytes(src) for _ in range(24)]
    guard = bytes(200_000)
    held = rss_mb()
    frames.clear()
    {after_free}
    print(held - rss_mb())
''')


def _mb_returned(setup: str = '', after_free: str = '') -> float:
    code = _FRAMES_FREED.format(setup=setup, after_free=after_free)
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop('DELEN_HEAP', None)
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True, timeout=60)
    return float(out.stdout.split()[-1])


@on_glibc
def test_without_remedy_freed_frames_stay_in_rss():
    # the baseline the remedies are measured against: if glibc ever returns these by itself, the
    # two tests below prove nothing
    assert _mb_returned() < 5.0


@on_glibc
def test_fixed_threshold_returns_freed_frames():
    assert _mb_returned(setup='assert heap.fix_mmap_threshold()') > 18.0   # 24 x 0.88 MiB = 21 MiB


@on_glibc
def test_trim_returns_freed_frames():
    assert _mb_returned(after_free='assert heap.release_free_heap()') > 18.0


@on_glibc
def test_trimmer_thread_returns_freed_frames():
    returned = _mb_returned(setup='assert heap.start_heap_trimmer(0.05).daemon', after_free='time.sleep(0.5)')
    assert returned > 18.0


@pytest.fixture
def remedies_called(monkeypatch):
    """The remedies apply_heap_policy calls, recorded instead of run (they would stay for pytest's process)."""
    called = []
    monkeypatch.setattr(heap, 'fix_mmap_threshold', lambda: called.append('threshold'))
    monkeypatch.setattr(heap, 'start_heap_trimmer', lambda: called.append('trim'))
    monkeypatch.delenv('DELEN_HEAP', raising=False)
    return called


@on_glibc
@pytest.mark.parametrize('policy, applied, called', [
    ('off', 'off', []), ('threshold', 'threshold', ['threshold']), ('trim', 'trim', ['trim']),
    (' Both', 'both', ['threshold', 'trim'])])
def test_policy_applies_its_remedies(remedies_called, policy, applied, called):
    assert heap.apply_heap_policy(policy) == applied
    assert remedies_called == called


@on_glibc
def test_environment_overrides_policy(remedies_called, monkeypatch):
    monkeypatch.setenv('DELEN_HEAP', 'trim')
    assert heap.apply_heap_policy('both') == 'trim'
    assert remedies_called == ['trim']


@pytest.mark.parametrize('bad', [{'policy': 'sometimes'}, {'env': 'on'}])
def test_unknown_policy_is_refused(monkeypatch, bad):
    if 'env' in bad:
        monkeypatch.setenv('DELEN_HEAP', bad['env'])
    else:
        monkeypatch.delenv('DELEN_HEAP', raising=False)
    with pytest.raises(ValueError, match='heap policy must be one of'):
        heap.apply_heap_policy(bad.get('policy', 'both'))


@pytest.mark.parametrize('call', [lambda: heap.fix_mmap_threshold(0), lambda: heap.start_heap_trimmer(0.0)])
def test_nonpositive_values_are_refused(call):
    with pytest.raises(ValueError, match='must be positive'):
        call()


def test_not_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(heap, '_glibc', lambda: None)
    monkeypatch.delenv('DELEN_HEAP', raising=False)
    assert not heap.fix_mmap_threshold()
    assert not heap.release_free_heap()
    assert heap.start_heap_trimmer() is None
    assert heap.apply_heap_policy('both') == 'off'


def test_default_is_off(remedies_called):
    assert heap.apply_heap_policy() == 'off'
    assert remedies_called == []


def test_node_process_refuses_bad_environment(monkeypatch, capsys):
    run = pytest.importorskip('delen_ros.ros.run', reason='needs rclpy')
    monkeypatch.setenv('DELEN_HEAP', 'always')

    def never_built():
        raise AssertionError('the node must not be built with a bad DELEN_HEAP')
    assert run.run_node(never_built, []) == 1
    assert capsys.readouterr().err.startswith(
        "delen_node: heap policy must be one of off, threshold, trim, both, got 'always'")
