"""Encoder features: layer selection, pooling to vectors, and streaming extraction to ``.npy``.

A feature set is (layers, pooling). Layers are names or indices (several are concatenated in the
order given); pooling turns each layer's map into a vector:

=============  ==========================================================================
``avg``        global average per channel: C values
``max``        global maximum per channel: C values
``avgN``       average over an NxN grid of cells (adaptive pooling): C*N*N values
``maxN``       maximum over an NxN grid of cells: C*N*N values
``spp:1,2,4``  spatial pyramid: max pooling on a 1x1, 2x2 and 4x4 grid, concatenated
``flatten``    the whole map: C*H*W values
=============  ==========================================================================

Vector layers (the ConvAE's dense bottleneck, every FCAE layer) have no spatial map and pass
through unchanged for any pooling. A grid finer than the layer's map is an error.

Values are ordered channel-major (channel, then row, then column), the order of
:func:`feature_names`. Extraction runs under ``torch.inference_mode()`` in eval mode, computes
nothing past the deepest requested layer, pools each batch as it goes and returns float32. In
fp32 the features do not depend on the batch size beyond float rounding (~1e-6); under bf16
autocast they differ from fp32 by bf16 rounding (~1e-2 relative) and, on the CPUs measured, still
not with the batch size beyond ~1e-7.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import ConfigError, DataError
from .models import LayerInfo
from .training import autocast, resolve_device, resolve_precision, to_input

logger = logging.getLogger(__name__)

POOL_FORMS = "avg, max, avgN or maxN (an NxN grid, e.g. avg2), spp:1,2,4 (spatial pyramid), flatten"
FEATURES_FORMAT = 1


# --- pooling ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pooling:
    """A parsed pooling spec: ``kind`` in avg | max | spp | flatten, ``grids`` the NxN grid sizes."""

    kind: str
    grids: tuple[int, ...] = ()

    @property
    def spec(self) -> str:
        """The canonical spec string (``avg``, ``avg2``, ``spp:1,2,4``, ``flatten``)."""
        if self.kind == "spp":
            return "spp:" + ",".join(map(str, self.grids))
        if self.kind == "flatten":
            return "flatten"
        return self.kind if self.grids == (1,) else f"{self.kind}{self.grids[0]}"

    def __str__(self) -> str:
        return self.spec

    def check(self, info: LayerInfo) -> None:
        """Raise ConfigError when a grid is finer than ``info``'s map."""
        if info.spatial is None or self.kind == "flatten":
            return
        h, w = info.spatial
        too_fine = [g for g in self.grids if g > min(h, w)]
        if too_fine:
            raise ConfigError(f"pooling {self.spec!r} needs a {too_fine[0]}x{too_fine[0]} grid but layer {info.name} "
                              f"is {h}x{w}; use a grid of at most {min(h, w)} or 'flatten'")

    def n_features(self, info: LayerInfo) -> int:
        """Length of the pooled vector of one image at layer ``info``."""
        if info.spatial is None:
            return info.channels
        if self.kind == "flatten":
            return info.n_features
        return info.channels * sum(g * g for g in self.grids)

    def names(self, info: LayerInfo) -> list[str]:
        """Readable names of the pooled values, e.g. ``stage2_avg2x2_c017_y0x1``."""
        digits = max(3, len(str(info.channels - 1)))
        if info.spatial is None:
            return [f"{info.name}_u{c:0{digits}d}" for c in range(info.channels)]
        if self.kind == "flatten":
            h, w = info.spatial
            tag, cells = "flat", [(h, w)]
        else:
            tag, cells = ("spp" if self.kind == "spp" else self.kind), [(g, g) for g in self.grids]
        names = []
        for gh, gw in cells:
            level = tag if (gh, gw) == (1, 1) and self.kind != "spp" else f"{tag}{gh}x{gw}"
            yd, xd = len(str(gh - 1)), len(str(gw - 1))
            for c in range(info.channels):
                if (gh, gw) == (1, 1):
                    names.append(f"{info.name}_{level}_c{c:0{digits}d}")
                else:
                    names += [f"{info.name}_{level}_c{c:0{digits}d}_y{y:0{yd}d}x{x:0{xd}d}" for y in range(gh) for x in range(gw)]
        return names

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) map or (B, D) vector -> (B, n_features) float32."""
        x = x.float()
        if x.dim() == 2 or self.kind == "flatten":
            return x.flatten(1)
        if self.kind == "spp":
            return torch.cat([F.adaptive_max_pool2d(x, g).flatten(1) for g in self.grids], dim=1)
        pool = F.adaptive_avg_pool2d if self.kind == "avg" else F.adaptive_max_pool2d
        return pool(x, self.grids[0]).flatten(1)


_GRID = re.compile(r"(avg|max)(\d*)")


def parse_pool(spec: str | Pooling) -> Pooling:
    """``"avg"``, ``"max3"``, ``"spp:1,2,4"``, ``"flatten"`` -> :class:`Pooling`; anything else is a ConfigError."""
    if isinstance(spec, Pooling):
        return spec
    bad = ConfigError(f"pooling {spec!r} is not valid; use one of: {POOL_FORMS}")
    if not isinstance(spec, str):
        raise bad
    text = spec.strip().lower()
    if text == "flatten":
        return Pooling("flatten")
    if m := _GRID.fullmatch(text):
        n = int(m.group(2)) if m.group(2) else 1
        if n < 1:
            raise bad
        return Pooling(m.group(1), (n,))
    if text.startswith("spp:"):
        try:
            levels = tuple(int(v) for v in text[4:].split(","))
        except ValueError:
            raise bad from None
        if not levels or min(levels) < 1 or len(set(levels)) != len(levels):
            raise bad
        return Pooling("spp", levels)
    raise bad


# --- feature sets -----------------------------------------------------------------------------------
def layer_infos(model, layers) -> list[LayerInfo]:
    """LayerInfo of each requested layer, in the caller's order (names, indices or None for all)."""
    return [model.feature_info[model.layer_names.index(name)] for name in model.resolve_layers(layers)]


def feature_layout(model, layers, pool) -> list[tuple[str, int]]:
    """``[(layer, n_features), ...]`` of the concatenated vector, checking the pooling fits each layer."""
    pooling = parse_pool(pool)
    layout = []
    for info in layer_infos(model, layers):
        pooling.check(info)
        layout.append((info.name, pooling.n_features(info)))
    return layout


def feature_names(model, layers, pool) -> list[str]:
    """Names of the concatenated feature vector's values, in order."""
    pooling = parse_pool(pool)
    return [name for info in layer_infos(model, layers) for name in pooling.names(info)]


def n_features(model, layers, pool) -> int:
    return sum(n for _, n in feature_layout(model, layers, pool))


def pool_outputs(outputs: dict[str, torch.Tensor], layers: list[str], pooling: Pooling) -> torch.Tensor:
    """Layer outputs -> pooled features (B, n_features) float32, concatenated in ``layers``' order."""
    return torch.cat([pooling(outputs[name]) for name in layers], dim=1)


def _batches(data, batch_size: int) -> Iterator[torch.Tensor]:
    """Unscaled (B, C, H, W) batches in order from an ImageDataset or an N×C×H×W tensor/array."""
    if hasattr(data, "batches"):
        yield from data.batches(np.arange(len(data)), batch_size)
        return
    for start in range(0, len(data), batch_size):
        batch = data[start:start + batch_size]
        yield batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))


def _fit_shape(batch: torch.Tensor, in_shape, convert: bool) -> torch.Tensor:
    if tuple(batch.shape[1:]) == tuple(in_shape):
        return batch
    if not convert:
        raise DataError(f"images of shape {tuple(batch.shape[1:])} do not fit this encoder, which takes (C, H, W) = "
                        f"{tuple(in_shape)}; convert them first (convae.data.convert_images) or pass convert=True")
    from .data import convert_images

    return convert_images(batch, image_size=tuple(in_shape[1:]), channels=int(in_shape[0]))


def iter_layer_outputs(model, data, layers, *, batch_size: int = 128, precision: str = "fp32", convert: bool = False,
                       progress: bool = False, desc: str = "features") -> Iterator[dict[str, torch.Tensor]]:
    """Yield ``{layer: output}`` per batch, in image order: un-pooled maps (B, C, H, W) or vectors (B, D).

    ``data``: an ImageDataset or an N×C×H×W uint8 (0..255) or float ([0, 1]) tensor. Each batch
    runs on the model's device, in eval mode (restored afterwards), under inference mode and
    ``precision`` autocast, computing nothing past the deepest layer. Images whose (C, H, W)
    differs from the model's are a DataError, or with ``convert=True`` are converted batch by
    batch by ``convae.data.convert_images``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    names = model.resolve_layers(layers)
    device = next(model.parameters()).device
    was_training = model.training
    # oneDNN's convolutions run ~3x faster in channels_last (bench/bench_extraction.py); the model's
    # own layout comes back afterwards.
    channels_last = hasattr(model, "stages") and device.type != "mps"
    was_channels_last = any(p.dim() == 4 and not p.is_contiguous() for p in model.parameters())
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.eval()
    bar = tqdm(total=len(data), disable=not progress, unit="img", desc=desc, dynamic_ncols=True, leave=False)
    try:
        for batch in _batches(data, batch_size):
            batch = _fit_shape(batch, model.in_shape, convert)
            # inference mode per batch, not across the yield: the caller's code runs in its own mode
            with torch.inference_mode(), autocast(precision, device):
                out = model.forward_intermediates(to_input(batch, device, channels_last), names, stop_early=True)
            bar.update(batch.shape[0])
            yield out
    finally:
        bar.close()
        model.train(was_training)
        if channels_last and not was_channels_last:
            model.to(memory_format=torch.contiguous_format)


def iter_features(model, data, *, layers="bottleneck", pool="avg", batch_size: int = 128, precision: str = "fp32",
                  convert: bool = False, progress: bool = False, desc: str = "features") -> Iterator[np.ndarray]:
    """Yield float32 (B, n_features) arrays batch by batch, in image order (see :func:`iter_layer_outputs`)."""
    names = model.resolve_layers(layers)
    pooling = parse_pool(pool)
    feature_layout(model, names, pooling)  # pooling errors before any work
    for out in iter_layer_outputs(model, data, names, batch_size=batch_size, precision=precision, convert=convert,
                                  progress=progress, desc=desc):
        yield pool_outputs(out, names, pooling).cpu().numpy()


def extract_features(model, data, *, layers="bottleneck", pool="avg", batch_size: int = 128, precision: str = "fp32",
                     convert: bool = False, progress: bool = False) -> np.ndarray:
    """All features of ``data`` in memory: float32 (N, n_features). See :func:`iter_features`."""
    width = n_features(model, layers, pool)
    chunks = list(iter_features(model, data, layers=layers, pool=pool, batch_size=batch_size, precision=precision,
                                 convert=convert, progress=progress))
    return np.concatenate(chunks) if chunks else np.zeros((0, width), np.float32)


# --- extraction to disk -----------------------------------------------------------------------------
def output_paths(out_path: str | Path) -> tuple[Path, Path, Path]:
    """``feats.npy`` -> (feats.npy, feats.labels.npy, feats.json)."""
    out = Path(out_path)
    if out.suffix != ".npy":
        out = out.with_name(out.name + ".npy")
    return out, out.with_name(out.stem + ".labels.npy"), out.with_suffix(".json")


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_data(data, in_shape, *, split: str = "all"):
    """A dataset spec, ImageDataset or N×C×H×W tensor -> an ImageDataset.

    A spec is loaded already converted to ``in_shape`` (C, H, W) by ``convae.data``'s rule, so a
    run trained on one dataset can read another; datasets and tensors are converted batch by
    batch during extraction (``convert=True`` in :func:`iter_features`).
    """
    from .data import ImageDataset, load_dataset

    if isinstance(data, (str, os.PathLike)):
        c, h, w = (int(v) for v in in_shape)
        return load_dataset(str(data), split, image_size=(h, w), channels=c)
    if isinstance(data, torch.Tensor):
        return ImageDataset(images=data, labels=None, spec="array", split=split, class_names=None, skipped=[])
    return data


def run_precision(run, precision: str | None, device: torch.device) -> str:
    """The precision to extract with: ``precision`` if given, else the one the run trained with."""
    return resolve_precision(precision or run.config.train.precision, device)


def extract_to_npy(run_or_path, data, out_path: str | Path, *, layers="bottleneck", pool="avg", batch_size: int = 128,
                   precision: str | None = None, split: str = "all", device: str = "auto", progress: bool = True) -> dict:
    """Stream the features of ``data`` through a run's encoder into ``out_path`` (a ``.npy`` file).

    Writes ``feats.npy`` (float32, N x n_features), ``feats.labels.npy`` (int64, when the data has
    labels) and ``feats.json`` (the sidecar returned here: run, weights SHA-256, layers, pooling,
    shape, data spec and split). Batches are written to a temporary file in the same folder as
    they come, then renamed, so memory does not grow with N and an interrupted extraction leaves
    no half-written file. ``data``: a dataset spec (``split`` picks train, test or all), an
    ImageDataset or an N×C×H×W tensor; ``None`` means the run's own dataset. ``precision``:
    None uses the run's training precision (resolved for this machine).
    """
    from .runs import Run, load_run

    run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)
    model = run.model
    dev = resolve_device(device)
    model.to(dev)
    prec = run_precision(run, precision, dev)
    names = model.resolve_layers(layers)
    pooling = parse_pool(pool)
    layout = feature_layout(model, names, pooling)
    data = prepare_data(run.config.data.spec if data is None else data, run.in_shape, split=split)
    n, width = len(data), sum(k for _, k in layout)
    out, labels_path, sidecar_path = output_paths(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (n, width)}
            np.lib.format.write_array_header_1_0(f, header)
            rows = 0
            for feats in iter_features(model, data, layers=names, pool=pooling, batch_size=batch_size, precision=prec,
                                       convert=True, progress=progress, desc="extract"):
                f.write(np.ascontiguousarray(feats, dtype="<f4").tobytes())
                rows += feats.shape[0]
            if rows != n:
                raise RuntimeError(f"extraction produced {rows} rows for {n} images")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sidecar = write_labels_and_sidecar(out, labels_path, sidecar_path, data, run=run, n=n, width=width, names=names, layout=layout,
                                       pooling=pooling, split=split, precision=prec, batch_size=batch_size, t0=t0)
    logger.info("wrote %s (%d x %d) in %.1f s", out, n, width, sidecar["seconds"])
    return sidecar


def write_labels_and_sidecar(out: Path, labels_path: Path, sidecar_path: Path, data, *, run, n: int, width: int, names, layout,
                             pooling, split: str, precision: str, batch_size: int, t0: float, **extra) -> dict:
    """The labels beside ``out`` (or none, never stale ones) and the JSON sidecar; returns the sidecar."""
    from .runs import atomic_write_text
    if data.labels is not None:
        _save_npy_atomic(labels_path, np.asarray(data.labels, dtype=np.int64))
    else:
        labels_path.unlink(missing_ok=True)  # never leave labels of an earlier extraction beside new features
    sidecar = {
        "format": "convae-features", "format_version": FEATURES_FORMAT,
        "features": out.name, "labels": labels_path.name if data.labels is not None else None,
        "shape": [n, width], "dtype": "float32",
        "run": str(Path(run.path).resolve()), "weights_sha256": run.weights_sha256, "in_shape": list(run.in_shape),
        "layers": names, "layer_features": dict(layout), "pool": pooling.spec,
        "data": {"spec": getattr(data, "spec", "array"), "split": getattr(data, "split", split), "n_images": n,
                 "class_names": list(data.class_names) if data.class_names else None},
        "precision": precision, "batch_size": batch_size, "seconds": round(time.perf_counter() - t0, 3), **extra,
    }
    atomic_write_text(sidecar_path, json.dumps(sidecar, indent=2) + "\n")
    return sidecar
