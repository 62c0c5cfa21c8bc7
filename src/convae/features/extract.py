"""Extraction: an encoder's features, batch by batch, in memory or streamed to ``.npy`` (one process or sharded).

Extraction runs under ``torch.inference_mode()`` in eval mode, with each BatchNorm folded into the
conv before it (on a copy: ``convae.models.fold_batchnorm``), computes
nothing past the deepest requested layer, pools each batch as it goes and returns float32. In
fp32 the features do not depend on the batch size beyond float rounding (~1e-6); under bf16
autocast they differ from fp32 by bf16 rounding (~1e-2 relative) and, on the CPUs measured, still
not with the batch size beyond ~1e-7.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..atomic import atomic_npy_stream, atomic_save_npy, atomic_write_json
from ..data import ImageDataset, convert_images, load_dataset
from ..distributed import all_ok, barrier, broadcast_object, process_group, shard_range
from ..errors import ConfigError, DataError
from ..models import count_foldable_batchnorm, fold_batchnorm
from ..progress import Progress
from ..runs import as_run
from ..runtime import autocast, cpu_has_fast_bf16, resolve_device, resolve_precision, to_input
from .pooling import feature_layout, n_features, parse_pool, pool_outputs

logger = logging.getLogger(__name__)

FEATURES_FORMAT = 1


def iter_batches(data, batch_size: int) -> Iterator[torch.Tensor]:
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
    return convert_images(batch, image_size=tuple(in_shape[1:]), channels=int(in_shape[0]))


def iter_layer_outputs(model, data, layers, *, batch_size: int = 128, precision: str = "fp32", convert: bool = False,
                       progress: bool = False, desc: str = "features") -> Iterator[dict[str, torch.Tensor]]:
    """Yield ``{layer: output}`` per batch, in image order: un-pooled maps (B, C, H, W) or vectors (B, D).

    ``data``: an ImageDataset or an N×C×H×W uint8 (0..255) or float ([0, 1]) tensor. Each batch
    runs on the model's device, in eval mode (restored afterwards; a model with BatchNorm runs as an
    eval copy with each BatchNorm folded into its conv, made once per call), under inference mode and
    ``precision`` autocast, computing nothing past the deepest layer. Images whose (C, H, W)
    differs from the model's are a DataError, or with ``convert=True`` are converted batch by
    batch by ``convae.data.convert_images``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    names = model.resolve_layers(layers)
    device = next(model.parameters()).device
    # Eval mode makes each BatchNorm a per-channel affine map, folded once per call into the conv before
    # it (convae.models.fold_batchnorm: an eval copy; ``model`` itself is not touched). Same features up
    # to float rounding, one pass over each map fewer (bench/extraction_paths.py). A model with nothing
    # to fold runs as it is, in eval mode, restored afterwards.
    folded = fold_batchnorm(model) if count_foldable_batchnorm(model) else None
    net = model if folded is None else folded
    was_training = net.training
    # oneDNN's convolutions run ~3x faster in channels_last (bench/bench_extraction.py); the model's
    # own layout comes back afterwards.
    channels_last = hasattr(net, "stages") and device.type != "mps"
    was_channels_last = any(p.dim() == 4 and not p.is_contiguous() for p in net.parameters())
    if channels_last:
        net.to(memory_format=torch.channels_last)
    net.eval()
    bar = Progress(len(data), enabled=progress, unit="img", desc=desc)  # a bar on a terminal, else log lines (convae.progress)
    try:
        for batch in iter_batches(data, batch_size):
            batch = _fit_shape(batch, net.in_shape, convert)
            # inference mode per batch, not across the yield: the caller's code runs in its own mode
            with torch.inference_mode(), autocast(precision, device):
                out = net.forward_intermediates(to_input(batch, device, channels_last), names, stop_early=True)
            bar.update(batch.shape[0])
            yield out
    finally:
        bar.close()
        if folded is None:
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


def prepare_data(data, in_shape, *, split: str = "all"):
    """A dataset spec, ImageDataset or N×C×H×W tensor -> an ImageDataset.

    A spec is loaded already converted to ``in_shape`` (C, H, W) by ``convae.data``'s rule, so a
    run trained on one dataset can read another; datasets and tensors are converted batch by
    batch during extraction (``convert=True`` in :func:`iter_features`).
    """
    if isinstance(data, (str, os.PathLike)):
        c, h, w = (int(v) for v in in_shape)
        return load_dataset(str(data), split, image_size=(h, w), channels=c)
    if isinstance(data, torch.Tensor):
        return ImageDataset(images=data, labels=None, spec="array", split=split, class_names=None, skipped=[])
    return data


def run_precision(run, precision: str | None, device: torch.device) -> str:
    """The precision to extract with: ``precision`` if given, else the one the run trained with where it is fast here.

    A run trained in bf16 on a CPU with AMX and extracted on one where bf16 is not fast (emulated, or
    measured slower than fp32: :func:`convae.runtime.cpu_has_fast_bf16`) extracts in fp32; ask
    ``precision="bf16"`` to keep it.
    """
    if precision is not None:
        return resolve_precision(precision, device)
    trained = run.config.train.precision
    if trained == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        logger.info("the run trained in bf16; bf16 is not fast on this CPU, so features are extracted in fp32")
        return "fp32"
    return resolve_precision(trained, device)


def _plan(run_or_path, data, out_path, layers, pool, precision, split, dev: torch.device):
    """What an extraction to a file needs, checked before any work: (run, model on ``dev``, precision, layers,
    pooling, layout, dataset, features path, labels path, sidecar path)."""
    run = as_run(run_or_path)
    model = run.model.to(dev)
    names = model.resolve_layers(layers)
    pooling = parse_pool(pool)
    layout = feature_layout(model, names, pooling)
    data = prepare_data(run.config.data.spec if data is None else data, run.in_shape, split=split)
    return (run, model, run_precision(run, precision, dev), names, pooling, layout, data, *output_paths(out_path))


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
    run, model, prec, names, pooling, layout, data, out, labels_path, sidecar_path = _plan(
        run_or_path, data, out_path, layers, pool, precision, split, resolve_device(device))
    n, width = len(data), sum(k for _, k in layout)
    out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    with atomic_npy_stream(out, n, width) as f:
        rows = 0
        for feats in iter_features(model, data, layers=names, pool=pooling, batch_size=batch_size, precision=prec,
                                   convert=True, progress=progress, desc="extract"):
            f.write(np.ascontiguousarray(feats, dtype="<f4").tobytes())
            rows += feats.shape[0]
        if rows != n:
            raise RuntimeError(f"extraction produced {rows} rows for {n} images")
    sidecar = write_labels_and_sidecar(out, labels_path, sidecar_path, data, run=run, n=n, width=width, names=names, layout=layout,
                                       pooling=pooling, split=split, precision=prec, batch_size=batch_size, t0=t0)
    logger.info("wrote %s (%d x %d) in %.1f s", out, n, width, sidecar["seconds"])
    return sidecar


def write_labels_and_sidecar(out: Path, labels_path: Path, sidecar_path: Path, data, *, run, n: int, width: int, names, layout,
                             pooling, split: str, precision: str, batch_size: int, t0: float, **extra) -> dict:
    """The labels beside ``out`` (or none, never stale ones) and the JSON sidecar; returns the sidecar."""
    if data.labels is not None:
        atomic_save_npy(labels_path, np.asarray(data.labels, dtype=np.int64))
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
    atomic_write_json(sidecar_path, sidecar)
    return sidecar


# --- sharded extraction ------------------------------------------------------------------------------------
def extract_to_npy_sharded(run_or_path, data, out_path: str | Path, *, layers="bottleneck", pool="avg", batch_size: int = 128,
                           precision: str | None = None, split: str = "all", device: str = "auto", progress: bool = True) -> dict:
    """:func:`convae.extract_to_npy` with each rank of a torchrun job extracting a shard.

    Rank ``r`` extracts images ``shard_range(N, r, world)`` into a part file beside ``out_path``;
    rank 0 then writes the one ``.npy`` (in dataset order), the labels and the sidecar exactly as
    a single process would, and removes the parts. Returns the sidecar on every rank. Outside a
    job (one process) this is ``extract_to_npy`` itself.
    """
    dev = resolve_device(device)
    with process_group(dev) as ctx:
        if ctx is None:
            return extract_to_npy(run_or_path, data, out_path, layers=layers, pool=pool, batch_size=batch_size,
                                           precision=precision, split=split, device=device, progress=progress)
        if dev.type == "cuda":
            dev = torch.device("cuda", torch.cuda.current_device())
        run, model, prec, names, pooling, layout, data, out, labels_path, sidecar_path = _plan(
            run_or_path, data, out_path, layers, pool, precision, split, dev)
        n, width = len(data), sum(k for _, k in layout)
        if ctx.is_main:
            out.parent.mkdir(parents=True, exist_ok=True)
        barrier()
        part_dir = Path(broadcast_object(tempfile.mkdtemp(prefix=f".{out.name}.parts.", dir=out.parent) if ctx.is_main else None, ctx))
        t0 = time.perf_counter()
        start, stop = shard_range(n, ctx.rank, ctx.world_size)
        error: BaseException | None = None
        try:
            shard = data.subset(np.arange(start, stop))
            rows = 0
            with open(part_dir / f"rank{ctx.rank:05d}.f32", "wb") as f:
                for feats in iter_features(model, shard, layers=names, pool=pooling, batch_size=batch_size,
                                                    precision=prec, convert=True, progress=progress and ctx.is_main, desc="extract"):
                    f.write(np.ascontiguousarray(feats, dtype="<f4").tobytes())
                    rows += feats.shape[0]
                f.flush()
                os.fsync(f.fileno())
            if rows != stop - start:
                raise RuntimeError(f"rank {ctx.rank} extracted {rows} rows for images {start}..{stop - 1}")
        except BaseException as e:  # every rank must reach the all-reduce below, or the others would wait forever
            error = e
        ok = all_ok(error is None, ctx, dev)
        if error is not None:
            raise error
        if not ok:
            if ctx.is_main:
                shutil.rmtree(part_dir, ignore_errors=True)
            raise RuntimeError(f"sharded extraction failed on another rank; {out} was not written")
        sidecar = None
        if ctx.is_main:
            try:
                _assemble(out, part_dir, n, width, ctx.world_size)
            finally:
                shutil.rmtree(part_dir, ignore_errors=True)
            sidecar = write_labels_and_sidecar(out, labels_path, sidecar_path, data, run=run, n=n, width=width, names=names,
                                                        layout=layout, pooling=pooling, split=split, precision=prec,
                                                        batch_size=batch_size, t0=t0, world_size=ctx.world_size)
            logger.info("wrote %s (%d x %d) from %d processes in %.1f s", out, n, width, ctx.world_size, sidecar["seconds"])
        return broadcast_object(sidecar, ctx)


def _assemble(out: Path, part_dir: Path, n: int, width: int, world_size: int) -> None:
    """Concatenate the ranks' raw float32 parts, in rank order, into ``out`` (.npy, atomic)."""
    with atomic_npy_stream(out, n, width) as f:
        for rank in range(world_size):
            part = part_dir / f"rank{rank:05d}.f32"
            start, stop = shard_range(n, rank, world_size)
            if part.stat().st_size != (stop - start) * width * 4:
                raise RuntimeError(f"{part}: {part.stat().st_size} bytes, expected {(stop - start) * width * 4}")
            with open(part, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 22)
