"""Plot scripts/device/idle_power_probe.py's three runs (probe/a.json, b.json, c.json) into probe.png:
power from NVML's energy counter (0.5 s bins) with the phases marked.

    python benchmarks/h200/idle_power_session24/plot_probe.py
"""
import json
import pathlib

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
# in these runs the phase marked 'context' was mostly torch's import: the context came at its end
TITLES = {'a': 'a: no context; torch import, context at its end; busy; idle; serving; idle',
          'b': 'b: started right after a exited; torch import, context at its end; idle',
          'c': 'c: 25 s after b; no context; torch import, context at its end; busy; idle'}


def binned(samples, width=0.5):
    bins = {}
    for prev, cur in zip(samples, samples[1:]):
        bins.setdefault(int(cur['t'] / width), []).append((cur['energy_mj'] - prev['energy_mj'], cur['t'] - prev['t']))
    return [(k * width, sum(e for e, _ in v) / sum(t for _, t in v) / 1000.0) for k, v in sorted(bins.items())]


fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharey=True)
for ax, name in zip(axes, 'abc'):
    run = json.loads((HERE / 'probe' / f'{name}.json').read_text())
    t, w = zip(*binned(run['samples']))
    ax.step(t, w, where='post')
    for phase, at in run['marks']:
        ax.axvline(at, color='grey', lw=0.6)
        ax.text(at + 0.1, 560, phase, fontsize=8)
    ax.axhline(121.4, color='tab:red', lw=0.6, ls='--')
    ax.set_title(TITLES[name], fontsize=9)
    ax.set_ylabel('W')
    ax.set_ylim(0, 700)
axes[-1].set_xlabel('s (red: 121.4 W, idle with a CUDA context)')
fig.suptitle('NVIDIA H200 draw around a CUDA process (NVML energy counter, 0.5 s bins)')
fig.tight_layout()
fig.savefig(HERE / 'probe.png', dpi=90)
