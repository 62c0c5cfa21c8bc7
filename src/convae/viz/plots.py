"""Drawing helpers shared by viz, compare and report: image mosaics and Figure -> PNG.

Everything works on :class:`matplotlib.figure.Figure` objects created directly (no pyplot, no
global state, no window): ``savefig`` renders with Agg.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..atomic import atomic_file


def as_display(image) -> np.ndarray:
    """(C, H, W) tensor/array in [0, 1] -> (H, W) gray or (H, W, 3) colour; other C: channel mean."""
    x = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    x = np.clip(x, 0.0, 1.0)
    if x.ndim == 2:
        return x
    return x.transpose(1, 2, 0) if x.shape[0] == 3 else x.mean(0)


def mosaic(tiles, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """(R, K, C, h, w) images in [0, 1] -> one (R*(h+pad)-pad, K*(w+pad)-pad[, 3]) array, tiles separated by ``fill``."""
    t = torch.as_tensor(tiles).float().clamp(0, 1)
    r, k, c, h, w = t.shape
    if c not in (1, 3):
        t, c = t.mean(2, keepdim=True), 1
    out = torch.full((c, r * (h + pad) - pad, k * (w + pad) - pad), fill)
    for i in range(r):
        for j in range(k):
            out[:, i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = t[i, j]
    return as_display(out)


def mosaic_axes(ax, tiles, title: str | None = None, *, row_labels=None, col_labels=None, cmap: str = "gray") -> None:
    """Draw (R, K, C, h, w) tiles as one image on ``ax``, with optional row and column labels."""
    r, k, _, h, w = tuple(torch.as_tensor(tiles).shape)
    # colour-mapped tiles are separated by NaN, which imshow leaves blank; gray ones by white
    ax.imshow(mosaic(tiles, fill=1.0 if cmap == "gray" else float("nan")), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([i * (h + 1) + (h - 1) / 2 for i in range(r)], row_labels or [""] * r, fontsize=7)
    ax.set_xticks([j * (w + 1) + (w - 1) / 2 for j in range(k)], col_labels or [""] * k, fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=8)


def plot_mosaic(tiles, *, title: str, row_labels=None, col_labels=None, cell: float = 0.45) -> Figure:
    """A Figure of (R, K) tiles drawn as one image: fast for hundreds of tiles (one axes, not one per tile)."""
    r, k, _, h, w = tuple(torch.as_tensor(tiles).shape)
    scale = cell * max(1.0, math.sqrt(min(h, w) / 8))
    label_room = 0.8 if row_labels and any("\n" in str(label) or len(str(label)) > 6 for label in row_labels) else 0.4
    fig = Figure(figsize=(max(3.0, k * scale * w / max(h, 1) + label_room + 0.4), max(1.5, r * scale + 0.7)), layout="constrained")
    mosaic_axes(fig.subplots(), tiles, row_labels=row_labels, col_labels=col_labels)
    fig.suptitle(title, fontsize=9)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG to ``path`` (parents created); the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=dpi)
    return path


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """``fig`` rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
