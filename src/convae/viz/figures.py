"""What each depth of an encoder responds to, as matplotlib Figures (never shown, only returned).

=============  ====================================================================================
``filters``    first-layer kernels as a mosaic, each filter scaled to its own min..max (FCAE: the
               first layer's weight rows reshaped to the image, full-image templates)
``maps``       feature maps of chosen images at every depth (the most active channels)
``patches``    per channel, the top-k dataset patches, cropped to the layer's receptive field
``maximize``   activation maximization per channel at each depth (gradient ascent on the input)
``recon``      inputs beside the reconstructions of one or more models (ConvAE and FCAE)
``traverse``   images decoded while one bottleneck unit (or a principal direction) is varied
``embedding``  a 2-D projection of pooled features (PCA; t-SNE; UMAP where installed)
=============  ====================================================================================

Images are (N, C, H, W) float in [0, 1]; one channel is drawn in gray, three in colour. The
computations (:func:`top_patches`, :func:`maximize_activation`, :func:`traverse_latent`,
:func:`embed_features`) return arrays so they can be tested and reused; each ``plot_*`` draws one.
:func:`render` is what ``convae viz RUN KIND`` calls.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ..data import has_test_split
from ..errors import ConfigError
from ..features import extract_features, prepare_data
from ..features.layers import separate_layers
from ..runs import as_run
from ..runtime import thread_limit
from .plots import mosaic_axes, plot_mosaic, save_figure
from .units import (crop_receptive_field, float_images, layer_outputs, maximize_activation, model_device, plot_maximized,
                    plot_top_patches, sample_images, top_patches)

logger = logging.getLogger(__name__)

KINDS = ("filters", "maps", "patches", "maximize", "recon", "traverse", "embedding")


# --- filters -----------------------------------------------------------------------------------------
def first_layer_filters(model: nn.Module) -> torch.Tensor:
    """First-layer weights as images: (n_filters, C_in, k, k) for a ConvAE, (units, C, H, W) for an FCAE."""
    if hasattr(model, "stages"):
        conv = next(m for m in model.stages[0].modules() if isinstance(m, nn.Conv2d))
        return conv.weight.detach().float().cpu()
    linear = next(m for m in model.hidden[0].modules() if isinstance(m, nn.Linear)) if len(model.hidden) else model.to_latent
    return linear.weight.detach().float().cpu().view(-1, *model.in_shape)


def plot_filters(model: nn.Module, max_filters: int = 64) -> Figure:
    """Mosaic of first-layer filters; each filter is scaled to its own min..max (gray: 1 channel, RGB: 3)."""
    w = first_layer_filters(model)[:max_filters]
    lo = w.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = w.flatten(1).max(1).values.view(-1, 1, 1, 1)
    scaled = (w - lo) / (hi - lo).clamp_min(1e-12)
    n = len(scaled)
    cols = min(n, 16 if n > 32 else 8)
    rows = math.ceil(n / cols)
    tiles = torch.ones(rows * cols, *scaled.shape[1:])
    tiles[:n] = scaled
    kind = "kernels" if hasattr(model, "stages") else "weight rows (full-image templates)"
    return plot_mosaic(tiles.view(rows, cols, *scaled.shape[1:]), cell=0.5,
                       title=f"first-layer {kind}, {n} of shape {tuple(w.shape[1:])}\neach filter scaled to its own min..max")


# --- feature maps -----------------------------------------------------------------------------------
def plot_feature_maps(model: nn.Module, images, layers=None, max_channels: int = 8) -> Figure:
    """The inputs, then per layer a block: one row per image, the ``max_channels`` most active maps.

    Channels are those with the highest mean activation over the given images; each layer's maps
    share one colour scale (its min..max over the shown images). Vector layers are drawn as one
    tile of units per image.
    """
    images = float_images(images)
    outs = layer_outputs(model, images, layers)
    fig = Figure(figsize=(max(4.0, 0.55 * (max_channels + 1) + 1.2), 0.9 + 0.55 * len(images) * (len(outs) + 1)), layout="constrained")
    axes = fig.subplots(len(outs) + 1, 1, squeeze=False)[:, 0]
    fig.suptitle("feature maps: most active channels, one colour scale per layer", fontsize=9)
    mosaic_axes(axes[0], images[None], "input", cmap="gray")
    for ax, (name, out) in zip(axes[1:], outs.items()):
        lo, hi = float(out.min()), float(out.max())
        scaled = (out - lo) / max(hi - lo, 1e-12)
        if out.dim() == 4:
            order = out.mean((0, 2, 3)).argsort(descending=True)[:max_channels]
            tiles = scaled[:, order].unsqueeze(2)  # (N, k, 1, h, w)
            label = f"{name} {tuple(out.shape[1:])}: channels {', '.join(map(str, order.tolist()))}"
        else:
            side = math.ceil(math.sqrt(out.shape[1]))
            padded = torch.zeros(len(out), side * side)
            padded[:, :out.shape[1]] = scaled
            tiles = padded.view(len(out), 1, 1, side, side)
            label = f"{name}: {out.shape[1]} units"
        mosaic_axes(ax, tiles, f"{label}  (range {lo:.2f}..{hi:.2f})", cmap="viridis")
    return fig


# --- reconstructions ----------------------------------------------------------------------------------
@torch.inference_mode()
def reconstruct(model: nn.Module, images) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return model(float_images(images).to(model_device(model))).float().cpu()
    finally:
        model.train(was)


def plot_reconstructions(models: dict[str, nn.Module], images) -> Figure:
    """Row 1: the inputs; then one row per model (e.g. ``{"ConvAE": conv, "FCAE": dense}``) with its MSE."""
    images = float_images(images)
    rows, labels = [images], ["input"]
    for name, model in models.items():
        recon = reconstruct(model, images)
        rows.append(recon)
        labels.append(f"{name}\nMSE {float((recon - images).pow(2).mean()):.4f}")
    return plot_mosaic(torch.stack(rows), row_labels=labels, cell=0.7, title="inputs and reconstructions")


# --- latent traversal ---------------------------------------------------------------------------------
@torch.inference_mode()
def traverse_latent(model: nn.Module, image, data=None, *, units=None, n_units: int = 6, steps: int = 7, span: float = 3.0,
                    direction: str = "unit", limit: int = 1000) -> dict:
    """Decode ``image``'s latent moved along units (or principal directions) by -span..span std.

    ``direction="unit"``: the ``n_units`` bottleneck units with the largest spread over ``data``
    (or ``units``); a spatial (conv) bottleneck varies the whole channel map. ``"pca"``: the
    leading principal directions of the latents over ``data``. Returns ``images``
    (n_directions, steps, C, H, W), ``labels`` and ``offsets``.
    """
    was = model.training
    model.eval()
    try:
        dev = model_device(model)
        z = model.encode(float_images(image).reshape(1, *model.in_shape).to(dev)).float()  # (1, D) or (1, D, h, w)
        if data is not None:
            sample, _ = sample_images(data, limit)
            zs = torch.cat([model.encode(sample[i:i + 256].to(dev)).float() for i in range(0, len(sample), 256)])
        else:
            zs = z + torch.randn(64, *z.shape[1:], device=dev)
        flat = zs.flatten(2).mean(2) if zs.dim() == 4 else zs  # (N, D): one value per channel
        if direction == "pca":
            centred = flat - flat.mean(0)
            _, s, vh = torch.linalg.svd(centred, full_matrices=False)
            vectors = vh[:n_units] * (s[:n_units, None] / math.sqrt(max(len(flat) - 1, 1)))
            labels = [f"PC{i + 1}" for i in range(len(vectors))]
        elif direction == "unit":
            std = flat.std(0)
            chosen = std.argsort(descending=True)[:n_units].tolist() if units is None else [int(u) for u in units]
            vectors = torch.zeros(len(chosen), flat.shape[1], device=dev)
            for i, u in enumerate(chosen):
                vectors[i, u] = std[u] if float(std[u]) > 0 else 1.0
            labels = [f"unit {u}" for u in chosen]
        else:
            raise ConfigError(f"direction={direction!r} is not one of 'unit', 'pca'")
        offsets = torch.linspace(-span, span, steps, device=dev)
        rows = []
        for v in vectors:
            shift = offsets[:, None] * v[None]  # (steps, D)
            if z.dim() == 4:
                shift = shift[:, :, None, None]
            rows.append(model.decode(z + shift).float().cpu())
        return {"images": torch.stack(rows), "labels": labels, "offsets": offsets.cpu().numpy()}
    finally:
        model.train(was)


def plot_traversal(model: nn.Module, image, data=None, **kwargs) -> Figure:
    result = traverse_latent(model, image, data, **kwargs)
    return plot_mosaic(result["images"], row_labels=result["labels"], col_labels=[f"{v:+.1f}" for v in result["offsets"]], cell=0.7,
                       title="latent traversal\n(columns: offset in standard deviations over the data)")


# --- embedding ----------------------------------------------------------------------------------------
def embed_features(model: nn.Module, data, *, layer="bottleneck", pool: str = "avg", method: str = "pca", limit: int = 2000,
                   seed: int = 0) -> dict:
    """Pooled features of up to ``limit`` images projected to 2-D: ``coords`` (N, 2), ``labels`` or None."""
    images, labels = sample_images(data, limit, seed)
    feats = extract_features(model, images, layers=[layer], pool=pool)
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    if method == "pca":
        from sklearn.decomposition import PCA

        coords = PCA(n_components=2, random_state=seed).fit_transform(feats)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        coords = TSNE(n_components=2, init="pca", perplexity=min(30.0, max(2.0, (len(feats) - 1) / 3)), random_state=seed).fit_transform(feats)
    elif method == "umap":
        try:
            import umap
        except ImportError:
            raise ConfigError("method='umap' needs the umap-learn package (pip install umap-learn); use 'pca' or 'tsne'") from None
        coords = umap.UMAP(n_components=2, random_state=seed).fit_transform(feats)
    else:
        raise ConfigError(f"method={method!r} is not one of 'pca', 'tsne', 'umap'")
    return {"coords": np.asarray(coords, np.float32), "labels": labels, "layer": model.layer_info(layer).name, "method": method,
            "class_names": getattr(data, "class_names", None)}


def plot_embedding(model: nn.Module, data, **kwargs) -> Figure:
    result = embed_features(model, data, **kwargs)
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    xy, labels = result["coords"], result["labels"]
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6)
    else:
        names = result["class_names"]
        for c in np.unique(labels):
            m = labels == c
            ax.scatter(xy[m, 0], xy[m, 1], s=4, alpha=0.7, label=names[c] if names and c < len(names) else str(c))
        ax.legend(fontsize=6, markerscale=3, loc="best", ncol=2)
    ax.set_title(f"{result['layer']} features, {result['method'].upper()} ({len(xy)} images)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


# --- the verb -----------------------------------------------------------------------------------------
def images_of_run(run, data, split: str | None = None):
    """The images to draw: ``data`` (a spec or dataset) or the run's own dataset, test split when it has one."""
    data = run.config.data.spec if data is None else data
    if isinstance(data, str):
        split = split or ("test" if has_test_split(data) else "train")
    return prepare_data(data, run.in_shape, split=split or "all")


def figures(run, kind: str, *, layers=None, data=None, others=(), n: int = 8, seed: int = 0) -> dict[str, Figure]:
    """``{name: Figure}`` of one visualization ``kind`` (see :data:`KINDS`) for a run (path or Run).

    ``others``: more runs (paths or Runs) whose reconstructions join ``recon``, e.g. the FCAE.
    ``layers``: for ``patches``/``embedding`` one figure per layer (default: every layer for
    patches, the bottleneck for embedding); for ``maps``/``maximize`` the rows.
    """
    if kind not in KINDS:
        raise ConfigError(f"viz kind {kind!r} is not one of: {', '.join(KINDS)}")
    layers = separate_layers(layers, verb="viz")
    run = as_run(run)
    model = run.model
    dataset = images_of_run(run, data) if kind != "filters" else None
    if kind == "filters":
        return {"filters": plot_filters(model)}
    if kind == "maps":
        return {"maps": plot_feature_maps(model, sample_images(dataset, min(n, 4), seed)[0], layers)}
    if kind == "maximize":
        return {"maximize": plot_maximized(model, layers, seed=seed, starts=sample_images(dataset, 256, seed)[0])}
    if kind == "recon":
        title = {"conv": "ConvAE", "dense": "FCAE"}
        models = {f"{title[run.config.model.kind]} ({Path(run.path).name})": model}
        for other in others:
            other = as_run(other)
            if tuple(other.in_shape) != tuple(run.in_shape):
                raise ConfigError(f"{other.path} takes images of shape {other.in_shape}, {run.path} takes {run.in_shape}")
            models[f"{title[other.config.model.kind]} ({Path(other.path).name})"] = other.model
        return {"recon": plot_reconstructions(models, sample_images(dataset, n, seed)[0])}
    if kind == "traverse":
        image = sample_images(dataset, 1, seed)[0][0]
        return {"traverse": plot_traversal(model, image, dataset)}
    if kind == "patches":
        names = model.resolve_layers(layers)
        return {f"patches_{name}": plot_top_patches(model, dataset, name, k=n, seed=seed) for name in names}
    names = model.resolve_layers(layers if layers is not None else ["bottleneck"])
    return {f"embedding_{name}": plot_embedding(model, dataset, layer=name, seed=seed) for name in names}


def render(run, kind: str, *, layers=None, out_dir=None, data=None, others=(), n: int = 8, seed: int = 0) -> list[Path]:
    """Save one kind of visualization (or ``"all"``) as PNGs in ``out_dir`` (default RUN/viz); the paths."""
    run = as_run(run)
    out = Path(out_dir) if out_dir is not None else Path(run.path) / "viz"
    kinds = KINDS if kind == "all" else (kind,)
    paths = []
    with thread_limit(1):  # small batches: on a busy CPU one thread is faster than two waiting on each other
        for k in kinds:
            for name, fig in figures(run, k, layers=layers, data=data, others=others, n=n, seed=seed).items():
                paths.append(save_figure(fig, out / f"{name}.png"))
    return paths


__all__ = ["KINDS", "images_of_run", "sample_images", "crop_receptive_field", "embed_features", "figures", "first_layer_filters", "layer_outputs",
           "maximize_activation", "plot_embedding", "plot_feature_maps", "plot_filters", "plot_maximized", "plot_reconstructions",
           "plot_top_patches", "plot_traversal", "reconstruct", "render", "top_patches", "traverse_latent"]
