"""The feature sets a probe compares: an encoder at each layer x pooling, pixels, and PCA of the pixels."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError
from ..features import feature_layout, iter_batches, iter_layer_outputs, pool_outputs
from ..runtime import thread_limit

logger = logging.getLogger(__name__)


@dataclass
class FeatureSet:
    """One set of features for every image: ``matrix(fold)`` -> (n_images, dim) float32."""

    family: str  # convae | fcae | untrained | raw | pca | pca_whitened | hog | scattering
    layers: str  # "stage2", "stage1+stage2", "pixels", "pca", "hog", "scattering"
    pool: str  # a canonical pooling spec, or "-" where pooling does not apply
    dim: int
    matrix: Callable[[int], np.ndarray]
    standardize: bool = True  # StandardScaler before the classifier; False keeps the set's own scale (honest PCA)

    @property
    def name(self) -> str:
        if self.family in ("pca", "pca_whitened"):
            return f"{self.family}{self.dim}"
        if self.family in ("raw", "hog", "scattering"):
            return self.family
        return f"{self.family}:{self.layers}" + (f"/{self.pool}" if self.pool != "-" else "")



def take(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """X[idx], as a view when idx is a contiguous range (no copy of a 60k-row matrix)."""
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):
        return X[idx[0]:idx[-1] + 1]
    return X[idx]



def middle_layer(model) -> str:
    return model.layer_names[(len(model.layer_names) - 1) // 2]



def encoder_sets(family: str, model, groups: list[list[str]], pools: list, images: list, *, batch_size: int, precision: str,
                  progress: bool, skipped: list[str], threads: int | None = None) -> list[FeatureSet]:
    """Feature sets of one encoder: one pass over the images computes every layer and pooling, on ``threads``
    torch threads (None: as they are)."""
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
    with thread_limit(threads):
        for data in images:  # one forward pass per batch serves every layer and pooling
            for out in iter_layer_outputs(model, data, wanted, batch_size=batch_size, precision=precision, convert=True,
                                          progress=progress, desc=f"{family} features"):
                b = next(iter(out.values())).shape[0]
                for matrix, (group, pooling, _) in zip(matrices, plan):
                    matrix[row:row + b] = pool_outputs(out, group, pooling).cpu().numpy()
                row += b
    return [FeatureSet(family, "+".join(group), label, w, (lambda fold, m=m: m)) for (group, _, label), w, m in zip(plan, widths, matrices)]



def pixel_matrix(images: list) -> np.ndarray:
    """Flattened pixels in [0, 1], float32 (n_images, C*H*W), from the already converted datasets."""
    return np.concatenate([(b.float() / 255.0 if b.dtype == torch.uint8 else b.float()).flatten(1).numpy()
                           for data in images for b in iter_batches(data, 4096)])



def _pca_projection(pixels: np.ndarray, train: np.ndarray, n_components: int, seed: int):
    """(projection of every row, explained variances) of a PCA fitted on the ``train`` rows (labels unused)."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_components, svd_solver="full" if pixels.shape[1] <= 4096 else "auto", random_state=seed)
    pca.fit(take(pixels, train))
    return pca.transform(pixels).astype(np.float32), pca.explained_variance_


def pca_sets(pixels: np.ndarray, dims: list[int], folds: list[tuple[np.ndarray, np.ndarray]], seed: int) -> list[FeatureSet]:
    """PCA of the pixels to each of ``dims``, then standardized (so whitened), fitted per fold on its training rows.

    The same-dimension comparison beside each encoder row (family ``pca_whitened``): its trailing
    components are noise blown up to unit variance, which is unfair to PCA with few labels; the
    honest PCA baseline is :func:`honest_pca_set`. One PCA with the largest dimension per fold serves
    every smaller one: exact solvers give nested components, so the first d columns are the d-component projection.
    """
    cap = min(min(len(train) for train, _ in folds), pixels.shape[1])
    dims = sorted({min(d, cap) for d in dims})
    if not dims:
        return []
    cache: dict[int, np.ndarray] = {}

    def projected(fold: int) -> np.ndarray:
        if fold not in cache:
            cache.clear()  # one fold at a time in memory
            cache[fold] = _pca_projection(pixels, folds[fold][0], dims[-1], seed)[0]
        return cache[fold]

    return [FeatureSet("pca_whitened", "pca", "-", d, (lambda fold, d=d: projected(fold)[:, :d])) for d in dims]


PCA_DIMS = (10, 20, 50, 100, 200, 500)  # the candidates honest_pca_set chooses from
PCA_SELECTION_ROWS = 10_000  # training rows at most used to choose the dimension


def honest_pca_set(pixels: np.ndarray, labels: np.ndarray, folds, seed: int, score) -> tuple[FeatureSet | None, dict]:
    """PCA in its best honest form: not whitened, its dimension chosen on held-out training images.

    The components keep their relative variances (one global scale makes the average variance 1, so
    the classifier's regularisation means the same as on standardized sets), and the dimension is
    the one of :data:`PCA_DIMS` that scores best with ``score(X, train_rows, held_out_rows)`` on a
    stratified 80/20 split of fold 0's training rows (at most :data:`PCA_SELECTION_ROWS`): test
    labels are never seen. Returns the set and a record of the choice.
    """
    from sklearn.model_selection import train_test_split

    train0 = folds[0][0]
    cap = min(min(len(train) for train, _ in folds), pixels.shape[1])
    candidates = [d for d in PCA_DIMS if d < cap] + ([cap] if cap <= PCA_DIMS[-1] else [])
    candidates = sorted(set(candidates))
    if not candidates or len(train0) < 10:
        return None, {}
    rows = train0
    if len(rows) > PCA_SELECTION_ROWS:
        rows, _ = train_test_split(rows, train_size=PCA_SELECTION_ROWS, stratify=labels[rows], random_state=seed)
    counts = np.bincount(labels[rows])
    stratify = labels[rows] if counts[counts > 0].min() >= 2 else None
    fit_rows, held_out = train_test_split(np.sort(rows), test_size=0.2, stratify=stratify, random_state=seed)
    fit_rows, held_out = np.sort(fit_rows), np.sort(held_out)
    top = min(candidates[-1], len(fit_rows))
    projected, variances = _pca_projection(pixels, fit_rows, top, seed)
    scores = {}
    for d in [c for c in candidates if c <= top]:
        scale = float(np.sqrt(variances[:d].mean()))
        scores[d] = score(projected[:, :d] / scale, fit_rows, held_out)
    best = max(scores, key=scores.get)
    cache: dict[int, np.ndarray] = {}

    def matrix(fold: int) -> np.ndarray:
        if fold not in cache:
            cache.clear()
            X, var = _pca_projection(pixels, folds[fold][0], best, seed)
            cache[fold] = X / np.float32(np.sqrt(var.mean()))
        return cache[fold]

    choice = {"dim": best, "held_out_accuracy": {str(d): round(a, 4) for d, a in scores.items()}, "whitened": False,
              "selection_rows": int(len(fit_rows)), "held_out_rows": int(len(held_out))}
    return FeatureSet("pca", "pca", "-", best, matrix, standardize=False), choice
