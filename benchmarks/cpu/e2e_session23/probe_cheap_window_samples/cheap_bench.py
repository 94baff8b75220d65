"""``delen_e2e_bench`` with its process samples reduced to ``/proc/PID/stat`` (no ``smaps`` walks, so no
memory figures): an A/B probe of whether the bench's own sampling at the window's start delays results.

    python benchmarks/cpu/e2e_session23/probe_cheap_window_samples/cheap_bench.py --model fashion_mnist \
        --device cpu --ns 1,3,8 --rate 15 --max-batch 8 --duration 10 --no-echo --out OUT
"""
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[4]))
from delen_ros.tools import e2e_bench  # noqa: E402
from delen_ros.tools.thread_cpu import stat_cpu_s, stat_fields  # noqa: E402


def cpu_only(pid: int) -> dict | None:
    try:
        _, fields = stat_fields(pathlib.Path(f'/proc/{pid}/stat').read_text())
        return {'t_ns': time.time_ns(), 'cpu_s': stat_cpu_s(fields), 'threads': int(fields[17])}
    except (OSError, ValueError, IndexError):
        return None


def cpu_only_tree(pid: int) -> dict | None:
    out = cpu_only(pid)
    if out is None:
        return None
    samples = [out, *filter(None, (cpu_only(c) for c in e2e_bench.descendants(pid)))]
    out['tree_cpu_s'], out['tree_procs'] = sum(x['cpu_s'] for x in samples), len(samples)
    return out


if __name__ == '__main__':
    e2e_bench.proc_sample, e2e_bench.proc_tree_sample = cpu_only, cpu_only_tree
    sys.exit(e2e_bench.main(sys.argv[1:]))
