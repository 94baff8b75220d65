"""The machine's stolen CPU time from /proc/stat (core/host_cpu.py), and how the node reports and warns of it."""
import pathlib

import pytest

from delen_ros.core.host_cpu import StolenShare, read_jiffies

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
    assert share.take() == pytest.approx(0.01)
    _stat(stat, user=1640, idle=6350, steal=50)      # 1000 more, none stolen
    assert share.take() == 0.0


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


@pytest.mark.parametrize('share, warned', [(None, False), (0.002, False), (0.026, True)])
def test_the_node_reports_the_share_and_warns_above_one_percent(share, warned):
    from delen_ros.ros.node_status import StatusMixin
    node = _Node(share)
    report = StatusMixin._stolen_report(node, 1.0)
    assert report == ({} if share is None else {'host_cpu_stolen_pct': f'{100 * share:.2f}'})
    assert bool(node.logger.warnings) == warned
    if warned:
        text, kwargs = node.logger.warnings[0]
        assert '2.6 % of its CPU time' in text and kwargs['throttle_duration_sec'] == 60.0
