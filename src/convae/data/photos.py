"""``sample-photos``: random RGB patches of the two photographs that scikit-learn bundles.

``sklearn.datasets.load_sample_images`` ships two 427×640 RGB JPEGs (``china.jpg``, a temple, and
``flower.jpg``), offline, with the library. This module crops :data:`DEFAULT_COUNT` square patches of
:data:`DEFAULT_SIZE` from them at native resolution (no resizing, no flips), uint8 N×3×H×W, with no
labels and no test split. The patches are a pure function of the patch size, the count and
:data:`SEED`: patch ``i`` comes from photo ``photo[i]`` at top-left ``(top[i], left[i])``, all three
drawn at once from ``numpy.random.default_rng(SEED)`` (photo uniform over the two, position uniform
over every position where the patch fits), so the same arguments give the same bytes on every
machine with the same JPEG decoder (Pillow's, through scikit-learn).

Natural images, not digits or clothes: the data on which the first layer of a vision model is
expected to learn oriented edges (:mod:`convae.analysis.filters` measures how edge-like it is).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import DataError

NAME = "sample-photos"
DEFAULT_SIZE = (32, 32)
DEFAULT_COUNT = 20_000
SEED = 20240614  # fixed: the dataset is the same on every call


@lru_cache(maxsize=1)
def sample_photos() -> tuple[np.ndarray, ...]:
    """scikit-learn's two bundled photographs, each (427, 640, 3) uint8 and read-only, in the order china, flower (decoded once)."""
    from sklearn.datasets import load_sample_images  # imported here: sklearn is slow to import

    photos = tuple(np.ascontiguousarray(image, dtype=np.uint8) for image in load_sample_images().images)
    for photo in photos:
        photo.setflags(write=False)
    return photos


def random_patches(photos, count: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """``count`` patches of ``size`` = (h, w) cropped from (H, W, 3) uint8 ``photos``: (count, 3, h, w) uint8."""
    h, w = (int(v) for v in size)
    if count < 1:
        raise DataError(f"{NAME}: count must be at least 1, got {count}")
    height, width = min(p.shape[0] for p in photos), min(p.shape[1] for p in photos)
    if h > height or w > width:
        raise DataError(f"{NAME}: a {h}x{w} patch does not fit in the photographs "
                        f"({height}x{width} at the smallest); choose a smaller --image-size")
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(photos), count)
    unit = rng.random((2, count))  # positions as fractions, so each photo's own size decides the range
    out = np.empty((count, 3, h, w), dtype=np.uint8)
    for index, photo in enumerate(photos):
        chosen = np.flatnonzero(which == index)
        top = (unit[0, chosen] * (photo.shape[0] - h + 1)).astype(np.int64)
        left = (unit[1, chosen] * (photo.shape[1] - w + 1)).astype(np.int64)
        windows = np.lib.stride_tricks.sliding_window_view(photo, (h, w, 3))  # (H-h+1, W-w+1, 1, h, w, 3), a view
        out[chosen] = windows[top, left, 0].transpose(0, 3, 1, 2)
    return out


def load(image_size: tuple[int, int] | None = None, count: int = DEFAULT_COUNT, seed: int = SEED) -> np.ndarray:
    """The ``sample-photos`` patches: (count, 3, H, W) uint8, H×W = ``image_size`` (default 32×32)."""
    return random_patches(sample_photos(), count, image_size or DEFAULT_SIZE, seed)
