"""Registry of multi-exit architectures: name -> builder returning an untrained/backbone-only model.

A builder takes keyword-only architecture options plus ``info`` (the :class:`ModelInfo` to attach,
``None`` for defaults) and returns a :class:`~delen_ros.core.multi_exit.MultiExitModel`. The zoo
builds a saved model from its architecture name and options, then loads the saved weights.
"""
from __future__ import annotations

import importlib
from typing import Callable, TypeVar

from ..multi_exit import MultiExitModel
from ..registry import Registry

__all__ = ['register_architecture', 'get_architecture', 'available_architectures']

Builder = Callable[..., MultiExitModel]
_B = TypeVar('_B', bound=Builder)
_REGISTRY: Registry[Builder] = Registry('architecture')
# Modules that register the shipped architectures; imported lazily so that importing the registry
# does not pull in optional dependencies (the EfficientNet wheel) until one is asked for.
_BUILTIN_MODULES = ('fashion_mnist', 'efficientnet_lite0', 'cifar10_lite0', 'cifar10_lite2', 'cifar10_resnet9',
                   'cifar10_committee')


def register_architecture(name: str) -> Callable[[_B], _B]:
    """Decorator registering a builder under ``name``; a duplicate name raises ``ValueError``."""
    return _REGISTRY.decorator(name)


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(f'{__name__}.{module}')


def get_architecture(name: str) -> Builder:
    """The builder registered as ``name``; unknown names raise ``KeyError`` listing the known ones."""
    _load_builtins()
    return _REGISTRY.get(name)


def available_architectures() -> list[str]:
    _load_builtins()
    return _REGISTRY.names()
