"""Several processes, one result: data-parallel training and sharded extraction on torch.distributed.

``torchrun --nproc-per-node N -m convae train ...`` (or ``convae train --nproc N``, which runs
exactly that) starts N processes; each joins the job that torchrun describes in the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) over gloo on CPU or
NCCL on CUDA, and the model is wrapped in DistributedDataParallel.

How a global batch is split. Every rank computes the same (seed, epoch) permutation and cuts it
into the same global batches of ``batch_size`` images as a single process would; rank ``r``
takes rows ``shard_range(b, r, N)`` of each batch (contiguous, sizes differing by at most one).
Each rank's loss is the mean over its own ``b_r`` images; it is scaled by ``b_r * N / b`` before
``backward`` so that DDP's gradient *average* over N ranks is ``sum_r (b_r / b) * grad(mean_r)``,
the gradient of the mean over all ``b`` images -- the single-process gradient, for even and
uneven splits alike (the last batch of an epoch is usually uneven). When that last batch holds
fewer images than there are ranks, a rank with no image runs one stand-in image at weight 0, so
every rank takes the same number of steps and joins every all-reduce. Input noise and masks are
drawn for the whole global batch from the (seed, epoch) generator on every rank and each rank
keeps its rows, so a denoising or masked run sees the same corruption as on one process.
BatchNorm statistics stay per rank (as in any DDP job); with ``model.norm="batch"`` the runs
agree only approximately.

Rank 0 alone writes the run directory (config, checkpoints, metrics) and shows the progress bar;
every rank reads the same checkpoint on ``--resume``. Extraction gives each rank a contiguous
shard of the dataset; rank 0 assembles one ``.npy`` in dataset order from the ranks' part files,
so the output folder (like the run directory) must be on a filesystem every rank sees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError

logger = logging.getLogger(__name__)


# --- the process group -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistContext:
    """This process's place in a job of ``world_size`` processes."""

    rank: int
    world_size: int
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with torchrun") from None


def is_main_process() -> bool:
    """True on rank 0 of a torchrun job and in any single process (for printing in the CLI)."""
    ctx = current()
    if ctx is not None:
        return ctx.is_main
    return os.environ.get("RANK", "0") == "0"


def current() -> DistContext | None:
    """The running job when a process group of two or more processes exists, else None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return None


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[DistContext | None]:
    """Join the torchrun job described by the environment, and leave it on exit.

    Yields None in a single process. A process group that already exists (a test, a user's own
    launcher) is used as it is and left open.
    """
    if dist.is_available() and dist.is_initialized():
        yield current()
        return
    if env_world_size() <= 1:
        yield None
        return
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    elif device.type == "mps":
        raise ConfigError("distributed training on MPS is not supported; use --device cpu or a CUDA machine")
    dist.init_process_group(backend)  # env:// rendezvous from torchrun
    try:
        yield current()
        dist.barrier()  # leave together: a rank still reading from one that has gone can crash in gloo
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if current() is not None:
        dist.barrier()


def broadcast_object(obj, ctx: DistContext | None):
    """``obj`` from rank 0 on every rank."""
    if ctx is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ok(ok: bool, ctx: DistContext, device: torch.device | None = None) -> bool:
    """True on every rank when ``ok`` is True on every rank (one all-reduce)."""
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=device if device and device.type == "cuda" else None)
    dist.all_reduce(flag)
    return int(flag.item()) == 0


# --- sharding --------------------------------------------------------------------------------------------
def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``n`` for ``rank``: contiguous, sizes differing by at most one, earlier ranks larger."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass
class RankBatch:
    """This rank's part of one global batch: ``images`` are rows ``start:start+count`` of ``total``.

    ``count == 0`` marks a stand-in: ``images`` holds one image of the batch, to be weighted 0.
    """

    images: torch.Tensor
    start: int
    count: int
    total: int


def rank_batches(data, order: np.ndarray, batch_size: int, ctx: DistContext, num_workers: int = 0) -> Iterator[RankBatch]:
    """This rank's rows of each global batch of ``order``, cut as a single process cuts it."""
    if batch_size < ctx.world_size:
        raise ConfigError(f"train.batch_size={batch_size} is smaller than the {ctx.world_size} processes; "
                          f"use a batch size of at least {ctx.world_size} (it is the global batch, split across processes)")
    order = np.asarray(order)
    n_full = len(order) // batch_size
    start, stop = shard_range(batch_size, ctx.rank, ctx.world_size)
    if n_full:
        rows = order[:n_full * batch_size].reshape(n_full, batch_size)[:, start:stop].reshape(-1)  # (n_full * b_r,)
        for images in data.batches(rows, stop - start, num_workers=num_workers):
            yield RankBatch(images, start, images.shape[0], batch_size)
    tail = order[n_full * batch_size:]
    if len(tail):
        t_start, t_stop = shard_range(len(tail), ctx.rank, ctx.world_size)
        if t_stop > t_start:
            for images in data.batches(tail[t_start:t_stop], t_stop - t_start, num_workers=num_workers):
                yield RankBatch(images, t_start, images.shape[0], len(tail))
        else:  # no image left for this rank: the batch's last image stands in, at weight 0
            for images in data.batches(tail[-1:], 1, num_workers=num_workers):
                yield RankBatch(images, len(tail) - 1, 0, len(tail))


def global_loss(loss: torch.Tensor, count: int, ctx: DistContext) -> tuple[torch.Tensor, float, int]:
    """(loss to backpropagate, mean loss over the global batch, images in it) from one rank's mean loss.

    One all-reduce of (loss * count, count). The returned loss is scaled by ``count * N / total``
    so that DDP's gradient average equals the gradient of the global mean (module docstring).
    Every rank gets the same mean, so a non-finite loss stops every rank at the same step.
    """
    stats = torch.stack([loss.detach().double() * count, torch.tensor(float(count), dtype=torch.float64, device=loss.device)])
    dist.all_reduce(stats)
    total = float(stats[1].item())
    return loss * (count * ctx.world_size / total), float(stats[0].item()) / total, int(round(total))


class _ReconstructLogits(torch.nn.Module):
    """``forward`` = the model's ``reconstruct_logits``, so DDP's hooks see the training forward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.reconstruct_logits(x)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model.reconstruct_logits`` (parameters shared with ``model``)."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(_ReconstructLogits(model), device_ids=device_ids)


def evaluate_sharded(model, data, indices, ctx: DistContext, **kwargs) -> dict[str, float]:
    """:func:`convae.training.evaluate` over ``indices`` with each rank taking a shard; every rank gets the means."""
    from .training import evaluate

    indices = np.asarray(indices)
    start, stop = shard_range(len(indices), ctx.rank, ctx.world_size)
    part = evaluate(model, data, indices[start:stop], **kwargs)
    keys = sorted(part)
    device = kwargs.get("device") or next(model.parameters()).device
    sums = torch.tensor([part[k] * (stop - start) for k in keys] + [float(stop - start)], dtype=torch.float64,
                        device=device if device.type == "cuda" else None)
    dist.all_reduce(sums)
    n = max(float(sums[-1].item()), 1.0)
    return {k: float(sums[i].item()) / n for i, k in enumerate(keys)}


# --- sharded extraction ------------------------------------------------------------------------------------
def extract_to_npy_sharded(run_or_path, data, out_path: str | Path, *, layers="bottleneck", pool="avg", batch_size: int = 128,
                           precision: str | None = None, split: str = "all", device: str = "auto", progress: bool = True) -> dict:
    """:func:`convae.features.extract_to_npy` with each rank of a torchrun job extracting a shard.

    Rank ``r`` extracts images ``shard_range(N, r, world)`` into a part file beside ``out_path``;
    rank 0 then writes the one ``.npy`` (in dataset order), the labels and the sidecar exactly as
    a single process would, and removes the parts. Returns the sidecar on every rank. Outside a
    job (one process) this is ``extract_to_npy`` itself.
    """
    from . import features
    from .runs import Run, atomic_write_text, load_run
    from .training import resolve_device

    dev = resolve_device(device)
    with process_group(dev) as ctx:
        if ctx is None:
            return features.extract_to_npy(run_or_path, data, out_path, layers=layers, pool=pool, batch_size=batch_size,
                                           precision=precision, split=split, device=device, progress=progress)
        if dev.type == "cuda":
            dev = torch.device("cuda", torch.cuda.current_device())
        run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)
        model = run.model.to(dev)
        prec = features.run_precision(run, precision, dev)
        names = model.resolve_layers(layers)
        pooling = features.parse_pool(pool)
        layout = features.feature_layout(model, names, pooling)
        data = features.prepare_data(run.config.data.spec if data is None else data, run.in_shape, split=split)
        n, width = len(data), sum(k for _, k in layout)
        out, labels_path, sidecar_path = features.output_paths(out_path)
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
                for feats in features.iter_features(model, shard, layers=names, pool=pooling, batch_size=batch_size,
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
            sidecar = features.write_labels_and_sidecar(out, labels_path, sidecar_path, data, run=run, n=n, width=width, names=names,
                                                        layout=layout, pooling=pooling, split=split, precision=prec,
                                                        batch_size=batch_size, t0=t0, world_size=ctx.world_size)
            logger.info("wrote %s (%d x %d) from %d processes in %.1f s", out, n, width, ctx.world_size, sidecar["seconds"])
        return broadcast_object(sidecar, ctx)


def _assemble(out: Path, part_dir: Path, n: int, width: int, world_size: int) -> None:
    """Concatenate the ranks' raw float32 parts, in rank order, into ``out`` (.npy, atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (n, width)}
            np.lib.format.write_array_header_1_0(f, header)
            for rank in range(world_size):
                part = part_dir / f"rank{rank:05d}.f32"
                start, stop = shard_range(n, rank, world_size)
                if part.stat().st_size != (stop - start) * width * 4:
                    raise RuntimeError(f"{part}: {part.stat().st_size} bytes, expected {(stop - start) * width * 4}")
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 22)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- launching ------------------------------------------------------------------------------------------------
def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The torchrun command that runs ``convae ARGV`` (less any ``--nproc N``) in ``nproc`` local processes."""
    args, skip = [], False
    for arg in argv:  # torchrun's own parser would take --nproc for an abbreviation of --nproc-per-node
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "convae", *args]


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``convae ARGV`` under torchrun with ``nproc`` processes on this machine; returns its exit status."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    command = torchrun_command(nproc, argv)
    logger.info("launching: %s", " ".join(command))
    return subprocess.call(command)
