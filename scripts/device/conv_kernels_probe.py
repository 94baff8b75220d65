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
  mm_dw_cudnn  1x1 convolutions as matmuls, the rest (depthwise, stem, heads) on cuDNN, NCHW (VARIANTS=all)
  cudnn_cl     cuDNN, channels-last (the runner's cuDNN graphs; set-up paid here, last)
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

from delen_ros.core.zoo import load_model

BATCHES = (1, 8, 32)
REPLAYS = 200


class PointwiseMatmul(nn.Module):
    """A 1x1, stride-1, ungrouped convolution as a matrix product (cuBLAS: no per-shape set-up)."""

    def __init__(self, conv: nn.Conv2d, channels_last: bool):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().flatten(1).clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.channels_last = channels_last

    def forward(self, x):
        n, c, h, w = x.shape
        if self.channels_last:
            # the NHWC view of a channels-last tensor is contiguous: one GEMM [N*H*W, C] x [C, C_out]
            return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)
        y = torch.matmul(self.weight, x.reshape(n, c, h * w)).view(n, -1, h, w)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def pointwise_as_matmul(module: nn.Module, channels_last: bool) -> int:
    """Replace every 1x1 / stride-1 / ungrouped / unpadded convolution below ``module``; how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and child.stride == (1, 1) \
                and child.groups == 1 and child.padding in ((0, 0), 0, 'valid') and child.dilation == (1, 1):
            setattr(module, name, PointwiseMatmul(child, channels_last))
            count += 1
        else:
            count += pointwise_as_matmul(child, channels_last)
    return count


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
        replaced = pointwise_as_matmul(model, channels_last) if variant.startswith('mm') else 0
        model.prepare('cuda', dtype=torch.half, channels_last=channels_last)
        torch.backends.cudnn.enabled = 'cudnn' in variant
        entry = {'pointwise_replaced': replaced, 'batches': {}}
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
