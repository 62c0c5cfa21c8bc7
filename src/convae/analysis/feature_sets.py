"""The feature sets a probe compares: an encoder at each layer x pooling, pixels, and PCA of the pixels."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError
from ..features import feature_layout, iter_batches, iter_layer_outputs, pool_outputs

logger = logging.getLogger(__name__)


@dataclass
class FeatureSet:
    """One set of features for every image: ``matrix(fold)`` -> (n_images, dim) float32."""

    family: str  # convae | fcae | untrained | raw | pca
    layers: str  # "stage2", "stage1+stage2", "pixels", "pca"
    pool: str  # a canonical pooling spec, or "-" where pooling does not apply
    dim: int
    matrix: Callable[[int], np.ndarray]

    @property
    def name(self) -> str:
        if self.family in ("raw", "pca"):
            return f"{self.family}{self.dim if self.family == 'pca' else ''}"
        return f"{self.family}:{self.layers}" + (f"/{self.pool}" if self.pool != "-" else "")



def take(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """X[idx], as a view when idx is a contiguous range (no copy of a 60k-row matrix)."""
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):
        return X[idx[0]:idx[-1] + 1]
    return X[idx]



def middle_layer(model) -> str:
    return model.layer_names[(len(model.layer_names) - 1) // 2]



def encoder_sets(family: str, model, groups: list[list[str]], pools: list, images: list, *, batch_size: int, precision: str,
                  progress: bool, skipped: list[str]) -> list[FeatureSet]:
    """Feature sets of one encoder: one pass over the images computes every layer and pooling."""
    plan = []  # (group, pooling, label) for each distinct set
    seen = set()
    for group in groups:
        for pooling in pools:
            vector = all(model.layer_info(name).spatial is None for name in group)
            key = (tuple(group), "-" if vector else pooling.spec)
            if key in seen:
                continue
            try:
                feature_layout(model, group, pooling)
            except ConfigError as error:
                skipped.append(f"{family}:{'+'.join(group)}/{pooling.spec}: {error}")
                logger.warning("skipping %s", skipped[-1])
                continue
            seen.add(key)
            plan.append((group, pooling, key[1]))
    if not plan:
        return []
    wanted = sorted({n for group, _, _ in plan for n in group}, key=model.layer_names.index)
    widths = [sum(k for _, k in feature_layout(model, group, pooling)) for group, pooling, _ in plan]
    matrices = [np.empty((sum(len(d) for d in images), w), np.float32) for w in widths]
    row = 0
    for data in images:  # one forward pass per batch serves every layer and pooling
        for out in iter_layer_outputs(model, data, wanted, batch_size=batch_size, precision=precision, convert=True,
                                      progress=progress, desc=family):
            b = next(iter(out.values())).shape[0]
            for matrix, (group, pooling, _) in zip(matrices, plan):
                matrix[row:row + b] = pool_outputs(out, group, pooling).cpu().numpy()
            row += b
    return [FeatureSet(family, "+".join(group), label, w, (lambda fold, m=m: m)) for (group, _, label), w, m in zip(plan, widths, matrices)]



def pixel_matrix(images: list) -> np.ndarray:
    """Flattened pixels in [0, 1], float32 (n_images, C*H*W), from the already converted datasets."""
    return np.concatenate([(b.float() / 255.0 if b.dtype == torch.uint8 else b.float()).flatten(1).numpy()
                           for data in images for b in iter_batches(data, 4096)])



def pca_sets(pixels: np.ndarray, dims: list[int], folds: list[tuple[np.ndarray, np.ndarray]], seed: int) -> list[FeatureSet]:
    """PCA of the pixels to each of ``dims``, fitted per fold on its training rows (labels unused).

    One PCA with the largest dimension per fold serves every smaller one: exact solvers give
    nested components, so the first d columns are the d-component projection.
    """
    from sklearn.decomposition import PCA

    cap = min(min(len(train) for train, _ in folds), pixels.shape[1])
    dims = sorted({min(d, cap) for d in dims})
    if not dims:
        return []
    cache: dict[int, np.ndarray] = {}

    def projected(fold: int) -> np.ndarray:
        if fold not in cache:
            train, _ = folds[fold]
            pca = PCA(n_components=dims[-1], svd_solver="full" if pixels.shape[1] <= 4096 else "auto", random_state=seed)
            pca.fit(take(pixels, train))
            cache.clear()  # one fold at a time in memory
            cache[fold] = pca.transform(pixels).astype(np.float32)
        return cache[fold]

    return [FeatureSet("pca", "pca", "-", d, (lambda fold, d=d: projected(fold)[:, :d])) for d in dims]
