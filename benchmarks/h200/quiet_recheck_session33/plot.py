"""summary.json and worst_app.png from the runs in this folder (python3 plot.py, from this folder, with the
project installed: `source .venv/delen_env.sh`). Each run's figures are those of session 32's plot.py
(`../demotion_session32/plot.py`: worst app kept, worst served, demoted, refused, the 10 ms apps' accuracy),
plus the worst app's share met as the node judged it at publication (`node_met`) and the share of its
statuses that flagged it (`flagged`)."""
import importlib.util
import json
import pathlib

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).parent
_spec = importlib.util.spec_from_file_location('session32_plot', HERE.parent / 'demotion_session32' / 'plot.py')
session32 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(session32)
ARMS = {'G': 'as shipped (b11a373)', 'N': 'admission_control:=false', 'S': 'through ~/set_bounds, drifting'}


def run_summary(path: pathlib.Path) -> dict:
    out = session32.run_summary(path)
    configs = json.loads(path.read_text())['configs']
    app = configs.get('delen_n16_service', configs['delen_n16'])['apps'][out['worst_kept'][0]]
    out['node_met'] = round(app['node_bounds_met_share'], 4)
    out['flagged'] = app.get('node_flagged_share')
    return out


def main() -> None:
    runs = {run.name: run_summary(run / 'e2e.json') for run in sorted(HERE.iterdir()) if (run / 'e2e.json').exists()}
    (HERE / 'summary.json').write_text(json.dumps(runs, indent=1) + '\n')
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, (arm, label) in enumerate(ARMS.items()):
        rows = [r for name, r in runs.items() if name.startswith(arm)]
        x = [i + 0.08 * (j - len(rows) / 2) for j in range(len(rows))]
        ax.scatter(x, [100 * r['worst_kept'][1] for r in rows], marker='o', color='C0',
                   label='worst app, at the result topic' if i == 0 else None)
        ax.scatter(x, [100 * r['node_met'] for r in rows], marker='_', s=120, color='C2',
                   label='the same app, as the node judged it' if i == 0 else None)
        forced = [r['forced_worst'] for r in rows if 'forced_worst' in r]
        if forced:
            ax.scatter(x, [100 * f for f in forced], marker='x', color='C3', label='forced in (admission off)')
    ax.set_xticks(range(len(ARMS)), list(ARMS.values()), fontsize=8)
    ax.axhline(99, color='grey', lw=0.8)
    ax.set_ylabel('share of frames within bound, %')
    ax.legend(fontsize=7, loc='lower right')
    ax.set_title('H200, session 33: 16 cameras x 30 Hz, 8 x 10 ms + 8 x 33 ms @ 0.9415', fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / 'worst_app.png', dpi=110)


if __name__ == '__main__':
    main()
