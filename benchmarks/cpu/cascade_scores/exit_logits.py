"""Per-exit logits of the shipped cifar10_lite0 on the validation split and the test set (CPU).

    PYTHONPATH=$PWD python benchmarks/cpu/cascade_scores/exit_logits.py THREADS OUT_NPZ   (~17 min, 1 thread)
"""
import sys, time, numpy as np, torch
from delen_ros.core import datasets
from delen_ros.core.zoo import load_model
from delen_ros.core.runner import StageRunner
from delen_ros.core.preprocess import preprocess
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
model = load_model('cifar10_lite0', device='cpu')
runner = StageRunner(model, device='cpu')
out = {}
for split in ('val', 'test'):
    x, y = datasets.load_cifar10(split)
    logits = [[] for _ in range(runner.num_exits)]
    t = time.time()
    with torch.no_grad():
        for i in range(0, len(x), 100):
            h = runner.to_input(preprocess(list(x[i:i + 100]), model.info))
            for k in range(runner.num_exits):
                h = runner.stage(k, h)
                logits[k].append(runner.head(k, h).float().numpy())
    out[f'{split}_logits'] = np.stack([np.concatenate(l) for l in logits])
    out[f'{split}_labels'] = np.asarray(y)
    print(split, len(x), 'in', round(time.time() - t), 's', flush=True)
np.savez_compressed(sys.argv[2] if len(sys.argv) > 2 else 'logits.npz', **out)   # derived from the photos: not committed
