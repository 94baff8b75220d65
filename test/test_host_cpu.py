"""The machine's stolen CPU time from /proc/stat (core/host_cpu.py), and how the node reports and warns of it."""
import pathlib

import pytest

from delen_ros.core.host_cpu import Stolen, StolenShare, read_core_jiffies, read_jiffies

#        user nice system idle iowait irq softirq steal guest guest_nice
LINE = 'cpu  {user} 0 {system} {idle} 10 0 5 {steal} 0 0\ncpu0 1 2 3 4\nintr 12345\n'


def _stat(path: pathlib.Path, *, user: int, idle: int, steal: int, system: int = 100) -> pathlib.Path:
    path.write_text(LINE.format(user=user, system=system, idle=idle, steal=steal))
    return path


def test_jiffies_are_busy_total_and_stolen(tmp_path):
    stat = _stat(tmp_path / 'stat', user=1000, idle=5000, steal=40)
    # busy: everything but idle and iowait (steal included); total: everything
    assert read_jiffies(stat) == (1000 + 100 + 5 + 40, 1000 + 100 + 5000 + 10 + 5 + 40, 40)


@pytest.mark.parametrize('text', ['', 'intr 1 2 3\n', 'cpu  a b c d\n', 'cpu  1 2\n'])
def test_unreadable_or_foreign_stat_gives_none(tmp_path, text):
    stat = tmp_path / 'stat'
    stat.write_text(text)
    assert read_jiffies(stat) is None
    assert read_jiffies(tmp_path / 'missing') is None
    assert StolenShare(stat).take() is None


def test_the_stolen_share_is_over_the_time_since_the_last_take(tmp_path):
    stat = _stat(tmp_path / 'stat', user=1000, idle=5000, steal=40)
    share = StolenShare(stat)
    assert share.take() is None                      # no time passed
    _stat(stat, user=1540, idle=5450, steal=50)      # 1000 jiffies more, 10 of them stolen
    assert share.take().share == pytest.approx(0.01)
    _stat(stat, user=1640, idle=6350, steal=50)      # 1000 more, none stolen
    assert share.take().share == 0.0


def _cores(path: pathlib.Path, cores: list[tuple[int, int]]) -> pathlib.Path:
    """A stat of cores given as (idle, steal) jiffies, each with 100 user; the machine's line their sum."""
    lines = [f'cpu{i} 100 0 0 {idle} 0 0 0 {steal} 0 0' for i, (idle, steal) in enumerate(cores)]
    total_idle, total_steal = sum(c[0] for c in cores), sum(c[1] for c in cores)
    path.write_text('\n'.join([f'cpu  {100 * len(cores)} 0 0 {total_idle} 0 0 0 {total_steal} 0 0', *lines,
                               'intr 1']) + '\n')
    return path


def test_the_worst_core_shows_a_stall_the_machine_share_spreads_out(tmp_path):
    # 16 cores, a second each (100 jiffies): one core loses 60 ms to the host, the machine 0.375 %
    stat = _cores(tmp_path / 'stat', [(1000, 0)] * 16)
    assert read_core_jiffies(stat) == {f'cpu{i}': (1100.0, 0.0) for i in range(16)}
    share = StolenShare(stat)
    _cores(stat, [(1094, 6)] + [(1100, 0)] * 15)
    stolen = share.take()
    assert stolen.share == pytest.approx(6 / 1600) and stolen.worst_core_share == pytest.approx(0.06)
    # a core that appears between two reads (hot-plug) is left out, the others still read
    _cores(stat, [(1194, 6)] + [(1200, 0)] * 15 + [(5, 5)])
    assert share.take().worst_core_share == 0.0


def test_a_stat_without_core_lines_gives_the_machine_share_alone(tmp_path):
    stat = _stat(tmp_path / 'stat', user=1000, idle=5000, steal=40)
    stat.write_text(stat.read_text().replace('cpu0 1 2 3 4\n', ''))
    assert read_core_jiffies(stat) is None
    share = StolenShare(stat)
    _stat(stat, user=1540, idle=5450, steal=50)
    stat.write_text(stat.read_text().replace('cpu0 1 2 3 4\n', ''))
    assert share.take() == Stolen(pytest.approx(0.01), None)


def test_this_machine_s_stat_reads_where_it_exists():
    if not pathlib.Path('/proc/stat').exists():
        pytest.skip('no /proc/stat here')
    busy, total, stolen = read_jiffies()
    assert 0 <= stolen <= busy <= total and total > 0


class _Logger:
    def __init__(self):
        self.warnings = []

    def warning(self, text, **kwargs):
        self.warnings.append((text, kwargs))


class _Node:
    """What StatusMixin._stolen_report reads of the node: its stolen-CPU reader and its logger."""

    def __init__(self, share):
        self._stolen_cpu = type('Fixed', (), {'take': lambda _self: share})()
        self.logger = _Logger()

    def get_logger(self):
        return self.logger


@pytest.mark.parametrize('share, worst, warned', [(None, None, False), (0.002, None, False), (0.002, 0.032, False),
                                                  (0.026, 0.4, True)])
def test_the_node_reports_the_share_and_warns_above_one_percent(share, worst, warned):
    from delen_ros.ros.node_status import StatusMixin
    node = _Node(None if share is None else Stolen(share, worst))
    report = StatusMixin._stolen_report(node, 1.0)
    expected = {} if share is None else {'host_cpu_stolen_pct': f'{100 * share:.2f}'}
    if worst is not None:
        expected['host_cpu_stolen_worst_core_pct'] = f'{100 * worst:.2f}'
    assert report == expected
    assert bool(node.logger.warnings) == warned
    if warned:
        text, kwargs = node.logger.warnings[0]
        assert '2.6 % of its CPU time' in text and kwargs['throttle_duration_sec'] == 60.0
