"""The measurements behind ``convae compare``: shifted and permuted images, parameter counts, and the
equivariance and invariance of encoder features (see :mod:`convae.compare` for what they mean)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config import RunConfig
from ..data import ImageDataset, to_float
from ..errors import ConfigError
from ..features import parse_pool
from ..models import DenseAutoencoder, build_from_config


# --- images ---------------------------------------------------------------------------------------------
def shift_images(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift (..., H, W) by (dy, dx) pixels (down/right positive), filling the vacated border with zeros."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # right, left, down, up


def all_images(data: ImageDataset) -> torch.Tensor:
    return torch.cat(list(data.batches(np.arange(len(data)), 4096)))


def with_images(data: ImageDataset, images: torch.Tensor, spec: str) -> ImageDataset:
    return ImageDataset(images, data.labels, spec, data.split, data.class_names)


def shifted_dataset(data: ImageDataset, shift: int, seed: int = 0) -> ImageDataset:
    """``data`` with every image shifted by ``shift`` px in a direction drawn per image (seeded)."""
    images = all_images(data)
    if shift == 0:
        return data
    direction = np.random.default_rng(seed).integers(0, len(DIRECTIONS), len(images))
    out = torch.empty_like(images)
    for d, (dy, dx) in enumerate(DIRECTIONS):
        rows = torch.from_numpy(np.flatnonzero(direction == d))
        out[rows] = shift_images(images[rows], dy * shift, dx * shift)
    return with_images(data, out, f"{data.spec}+shift{shift}")


def pixel_permutation(shape, seed: int) -> torch.Tensor:
    """One fixed permutation of the H*W pixel positions (the same for every channel and image)."""
    _, h, w = shape
    return torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))


def permute_images(images: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> the same images with pixel positions reordered by ``permutation``."""
    return images.flatten(2)[:, :, permutation].reshape(images.shape)


# --- parameters ---------------------------------------------------------------------------------------
def _layer_params(model) -> dict[str, int]:
    counts = model.parameter_counts()
    encoder = {info.name: info.params for info in model.feature_info}
    decoder = sum(v for k, v in counts.items() if k.startswith("decoder"))
    return {**encoder, "encoder": sum(encoder.values()), "decoder": decoder, "total": counts["total"]}


def parameter_table(configs: dict[str, RunConfig], in_shape, big_shape=(3, 100, 100)) -> dict:
    """Parameters per layer for each model kind at ``in_shape`` and at ``big_shape``, and the 500-unit reference."""
    table = {}
    for label, shape in (("dataset", tuple(in_shape)), ("large", tuple(big_shape))):
        entry = {"shape": list(shape)}
        for kind, cfg in configs.items():
            try:
                entry[kind] = _layer_params(build_from_config(cfg, shape))
            except Exception as error:  # an architecture that does not fit this size
                entry[kind] = {"error": str(error)}
        table[label] = entry
    reference = DenseAutoencoder(big_shape, hidden=(500,))
    table["reference"] = {"shape": list(big_shape), "model": "FCAE hidden=(500,)", "hidden1": reference.feature_info[0].params,
                          "formula": f"{int(np.prod(big_shape))} x 500 + 500"}
    return table


# --- translation ----------------------------------------------------------------------------------------
@torch.inference_mode()
def _outputs(model, images: torch.Tensor, layers) -> dict[str, torch.Tensor]:
    model.eval()
    return {k: v.float() for k, v in model.forward_intermediates(images, layers).items()}


def _relative(num: float, den: float) -> float:
    return math.sqrt(num / den) if den > 0 else float("nan")


@torch.inference_mode()
def equivariance(model, images: torch.Tensor, shifts) -> dict[str, list[dict]]:
    """Per spatial layer and shift: relative error of f(shift(x)) against the map shifted by s/stride cells.

    Returns ``{layer: [{shift, cells, exact, equivariance_error, unshifted_error}, ...]}``; the
    errors are measured over the map positions that both maps fill (the vacated strip is left out)
    and averaged over the four directions. ``unshifted_error`` compares with the map left in place.
    """
    x = to_float(images)
    layers = [info for info in model.feature_info if info.spatial is not None]
    if not layers:
        return {}
    names = [info.name for info in layers]
    base = _outputs(model, x, names)
    result: dict[str, list[dict]] = {name: [] for name in names}
    for s in shifts:
        moved = {d: _outputs(model, shift_images(x, dy * s, dx * s), names) for d, (dy, dx) in enumerate(DIRECTIONS)}
        for info in layers:
            cells = int(round(s / info.stride))
            num_eq = num_un = den = 0.0
            for d, (dy, dx) in enumerate(DIRECTIONS):
                a, b = moved[d][info.name], base[info.name]  # (N, C, h, w)
                mask = shift_images(torch.ones_like(b[:1, :1]), dy * cells, dx * cells)  # positions the shifted map fills
                num_eq += float(((a - shift_images(b, dy * cells, dx * cells)) * mask).pow(2).sum())
                num_un += float(((a - b) * mask).pow(2).sum())
                den += float(((b - b.roll(1, 0)) * mask).pow(2).sum())
            result[info.name].append({"shift": s, "stride": info.stride, "cells": cells, "exact": s % info.stride == 0,
                                      "equivariance_error": _relative(num_eq, den), "unshifted_error": _relative(num_un, den)})
    return result


@torch.inference_mode()
def invariance(model, images: torch.Tensor, shifts, pools=("avg",)) -> dict[str, list[float]]:
    """Relative change of pooled features under shifts: ``{"layer/pool": [error per shift]}`` (0: invariant)."""
    x = to_float(images)
    base = _outputs(model, x, None)
    result: dict[str, list[float]] = {}
    for s in shifts:
        moved = [_outputs(model, shift_images(x, dy * s, dx * s), None) for dy, dx in DIRECTIONS]
        for info in model.feature_info:
            for spec in (pools if info.spatial is not None else ("-",)):
                pool = parse_pool(spec) if spec != "-" else (lambda t: t.flatten(1))
                try:
                    if spec != "-":
                        pool.check(info)
                except ConfigError:  # a grid finer than this layer's map
                    continue
                b = pool(base[info.name])
                num = sum(float((pool(m[info.name]) - b).pow(2).sum()) for m in moved) / len(moved)
                den = float((b - b.roll(1, 0)).pow(2).sum())
                result.setdefault(info.name if spec == "-" else f"{info.name}/{spec}", []).append(_relative(num, den))
    return result
