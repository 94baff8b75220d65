"""Which confidence lets the cascade stop earliest at the same accuracy? Thresholds fitted on the
validation split (with the shipped margin, 1.645 standard errors), cost and accuracy on the test set.

    python analyze.py BOUND [LOGITS_NPZ]      (LOGITS_NPZ from exit_logits.py; default ./logits.npz)
"""
import itertools, json, pathlib, sys
import numpy as np

d = np.load(sys.argv[2] if len(sys.argv) > 2 else 'logits.npz')
ROOT = pathlib.Path(__file__).resolve().parents[3]
prof = {dev: json.load(open(ROOT / f'models/profiles/cifar10_lite0__{dev}.json'))
        for dev in ('cpu-amd-epyc', 'cuda-nvidia-h200')}


def softmax(z, t=1.0):
    z = z / t
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def fit_t(z, y):
    best = None
    for t in np.linspace(0.5, 3.0, 51):
        p = softmax(z, t)
        nll = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
        if best is None or nll < best[0]:
            best = (nll, t)
    return best[1]


def scores(split, kind, temps=None):
    z = d[f'{split}_logits'].astype(np.float64)
    y = d[f'{split}_labels']
    K = z.shape[0]
    preds, confs = [], []
    for k in range(K):
        if kind == 'ensemble':   # mean of the softmaxes of exits <= k (prediction changes too)
            p = np.mean([softmax(z[j], temps[j] if temps else 1.0) for j in range(k + 1)], axis=0)
        else:
            p = softmax(z[k], temps[k] if temps else 1.0)
        s = np.sort(p, -1)
        pred = p.argmax(-1)
        if kind in ('maxprob', 'temp', 'ensemble'):
            c = s[:, -1]
        elif kind == 'margin':
            c = s[:, -1] - s[:, -2]
        elif kind == 'entropy':
            c = 1 + (p * np.log(p + 1e-12)).sum(-1) / np.log(p.shape[-1])
        elif kind == 'agree':   # max prob, halved when the previous exit disagrees
            c = s[:, -1] * (1.0 if k == 0 else np.where(pred == preds[-1], 1.0, 0.5))
        preds.append(pred)
        confs.append(c)
    return np.array(confs), np.array(preds) == y[None, :]


def cum_cost(dev):
    e = prof[dev]['exits']
    st = np.array([x['stage_ms']['1'] for x in e]); hd = np.array([x['head_ms']['1'] for x in e])
    en = np.array([x['stage_energy_mj']['1'] for x in e])
    lat = np.cumsum(st) + np.cumsum(hd)
    return lat / lat[-1], np.cumsum(en) / en.sum()


def cascade(conf, right, th):
    K, n = conf.shape
    exit_at = np.full(n, K - 1)
    undecided = np.ones(n, bool)
    for k in range(K - 1):
        stop = undecided & (conf[k] >= th[k])
        exit_at[stop] = k
        undecided &= ~stop
    acc = right[exit_at, np.arange(n)].mean()
    return exit_at, acc


def fit(conf, right, bound, z=1.645, levels=24):
    K, n = conf.shape
    grids = [np.unique(np.quantile(conf[k], np.linspace(0.0, 1.0, levels))) for k in range(K - 1)]
    grids = [np.append(g, np.inf) for g in grids]
    lat, _ = cum_cost('cuda-nvidia-h200')
    best = None
    for th in itertools.product(*grids):
        exit_at, acc = cascade(conf, right, th)
        se = np.sqrt(max(acc * (1 - acc), 1e-9) / n)
        if acc - z * se < bound:
            continue
        cost = lat[exit_at].mean()
        if best is None or cost < best[0]:
            best = (cost, th)
    return None if best is None else best[1]


final_test = d['test_logits'][-1].argmax(-1) == d['test_labels']
bound = float(sys.argv[1]) if len(sys.argv) > 1 else 0.9306
temps = [fit_t(d['val_logits'][k].astype(np.float64), d['val_labels']) for k in range(d['val_logits'].shape[0])]
print('final exit test accuracy', final_test.mean(), 'bound', bound, 'temperatures', [round(t, 2) for t in temps])
rows = []
for kind in ('maxprob', 'temp', 'margin', 'entropy', 'agree', 'ensemble'):
    t = temps if kind in ('temp', 'ensemble') else None
    cv, rv = scores('val', 'maxprob' if kind == 'temp' else kind, t)
    ct, rt = scores('test', 'maxprob' if kind == 'temp' else kind, t)
    th = fit(cv, rv, bound)
    if th is None:
        print(kind, 'infeasible'); continue
    exit_at, acc = cascade(ct, rt, th)
    fr = np.bincount(exit_at, minlength=ct.shape[0]) / len(exit_at)
    out = {'score': kind, 'test_accuracy': round(float(acc), 4), 'fractions': [round(float(f), 3) for f in fr]}
    for dev in prof:
        lat, en = cum_cost(dev)
        out[f'{dev}_latency_ratio'] = round(float(lat[exit_at].mean()), 3)
        out[f'{dev}_energy_ratio'] = round(float(en[exit_at].mean()), 3)
        out[f'{dev}_median_latency_ratio'] = round(float(np.median(lat[exit_at])), 3)
    rows.append(out)
    print(json.dumps(out))
json.dump({'bound': bound, 'rows': rows}, open(pathlib.Path(__file__).with_name(f'scores_{bound}.json'), 'w'), indent=1)
