"""Session 36's saturation runs: each run's results/s over the engine alone at the same load (its call's
``engine_bench.json``), by arm; a run whose `delen` frames left the final exit is marked (the collapse).

    python benchmarks/h200/sat_session36/plot.py     (writes ratios.json and ratios.png beside it)
"""
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
CALLS = {'call1_raw_copy_gil': {'n': 'shipped (raw copies keep the GIL)', 'o': 'copies let the GIL go (as before)'},
         'call2_steady': {'n': 'shipped, 2 s warm-up', 's': 'shipped, 30 s warm-up', 'c': 'cudnn_trials:=configure'},
         'call3_choice_margin': {'m': 'margin not raised behind a backlog', 'b': 'raised (as before)'}}


def main() -> None:
    rows = []
    for call, arms in CALLS.items():
        engine = json.loads((HERE / call / f'{next(iter(arms))}1' / 'engine_bench.json').read_text())
        reference = engine['scenarios']['overload']['batched']['served_hz']
        for run in sorted((HERE / call).iterdir()):
            if not (run / 'e2e.json').exists():
                continue
            for name, c in json.loads((run / 'e2e.json').read_text())['configs'].items():
                t = c['total']
                rows.append({'call': call, 'run': run.name, 'arm': arms[run.name[0]], 'policy': name.split('_n')[0],
                             'results_hz': round(t['results_hz'], 1), 'engine_hz': round(reference, 1),
                             'ratio': round(t['results_hz'] / reference, 3), 'final_exit_share': round(t['exit_mix'][-1], 3),
                             'choice_margin_max_ms': (t.get('node_choice_margin') or {}).get('max_ms')})
    (HERE / 'ratios.json').write_text(json.dumps(rows, indent=1))
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 4.5))
    labels = []
    for i, r in enumerate(rows):
        colour = 'tab:blue' if r['policy'] == 'always_final' else 'tab:orange'
        ax.bar(i, r['ratio'], color=colour, hatch='//' if r['final_exit_share'] < 0.9 else None, edgecolor='k', lw=0.4)
        labels.append(f"{r['call'][:5]} {r['run']}\n{r['policy'][:6]}")
    ax.axhline(0.9, color='grey', ls='--', lw=0.8)
    ax.set_xticks(range(len(rows)), labels, fontsize=6)
    ax.set_ylabel('results/s ÷ engine alone, same load')
    ax.set_title('H200, 32 cameras x 120 Hz, cifar10_committee, 33 ms (blue always_final, orange delen; '
                 'hatched: delen off the final exit)', fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / 'ratios.png', dpi=90)


if __name__ == '__main__':
    main()
