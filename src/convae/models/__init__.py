"""Both model families behind one interface (``base``), their blocks, and the registry that builds them from a config."""

from .base import LayerInfo, resolve_layers
from .conv import ConvAutoencoder
from .dense import DenseAutoencoder
from .fold import count_foldable_batchnorm, fold_batchnorm
from .registry import MODELS, build_from_config, build_model, model_kind

__all__ = ["ConvAutoencoder", "DenseAutoencoder", "LayerInfo", "MODELS", "build_from_config", "build_model", "count_foldable_batchnorm",
           "fold_batchnorm", "model_kind", "resolve_layers"]
