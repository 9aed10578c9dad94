"""A small registry of plain-torch backbones (no torchvision, no timm).

    from core.backbones import build_backbone, list_backbones
    net = build_backbone("bagnet77_tnet", num_classes=1000)

Modules in this package register their constructors with `@register_backbone("name")`.
"""

from collections.abc import Callable

import torch.nn as nn

from core.errors import UserError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str):
    """Decorator: make `fn(**kw) -> nn.Module` buildable as `build_backbone(name, **kw)`."""

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")  # a programming error, not user input
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def build_backbone(name: str, **kwargs) -> nn.Module:
    if name not in _REGISTRY:
        raise UserError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones()) or 'none'}")
    return _REGISTRY[name](**kwargs)


# Importing the modules registers their backbones.
from core.backbones import bagnet, densenet, efficientnet, resnet_v2  # noqa: E402,F401
