"""convae: hierarchical image features without labels.

Train convolutional autoencoders (and the fully connected baseline), cut the encoder at any
depth, and hand the features to classical models.

The names below are loaded on first use, so ``import convae`` (and ``convae --help``) stays fast:
torch, scikit-learn and matplotlib load only when something needs them.
"""

from __future__ import annotations

import importlib

from ._version import __version__

# public name -> the module that defines it
_PUBLIC = {
    **dict.fromkeys(["DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "load_config"], "config"),
    **dict.fromkeys(["ArchitectureError", "BadImageError", "ConfigError", "ConvaeError", "DataError", "DatasetNotFoundError",
                     "ExportError", "LayerError", "NonFiniteLossError", "RunError", "RunFormatError", "TrainingInterrupted",
                     "WriteError"], "errors"),
    **dict.fromkeys(["ConvAutoencoder", "DenseAutoencoder"], "models"),
    **dict.fromkeys(["Run", "load_run", "as_run"], "runs"),
    **dict.fromkeys(["extract_features", "extract_to_npy", "parse_pool", "parse_layer_spec"], "features"),
    "probe": "analysis.probe",
    "format_table": "analysis.tables",
    "train": "training",
    **dict.fromkeys(["ConvAEFeatures", "DenseAEFeatures", "EncoderFeatures"], "sklearn"),
}
_SUBMODULES = {"analysis", "atomic", "cli", "config", "data", "demo", "distributed", "errors", "export", "features", "inspect",
               "metrics", "models", "report", "runs", "runtime", "sklearn", "training", "viz"}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'convae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC) | _SUBMODULES)
