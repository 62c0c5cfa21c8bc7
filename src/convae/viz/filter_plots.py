"""First-layer filters of several models side by side, each panel titled with its mean edge score.

The scores are computed elsewhere (:mod:`convae.analysis.filters`) and passed in, so this module
draws only. Each filter is normalised on its own, symmetrically about zero: ``0.5 + 0.5 w / max|w|``
over all its input channels, so mid-gray is 0, and an RGB filter keeps the balance of its colours
(a luminance filter looks gray, a red-green one red and green). Filters are sorted by score, the
most edge-like first, when scores are given.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure

from .plots import mosaic_axes


def filter_tiles(weights, order=None, max_filters: int = 64, cols: int = 8) -> torch.Tensor:
    """(out, C, k, k) weights -> (rows, cols, C, k, k) tiles in [0, 1], each filter scaled by its own max |w|; blank tiles white."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    if order is not None:
        w = w[torch.as_tensor(np.asarray(order, dtype=np.int64))]
    w = w[:max_filters]
    peak = w.flatten(1).abs().max(1).values.clamp_min(1e-12).view(-1, 1, 1, 1)
    scaled = 0.5 + 0.5 * w / peak
    n = len(scaled)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    tiles = torch.ones(rows * cols, *scaled.shape[1:])
    tiles[:n] = scaled
    return tiles.view(rows, cols, *scaled.shape[1:])


def plot_filter_comparison(filters: dict, scores: dict, *, chance: float | None = None, max_filters: int = 64,
                           score_name: str = "edge score", luminance: bool = True) -> Figure:
    """One mosaic per entry of ``filters`` ({name: (out, C, k, k) weights}) titled with the mean and median of
    ``scores[name]`` (per-filter arrays), then a histogram of every entry of ``scores`` (which may hold more
    sets, e.g. random filters, than ``filters``); ``chance`` draws a line at the random expectation. With
    ``luminance`` and more than one input channel, a second row shows each filter's channels summed (the
    luminance filter, what a score computed on luminance sees), in gray, in the same order."""
    names = list(filters)
    first = np.asarray(next(iter(filters.values())))
    k, n, channels = first.shape[-1], min(len(first), max_filters), first.shape[1]
    cols = 8 if n <= 32 else 16
    rows = math.ceil(n / cols)
    both = luminance and channels > 1
    panel = max(2.4, 0.42 * cols * max(1.0, math.sqrt(k / 7)))
    height = 0.42 * rows * max(1.0, math.sqrt(k / 7)) + 0.8  # per row of mosaics
    layout = [[f"{i}" for i in range(len(names))] + ["hist"]]
    if both:
        layout.append([f"{i}L" for i in range(len(names))] + ["hist"])
    fig = Figure(figsize=(panel * len(names) + 3.4, max(2.8, height * len(layout) + 0.4)), layout="constrained")
    axes = fig.subplot_mosaic(layout, width_ratios=[panel] * len(names) + [3.2])
    for i, name in enumerate(names):
        values = np.asarray(scores[name]) if name in scores else None
        order = np.argsort(-values, kind="stable") if values is not None else None
        title = name if values is None else f"{name}\nmean {score_name} {values.mean():.3f} (median {np.median(values):.3f})"
        mosaic_axes(axes[f"{i}"], filter_tiles(filters[name], order, max_filters, cols), title)
        if both:
            summed = np.asarray(filters[name], dtype=np.float32).sum(1, keepdims=True)
            mosaic_axes(axes[f"{i}L"], filter_tiles(summed, order, max_filters, cols), f"{name}: channels summed (luminance filter)")
    hist = axes["hist"]
    every = np.concatenate([np.asarray(v) for v in scores.values()])
    bins = np.linspace(0.0, max(1e-6, float(every.max())), 21)
    for name, values in scores.items():
        hist.hist(np.asarray(values), bins=bins, density=True, histtype="step", linewidth=1.3, label=f"{name} ({np.mean(values):.3f})")
    if chance is not None:
        hist.axvline(chance, color="gray", linestyle=":", linewidth=1)
    hist.set_xlabel(score_name, fontsize=8)
    hist.set_yticks([])
    hist.tick_params(labelsize=7)
    hist.legend(fontsize=6)
    hist.set_title("per-filter scores (mean)", fontsize=8)
    fig.suptitle(f"first-layer filters ({k}x{k}, {channels} input channel{'s' if channels != 1 else ''}), "
                 "most edge-like first; each scaled to its own max |w|, gray = 0", fontsize=9)
    return fig


__all__ = ["filter_tiles", "plot_filter_comparison"]
