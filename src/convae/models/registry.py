"""The one way to build a model: by kind and input shape, or from a run's config."""

from __future__ import annotations

from torch import nn

from ..config import RunConfig
from ..errors import ArchitectureError
from .conv import ConvAutoencoder
from .dense import DenseAutoencoder

MODELS: dict[str, type[nn.Module]] = {"conv": ConvAutoencoder, "dense": DenseAutoencoder}


def build_model(kind: str, in_shape, **kwargs) -> ConvAutoencoder | DenseAutoencoder:
    """Build ``kind`` ("conv" or "dense") for ``in_shape = (C, H, W)`` with constructor kwargs."""
    if kind not in MODELS:
        raise ArchitectureError(f"model kind {kind!r} is not one of: {', '.join(MODELS)}")
    return MODELS[kind](in_shape, **kwargs)


def build_from_config(config: RunConfig, in_shape) -> ConvAutoencoder | DenseAutoencoder:
    """The model that ``config.model`` describes, for images of ``in_shape`` (weights from the global RNG)."""
    return build_model(config.model.kind, in_shape, **config.model.model_kwargs(in_shape))


def model_kind(model: nn.Module) -> str:
    for kind, cls in MODELS.items():
        if isinstance(model, cls):
            return kind
    raise ArchitectureError(f"{type(model).__name__} is not a convae model")
