"""A CPU stand-in for the frame reader and the engine's worker sharing the upload lock (issue 8,
session 11): how long the worker waits for the lock when the reader holds it across each frame's
copy launch (before) or only around its bookkeeping (now).

The reader takes frames at ``--rate`` per second. For each it does a little Python work, then a
GIL-releasing call of ``--launch-us`` (a stand-in for the copy launch, which on the H200 took about
130 µs staged), then more Python work. The worker assembles a batch every ``--batch-every-ms``: it
takes the lock once (``_uploaded`` used to), then does ``--worker-ms`` of Python work. Python's lock
is not fair: a thread that releases it and takes it again at once usually wins it back. Writes
``upload_lock.json`` and ``upload_lock.png``.

    python benchmarks/upload_lock.py --out benchmarks/cpu/upload_lock       (about half a minute)
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import threading
import time


def _spin_us(us: float) -> None:
    """Pure Python work holding the GIL for about ``us`` microseconds."""
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


def run(*, lock_across_launch: bool, rate: float, launch_us: float, seconds: float, batch_every_ms: float,
        worker_ms: float) -> dict:
    lock = threading.Lock()
    stop = threading.Event()
    frames = 0

    def reader() -> None:
        nonlocal frames
        period = 1.0 / rate
        next_t = time.perf_counter()
        while not stop.is_set():
            _spin_us(10)                      # parse the note, view the slot
            if lock_across_launch:
                with lock:
                    _spin_us(5)               # bookkeeping
                    time.sleep(launch_us * 1e-6)   # the copy launch: the GIL is released, the lock is not
            else:
                with lock:
                    _spin_us(5)
                time.sleep(launch_us * 1e-6)
                with lock:
                    _spin_us(2)
            _spin_us(10)                      # queue the frame
            frames += 1
            next_t += period
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.perf_counter()  # behind: take the next frame at once

    waits_ms: list[float] = []
    batches = 0

    def worker() -> None:
        nonlocal batches
        next_t = time.perf_counter()
        while not stop.is_set():
            t0 = time.perf_counter()
            with lock:
                waits_ms.append((time.perf_counter() - t0) * 1e3)
            _spin_us(worker_ms * 1e3)
            batches += 1
            next_t += batch_every_ms * 1e-3
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.perf_counter()

    threads = [threading.Thread(target=reader), threading.Thread(target=worker)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    waits = sorted(waits_ms)
    return {'lock_across_launch': lock_across_launch, 'rate': rate, 'frames_per_s': frames / seconds,
            'batches_per_s': batches / seconds, 'wait_p50_ms': statistics.median(waits),
            'wait_p99_ms': waits[int(0.99 * (len(waits) - 1))], 'wait_max_ms': waits[-1]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True)
    p.add_argument('--rates', default='1000,2000,3000', help='frames per second offered to the reader')
    p.add_argument('--launch-us', type=float, default=130.0)
    p.add_argument('--seconds', type=float, default=3.0)
    p.add_argument('--batch-every-ms', type=float, default=5.0)
    p.add_argument('--worker-ms', type=float, default=1.0)
    p.add_argument('--repeats', type=int, default=2)
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for repeat in range(args.repeats):
        for rate in (float(r) for r in args.rates.split(',')):
            for across in (True, False):   # alternating, same conditions
                r = run(lock_across_launch=across, rate=rate, launch_us=args.launch_us, seconds=args.seconds,
                        batch_every_ms=args.batch_every_ms, worker_ms=args.worker_ms)
                r['repeat'] = repeat
                runs.append(r)
                print(f'rate {rate:6.0f}  lock {"across launch" if across else "bookkeeping  "}  '
                      f'frames {r["frames_per_s"]:7.0f}/s  batches {r["batches_per_s"]:6.1f}/s  '
                      f'worker waits p50 {r["wait_p50_ms"]:.3f} p99 {r["wait_p99_ms"]:.3f} max {r["wait_max_ms"]:.2f} ms')
    report = {'settings': vars(args) | {'out': str(out)}, 'runs': runs}
    (out / 'upload_lock.json').write_text(json.dumps(report, indent=1))
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for across, colour in ((True, 'tab:red'), (False, 'tab:green')):
            pts = [r for r in runs if r['lock_across_launch'] == across]
            ax.plot([r['rate'] for r in pts], [r['wait_p99_ms'] for r in pts], 'o', color=colour,
                    label='lock across the launch (before)' if across else 'lock around bookkeeping (now)')
        ax.set_xlabel('frames/s offered to the reader')
        ax.set_ylabel("worker's wait for the lock, p99 ms")
        ax.set_yscale('log')
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / 'upload_lock.png', dpi=120)
    except ImportError:
        pass
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
