"""Where a CUDA configure's seconds go (issue 8: configure -> first result <= 5 s).

Run THERE after the offline set-up (ROS environment sourced), from the repository root:
    python3 scripts/device/configure_profile.py [OUT_JSON]
It builds what the node's configure builds (``assembly.build``, the node's default parameters,
``MODEL`` / ``MAX_BATCH`` from the environment) and prints one JSON line: the seconds of
``import torch``, the CUDA context, each configure phase, and each CUDA graph's capture (its eager
warm-up included), split by stage / head and batch size. Run it under ``py-spy record`` for the rest.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

t0 = time.perf_counter()
import torch  # noqa: E402 - timed

t_import = time.perf_counter()
torch.zeros(1, device='cuda')
torch.cuda.synchronize()
t_cuda = time.perf_counter()

from delen_ros.core import runner  # noqa: E402
from delen_ros.ros import assembly, params  # noqa: E402

graphs: list[dict] = []
_original = runner._Graph.__init__


def _timed(self, module, example, batch, **kwargs):
    torch.cuda.synchronize()
    start = time.perf_counter()
    _original(self, module, example, batch, **kwargs)
    torch.cuda.synchronize()
    graphs.append({'module': type(module).__name__, 'batch': batch, 's': round(time.perf_counter() - start, 4)})


runner._Graph.__init__ = _timed
defaults = params.NodeParams(**{name: spec[0] for name, spec in params._SPECS.items()})
p = dataclasses.replace(defaults, model=os.environ.get('MODEL', 'cifar10_lite0'), device='cuda',
                        max_batch=int(os.environ.get('MAX_BATCH', '32')))
t_build = time.perf_counter()
served = assembly.build(p, on_result=lambda *a, **k: None, log=lambda text: print(text, file=sys.stderr))
t_done = time.perf_counter()
out = {'env': {k: os.environ.get(k) for k in ('CUDA_MODULE_LOADING', 'MODEL', 'MAX_BATCH')},
       'import_torch_s': round(t_import - t0, 3), 'cuda_context_s': round(t_cuda - t_import, 3),
       'imports_delen_s': round(t_build - t_cuda, 3), 'build_s': round(t_done - t_build, 3),
       'phases_s': {k: round(v, 3) for k, v in served.phases.items()},
       'graphs': graphs, 'graphs_s': round(sum(g['s'] for g in graphs), 3), 'total_s': round(t_done - t0, 3)}
served.close()
line = json.dumps(out)
print(line)
if len(sys.argv) > 1:
    with open(sys.argv[1], 'w') as f:
        f.write(line + '\n')
