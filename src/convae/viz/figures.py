"""What each depth of an encoder responds to, as matplotlib Figures (never shown, only returned).

=============  ====================================================================================
``filters``    first-layer kernels as a mosaic, each filter scaled to its own min..max (FCAE: the
               first layer's weight rows reshaped to the image, full-image templates)
``maps``       feature maps of chosen images at every depth (the most active channels)
``patches``    per channel, the top-k dataset patches, cropped to the layer's receptive field
``maximize``   activation maximization per channel at each depth (gradient ascent on the input)
``recon``      inputs beside the reconstructions of one or more models (ConvAE and FCAE)
``traverse``   images decoded while a bottleneck unit (at one map position or over the whole map) or a
               principal direction is varied, by -span..span data standard deviations along it
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
import warnings
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
import torch.nn.functional as F
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
    """First-layer weights as images: (n_filters, C_in, k, k) for a ConvAE, (units, C, H, W) for an FCAE; with a
    fixed scattering stem, its wavelets (2 x J x L, 1, k, k: real parts, then imaginary), the filters that see pixels."""
    if getattr(model, "stem", None) is not None:
        return model.stem.wavelets.detach().float().cpu()
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
    if getattr(model, "stem", None) is not None:
        kind = "filters: the fixed scattering stem's Morlet wavelets (real parts, then imaginary), not learned;"
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


def viewable(model: nn.Module, maps: torch.Tensor) -> torch.Tensor:
    """A batch of what ``model`` reconstructs (``model.target``'s space) as images of the input's size: the
    images themselves, or with a scattering stem the low-pass map of each input channel, resized (nearest)."""
    stem = getattr(model, "stem", None)
    if stem is None:
        return maps
    return F.interpolate(maps[:, ::1 + stem.J * stem.L], size=tuple(model.in_shape[1:]), mode="nearest")


def plot_reconstructions(models: dict[str, nn.Module], images) -> Figure:
    """Row 1: the inputs; then one row per model (e.g. ``{"ConvAE": conv, "FCAE": dense}``) with its MSE.

    A model with a fixed stem reconstructs the stem's maps: its row shows their low-pass maps and its MSE is
    over the maps (``model.target``), so it does not compare with a pixel MSE."""
    images = float_images(images)
    rows, labels = [images], ["input"]
    for name, model in models.items():
        recon = reconstruct(model, images)
        with torch.inference_mode():
            target = model.target(images.to(model_device(model))).float().cpu()
        rows.append(viewable(model, recon))
        space = "" if getattr(model, "stem", None) is None else " of the\nstem's maps (low-pass shown)"
        labels.append(f"{name}\nMSE {float((recon - target).pow(2).mean()):.4f}{space}")
    return plot_mosaic(torch.stack(rows), row_labels=labels, cell=0.7, title="inputs and reconstructions")


# --- latent traversal ---------------------------------------------------------------------------------
TRAVERSE_DIRECTIONS = ("unit", "pca")
TRAVERSE_WHERE = ("position", "map")
TRAVERSE_OPTIONS = {"units", "n_units", "direction", "where", "position", "span", "steps", "limit"}


@torch.inference_mode()
def _encode_all(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    dev = model_device(model)
    return torch.cat([model.encode(images[i:i + batch_size].to(dev)).float() for i in range(0, len(images), batch_size)])


def _principal_directions(flat: torch.Tensor, wanted: list[int]) -> tuple[torch.Tensor, list[float], list[float]]:
    """Rows of ``flat`` (N, P) -> the principal directions numbered ``wanted`` (1 = largest), each scaled to
    the data's standard deviation along it; those standard deviations; the fractions of variance."""
    centred = flat - flat.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    bad = [k for k in wanted if not 1 <= k <= len(s)]
    if bad:
        raise ConfigError(f"principal direction(s) {bad} out of range: {len(flat)} sample latents of dimension {flat.shape[1]} "
                          f"have {len(s)} (numbered from 1)")
    idx = torch.tensor([k - 1 for k in wanted], device=flat.device)
    std = s[idx] / math.sqrt(max(len(flat) - 1, 1))
    total = float(s.pow(2).sum())
    explained = (s[idx].pow(2) / total).tolist() if total > 0 else [0.0] * len(wanted)
    return vh[idx] * std[:, None], std.tolist(), explained


@torch.inference_mode()
def latent_directions(model: nn.Module, data=None, *, direction: str = "unit", where: str = "position", units=None, n_units: int = 6,
                      position=None, limit: int = 1000, seed: int = 0) -> dict:
    """The bottleneck directions a traversal moves along, each scaled to one data standard deviation along it.

    The latent is a vector (dense bottleneck) or a ``C x h x w`` map (1x1-conv bottleneck).

    ``direction="unit"``: single units. For a vector, the ``n_units`` units with the largest standard
    deviation over the sample latents (or ``units``). For a map, ``where="position"`` moves one
    channel at one position: by default each channel's position of largest variance over the data (or
    ``position=(y, x)`` for all), the channels ranked by that variance; ``where="map"`` moves every
    position of a channel together (the direction ``1/sqrt(h*w)`` on its map, whose data standard
    deviation is ``sqrt(h*w)`` times that of the channel's mean), the channels ranked by it.

    ``direction="pca"``: the leading principal directions of the flattened latents over the data
    (``units``: which ones, numbered from 1); for a map with ``where="map"``, those of the channel means,
    each moving whole maps.

    ``data`` (a dataset or tensor; up to ``limit`` images, drawn with ``seed``) is where the standard
    deviations are measured. Without it ``"unit"`` moves by 1 in latent units (``scaled_by="latent units"``)
    and ``"pca"`` is refused. Returns ``vectors`` (n, *latent_shape), ``labels``, ``std`` (per direction,
    in latent units), ``positions`` ((y, x) per row, or None), ``explained`` (PCA: fraction of variance),
    ``latent_shape``, ``n_samples`` and ``scaled_by``.
    """
    if direction not in TRAVERSE_DIRECTIONS:
        raise ConfigError(f"direction={direction!r} is not one of {', '.join(map(repr, TRAVERSE_DIRECTIONS))}")
    if where not in TRAVERSE_WHERE:
        raise ConfigError(f"where={where!r} is not one of {', '.join(map(repr, TRAVERSE_WHERE))}")
    dev = model_device(model)
    c, h, w = model.in_shape
    was = model.training
    model.eval()
    try:
        shape = tuple(model.encode(torch.zeros(1, c, h, w, device=dev)).shape[1:])  # (D,) or (C, h, w)
        zs = None if data is None else _encode_all(model, sample_images(data, limit, seed)[0])
    finally:
        model.train(was)
    spatial = len(shape) == 3
    if not spatial and where == "map":
        raise ConfigError(f"where='map' needs a spatial (1x1-conv) bottleneck; this one is a vector of {shape[0]} units")
    if position is not None:
        if not spatial:
            raise ConfigError(f"position= needs a spatial (1x1-conv) bottleneck; this one is a vector of {shape[0]} units")
        if direction != "unit" or where != "position":
            raise ConfigError("position= applies to direction='unit', where='position'")
        position = tuple(int(v) for v in position)
        if len(position) != 2 or not (0 <= position[0] < shape[1] and 0 <= position[1] < shape[2]):
            raise ConfigError(f"position={position} is outside the {shape[1]}x{shape[2]} bottleneck map (y, x from 0)")
    units = None if units is None else [int(u) for u in units]
    if units is not None and not units:
        raise ConfigError("units= is empty")
    if direction == "unit" and units is not None:
        bad = [u for u in units if not 0 <= u < shape[0]]
        if bad:
            what = "channels" if spatial else "units"
            raise ConfigError(f"unit(s) {bad} out of range: the bottleneck has {shape[0]} {what} (numbered from 0)")
    positions, explained = None, None
    if direction == "pca":
        if zs is None:
            raise ConfigError("direction='pca' needs data: the principal directions are those of the latents of sample images")
        wanted = units or list(range(1, min(n_units, len(zs), math.prod(shape)) + 1))
        if spatial and where == "map":
            vecs, std, explained = _principal_directions(zs.mean((2, 3)), wanted)  # (n, C): one shift per channel map
            vectors = vecs[:, :, None, None].expand(len(vecs), *shape).clone()
            std = [s * math.sqrt(shape[1] * shape[2]) for s in std]
            labels = [f"PC{k} (maps)" for k in wanted]
        else:
            vecs, std, explained = _principal_directions(zs.flatten(1), wanted)
            vectors = vecs.view(len(vecs), *shape)
            labels = [f"PC{k}" for k in wanted]
    elif not spatial or where == "map":
        if zs is None:
            spread = torch.ones(shape[0], device=dev)
        else:
            spread = zs.std(0) if not spatial else zs.mean((2, 3)).std(0)  # (D,): per unit, or per channel mean
        chosen = units if units is not None else spread.argsort(descending=True)[:n_units].tolist()
        vectors = torch.zeros(len(chosen), *shape, device=dev)
        std = []
        for i, u in enumerate(chosen):
            s = float(spread[u]) if float(spread[u]) > 0 else 1.0  # a unit the data never moves: 1 latent unit
            vectors[i, u] = s
            std.append(s * math.sqrt(shape[1] * shape[2]) if spatial else s)
        labels = [f"unit {u} (map)" if spatial else f"unit {u}" for u in chosen]
    else:  # one channel at one position
        if zs is None:
            per_position = torch.ones(shape, device=dev)
            per_position[:, (shape[1] - 1) // 2, (shape[2] - 1) // 2] = 2.0  # no data: the centre of the map
        else:
            per_position = zs.std(0)  # (C, h, w)
        if position is not None:
            best_std = per_position[:, position[0], position[1]]
            best_at = torch.full((shape[0],), position[0] * shape[2] + position[1], device=dev)
        else:
            best_std, best_at = per_position.flatten(1).max(1)  # (C,): each channel's position of largest variance
        chosen = units if units is not None else best_std.argsort(descending=True)[:n_units].tolist()
        vectors = torch.zeros(len(chosen), *shape, device=dev)
        std, positions = [], []
        for i, u in enumerate(chosen):
            y, x = divmod(int(best_at[u]), shape[2])
            s = float(per_position[u, y, x]) if zs is not None and float(per_position[u, y, x]) > 0 else 1.0
            vectors[i, u, y, x] = s
            std.append(s)
            positions.append((y, x))
        labels = [f"unit {u} at ({y},{x})" for u, (y, x) in zip(chosen, positions)]
    return {"vectors": vectors, "labels": labels, "std": std, "positions": positions, "explained": explained, "latent_shape": shape,
            "n_samples": 0 if zs is None else len(zs), "scaled_by": "latent units" if zs is None else "data standard deviations",
            "direction": direction, "where": where if spatial else None}


@torch.inference_mode()
def traverse_latent(model: nn.Module, image, data=None, *, units=None, n_units: int = 6, steps: int = 7, span: float = 3.0,
                    direction: str = "unit", where: str = "position", position=None, limit: int = 1000, seed: int = 0) -> dict:
    """Decode ``image``'s latent moved along bottleneck directions by ``-span..span`` data standard deviations.

    The directions are :func:`latent_directions`' (units, channels at a position or over the whole map,
    or principal directions), each scaled to the data's standard deviation along it, measured on up to
    ``limit`` images of ``data``. Returns ``images`` (n_directions, steps, C, H, W), ``offsets`` (steps,)
    and everything :func:`latent_directions` returns but the vectors; with an odd ``steps`` the middle
    column is the image's own reconstruction.
    """
    if int(steps) < 2:
        raise ConfigError(f"steps={steps}: a traversal needs at least 2 steps")
    if not float(span) > 0:
        raise ConfigError(f"span={span}: must be a positive number of standard deviations")
    found = latent_directions(model, data, direction=direction, where=where, units=units, n_units=n_units, position=position,
                              limit=limit, seed=seed)
    was = model.training
    model.eval()
    try:
        dev = model_device(model)
        z = model.encode(float_images(image).reshape(1, *model.in_shape).to(dev)).float()  # (1, D) or (1, C, h, w)
        offsets = torch.linspace(-float(span), float(span), int(steps), device=dev)
        rows = [viewable(model, model.decode(z + offsets.view(-1, *[1] * (z.dim() - 1)) * v[None]).float().cpu()) for v in found["vectors"]]
    finally:
        model.train(was)
    result = {k: v for k, v in found.items() if k != "vectors"}
    return result | {"images": torch.stack(rows), "offsets": offsets.cpu().numpy()}


def plot_traversal(model: nn.Module, image, data=None, **kwargs) -> Figure:
    """Rows: directions (labelled; PCA rows with their share of the variance); columns: the offsets."""
    result = traverse_latent(model, image, data, **kwargs)
    labels = result["labels"]
    if result["explained"] is not None:
        labels = [f"{label}\n{100 * e:.0f}% var" for label, e in zip(labels, result["explained"])]
    shape = "x".join(map(str, result["latent_shape"]))
    what = {"unit": "units", "pca": "principal directions"}[result["direction"]]
    if result["where"] == "position" and result["direction"] == "unit":
        what = "one channel at one position (y,x)"
    elif result["where"] == "map":
        what += ", each moving a whole channel map"
    over = f"over {result['n_samples']} images" if result["n_samples"] else "(no data: latent units)"
    return plot_mosaic(result["images"], row_labels=labels, col_labels=[f"{v:+.1f}" for v in result["offsets"]], cell=0.7,
                       title=f"latent traversal of the {shape} bottleneck: {what}\n(columns: offset in {result['scaled_by']} {over})")


# --- embedding ----------------------------------------------------------------------------------------
EMBED_METHODS = ("pca", "tsne", "umap")


def embed_features(model: nn.Module, data, *, layer="bottleneck", pool: str = "avg", method: str = "pca", limit: int = 2000,
                   seed: int = 0) -> dict:
    """Pooled features of up to ``limit`` images projected to 2-D: ``coords`` (N, 2), ``labels`` or None.

    ``method``: ``"pca"``, ``"tsne"`` (scikit-learn) or ``"umap"`` (the optional umap-learn package,
    ``pip install 'convae[umap]'``; imported only here).
    """
    if method not in EMBED_METHODS:
        raise ConfigError(f"method={method!r} is not one of {', '.join(map(repr, EMBED_METHODS))}")
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
            raise ConfigError("method='umap' needs the optional package umap-learn, which is not installed: "
                              "pip install umap-learn (or pip install 'convae[umap]'); or use method 'pca' or 'tsne'") from None
        with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": seeded UMAP runs on one thread
            warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
            coords = umap.UMAP(n_components=2, n_neighbors=max(2, min(15, len(feats) - 1)), random_state=seed).fit_transform(feats)
    else:
        raise ConfigError(f"method={method!r} is not one of {', '.join(map(repr, EMBED_METHODS))}")
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


def figures(run, kind: str, *, layers=None, data=None, others=(), n: int = 8, seed: int = 0, traverse: dict | None = None,
            method: str = "pca") -> dict[str, Figure]:
    """``{name: Figure}`` of one visualization ``kind`` (see :data:`KINDS`) for a run (path or Run).

    ``others``: more runs (paths or Runs) whose reconstructions join ``recon``, e.g. the FCAE.
    ``layers``: for ``patches``/``embedding`` one figure per layer (default: every layer for
    patches, the bottleneck for embedding); for ``maps``/``maximize`` the rows.
    ``traverse``: keyword arguments of :func:`traverse_latent` (``units``, ``n_units``, ``direction``,
    ``where``, ``position``, ``span``, ``steps``); ``method``: the embedding's projection (:data:`EMBED_METHODS`).
    """
    if kind not in KINDS:
        raise ConfigError(f"viz kind {kind!r} is not one of: {', '.join(KINDS)}")
    if method not in EMBED_METHODS:
        raise ConfigError(f"method={method!r} is not one of {', '.join(map(repr, EMBED_METHODS))}")
    traverse = dict(traverse or {})
    unknown = sorted(set(traverse) - TRAVERSE_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown traversal option(s) {unknown}; known: {', '.join(sorted(TRAVERSE_OPTIONS))}")
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
        return {"traverse": plot_traversal(model, image, dataset, seed=seed, **traverse)}
    if kind == "patches":
        names = model.resolve_layers(layers)
        return {f"patches_{name}": plot_top_patches(model, dataset, name, k=n, seed=seed) for name in names}
    names = model.resolve_layers(layers if layers is not None else ["bottleneck"])
    return {f"embedding_{name}": plot_embedding(model, dataset, layer=name, method=method, seed=seed) for name in names}


def render(run, kind: str, *, layers=None, out_dir=None, data=None, others=(), n: int = 8, seed: int = 0, traverse: dict | None = None,
           method: str = "pca") -> list[Path]:
    """Save one kind of visualization (or ``"all"``) as PNGs in ``out_dir`` (default RUN/viz); the paths.

    ``traverse`` and ``method``: as in :func:`figures`.
    """
    run = as_run(run)
    out = Path(out_dir) if out_dir is not None else Path(run.path) / "viz"
    kinds = KINDS if kind == "all" else (kind,)
    paths = []
    with thread_limit(1):  # small batches: on a busy CPU one thread is faster than two waiting on each other
        for k in kinds:
            for name, fig in figures(run, k, layers=layers, data=data, others=others, n=n, seed=seed, traverse=traverse,
                                     method=method).items():
                paths.append(save_figure(fig, out / f"{name}.png"))
    return paths


__all__ = ["EMBED_METHODS", "KINDS", "TRAVERSE_DIRECTIONS", "TRAVERSE_WHERE", "images_of_run", "sample_images", "crop_receptive_field",
           "embed_features", "figures", "first_layer_filters", "latent_directions", "layer_outputs", "maximize_activation", "plot_embedding",
           "plot_feature_maps", "plot_filters", "plot_maximized", "plot_reconstructions", "plot_top_patches", "plot_traversal", "reconstruct",
           "render", "top_patches", "traverse_latent"]
