"""Plots shared by the write-ups of issue 10's mixed scenario on the H200 (16 cameras: eight 10 ms apps,
eight 33 ms accuracy cascades): ``benchmarks/h200/recheck_session25/plot.py`` and
``benchmarks/h200/riders_session26/plot.py`` import it.

``strip``: per setting, each run's worst kept app (its share of frames within bound, from ``e2e.json``);
``latency_panels``: node-side latency of the 10 ms apps over time, one panel per run, drawn by the caller;
``admitted_run``: one run of ``scripts/device/mixed_runs.sh`` in a row, ``arm_summary``: such rows per arm, and ``steal_panels``: such runs against the
CPU their host's hypervisor stole (``session44/plot.py``, ``session45/plot.py``)."""
from __future__ import annotations

import json
import pathlib
import statistics
from typing import Callable, Iterator, Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

TITLE = 'H200, cifar10_lite0, 16 cameras x 30 Hz: 8 apps at 10 ms, 8 at 33 ms + accuracy >= 0.9306'


def admitted_run(path: pathlib.Path) -> dict:
    """One run's ``e2e.json`` in a row: the worst admitted app (one that got results) within all its bounds at
    the recorder, the admitted apps' frames missed, the apps the node demoted at some time in the window, the
    CPU the hypervisor stole, the node's CPU per frame sent."""
    c = next(iter(json.loads(path.read_text())['configs'].values()))
    t = c['total']
    admitted = {k: a for k, a in c['apps'].items() if a['answered']}
    worst = min(admitted, key=lambda k: admitted[k]['attainment'])
    return {'admitted': len(admitted),
            'demoted': sorted(k for k, a in admitted.items() if (a.get('node_demoted_share') or 0) > 0),
            'worst_app': worst, 'worst_within': round(admitted[worst]['attainment'], 4),
            'every_admitted_app_99': admitted[worst]['attainment'] >= 0.99,
            'missed_frames': sum(round((1 - a['attainment']) * a['sent']) for a in admitted.values()),
            'host_cpu_steal_share': round(t.get('host_cpu_steal_share') or 0.0, 5),
            'node_saw_stolen_worst_core_pct_max': (t.get('node_host_cpu_stolen_pct') or {}).get('worst_core_max'),
            'node_cpu_ms_per_frame': round(t['resources']['cpu_ms_per_frame'], 2)}


def arm_summary(runs: Sequence[dict]) -> dict:
    """Rows of :func:`admitted_run` (with their ``arm``) per arm: runs, those where every admitted app met 99 %, and
    each run's frames missed, worst app, CPU stolen and node CPU per frame."""
    out = {}
    for arm in sorted({r['arm'] for r in runs}):
        rows = [r for r in runs if r['arm'] == arm]
        out[arm] = {'runs': len(rows), 'every_admitted_app_99': sum(r['every_admitted_app_99'] for r in rows),
                    'missed_frames': [r['missed_frames'] for r in rows],
                    'missed_frames_median': statistics.median(r['missed_frames'] for r in rows),
                    'worst_within': [r['worst_within'] for r in rows],
                    'host_cpu_steal_pct': [round(100 * r['host_cpu_steal_share'], 2) for r in rows],
                    'node_cpu_ms_per_frame': [round(r['node_cpu_ms_per_frame'], 2) for r in rows],
                    'node_cpu_ms_per_frame_median': statistics.median(r['node_cpu_ms_per_frame'] for r in rows)}
    return out


def steal_panels(runs: Sequence[dict], colours: dict[str, str], out: pathlib.Path, *, edge_label: str,
                 marker: Callable[[dict], str] = lambda run: 'o', log_x: bool = False) -> None:
    """Rows of :func:`admitted_run` (with their ``arm``, a key of ``colours``) against the host CPU stolen: the worst
    admitted app within its bounds (left) and the frames missed (right); a black edge where an app was demoted."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    for r in runs:
        x = 100 * r['host_cpu_steal_share']
        style = dict(color=colours[r['arm']], marker=marker(r), s=45,
                     edgecolors='k' if r['demoted'] else 'none', linewidths=1.5)
        a.scatter(x, 100 * r['worst_within'], **style)
        b.scatter(x, max(r['missed_frames'], 0.5), **style)
    a.axhline(99, color='r', linestyle=':')
    a.set_ylabel('worst admitted app within its bounds, %')
    b.set_yscale('log')
    b.set_ylabel('frames missed, of ~4 800 (0 at 0.5)')
    for ax in (a, b):
        ax.set_xlabel('host CPU stolen by the hypervisor over the run, %')
        if log_x:
            ax.set_xscale('symlog', linthresh=0.1)
            ax.set_xlim(left=0)
    for arm, colour in colours.items():
        a.scatter([], [], color=colour, label=arm)
    a.scatter([], [], color='w', edgecolors='k', label=edge_label)
    fig.legend(*a.get_legend_handles_labels(), fontsize=8, loc='lower center', ncol=len(colours) + 1)
    fig.suptitle('16 cameras × 30 Hz, 8 × 10 ms + 8 × 33 ms @ 0.9415, apps at configure (S: through ~/set_bounds)',
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))   # the legend below the panels: no point under it
    fig.savefig(out, dpi=110)


def worst_kept(path: pathlib.Path) -> float:
    """The worst kept app's share of frames within bound in one run, %."""
    t = json.loads(path.read_text())['configs']['delen_n16']['total']
    return 100 * t['attainment_min_app_kept']


def strip(groups: dict[str, Sequence[pathlib.Path]], out: pathlib.Path, *, width: float = 10.0,
          title: str = TITLE) -> None:
    """One column of dots per setting (``groups``: label -> its runs' ``e2e.json``), the 99 % target dashed."""
    fig, ax = plt.subplots(figsize=(width, 4))
    for i, files in enumerate(groups.values()):
        ys = [worst_kept(f) for f in files]
        ax.scatter([i] * len(ys), ys, s=30)
    ax.axhline(99, color='grey', ls='--', lw=1)
    ax.set_xticks(range(len(groups)), groups.keys(), fontsize=8)
    ax.set_ylabel('worst kept app within bound, %')
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def latency_panels(labels: Sequence[str], out: pathlib.Path, xlabel: str,
                   draw: Callable[[plt.Axes, str], str]) -> None:
    """One panel per label, stacked: ``draw(ax, label)`` plots a run and returns the panel's title; the
    10 ms bound is dashed."""
    fig, axes = plt.subplots(len(labels), 1, figsize=(9, 5), sharex=True, sharey=True)
    for ax, label in zip(axes, labels):
        title = draw(ax, label)
        ax.axhline(10, color='grey', ls='--', lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel('ms')
    axes[-1].set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def rows(path: pathlib.Path) -> Iterator[dict]:
    """The rows of a ``results.json`` (flight-recorder results, one per result) as dicts."""
    data = json.loads(path.read_text())
    for row in data['rows']:
        yield dict(zip(data['columns'], row))


def saturation_bars(ax, sat: Sequence[dict], colours: Sequence[str], title: str) -> None:
    """Saturation arms as bars of results/s over the engine alone (``sat``: rows with ``run``, ``ratio`` and
    ``engine_hz``), the 0.9 x target dotted: ``benchmarks/h200/session41`` and ``session43``."""
    ax.bar([r['run'] for r in sat], [r['ratio'] for r in sat], color=list(colours))
    ax.axhline(0.9, color='r', linestyle=':')
    ax.set_ylim(0.6, 1.0)
    ax.set_ylabel(f"results/s ÷ the engine alone ({sat[0]['engine_hz']:.0f}/s)")
    ax.set_title(title, fontsize=10)
