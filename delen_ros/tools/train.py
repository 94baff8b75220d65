"""``delen_train``: train a shipped multi-exit model and write it into the model zoo.

* ``fashion_mnist`` — the 4-exit CNN, from scratch on the 60 000 Fashion-MNIST training images,
  with a weighted sum of every exit's cross-entropy; per-exit accuracy measured on the 10 000 test
  images.
* ``efficientnet_lite0`` — the ImageNet-pretrained EfficientNet-Lite0 (from its wheel, frozen) with
  three early-exit heads trained by distillation: KL divergence to the final classifier's softened
  outputs on augmented views of unlabelled real images. The frozen backbone's features at the exit
  points are computed once for all views and cached, so training the heads is cheap. "Accuracy" is
  top-1 agreement with the final exit on held-out sequences and photos (none seen in training).

Examples::

    delen_train fashion_mnist --epochs 15
    delen_train efficientnet_lite0 --views 3
    delen_train fashion_mnist --short --out /tmp/models     # seconds; for tests
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import pathlib
import platform
import sys
import time
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..core import datasets
from ..core.multi_exit import MultiExitModel
from ..core.preprocess import preprocess
from ..core.zoo import models_dir, save_model, with_info

__all__ = ['main', 'train_fashion_mnist', 'train_efficientnet_lite0', 'evaluate_exits', 'random_view',
           'cutmix', 'cache_exit_features', 'distill_heads']


def _arch_defaults(builder) -> dict:
    """The builder's keyword options and defaults (JSON-able), recorded so that later changes to the
    defaults cannot silently change how a saved model is rebuilt."""
    return {name: list(p.default) if isinstance(p.default, tuple) else p.default
            for name, p in inspect.signature(builder).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name != 'info'}


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _record(args: argparse.Namespace, argv: Sequence[str], **extra) -> dict:
    return {
        'command': 'delen_train ' + ' '.join(argv),
        'seed': args.seed,
        'short': args.short,
        'device': args.device,
        'threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'python': platform.python_version(),
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        **extra,
    }


@torch.no_grad()
def evaluate_exits(model: MultiExitModel, x: torch.Tensor, *, labels: torch.Tensor | None = None,
                   batch_size: int = 500, desc: str = 'eval') -> tuple[list[float], torch.Tensor]:
    """Per-exit top-1 accuracy on a normalised batch ``x``, and the predictions (exits x N).

    :param labels: true classes; ``None``: accuracy = agreement with the final exit.
    """
    model.eval()
    preds = []
    for start in tqdm(range(0, len(x), batch_size), desc=desc, leave=False, unit='batch'):
        logits = model(x[start:start + batch_size])
        preds.append(torch.stack([lg.argmax(1).cpu() for lg in logits]))
    pred = torch.cat(preds, dim=1)
    reference = labels if labels is not None else pred[-1]
    return [float((p == reference).float().mean()) for p in pred], pred


# --- Fashion-MNIST -----------------------------------------------------------------------------------
def _augment_fashion(x: torch.Tensor, generator: torch.Generator, *, shift: int = 2) -> torch.Tensor:
    """Random horizontal flips and translations of up to ``shift`` px per image (padding = background)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (shift, shift, shift, shift), value=float(x.min()))
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


def train_fashion_mnist(args: argparse.Namespace, argv: Sequence[str]) -> pathlib.Path:
    from ..core.architectures import get_architecture

    device = torch.device(args.device)
    images, labels = datasets.load_fashion_mnist('train')
    test_images, test_labels = datasets.load_fashion_mnist('test')
    if args.short:  # a few seconds: enough to exercise every code path
        images, labels = images[:2000], labels[:2000]
        test_images, test_labels = test_images[:1000], test_labels[:1000]
    epochs = 1 if args.short and args.epochs is None else (args.epochs or 15)
    args.lr = args.lr or 3e-3
    args.weight_decay = 5e-4 if args.weight_decay is None else args.weight_decay

    builder = get_architecture('fashion_mnist')
    arch_kwargs = _arch_defaults(builder)
    model = builder(**arch_kwargs).to(device)
    info = model.info
    x_train = preprocess(list(images), info)
    y_train = torch.from_numpy(labels.copy())  # the cached arrays are read-only
    x_test = preprocess(list(test_images), info)
    y_test = torch.from_numpy(test_labels.copy())
    weights = torch.tensor(args.exit_weights or (0.5, 0.6, 0.8, 1.0), dtype=torch.float32)
    if len(weights) != model.num_exits:
        raise ValueError(f'--exit-weights needs {model.num_exits} values, got {weights.tolist()}')

    generator = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=epochs,
                                                    steps_per_epoch=steps_per_epoch, pct_start=0.2)
    t0 = time.perf_counter()
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total, seen = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f'epoch {epoch + 1}/{epochs}', unit='batch')
        for step in bar:
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            xb = _augment_fashion(x_train[idx], generator).to(device)
            yb = y_train[idx].to(device)
            losses = torch.stack([F.cross_entropy(lg, yb) for lg in model(xb)])
            loss = (weights.to(device) * losses).sum() / weights.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            if step % 20 == 0:
                bar.set_postfix(loss=f'{total / seen:.3f}')
        acc, _ = evaluate_exits(model, x_test, labels=y_test, desc='test')
        history.append({'epoch': epoch + 1, 'loss': round(total / seen, 4),
                        'test_accuracy': [round(a, 4) for a in acc]})
        tqdm.write(f'epoch {epoch + 1}: loss {total / seen:.4f}, test accuracy per exit '
                   + ' '.join(f'{a:.4f}' for a in acc))
    train_s = time.perf_counter() - t0

    acc, _ = evaluate_exits(model.cpu(), x_test, labels=y_test, desc='final test')
    with_info(model, exit_accuracy=tuple(round(a, 4) for a in acc),
              accuracy_note=f'top-1 accuracy on the Fashion-MNIST test set ({len(x_test)} labelled images)')
    record = _record(args, argv, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                     weight_decay=args.weight_decay, optimizer='AdamW + OneCycleLR',
                     exit_loss_weights=[round(w, 4) for w in weights.tolist()],
                     augmentation='random horizontal flip, translation up to 2 px',
                     train_images=len(x_train), test_images=len(x_test), train_time_s=round(train_s, 1),
                     history=history)
    pt, _ = save_model(model, pathlib.Path(args.out) / 'fashion_mnist', architecture='fashion_mnist',
                       arch_kwargs=arch_kwargs, training=record)
    print(f'fashion_mnist: per-exit test accuracy {list(model.info.exit_accuracy)}, '
          f'trained in {train_s:.0f} s -> {pt}')
    return pt


# --- EfficientNet-Lite0 distillation ----------------------------------------------------------------
def random_view(image: np.ndarray, rng: np.random.Generator, *, size: int = 224,
                scale: tuple[float, float] = (0.25, 1.0), jitter: float = 0.3) -> np.ndarray:
    """An augmented ``size x size`` view of a uint8 image (RGB or grey).

    Random resized crop (area fraction in ``scale``, aspect 3/4..4/3), horizontal flip, and colour
    jitter (brightness, contrast and, for RGB, saturation each scaled by 1 +- ``jitter``).
    """
    h, w = image.shape[:2]
    crop = image
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = image[y0:y0 + ch, x0:x0 + cw]
            break
    shrink = crop.shape[0] >= size and crop.shape[1] >= size
    view = cv2.resize(np.ascontiguousarray(crop), (size, size),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    x = view.astype(np.float32)
    x *= rng.uniform(1 - jitter, 1 + jitter)                                   # brightness
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - jitter, 1 + jitter) + mean                # contrast
    if x.ndim == 3:                                                            # saturation
        grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = grey[..., None] + (x - grey[..., None]) * rng.uniform(1 - jitter, 1 + jitter)
    return np.ascontiguousarray(np.clip(x, 0, 255).astype(np.uint8))


def cutmix(base: np.ndarray, other: np.ndarray, rng: np.random.Generator, *,
           area: tuple[float, float] = (0.15, 0.5)) -> np.ndarray:
    """``base`` with a random rectangle (``area`` fraction) replaced by the same region of ``other``.

    Both are views of one size; ``other`` is converted to ``base``'s channels. The teacher's answer
    on such a collage is a new target: more variety than the few source scenes give on their own.
    """
    if other.ndim != base.ndim:
        other = cv2.cvtColor(other, cv2.COLOR_RGB2GRAY) if base.ndim == 2 else np.repeat(other[..., None], 3, axis=2)
    h, w = base.shape[:2]
    frac = rng.uniform(*area)
    ch, cw = max(1, round(h * math.sqrt(frac))), max(1, round(w * math.sqrt(frac)))
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    out = base.copy()
    out[y0:y0 + ch, x0:x0 + cw] = other[y0:y0 + ch, x0:x0 + cw]
    return out


@torch.no_grad()
def cache_exit_features(model: MultiExitModel, images: Sequence[np.ndarray], *, views: int, seed: int,
                        mix_pool: Sequence[np.ndarray] = (), mix_prob: float = 0.3, batch_size: int = 32,
                        desc: str = 'cache') -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the frozen backbone once over ``views`` views of each image and keep what the early heads
    need. View 0 is the plain frame (as at inference); the others are :func:`random_view`, a
    fraction ``mix_prob`` of them collaged with a view of a random image of ``mix_pool``.

    Returns the pooled features entering each early head's trainable part (``head[0]`` applied;
    float16 to halve the memory) and the final exit's logits (float32, the distillation targets).
    """
    rng = np.random.default_rng(seed)
    size = model.info.input_size[0]
    jobs = [(i, v) for i in range(len(images)) for v in range(views)]
    feats: list[list[torch.Tensor]] = [[] for _ in range(model.num_exits - 1)]
    finals = []
    model.eval()

    def view(i: int, v: int) -> np.ndarray:
        if v == 0:
            return images[i]
        out = random_view(images[i], rng, size=size)
        if len(mix_pool) and rng.random() < mix_prob:
            out = cutmix(out, random_view(mix_pool[rng.integers(len(mix_pool))], rng, size=size), rng)
        return out

    for start in tqdm(range(0, len(jobs), batch_size), desc=desc, unit='batch'):
        x = preprocess([view(i, v) for i, v in jobs[start:start + batch_size]], model.info)
        for k in range(model.num_exits):
            x = model.run_stage(k, x)
            if k < model.num_exits - 1:
                feats[k].append(model.heads[k][0](x).half())
            else:
                finals.append(model.run_head(k, x))
    return [torch.cat(f) for f in feats], torch.cat(finals)


def distill_heads(model: MultiExitModel, feats: Sequence[torch.Tensor], teacher_logits: torch.Tensor, *,
                  epochs: int, seed: int, batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 1e-4,
                  temperature: float = 2.0) -> list[dict]:
    """Train the early heads' trainable parts on cached features against the final exit's logits.

    Loss per head: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al.).
    Returns the per-epoch history.
    """
    # The trainable part of each early head: everything after its (parameter-free) pooling.
    heads = [nn.Sequential(*list(model.heads[k])[1:]) for k in range(len(feats))]
    params = [p for head in heads for p in head.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = math.ceil(len(teacher_logits) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps,
                                                    pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    soft_targets = F.log_softmax(teacher_logits / temperature, dim=1)
    history = []
    for epoch in range(epochs):
        for head in heads:
            head.train()
        order = torch.randperm(len(teacher_logits), generator=generator)
        totals = torch.zeros(len(heads))
        bar = tqdm(range(steps), desc=f'heads epoch {epoch + 1}/{epochs}', unit='batch', leave=False)
        for step in bar:
            idx = order[step * batch_size:(step + 1) * batch_size]
            target = soft_targets[idx]
            losses = torch.stack([
                F.kl_div(F.log_softmax(head(f[idx].float()) / temperature, dim=1), target,
                         reduction='batchmean', log_target=True) * temperature ** 2
                for head, f in zip(heads, feats)])
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            scheduler.step()
            totals += losses.detach() * len(idx)
        history.append({'epoch': epoch + 1, 'kl_loss': [round(float(t) / len(order), 4) for t in totals]})
        tqdm.write(f'heads epoch {epoch + 1}: KL per head ' + ' '.join(f'{float(t) / len(order):.3f}' for t in totals))
    for head in heads:
        head.eval()
    for p in params:
        p.requires_grad_(False)
    return history


def _source_frames(source: datasets.ImageSource, *, short: bool) -> list[np.ndarray]:
    # Consecutive frames of a sequence are near-duplicates: every 4th is plenty next to augmentation.
    step = 1 if source.kind == 'stills' else 4
    return source.frames(step=step, limit=4 if short else None)


def train_efficientnet_lite0(args: argparse.Namespace, argv: Sequence[str]) -> pathlib.Path:
    from ..core.architectures import get_architecture

    builder = get_architecture('efficientnet_lite0')
    arch_kwargs = _arch_defaults(builder)
    model = builder(**arch_kwargs).to(args.device).eval()
    model.requires_grad_(False)
    epochs = 1 if args.short and args.epochs is None else (args.epochs or 30)

    train_sources = datasets.distillation_sources('train')
    images, used = [], {}
    extra = []  # stills are few and varied: give them more views
    for source in train_sources:
        frames = _source_frames(source, short=args.short)
        used[source.name] = len(frames)
        (extra if source.kind == 'stills' else images).extend(frames)
    views = 1 if args.short else args.views + 1
    # What the cached features depend on (not the heads' widths: the cache is taken before them).
    key = {'sources': used, 'views': views, 'seed': args.seed, 'version': 2}
    t0 = time.perf_counter()
    cached = torch.load(args.feature_cache, weights_only=True) if args.feature_cache and \
        pathlib.Path(args.feature_cache).is_file() else None
    if cached is not None and cached['key'] == json.dumps(key, sort_keys=True):
        feats, teacher = cached['feats'], cached['teacher']
        print(f'reusing {len(teacher)} cached views from {args.feature_cache}')
    else:
        pool = images + extra
        feats, teacher = cache_exit_features(model, images, views=views, seed=args.seed, mix_pool=pool,
                                             desc='cache frames')
        if extra:
            f2, t2 = cache_exit_features(model, extra, views=1 if args.short else 4 * args.views + 1,
                                         seed=args.seed + 1, mix_pool=pool, desc='cache stills')
            feats, teacher = [torch.cat([a, b]) for a, b in zip(feats, f2)], torch.cat([teacher, t2])
        if args.feature_cache:
            torch.save({'key': json.dumps(key, sort_keys=True), 'feats': feats, 'teacher': teacher},
                       args.feature_cache)
    cache_s = time.perf_counter() - t0
    print(f'{len(teacher)} views of {len(images) + len(extra)} images ready in {cache_s:.0f} s')

    t0 = time.perf_counter()
    args.lr = args.lr or 2e-3
    args.weight_decay = 1e-4 if args.weight_decay is None else args.weight_decay
    history = distill_heads(model.cpu(), [f.cpu() for f in feats], teacher.cpu(), epochs=epochs, seed=args.seed,
                            batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                            temperature=args.temperature)
    train_s = time.perf_counter() - t0

    # Held-out data exactly as eval_set() serves it to the profiler, scored per source too.
    per_source, preds = {}, []
    for source in datasets.distillation_sources('test'):
        frames = source.frames(step=datasets.HELD_OUT_VIDEO_STEP if source.kind == 'video' else 1,
                               limit=2 if args.short else None)
        source_acc, pred = evaluate_exits(model, preprocess(frames, model.info), batch_size=32, desc=source.name)
        per_source[source.name] = {'images': len(frames), 'agreement': [round(a, 4) for a in source_acc]}
        preds.append(pred)
    pred = torch.cat(preds, dim=1)
    acc = [float((p == pred[-1]).float().mean()) for p in pred]
    note = ('top-1 agreement with the final exit (the pretrained ImageNet classifier) on held-out real images, '
            f'not ImageNet accuracy: {pred.shape[1]} frames/photos of sequences and stills never seen in training')
    with_info(model, exit_accuracy=tuple(round(a, 4) for a in acc), accuracy_note=note)
    record = _record(args, argv, epochs=epochs, method='distillation of early heads from the final exit '
                     f'(KL, temperature {args.temperature}) on cached frozen-backbone features',
                     augmentation='random resized crop (area 0.25-1, aspect 3/4-4/3), horizontal flip, '
                                  'brightness/contrast/saturation jitter 0.3, 30 % cutmix with another training '
                                  'image; view 0 of every image un-augmented; every 4th frame of sequences',
                     train_sources=used, train_views=len(teacher), views_per_frame=views,
                     held_out_sources=[s.name for s in datasets.distillation_sources('test')],
                     held_out_images=pred.shape[1], held_out_agreement=per_source, batch_size=args.batch_size,
                     lr=args.lr, weight_decay=args.weight_decay, cache_time_s=round(cache_s, 1),
                     train_time_s=round(train_s, 1), history=history)
    pt, _ = save_model(model, pathlib.Path(args.out) / 'efficientnet_lite0', architecture='efficientnet_lite0',
                       arch_kwargs=arch_kwargs, training=record, weights_dtype=torch.float16)
    print(f'efficientnet_lite0: per-exit agreement with the final exit {list(model.info.exit_accuracy)} -> {pt}')
    return pt


TRAINERS = {'fashion_mnist': train_fashion_mnist, 'efficientnet_lite0': train_efficientnet_lite0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='delen_train', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', choices=sorted(TRAINERS), help='which shipped model to train')
    parser.add_argument('--epochs', type=int, default=None,
                        help='training epochs (default: 15 for fashion_mnist, 30 for the heads; 1 with --short)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (data order, augmentation, init)')
    parser.add_argument('--out', default=None, help='output folder (default: the zoo folder, models_dir())')
    parser.add_argument('--short', action='store_true', help='tiny subset, seconds: a smoke test, not a model')
    parser.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads for torch (default: %(default)s)')
    parser.add_argument('--batch-size', type=int, default=128, help='training batch (default: %(default)s)')
    parser.add_argument('--lr', type=float, default=None,
                        help='peak learning rate (default: 3e-3 for fashion_mnist, 2e-3 for the heads)')
    parser.add_argument('--weight-decay', type=float, default=None,
                        help='AdamW weight decay (default: 5e-4 for fashion_mnist, 1e-4 for the heads)')
    parser.add_argument('--exit-weights', type=float, nargs='+', default=None,
                        help='fashion_mnist: loss weight of each exit (default: 0.5 0.6 0.8 1.0)')
    parser.add_argument('--views', type=int, default=3,
                        help='efficientnet_lite0: augmented views per sequence frame, besides the plain one; '
                             'stills get 4x as many (default: %(default)s)')
    parser.add_argument('--feature-cache', default=None, metavar='FILE',
                        help='efficientnet_lite0: keep the cached backbone features in FILE and reuse them '
                             'when sources, views and seed match (retrain heads without re-running the backbone)')
    parser.add_argument('--temperature', type=float, default=2.0,
                        help='efficientnet_lite0: distillation temperature (default: %(default)s)')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit(f'delen_train: --epochs must be >= 1, got {args.epochs}')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit(f'delen_train: --device {args.device} but CUDA is not available')
    torch.set_num_threads(args.threads)
    _seed_everything(args.seed)
    args.out = args.out or str(models_dir())
    TRAINERS[args.model](args, argv)
    return 0


if __name__ == '__main__':
    sys.exit(main())
