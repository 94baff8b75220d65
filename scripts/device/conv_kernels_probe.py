"""Can the batch-32 graphs skip cuDNN's set-up? (issue 8: configure <= 5 s; sessions 18-19: the set-up of
the batch-32 cuDNN graphs is 2.5-4.5 s of configure, about 35 ms per convolution, and PyTorch's own
kernels, which need none, run full depth at batch 32 in 6 ms against cuDNN's 1.3 ms.)

Run THERE from the repository root, with the network code wheel importable:
    pip install --no-index --no-deps --target /tmp/site .devdata/efficientnet_lite_pytorch-0.1.0-py3-none-any.whl
    PYTHONPATH=/tmp/site:$PWD python3 scripts/device/conv_kernels_probe.py OUT_JSON

``cifar10_lite0`` in fp16 on cuda:0, every stage and the final head captured as a CUDA graph per batch size
(1, 8, 32), in these variants, each timed for its capture (set-up included) and its full-depth replay:
  native_cl    PyTorch's own convolutions, channels-last (the runner's native graphs)
  native_nchw  the same, contiguous NCHW
  mm_nchw      1x1 convolutions as cuBLAS batched matmuls, the rest native, NCHW
  mm_cl        1x1 convolutions as a linear layer over the channels-last (NHWC) view, the rest native
  mm_dw_cudnn  1x1 convolutions as matmuls, the rest (depthwise, stem, heads) on cuDNN, NCHW
  mm_gN        mm_nchw, with maps of at most N pixels through one GEMM over the batch (NHWC view)
  mm_gN_hiM    mm_gN, with the other convolutions on cuDNN where their maps have at least M pixels
  cudnn_cl     cuDNN, channels-last (the runner's cuDNN graphs; set-up paid here, last)
  nlin_cl      channels-last, cuDNN off, 1x1 convolutions of batches >= 4 through core.pointwise.PointwiseNative
               (one matrix product over the NHWC view): the runner's native graphs since session 21
  fold_<v>     variant <v> on the network folded for inference (core/fold.py: batch norms into the
               convolutions, symmetric "same" padding into them), as the runner serves it since session 21
Each variant's final logits are compared with cudnn_cl's on the same inputs (largest difference, argmax
agreement); each graph is also timed on its own (``module_ms``: stages 0-3, then the final head). One JSON
object. ``VARIANTS``: a comma-separated subset, in that order (default: all).
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from delen_ros.core.fold import fold_for_inference
from delen_ros.core.pointwise import PointwiseMatmul, is_pointwise, pointwise_native_linear
from delen_ros.core.zoo import load_model

BATCHES = (1, 8, 32)
REPLAYS = 200


def capture(model, batch: int, channels_last: bool):
    """Graphs of every stage and the final head at ``batch``; (graphs, static input, final output, s)."""
    t0 = time.perf_counter()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    h, w = model.info.input_size
    x = torch.randn(batch, 3, h, w, device='cuda', dtype=torch.half).contiguous(memory_format=fmt)
    static_in = x.clone()
    graphs, cur = [], static_in
    modules = list(model.stages) + [model.heads[-1]]
    for mod in modules:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):
                mod(cur)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(g, stream=torch.cuda.Stream(), capture_error_mode='thread_local'):
            out = mod(cur)
        graphs.append(g)
        cur = out
    torch.cuda.synchronize()
    return graphs, static_in, cur, time.perf_counter() - t0


class SingleGemmPointwise(PointwiseMatmul):
    """The node's PointwiseMatmul, but maps of at most ``max_hw`` pixels go through one GEMM over every
    pixel of the batch (the NHWC view) instead of one product per image (variants mm_gN, mm_cl)."""

    def __init__(self, conv: nn.Conv2d, max_hw: int):
        super().__init__(conv)
        self.max_hw = max_hw

    def forward(self, x):
        if x.shape[-2] * x.shape[-1] <= self.max_hw:
            return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)
        return super().forward(x)


class LargeMapsOnCudnn(nn.Module):
    """A convolution switched onto cuDNN (a process-wide flag, restored after) for maps of at least
    ``min_hw`` pixels (variants mm_gN_hiM)."""

    def __init__(self, conv: nn.Conv2d, min_hw: int):
        super().__init__()
        self.conv, self.min_hw = conv, min_hw

    def forward(self, x):
        if x.shape[-2] * x.shape[-1] < self.min_hw or torch.backends.cudnn.enabled:
            return self.conv(x)
        torch.backends.cudnn.enabled = True
        try:
            return self.conv(x)
        finally:
            torch.backends.cudnn.enabled = False


def mm_options(variant: str) -> dict:
    """The options of a variant name: mm_cl, mm_nchw, mm_dw_cudnn, mm_g100, mm_g100_hi1600."""
    if variant == 'mm_cl':
        return {'single_gemm_max_hw': 1 << 30}   # every map through one GEMM over the NHWC view
    opts = {}
    for part in variant.split('_')[1:]:
        if part[:1] == 'g' and part[1:].isdigit():
            opts['single_gemm_max_hw'] = int(part[1:])
        elif part.startswith('hi'):
            opts['cudnn_min_hw'] = int(part[2:])
    return opts


def pointwise_as_matmul(module: nn.Module, *, single_gemm_max_hw: int = 0, cudnn_min_hw: int | None = None) -> int:
    """core.pointwise.pointwise_as_matmul with the variants' options; how many 1x1 convolutions replaced."""
    count = 0
    for name, child in module.named_children():
        if is_pointwise(child):
            setattr(module, name, SingleGemmPointwise(child, single_gemm_max_hw) if single_gemm_max_hw
                    else PointwiseMatmul(child))
            count += 1
        elif isinstance(child, nn.Conv2d):
            if cudnn_min_hw is not None:
                setattr(module, name, LargeMapsOnCudnn(child, cudnn_min_hw))
        else:
            count += pointwise_as_matmul(child, single_gemm_max_hw=single_gemm_max_hw, cudnn_min_hw=cudnn_min_hw)
    return count


def module_ms(graphs, reps: int = 100) -> list[float]:
    out = []
    for g in graphs:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        g.replay()
        start.record()
        for _ in range(reps):
            g.replay()
        end.record()
        end.synchronize()
        out.append(round(start.elapsed_time(end) / reps, 4))
    return out


def replay_ms(graphs) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for g in graphs:
        g.replay()
    start.record()
    for _ in range(REPLAYS):
        for g in graphs:
            g.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / REPLAYS


def main() -> None:
    out_path = sys.argv[1] if len(sys.argv) > 1 else 'conv_kernels_probe.json'
    torch.manual_seed(0)
    base = load_model('cifar10_lite0')
    inputs = {b: torch.randn(b, 3, *base.info.input_size, device='cuda', dtype=torch.half) for b in BATCHES}
    report = {'torch': torch.__version__, 'cudnn': torch.backends.cudnn.version(),
              'gpu': torch.cuda.get_device_name(0), 'replays': REPLAYS, 'variants': {}}
    logits = {}
    variants = os.environ.get('VARIANTS', 'native_cl,native_nchw,mm_nchw,mm_cl,mm_dw_cudnn,cudnn_cl').split(',')
    for variant in variants + ([] if 'cudnn_cl' in variants else ['cudnn_cl']):
        channels_last = variant.endswith('_cl')
        model = copy.deepcopy(base)
        kernels = variant.removeprefix('fold_')
        folded = fold_for_inference(model) if kernels != variant else None
        replaced = pointwise_as_matmul(model, **mm_options(kernels)) if kernels.startswith('mm') else 0
        if kernels == 'nlin_cl':
            replaced = pointwise_native_linear(model)
        model.prepare('cuda', dtype=torch.half, channels_last=channels_last)
        torch.backends.cudnn.enabled = 'cudnn' in variant   # mm_gN_hiM: switched on per call, large maps only
        entry = {'pointwise_replaced': replaced, 'batches': {},
                 'folded': None if folded is None else {'batch_norms': folded.batch_norms, 'paddings': folded.paddings}}
        for b in BATCHES:
            graphs, static_in, static_out, setup_s = capture(model, b, channels_last)
            static_in.copy_(inputs[b])
            ms = replay_ms(graphs)
            logits[(variant, b)] = static_out.float().clone()
            entry['batches'][b] = {'capture_s': round(setup_s, 3), 'full_depth_ms': round(ms, 4),
                                   'module_ms': module_ms(graphs)}
            print(variant, b, entry['batches'][b], flush=True)
            del graphs
        report['variants'][variant] = entry
        torch.backends.cudnn.enabled = True
    for variant, entry in report['variants'].items():
        for b in BATCHES:
            ref, got = logits[('cudnn_cl', b)], logits[(variant, b)]
            entry['batches'][b]['max_abs_logit_diff'] = round(float((ref - got).abs().max()), 4)
            entry['batches'][b]['argmax_agreement'] = float((ref.argmax(1) == got.argmax(1)).float().mean())
    with open(out_path, 'w') as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == '__main__':
    main()
