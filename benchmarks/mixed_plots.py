"""Plots shared by the write-ups of issue 10's mixed scenario on the H200 (16 cameras: eight 10 ms apps,
eight 33 ms accuracy cascades): ``benchmarks/h200/recheck_session25/plot.py`` and
``benchmarks/h200/riders_session26/plot.py`` import it.

``strip``: per setting, each run's worst kept app (its share of frames within bound, from ``e2e.json``);
``latency_panels``: node-side latency of the 10 ms apps over time, one panel per run, drawn by the caller."""
from __future__ import annotations

import json
import pathlib
from typing import Callable, Iterator, Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

TITLE = 'H200, cifar10_lite0, 16 cameras x 30 Hz: 8 apps at 10 ms, 8 at 33 ms + accuracy >= 0.9306'


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
