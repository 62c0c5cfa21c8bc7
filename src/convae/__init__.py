"""convae: hierarchical image features without labels.

Train convolutional autoencoders (and the fully connected baseline), cut the encoder at any
depth, and hand the features to classical models.
"""

__version__ = "0.1.0"

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_config  # noqa: E402
from .errors import (  # noqa: E402
    ArchitectureError,
    BadImageError,
    ConfigError,
    ConvaeError,
    DataError,
    DatasetNotFoundError,
    LayerError,
    NonFiniteLossError,
    RunError,
    RunFormatError,
    TrainingInterrupted,
)
from .models import ConvAutoencoder, DenseAutoencoder  # noqa: E402
from .runs import Run, load_run  # noqa: E402

__all__ = [
    "__version__",
    "ArchitectureError", "BadImageError", "ConfigError", "ConvaeError", "DataError", "DatasetNotFoundError", "LayerError",
    "NonFiniteLossError", "RunError", "RunFormatError", "TrainingInterrupted",
    "ConvAutoencoder", "DenseAutoencoder",
    "DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "load_config",
    "Run", "load_run",
]

from .features import extract_features, extract_to_npy, parse_pool  # noqa: E402
from .probe import format_table, probe  # noqa: E402

_SKLEARN_NAMES = ("ConvAEFeatures", "DenseAEFeatures", "EncoderFeatures")


def __getattr__(name):  # the estimators load scikit-learn, which would double `import convae`'s time
    if name in _SKLEARN_NAMES:
        from . import sklearn

        return getattr(sklearn, name)
    raise AttributeError(f"module 'convae' has no attribute {name!r}")


__all__ += ["extract_features", "extract_to_npy", "parse_pool", "probe", "format_table",
            "ConvAEFeatures", "DenseAEFeatures", "EncoderFeatures"]
