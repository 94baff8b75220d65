"""The node's frame reader: the receivers' 21-byte frame notes read one at a time (``recv_bytes`` and
``poll``: three system calls a note, before session 35) or many at a time (``ingress.NoteBuffer``: one
``read`` for every note in the pipe). In the traced H200 node at 32 cameras x 120 Hz the reader spent
~140 µs of Python a frame in bursts of 9-11 frames while the worker waited for the GIL
(``benchmarks/h200/sat_session35``).

A writer process sends notes in bursts (``--burst`` notes, then a pause), as receivers do when the
reader is held up; the reader waits for the pipe, reads and unpacks every note with ``IngressPool``'s
own reads, without the node's callback). Both ways in one run, interleaved, ``--repeats`` times.

    python benchmarks/ingress_notes.py --out benchmarks/cpu/ingress_notes      (about 20 s)

Writes ingress_notes.json: the reader's CPU µs per note (thread time) each way, median of repeats,
per burst size, and their ratio.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import pathlib
import statistics
import sys
import time
from multiprocessing.connection import Connection, wait

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from delen_ros.ros.ingress import _FRAME, IngressPool, NoteBuffer  # noqa: E402


def _writer(conn: Connection, notes: int, burst: int, pause_s: float) -> None:
    note = _FRAME.pack(b'F', 3, 1, 921_600, 123456789)
    sent = 0
    while sent < notes:
        for _ in range(min(burst, notes - sent)):
            conn.send_bytes(note)
            sent += 1
        time.sleep(pause_s)
    conn.close()


def _read(conn: Connection, many: bool) -> tuple[float, int]:
    """Reader CPU seconds and notes read, until the writer closes the pipe."""
    buffer, count = NoteBuffer(), 0
    t0 = time.thread_time()
    while True:
        wait([conn])
        try:
            notes = buffer.take(conn.fileno()) if many else IngressPool._drain_one_by_one(conn)
        except EOFError:
            break
        for note in notes:
            _FRAME.unpack(note)
        count += len(notes)
    return time.thread_time() - t0, count


def _one(many: bool, notes: int, burst: int, pause_s: float) -> float:
    r, w = mp.Pipe(duplex=False)
    writer = mp.Process(target=_writer, args=(w, notes, burst, pause_s))
    writer.start()
    w.close()
    cpu_s, count = _read(r, many)
    writer.join()
    r.close()
    assert count == notes, (count, notes)
    return cpu_s / notes * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=pathlib.Path, default=REPO / 'benchmarks' / 'cpu' / 'ingress_notes')
    p.add_argument('--notes', type=int, default=3000)
    p.add_argument('--bursts', default='1,10,32')
    p.add_argument('--pause-ms', type=float, default=1.0)
    p.add_argument('--repeats', type=int, default=5)
    args = p.parse_args()
    rows = []
    for burst in (int(b) for b in args.bursts.split(',')):
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for many in (False, True):
                times[many].append(_one(many, args.notes, burst, args.pause_ms / 1e3 * burst / 10))
        one, many = statistics.median(times[False]), statistics.median(times[True])
        rows.append({'burst': burst, 'us_per_note_one_by_one': round(one, 2), 'us_per_note_many': round(many, 2),
                     'ratio': round(many / one, 3)})
        print(f'bursts of {burst:3d}: one by one {one:6.2f} µs a note, many at a time {many:6.2f} µs ({many / one:.2f}x)')
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'ingress_notes.json').write_text(json.dumps({
        'what': __doc__.split('\n\n')[0], 'command': 'python benchmarks/ingress_notes.py', 'rows': rows}, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
