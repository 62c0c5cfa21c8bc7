"""Both model families behind one interface, and the registry that rebuilds them from config."""

from __future__ import annotations

from torch import nn

from ..errors import ArchitectureError
from ._features import LayerInfo, resolve_layers
from .conv import ConvAutoencoder
from .dense import DenseAutoencoder

MODELS: dict[str, type[nn.Module]] = {"conv": ConvAutoencoder, "dense": DenseAutoencoder}


def build_model(kind: str, in_shape, **kwargs) -> ConvAutoencoder | DenseAutoencoder:
    """Build ``kind`` ("conv" or "dense") for ``in_shape = (C, H, W)`` with constructor kwargs."""
    if kind not in MODELS:
        raise ArchitectureError(f"model kind {kind!r} is not one of: {', '.join(MODELS)}")
    return MODELS[kind](in_shape, **kwargs)


def model_kind(model: nn.Module) -> str:
    for kind, cls in MODELS.items():
        if isinstance(model, cls):
            return kind
    raise ArchitectureError(f"{type(model).__name__} is not a convae model")


__all__ = ["ConvAutoencoder", "DenseAutoencoder", "LayerInfo", "MODELS", "build_model", "model_kind", "resolve_layers"]
