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
BatchNorm is synchronised: for the training forward every BatchNorm layer of the model is
swapped for a :class:`GlobalBatchNorm` sharing its parameters and buffers, whose batch mean and
variance (and running statistics) are those of the whole global batch, all-reduced over the ranks
(a stand-in image is left out). Forward values, gradients and running statistics are then the
single-process ones up to float rounding: the first step's loss of the default model agrees to
1e-7, against 2e-4 with per-rank statistics. (Rounding differences still grow over a BatchNorm
model's training with Adam, as between two single-process runs with 1 and 2 threads: the biases
of convs in front of a BatchNorm have a true gradient of 0 and move on rounding noise alone.) The
model itself is never modified: its weights, their names and the saved run are the plain model's.

Rank 0 alone writes the run directory (config, checkpoints, metrics) and shows the progress bar;
every rank reads the same checkpoint on ``--resume``. Extraction gives each rank a contiguous
shard of the dataset; rank 0 assembles one ``.npy`` in dataset order from the ranks' part files,
so the output folder (like the run directory) must be on a filesystem every rank sees.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

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


def sum_over_ranks(values: list[float], device: torch.device | None = None) -> list[float]:
    """Each value summed over every rank (one float64 all-reduce); every rank gets the sums."""
    sums = torch.tensor(values, dtype=torch.float64, device=device if device is not None and device.type == "cuda" else None)
    dist.all_reduce(sums)
    return [float(v) for v in sums.tolist()]


# --- sharding --------------------------------------------------------------------------------------------
def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``n`` for ``rank``: contiguous, sizes differing by at most one, earlier ranks larger."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


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


class _BatchShare:
    """What the synchronised BatchNorm layers of one wrapped model know of this rank's next batch."""

    def __init__(self, device: torch.device):
        self.counted = torch.ones((), dtype=torch.float64, device=device)  # 1, or 0 for a stand-in image


class GlobalBatchNorm(_BatchNorm):
    """A BatchNorm layer whose training statistics are those of the global batch over every rank.

    Made from a model's BatchNorm layer by :func:`wrap`, sharing its weight, bias and running
    statistics (the same tensors). In training, one differentiable all-reduce (float64) sums the
    per-channel (sum, sum of squares, count) of every rank's share (torch's SyncBatchNorm runs on
    GPUs only, and would count a stand-in image); the global mean and biased
    variance normalise, as a single process's ``nn.BatchNorm2d`` does on the whole batch, and the
    gradient flows back through the all-reduce, so gradients are the single-process ones too. The
    running mean and (unbiased) variance and ``num_batches_tracked`` are updated as BatchNorm
    updates them, from the global statistics, identically on every rank. A rank running a stand-in
    image (``count == 0``, see :func:`set_rank_count`) adds nothing to the sums. In eval mode it
    is a plain BatchNorm layer.
    """

    def __init__(self, bn: _BatchNorm, share: _BatchShare):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device="meta")
        self.weight, self.bias = bn.weight, bn.bias  # the same Parameters: the optimizer's, the model's
        self.running_mean, self.running_var = bn.running_mean, bn.running_var  # the same buffers, updated in place
        self.num_batches_tracked = bn.num_batches_tracked
        self.share = share

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (N, C, ...), got {input.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        counted = self.share.counted
        sums = torch.sum(x, dims, dtype=torch.float64)  # accumulated in float64; no float64 copy of x kept for backward
        squares = torch.sum(x * x, dims, dtype=torch.float64)
        local = torch.cat([sums * counted, squares * counted, (counted * (x.numel() // c)).reshape(1)])
        total = _all_reduce_sum(local)  # (2C + 1,): the global batch's sums and its values per channel
        n = total[2 * c]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean.square()).clamp_min(0)  # biased, as BatchNorm normalises
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.double()
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias.double()
        dtype = torch.promote_types(x.dtype, torch.float32)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = x.to(dtype) * scale.to(dtype).view(shape) + shift.to(dtype).view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * (n / (n - 1))
                self.running_mean.copy_(self.running_mean.double() * (1 - factor) + mean.detach() * factor)
                self.running_var.copy_(self.running_var.double() * (1 - factor) + unbiased * factor)
        return y.to(x.dtype)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over every rank; differentiable (its backward sums the gradients over the ranks)."""
    return funcol.wait_tensor(funcol.all_reduce(tensor, "sum", dist.group.WORLD))


def _with_global_batchnorm(module: nn.Module, share: _BatchShare) -> nn.Module:
    """``module`` with every BatchNorm layer a :class:`GlobalBatchNorm`, the model left as it is.

    The other modules are shallow copies: each shares the original's parameters, buffers and
    attributes, with only its children swapped, so the copy computes what the model computes.
    """
    if isinstance(module, _BatchNorm):
        return GlobalBatchNorm(module, share)
    clone = copy.copy(module)
    clone.__dict__["_modules"] = {name: None if child is None else _with_global_batchnorm(child, share)
                                  for name, child in module._modules.items()}
    return clone


class _ReconstructLogits(torch.nn.Module):
    """``forward`` = the model's ``reconstruct_logits``, so DDP's hooks see the training forward.

    With BatchNorm layers in the model, it runs a copy of the model whose BatchNorm layers are
    synchronised (:class:`GlobalBatchNorm`); the copy is always in training mode.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.share: _BatchShare | None = None
        if any(isinstance(m, _BatchNorm) for m in model.modules()):
            self.share = _BatchShare(device)
            model = _with_global_batchnorm(model, self.share).train()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.reconstruct_logits(x)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model.reconstruct_logits`` (parameters and buffers shared with ``model``).

    BatchNorm layers compute their statistics over the global batch (:class:`GlobalBatchNorm`);
    before each forward, :func:`set_rank_count` says how many images this rank's share holds.
    """
    device_ids = [torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(_ReconstructLogits(model, device), device_ids=device_ids)


def set_rank_count(wrapped: torch.nn.Module, count: int) -> None:
    """This rank's images in the next forward of ``wrapped`` (from :func:`wrap`); 0: a stand-in image, left out of the statistics."""
    share = wrapped.module.share
    if share is not None:
        share.counted.fill_(1.0 if count > 0 else 0.0)


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
