"""What single units respond to: receptive-field crops, top dataset patches, activation maximization.

Public names are re-exported by :mod:`convae.viz`.
"""

from __future__ import annotations


import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from .plots import plot_mosaic
from ..data import to_float
from ..errors import ConfigError
from ..runtime import thread_limit


# --- helpers ----------------------------------------------------------------------------------------------
def float_images(images) -> torch.Tensor:
    """(N, C, H, W) uint8 or float -> float32 in [0, 1]."""
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    return to_float(x)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def sample_images(data, n: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray | None]:
    """``n`` images (float, [0, 1]) and their labels from an ImageDataset or tensor, spread over the set."""
    total = len(data)
    idx = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    if hasattr(data, "batches"):
        images = torch.cat(list(data.batches(idx, 256)))
        labels = None if data.labels is None else np.asarray(data.labels)[idx]
    else:
        images, labels = torch.as_tensor(np.asarray(data))[torch.from_numpy(idx)], None
    return float_images(images), labels


@torch.inference_mode()
def layer_outputs(model: nn.Module, images: torch.Tensor, layers=None) -> dict[str, torch.Tensor]:
    """``{layer: (N, C, h, w) or (N, D)}`` float32 on CPU, eval mode (restored afterwards)."""
    was = model.training
    model.eval()
    try:
        out = model.forward_intermediates(float_images(images).to(model_device(model)), model.resolve_layers(layers))
    finally:
        model.train(was)
    return {k: v.float().cpu() for k, v in out.items()}


# --- top patches --------------------------------------------------------------------------------------
def crop_receptive_field(image: torch.Tensor, info, y: int, x: int) -> torch.Tensor:
    """The (C, rh, rw) input window that map position (y, x) of layer ``info`` sees; zeros outside."""
    rh, rw = info.receptive_field
    top = int(round(info.offset + y * info.stride - (rh - 1) / 2))
    left = int(round(info.offset + x * info.stride - (rw - 1) / 2))
    if info.spatial is None:  # vector layers see the whole image
        return image
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * rh, w + 2 * rw, dtype=image.dtype)
    padded[:, rh:rh + h, rw:rw + w] = image
    return padded[:, rh + top:rh + top + rh, rw + left:rw + left + rw]


@torch.inference_mode()
def top_patches(model: nn.Module, data, layer, *, k: int = 8, channels=None, max_channels: int = 16, limit: int = 2000,
                batch_size: int = 256, seed: int = 0) -> dict:
    """Per channel, the ``k`` images that activate it most (one patch per image) and their patches.

    The patch is the input window of the maximal position, cropped to the layer's receptive field
    (``feature_info``: position i is centred at ``offset + i * stride``). Returns ``channels``,
    ``patches`` (n_channels, k, C, rh, rw) float, ``scores`` (n_channels, k), ``images`` (indices
    into the ``limit`` sampled images) and ``positions`` (y, x).
    """
    info = model.layer_info(layer)
    images, _ = sample_images(data, limit, seed)
    channels = list(range(min(max_channels, info.channels))) if channels is None else [int(c) for c in channels]
    bad = [c for c in channels if not 0 <= c < info.channels]
    if bad:
        raise ConfigError(f"channel(s) {bad} out of range: layer {info.name} has {info.channels} channels")
    best, where = [], []
    for start in range(0, len(images), batch_size):
        out = layer_outputs(model, images[start:start + batch_size], [info.name])[info.name][:, channels]
        flat = out.flatten(2) if out.dim() == 4 else out.unsqueeze(-1)  # (B, n, positions)
        value, pos = flat.max(2)
        best.append(value)
        where.append(pos)
    value, pos = torch.cat(best), torch.cat(where)  # (N, n)
    k = min(k, len(images))
    scores, rows = value.topk(k, dim=0)  # (k, n)
    w = info.spatial[1] if info.spatial else 1
    patches, positions = [], []
    for j in range(len(channels)):
        ps, yx = [], []
        for i in rows[:, j].tolist():
            y, x = divmod(int(pos[i, j]), w)
            ps.append(crop_receptive_field(images[i], info, y, x))
            yx.append((y, x))
        patches.append(torch.stack(ps))
        positions.append(yx)
    return {"layer": info.name, "channels": channels, "patches": torch.stack(patches), "scores": scores.T.numpy(),
            "images": rows.T.numpy(), "positions": np.array(positions), "receptive_field": info.receptive_field}


def plot_top_patches(model: nn.Module, data, layer, *, k: int = 8, max_channels: int = 16, **kwargs) -> Figure:
    """Rows: channels; columns: the top-k patches (receptive-field crops, zeros beyond the image)."""
    result = top_patches(model, data, layer, k=k, max_channels=max_channels, **kwargs)
    rh, rw = result["receptive_field"]
    return plot_mosaic(result["patches"], row_labels=[f"c{c}" for c in result["channels"]],
                       title=f"{result['layer']}: top-{result['patches'].shape[1]} patches per channel\nreceptive field {rh}x{rw} px")


# --- activation maximization --------------------------------------------------------------------------
def _unit_activation(out: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Activation of each sample's channel at the map centre (or of the unit, for vectors): (n,)."""
    rows = torch.arange(len(channels))
    if out.dim() == 4:
        return out[rows, channels, (out.shape[2] - 1) // 2, (out.shape[3] - 1) // 2]
    return out[rows, channels]


def maximize_activation(model: nn.Module, layer, channels=None, *, max_channels: int = 8, steps: int = 128, lr: float = 0.1,
                        jitter: int | None = None, l2: float = 1e-2, tv: float = 1e-2, restarts: int = 3, starts=None,
                        seed: int = 0) -> torch.Tensor:
    """Inputs (n, C, H, W) in [0, 1] that maximize each channel at the centre of ``layer``'s map.

    Gradient ascent (Adam steps) on logits ``p`` (the image is ``sigmoid(p)``), with random jitter
    (the input is rolled by up to ``jitter`` px each step; default 1 px for 8x8, H/8 above), an L2
    pull towards mid-gray and a total-variation penalty. Each channel starts from ``restarts``
    random images (dark, mid and bright) and, when ``starts`` (N, C, H, W) images are given, from
    the one of them that excites it most; the most active of the ends and the starts wins. A ReLU unit silent
    at every start gets no gradient and stays mid-gray. Works for any channel count and size.
    """
    info = model.layer_info(layer)
    channels = list(range(min(max_channels, info.channels))) if channels is None else [int(c) for c in channels]
    c, h, w = model.in_shape
    jitter = max(1, min(h, w) // 8) if jitter is None else int(jitter)
    gen = torch.Generator().manual_seed(seed)
    dev = model_device(model)
    n = len(channels)
    target = torch.tensor(channels, device=dev)

    def activation(x):  # (k * n, C, H, W) -> (k * n,): sample i works on channel channels[i % n]
        return _unit_activation(model.forward_intermediates(x, [info.name])[info.name].float(), target.repeat(len(x) // n))

    was = model.training
    model.eval()
    try:
        with thread_limit(1):
            brightness = torch.linspace(-1.5, 1.5, restarts).repeat_interleave(n).view(-1, 1, 1, 1) if restarts > 1 else torch.zeros(n, 1, 1, 1)
            p = torch.randn(restarts * n, c, h, w, generator=gen) + brightness
            if starts is not None:
                with torch.no_grad():
                    images = float_images(starts).to(dev)
                    maps = model.forward_intermediates(images, [info.name])[info.name].float()  # one pass for every channel
                    acts = torch.stack([_unit_activation(maps, torch.full((len(images),), ch, device=dev)) for ch in channels])  # (n, N)
                    chosen = images[acts.argmax(1)].cpu()
                p = torch.cat([p, torch.logit(chosen.clamp(0.02, 0.98))])
            # the starts (the data images unclamped) stay candidates: ascent under the penalties can end lower
            begin = torch.sigmoid(p) if starts is None else torch.cat([torch.sigmoid(p[: restarts * n]), chosen])
            p = p.to(dev).requires_grad_(True)
            begin = begin.to(dev)
            m, v = torch.zeros_like(p), torch.zeros_like(p)  # Adam's moments, written out (torch.optim pulls in torch._dynamo: seconds)
            for step in range(1, steps + 1):
                dy, dx = (int(t) for t in torch.randint(-jitter, jitter + 1, (2,), generator=gen)) if jitter else (0, 0)
                x = torch.sigmoid(p)  # (starts * n, C, H, W)
                smooth = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean((1, 2, 3)) + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean((1, 2, 3))
                objective = activation(torch.roll(x, (dy, dx), dims=(2, 3))) - l2 * (x - 0.5).pow(2).sum((1, 2, 3)) - tv * smooth * h * w
                (grad,) = torch.autograd.grad(objective.sum(), p)
                with torch.no_grad():
                    m.mul_(0.9).add_(grad, alpha=0.1)
                    v.mul_(0.999).addcmul_(grad, grad, value=0.001)
                    p += lr * (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8)
            with torch.no_grad():
                x = torch.cat([torch.sigmoid(p), begin])
                best = activation(x).view(-1, n).argmax(0)  # (n,) which candidate won, per channel
    finally:
        model.train(was)
    return x.view(-1, n, c, h, w)[best, torch.arange(n, device=dev)].detach().cpu()


def plot_maximized(model: nn.Module, layers=None, *, max_channels: int = 8, **kwargs) -> Figure:
    """Rows: layers (every depth by default); columns: channels; the centre unit's receptive field is boxed."""
    names = model.resolve_layers(layers)
    c, h, w = model.in_shape
    tiles = torch.ones(len(names), max_channels, c, h, w)
    for r, name in enumerate(names):
        images = maximize_activation(model, name, max_channels=max_channels, **kwargs)
        tiles[r, :len(images)] = images
    fig = plot_mosaic(tiles, row_labels=names, col_labels=[f"c{j}" for j in range(max_channels)], cell=0.7,
                      title="activation maximization of the centre unit\n(red box: its receptive field)")
    ax = fig.axes[0]
    for r, name in enumerate(names):
        info = model.layer_info(name)
        if info.spatial is None:
            continue
        rh, rw = info.receptive_field
        cy = info.offset + ((info.spatial[0] - 1) // 2) * info.stride
        cx = info.offset + ((info.spatial[1] - 1) // 2) * info.stride
        for j in range(max_channels):  # the box, clipped to its tile
            y0, x0 = max(cy - rh / 2, -0.5), max(cx - rw / 2, -0.5)
            y1, x1 = min(cy + rh / 2, h - 0.5), min(cx + rw / 2, w - 0.5)
            ax.add_patch(Rectangle((j * (w + 1) + x0, r * (h + 1) + y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=0.7))
    return fig
