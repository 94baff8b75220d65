"""What one 640x480 rgb8 frame's upload costs the thread that takes the frames (issue 8, session 11):
staged through a pinned buffer (``DevicePreprocessor.upload`` on ordinary memory: a CPU copy, then
an asynchronous copy), uploaded in place from a shared-memory ring registered with CUDA
(``core/host_memory.py``), and, for scale, a ``non_blocking`` copy straight from pageable memory
(the driver stages it itself). Session 12 adds in-place copies by ``cudaMemcpyAsync`` (the default)
against a torch copy per frame, and the worker's side: a batch of ring frames copied in place.
CUDA only; writes ``upload_paths.json``.

    python benchmarks/upload_paths.py --out OUT          (a few seconds on a GPU machine)
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from delen_ros.core.frame_ring import FrameRing  # noqa: E402
from delen_ros.core.host_memory import HOST_MEMORY, pinnable  # noqa: E402
from delen_ros.core.preprocess import DevicePreprocessor  # noqa: E402
from delen_ros.core.zoo import load_model  # noqa: E402

SHAPE = (480, 640, 3)


def _time(upload, frames, sync_every: int) -> dict:
    """Per-frame wall and thread-CPU microseconds of ``upload(frame)``, synchronising the device
    every ``sync_every`` frames (outside the timing) so that copies do not pile up without bound."""
    wall = cpu = 0.0
    for i, frame in enumerate(frames):
        w, c = time.perf_counter(), time.thread_time()
        upload(frame)
        wall += time.perf_counter() - w
        cpu += time.thread_time() - c
        if (i + 1) % sync_every == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return {'frames': len(frames), 'wall_us_per_frame': 1e6 * wall / len(frames),
            'thread_cpu_us_per_frame': 1e6 * cpu / len(frames)}


BATCH = 32


def _per_frame_of_batches(pre: DevicePreprocessor):
    """An ``upload(frame)`` that gathers BATCH frames and copies them as one in-place batch, the way
    the worker does with the frames it takes that were not uploaded ahead."""
    pending = []

    def upload(frame):
        pending.append(frame)
        if len(pending) == BATCH:
            assert pre._batch_in_place(pending) is not None, 'the ring is registered'
            pending.clear()
    return upload


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True)
    p.add_argument('--frames', type=int, default=2000)
    p.add_argument('--sync-every', type=int, default=16, help='frames between device synchronisations')
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print('upload_paths: no CUDA device here')
        return 2
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pre = DevicePreprocessor(load_model('cifar10_lite0').info, torch.device('cuda'))
    rng = np.random.default_rng(0)
    pageable = [rng.integers(0, 256, SHAPE, dtype=np.uint8) for _ in range(8)]
    n = args.frames

    ring = FrameRing.create(8, int(np.prod(SHAPE)))
    reader = FrameRing.attach(ring.path)
    registered = pinnable(ring.path) and HOST_MEMORY.register(reader.address, reader.map_bytes)
    in_ring = []
    for i in range(8):
        slot = ring.write(pageable[i].tobytes())
        in_ring.append(np.frombuffer(reader.view(slot, int(np.prod(SHAPE))), np.uint8).reshape(SHAPE))

    torch_copies = DevicePreprocessor(load_model('cifar10_lite0').info, torch.device('cuda'))
    torch_copies._raw_copy = None   # in place, each frame copied by a torch copy (before session 12)
    results = {}
    for name, upload, frames in (
            ('staged', pre.upload, [pageable[i % 8] for i in range(n)]),
            ('in_place', pre.upload, [in_ring[i % 8] for i in range(n)]),
            ('in_place_torch_copy', torch_copies.upload, [in_ring[i % 8] for i in range(n)]),
            # the worker's side: a batch of BATCH ring frames not uploaded ahead, copied from their slots
            ('batch_in_place', _per_frame_of_batches(pre), [in_ring[i % 8] for i in range(n)]),
            ('batch_in_place_torch_copy', _per_frame_of_batches(torch_copies), [in_ring[i % 8] for i in range(n)]),
            ('pageable_direct', lambda f: torch.from_numpy(f).to('cuda', non_blocking=True),
             [pageable[i % 8] for i in range(n)])):
        _time(upload, frames[:200], args.sync_every)      # warm-up: buffers, allocator
        results[name] = _time(upload, frames, args.sync_every)
    for name in results:
        results[name]['cpu_ratio_to_staged'] = (results[name]['thread_cpu_us_per_frame']
                                                / results['staged']['thread_cpu_us_per_frame'])
    same = torch.equal(pre([pre.upload(in_ring[3])]), pre([pre.upload(pageable[3].copy())]))
    same_batch = torch.equal(pre._batch_in_place(in_ring[:4]).cpu(), torch.from_numpy(np.stack(pageable[:4])))
    report = {'device': torch.cuda.get_device_name(), 'torch': torch.__version__, 'frame': list(SHAPE),
              'ring_registered': bool(registered), 'raw_copy': pre._raw_copy is not None,
              'in_place_equals_staged': bool(same), 'batch_in_place_equals_frames': bool(same_batch),
              'batch': BATCH, 'paths': results}
    if registered:
        HOST_MEMORY.unregister(reader.address)
    (out / 'upload_paths.json').write_text(json.dumps(report, indent=1))
    for name, r in results.items():
        print(f'{name:16s} wall {r["wall_us_per_frame"]:7.1f} us  thread CPU {r["thread_cpu_us_per_frame"]:7.1f} us '
              f'({r["cpu_ratio_to_staged"]:.2f} x staged)')
    print(f'ring registered: {registered}; raw copies: {report["raw_copy"]}; in-place batch equals staged: '
          f'{same}; a batch copied in place equals its frames: {same_batch}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
