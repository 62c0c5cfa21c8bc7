"""Hand-designed features, the probe's yardstick: is learning needed at all?

Two fixed extractors from the field, computed from the pixels with no training:

``hog``
    Histograms of oriented gradients (scikit-image's ``skimage.feature.hog``): ``orientations`` bins
    per cell of ``cell`` x ``cell`` pixels, blocks of ``block`` x ``block`` cells normalised with
    L2-Hys. Colour images use scikit-image's multichannel rule (each pixel's gradient is taken from
    the channel where it is strongest, as Dalal and Triggs did), so the length does not grow with C.
    Default cell size: ``max(2, min(H, W) // 7)`` (4 pixels for 28x28 and 32x32 images, 2 for 8x8
    digits), 2x2 blocks, 9 orientations: 1,296 values for Fashion-MNIST.
``scattering``
    The wavelet scattering transform (Kymatio's ``Scattering2D``) with ``J`` scales and ``L`` angles,
    to order 2: ``1 + J L + L^2 J (J - 1) / 2`` maps of (H / 2^J) x (W / 2^J) per channel; colour
    images are transformed channel by channel and concatenated. Default ``J = 2`` below 64 pixels
    (3 from 64 up), ``L = 8``: 3,969 values for Fashion-MNIST.

Both are optional extras (``pip install 'convae[baselines]'``): without the library the probe skips
the baseline and says why. Kymatio 0.3's ``kymatio.torch`` imports its 3-D module, which needs a
SciPy function removed in SciPy 1.17 (``sph_harm``); convae imports the 2-D torch frontend
(``kymatio.scattering2d.frontend.torch_frontend``) directly, which does not, so no SciPy pin is needed.

Scattering costs about 3.4 ms per 28x28 image on one core here (Fashion-MNIST's 70,000 images: about
4 minutes), so features are computed in batches with progress and cached on disk by dataset
fingerprint, split and parameters (``$CONVAE_CACHE`` or ``~/.cache/convae/features``): a probe pays
for them once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..atomic import atomic_save_npy
from ..data import dataset_fingerprint
from ..errors import ConfigError
from ..features import iter_batches
from ..progress import Progress

logger = logging.getLogger(__name__)

HAND_DESIGNED = ("hog", "scattering")
EXTRA = "pip install 'convae[baselines]'"


def default_params(method: str, in_shape) -> dict:
    """The parameters a baseline uses on images of ``in_shape`` = (C, H, W) unless told otherwise."""
    _, h, w = (int(v) for v in in_shape)
    if method == "hog":
        return {"cell": max(2, min(h, w) // 7), "block": 2, "orientations": 9}
    if method == "scattering":
        return {"J": 2 if min(h, w) < 64 else 3, "L": 8}
    raise ConfigError(f"unknown hand-designed baseline {method!r}; choose from {', '.join(HAND_DESIGNED)}")


def resolve_params(method: str, in_shape, given: dict | None) -> dict:
    """Defaults for the image size, overridden by ``given``; unknown keys and impossible values are ConfigErrors."""
    params = default_params(method, in_shape)
    unknown = sorted(set(given or {}) - set(params))
    if unknown:
        raise ConfigError(f"{method}: unknown parameter(s) {unknown}; valid: {', '.join(params)}")
    for key, value in (given or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{method}: {key} must be a positive integer, got {value!r}")
        params[key] = int(value)
    _, h, w = (int(v) for v in in_shape)
    if method == "hog" and min(h, w) < params["cell"] * params["block"]:
        raise ConfigError(f"hog: a block of {params['block']}x{params['block']} cells of {params['cell']} pixels does not fit "
                          f"{h}x{w} images; use a smaller cell or block")
    if method == "scattering" and min(h, w) < 2 ** params["J"]:
        raise ConfigError(f"scattering: J={params['J']} needs images of at least {2 ** params['J']} pixels a side, got {h}x{w}")
    return params


def available(method: str) -> str | None:
    """None when ``method``'s library imports, else the reason it does not."""
    try:
        if method == "hog":
            import skimage.feature  # noqa: F401
        else:
            from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D  # noqa: F401
    except ImportError as error:
        library = "scikit-image" if method == "hog" else "Kymatio"
        return f"{library} is not installed ({error}); {EXTRA}"
    return None


# --- the extractors ---------------------------------------------------------------------------------------
def _float_batch(batch: torch.Tensor) -> torch.Tensor:
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()


def hog_features(data, params: dict, *, desc: str = "hog", progress: bool = True) -> np.ndarray:
    """HOG of every image of ``data`` (ImageDataset or N×C×H×W tensor): float32 (N, D)."""
    from skimage.feature import hog

    rows = []
    with Progress(len(data), desc=desc, unit="img", enabled=progress) as bar:
        for batch in iter_batches(data, 512):
            x = _float_batch(batch).numpy()  # (B, C, H, W) in [0, 1]
            for image in x:
                if image.shape[0] == 1:
                    rows.append(hog(image[0], orientations=params["orientations"], pixels_per_cell=(params["cell"],) * 2,
                                    cells_per_block=(params["block"],) * 2, block_norm="L2-Hys", feature_vector=True))
                else:
                    rows.append(hog(image, orientations=params["orientations"], pixels_per_cell=(params["cell"],) * 2,
                                    cells_per_block=(params["block"],) * 2, block_norm="L2-Hys", feature_vector=True,
                                    channel_axis=0))
            bar.update(len(x))
    return np.asarray(rows, dtype=np.float32)


def scattering_features(data, params: dict, *, batch_size: int = 256, desc: str = "scattering",
                        progress: bool = True) -> np.ndarray:
    """Scattering coefficients of every image of ``data``, channel by channel: float32 (N, C * K * h * w)."""
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    h, w = (int(v) for v in tuple(data.shape)[-2:])  # ImageDataset.shape is (C, H, W), a tensor's (N, C, H, W)
    transform = ScatteringTorch2D(J=params["J"], shape=(h, w), L=params["L"], max_order=2)
    chunks = []
    with Progress(len(data), desc=desc, unit="img", enabled=progress) as bar, torch.inference_mode():
        for batch in iter_batches(data, batch_size):
            out = transform(_float_batch(batch).contiguous())  # (B, C, K, h / 2^J, w / 2^J)
            chunks.append(out.flatten(1).numpy().astype(np.float32, copy=False))
            bar.update(len(batch))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


EXTRACTORS = {"hog": hog_features, "scattering": scattering_features}


# --- the cache --------------------------------------------------------------------------------------------
def cache_root() -> Path:
    return Path(os.environ.get("CONVAE_CACHE", "~/.cache/convae/features")).expanduser()


def cache_key(method: str, params: dict, data) -> str:
    """Method, parameters, library versions and the pixels' fingerprint: the features' identity."""
    from importlib.metadata import PackageNotFoundError, version

    library = "scikit-image" if method == "hog" else "kymatio"
    try:
        library_version = version(library)
    except PackageNotFoundError:
        library_version = "?"
    record = {"method": method, "params": params, "library": f"{library} {library_version}", "convae": __version__,
              "data": dataset_fingerprint(data), "spec": getattr(data, "spec", "array"), "split": getattr(data, "split", "")}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]


def hand_designed_features(method: str, data, params: dict, *, cache: bool = True, progress: bool = True) -> np.ndarray:
    """``method``'s features of ``data``, read from the cache when this dataset, split and parameters were done before
    (``progress=False``: no progress display while they are computed)."""
    path = cache_root() / f"{method}-{cache_key(method, params, data)}.npy" if cache else None
    if path is not None and path.is_file():
        try:
            features = np.load(path, allow_pickle=False)
            if features.shape[0] == len(data):
                logger.info("%s features of %s read from the cache %s", method, getattr(data, "spec", "array"), path)
                return features
        except (OSError, ValueError):
            pass  # a damaged cache file is computed again and replaced
    t0 = time.perf_counter()
    features = EXTRACTORS[method](data, params, progress=progress)
    logger.info("%s features of %d images (%d values each) in %.1f s", method, len(data), features.shape[1], time.perf_counter() - t0)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_npy(path, features)
        except OSError as error:  # a cache that cannot be written costs time, not results
            logger.warning("cannot cache %s features in %s: %s", method, path.parent, error)
    return features
