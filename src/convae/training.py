"""The training loop: fast defaults, exact resume, atomic checkpoints.

Determinism: the train/validation split comes from ``seed``; the order of epoch ``e`` and its
input noise, masks and augmentations come from generators seeded with ``(seed, e)``. A checkpoint holds the weights,
the optimizer, the epoch and step within it, and every RNG state, so a resumed run repeats the
uninterrupted one step for step (bitwise on CPU with a fixed thread count).

Under torchrun the same loop runs on every rank with DistributedDataParallel; each rank takes its
rows of every global batch and the gradients average to the single-process ones (see
:mod:`convae.distributed`). Rank 0 alone writes the run directory and shows progress.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed, runs
from .config import RunConfig, TrainConfig
from .data import ImageDataset, load_dataset
from .errors import ConfigError, NonFiniteLossError, RunError, TrainingInterrupted
from .metrics import psnr, ssim

logger = logging.getLogger(__name__)


# --- devices and precision --------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but no CUDA device is available; use device=auto or cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("train.device='mps' but MPS is not available; use device=auto or cpu")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """True where the CPU runs bf16 matrix work natively (AMX or AVX-512-BF16)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the hardware runs it natively, else ``fp16`` on CUDA, else ``fp32``."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ConfigError("train.precision='fp16' is for GPUs; on CPU use bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast(precision: str, device: torch.device):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def warn_if_cpu_busy() -> None:
    """Log when other processes keep every core busy: torch's threads then wait for each other at each op.

    On the shared 2-core machine of docs/BENCHMARKS.md, 2 threads trained 20x slower than 1 there.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = torch.get_num_threads()
    if threads > 1 and load > cores:
        logger.warning("the CPU is busy (load average %.1f on %d cores): %d torch threads wait for each other at every op, "
                       "which can be many times slower than train.threads=1 (--threads 1); see docs/BENCHMARKS.md", load, cores, threads)


def to_input(batch: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 or float (B, C, H, W) -> float32 in [0, 1] on ``device``; conversion fused after the copy."""
    non_blocking = device.type == "cuda"
    if batch.dtype == torch.uint8:
        if non_blocking:
            batch = batch.pin_memory()
        x = batch.to(device, non_blocking=non_blocking).float().div_(255.0)
    else:
        x = batch.to(device, dtype=torch.float32, non_blocking=non_blocking)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator determined by (seed, epoch, stream) alone."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=epoch_generator(seed, epoch))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split of ``n`` images (validation at least 1 when asked)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_val = 0 if val_fraction <= 0 else max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise ConfigError(f"train.val_fraction={val_fraction} leaves no training images out of {n}")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _draw_rows(b: int, rows: tuple[int, int] | None) -> tuple[int, slice]:
    """How many rows to draw for, and which of them are this batch's (see :func:`corrupt`)."""
    return (b, slice(None)) if rows is None else (rows[1], slice(rows[0], rows[0] + b))


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Random left-right flips and zero-filled translations of a batch (``cfg.flip``, ``cfg.shift``).

    The augmented batch is both the input and the target. Draws come from ``gen`` for the whole
    batch, as in :func:`corrupt`, so a DDP rank's share and a resumed step see the same images.
    """
    b, c, h, w = x.shape
    total, keep_rows = _draw_rows(b, rows)
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format
    if cfg.flip:
        mirror = (torch.rand(total, generator=gen)[keep_rows] < 0.5).to(x.device)
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    if cfg.shift > 0:
        s = cfg.shift
        dy, dx = (torch.randint(0, 2 * s + 1, (2, total), generator=gen)[:, keep_rows]).to(x.device)
        padded = F.pad(x, (s, s, s, s))
        ys = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        xs = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded[torch.arange(b, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None], ys, xs]
    return x.contiguous(memory_format=fmt)


def corrupt(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Denoising / masking corruption of an input batch (the target stays clean).

    ``rows=(start, total)``: ``x`` is rows ``start:start + len(x)`` of a batch of ``total`` images
    (a DDP rank's share); the draws are made for the whole batch and this share's rows kept.
    """
    b, _, h, w = x.shape
    total, keep_rows = _draw_rows(b, rows)
    if cfg.noise > 0:
        noise = torch.randn((total, *x.shape[1:]), generator=gen)[keep_rows].to(x.device, memory_format=torch.preserve_format)
        x = (x + cfg.noise * noise).clamp_(0, 1)
    if cfg.mask_ratio > 0:
        keep = (torch.rand(total, 1, math.ceil(h / 4), math.ceil(w / 4), generator=gen)[keep_rows] >= cfg.mask_ratio).to(x.device, x.dtype)
        keep = keep.repeat_interleave(4, 2).repeat_interleave(4, 3)[:, :, :h, :w]
        x = x * keep
    return x


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    logits = logits.float()
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(torch.sigmoid(logits), target)


# --- evaluation ---------------------------------------------------------------------------------------
@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: ImageDataset, indices=None, *, batch_size: int = 512, precision: str = "fp32",
             device: torch.device | None = None, channels_last: bool = False) -> dict[str, float]:
    """Reconstruction MSE, PSNR (dB) and SSIM averaged over images (inputs uncorrupted)."""
    device = device or next(model.parameters()).device
    indices = np.arange(len(data)) if indices is None else np.asarray(indices)
    was_training = model.training
    model.eval()
    total = {"mse": 0.0, "psnr": 0.0, "ssim": 0.0}
    n = 0
    try:
        for batch in data.batches(indices, batch_size):
            x = to_input(batch, device, channels_last)
            with autocast(precision, device):
                recon = torch.sigmoid(model.reconstruct_logits(x).float())
            x = x.float()
            total["mse"] += F.mse_loss(recon, x, reduction="none").flatten(1).mean(1).sum().item()
            total["psnr"] += psnr(recon, x).sum().item()
            total["ssim"] += ssim(recon, x).sum().item()
            n += x.shape[0]
    finally:
        model.train(was_training)
    return {k: v / max(n, 1) for k, v in total.items()}


# --- the loop ------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    config: RunConfig | None = None
    seconds: float = 0.0
    precision: str = "fp32"


def as_dataset(images) -> ImageDataset:
    if isinstance(images, ImageDataset):
        return images
    if isinstance(images, torch.Tensor):
        return ImageDataset(images=images, labels=None, spec="array", split="train", class_names=None, skipped=[])
    raise TypeError(f"expected an ImageDataset or an N×C×H×W tensor, got {type(images).__name__}")


@contextlib.contextmanager
def held_interrupt():
    """Hold Ctrl-C (SIGINT) until the block has run, then deliver it.

    A training step's update (optimizer step, step counters, running sums) must land whole or not
    at all: Ctrl-C checkpoints the in-memory state, and one taken half-way through the optimizer's
    loop over parameters, or between the update and the counters, would resume to different
    weights. Only the main thread can handle signals; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)  # to the handler that was there: KeyboardInterrupt, by default


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    if cfg.schedule == "cosine" and total_steps > 0:
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return cfg.lr


def train_model(model: torch.nn.Module, data, cfg: TrainConfig, *, train_indices=None, val_indices=None,
                run_dir: str | Path | None = None, run_config: RunConfig | None = None, resume_state: dict | None = None,
                progress: bool = True, on_epoch_end: Callable[[dict], None] | None = None,
                on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train ``model`` in place on ``data`` (an ImageDataset or uint8/float N×C×H×W tensor).

    With ``run_dir``, a checkpoint and the metrics are written atomically after every epoch and
    on Ctrl-C. ``resume_state`` (from ``trainer_state.pt``) continues exactly where it stopped.
    ``on_step(global_step, loss)`` is called after every optimizer step with the batch's mean loss.
    Inside a torch.distributed job of two or more processes (torchrun) the model trains with
    DistributedDataParallel, every rank calling this with the same arguments.
    """
    data = as_dataset(data)
    ctx = distributed.current()  # None in a single process
    device = resolve_device(cfg.device)
    if ctx is not None and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    precision = resolve_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif device.type == "cpu":
        warn_if_cpu_busy()
    train_idx = np.arange(len(data)) if train_indices is None else np.asarray(train_indices)
    if len(train_idx) == 0:
        raise ConfigError("no training images")
    channels_last = cfg.channels_last and device.type != "mps" and hasattr(model, "stages")
    torch.manual_seed(cfg.seed)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    history: list[dict] = []
    start_epoch, start_step_in_epoch, global_step = 0, 0, 0
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        history = list(resume_state.get("history", []))
        start_epoch, start_step_in_epoch = int(resume_state["epoch"]), int(resume_state["step_in_epoch"])
        global_step = int(resume_state["global_step"])
        torch.set_rng_state(resume_state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in resume_state:
            torch.cuda.set_rng_state(resume_state["cuda_rng"])
    # fp16 (CUDA without bf16) needs loss scaling; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if scaler is not None and resume_state is not None and "grad_scaler" in resume_state:
        scaler.load_state_dict(resume_state["grad_scaler"])
    if ctx is None:
        step_fn = torch.compile(model.reconstruct_logits) if cfg.compile else model.reconstruct_logits
    else:
        ddp_model = distributed.wrap(model, device)
        step_fn = torch.compile(ddp_model) if cfg.compile else ddp_model
    is_main = ctx is None or ctx.is_main
    run_dir = Path(run_dir) if run_dir is not None else None

    def checkpoint(epoch: int, step_in_epoch: int, noise_gen: torch.Generator | None, partial: dict | None = None) -> None:
        if run_dir is None or not is_main:
            return
        state = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step, "optimizer": optimizer.state_dict(),
                 "torch_rng": torch.get_rng_state(), "history": history, "partial": partial or {}}
        if noise_gen is not None:
            state["noise_rng"] = noise_gen.get_state()
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state()
        if scaler is not None:
            state["grad_scaler"] = scaler.state_dict()
        runs.save_checkpoint(run_dir, model, state)
        runs.write_metrics(run_dir, history)

    t_start = time.perf_counter()
    model.train()
    bar = tqdm(total=total_steps, initial=min(global_step, total_steps), disable=None if progress and is_main else True, unit="step", dynamic_ncols=True, leave=False)
    epoch, step_in_epoch, noise_gen = start_epoch, start_step_in_epoch, None
    seen, loss_sum, mse_sum, t0 = 0, 0.0, 0.0, time.perf_counter()
    noise_state = buffers_before = None
    buffers = list(model.buffers())  # BatchNorm running statistics (and its step counter), if any
    augmenting = cfg.flip or cfg.shift > 0
    corrupting = cfg.noise > 0 or cfg.mask_ratio > 0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if global_step >= total_steps:
                break
            order = train_idx[epoch_order(len(train_idx), cfg.seed, epoch).numpy()]
            noise_gen = epoch_generator(cfg.seed, epoch, stream=1)
            first = start_step_in_epoch if epoch == start_epoch else 0
            if first and resume_state is not None and "noise_rng" in resume_state:
                noise_gen.set_state(resume_state["noise_rng"])
            t0, seen, loss_sum, mse_sum = time.perf_counter(), 0, 0.0, 0.0
            if first and resume_state is not None:  # the interrupted epoch's running sums
                partial = resume_state.get("partial", {})
                seen, loss_sum, mse_sum = int(partial.get("seen", 0)), float(partial.get("loss_sum", 0.0)), float(partial.get("mse_sum", 0.0))
                t0 -= float(partial.get("seconds", 0.0))
            step_in_epoch = first
            if ctx is None:
                batches = data.batches(order[first * cfg.batch_size:], cfg.batch_size, num_workers=cfg.num_workers)
            else:  # this rank's rows of each global batch
                batches = distributed.rank_batches(data, order[first * cfg.batch_size:], cfg.batch_size, ctx, num_workers=cfg.num_workers)
            for batch in batches:
                if global_step >= total_steps:
                    break
                share = None
                if ctx is not None:
                    share, batch = batch, batch.images
                target = to_input(batch, device, channels_last)  # (B, C, H, W) float32 in [0, 1]
                rows = None if share is None else (share.start, share.total)
                if augmenting or corrupting:  # remember where this step's draws start, for a checkpoint taken mid-step
                    noise_state = noise_gen.get_state()
                if augmenting:
                    target = augment(target, cfg, noise_gen, rows)
                x = corrupt(target, cfg, noise_gen, rows) if corrupting else target
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(cfg, global_step, total_steps)
                if buffers:  # BatchNorm's forward updates its running stats: keep them as the last whole step left them
                    buffers_before = [b.clone() for b in buffers]
                with autocast(precision, device):
                    logits = step_fn(x)
                loss = reconstruction_loss(logits, target, cfg.loss)
                b = target.shape[0]
                if share is None:
                    loss_value = loss.item()
                else:  # the global batch's mean loss; ``loss`` rescaled so DDP's average is its gradient
                    loss, loss_value, b = distributed.global_loss(loss, share.count, ctx)
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(epoch + 1, step_in_epoch + 1, loss_value)
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                else:
                    scaler.scale(loss).backward()
                    if cfg.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                with held_interrupt():  # the update and its bookkeeping: all of it or none
                    if scaler is None:
                        optimizer.step()
                    else:
                        scaler.step(optimizer)
                        scaler.update()
                    global_step += 1
                    step_in_epoch += 1
                    noise_state = buffers_before = None  # the step is whole: the generator's and buffers' own states are the ones to keep
                    seen += b
                    loss_sum += loss_value * b
                    if cfg.loss == "mse":
                        mse_sum += loss_value * b
                if on_step is not None:
                    on_step(global_step, loss_value)
                bar.update(1)
                if bar.n % 10 == 0 or step_in_epoch == steps_per_epoch:
                    bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss_value:.4f}", img_s=f"{seen / max(time.perf_counter() - t0, 1e-9):.0f}")
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "step": global_step, "train_loss": loss_sum / max(seen, 1)}
            if cfg.loss == "mse":
                record["train_mse"] = mse_sum / max(seen, 1)
            record.update(seconds=round(seconds, 4), images_per_s=round(seen / max(seconds, 1e-9), 1), lr=optimizer.param_groups[0]["lr"])
            if val_indices is not None and len(val_indices):
                if ctx is None:
                    val = evaluate(model, data, val_indices, precision=precision, device=device, channels_last=channels_last)
                else:
                    val = distributed.evaluate_sharded(model, data, val_indices, ctx, precision=precision, device=device, channels_last=channels_last)
                record.update(val_mse=val["mse"], val_psnr=val["psnr"], val_ssim=val["ssim"])
            history.append(record)
            if is_main:
                logger.info("epoch %d/%d %s", epoch + 1, cfg.epochs, {k: round(v, 5) if isinstance(v, float) else v for k, v in record.items()})
            if on_epoch_end is not None:
                on_epoch_end(record)
            step_in_epoch, noise_gen, noise_state = 0, None, None
            checkpoint(epoch + 1, 0, None)
    except KeyboardInterrupt:
        bar.close()
        if run_dir is not None:  # written by rank 0 only; its state is every rank's (all finished the same steps)
            # Position at the last finished step; the noise generator is exactly where that step left it.
            # The epoch is over once its record is in the history (Ctrl-C may land in its checkpoint);
            # during its validation the position is its last step, and resume redoes only the record.
            at_epoch_end = bool(history) and history[-1]["epoch"] == epoch + 1
            if noise_gen is not None and noise_state is not None:
                noise_gen.set_state(noise_state)  # the unfinished step redraws the same noise on resume
            if buffers_before is not None:  # undo the unfinished step's BatchNorm statistics update
                with torch.no_grad():
                    for buffer, before in zip(buffers, buffers_before):
                        buffer.copy_(before)
            partial = None if at_epoch_end else {"seen": seen, "loss_sum": loss_sum, "mse_sum": mse_sum, "seconds": time.perf_counter() - t0}
            checkpoint(epoch + 1 if at_epoch_end else epoch, 0 if at_epoch_end else step_in_epoch, None if at_epoch_end else noise_gen, partial)
            raise TrainingInterrupted(
                f"training interrupted at epoch {epoch + 1}, step {step_in_epoch}; checkpoint saved in {run_dir}. "
                f"Resume with: convae train --run-dir {run_dir} --resume"
            ) from None
        raise
    finally:
        bar.close()
    if ctx is not None:
        distributed.barrier()  # no rank returns before rank 0 has written the last checkpoint
    model.eval()
    return TrainResult(model=model, history=history, run_dir=run_dir, config=run_config, seconds=time.perf_counter() - t_start, precision=precision)


# --- the run-level entry point ----------------------------------------------------------------------
RESUMABLE_CHANGES = {("train", "epochs")}


def _config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s][k] and (s, k) not in RESUMABLE_CHANGES]


def load_training_data(config: RunConfig) -> ImageDataset:
    d = config.data
    data = load_dataset(d.spec, "train", image_size=tuple(d.image_size) if d.image_size else None, channels=d.channels, on_bad_image=d.on_bad_image)
    if d.limit is not None and d.limit < len(data):
        data = data.subset(np.arange(d.limit))
    return data


def train(config: RunConfig | None = None, run_dir: str | Path | None = None, *, resume: bool = False, progress: bool = True,
          dataset: ImageDataset | None = None) -> TrainResult:
    """Train the model that ``config`` describes into ``run_dir`` (or resume it there).

    Fresh runs refuse a directory that already holds a checkpoint, so nothing is overwritten.
    With ``resume=True`` the run directory's own config is used; a ``config`` passed along may
    differ from it only in ``train.epochs`` (to extend a run). Under torchrun (``WORLD_SIZE`` > 1)
    every rank calls this; they join one process group (gloo on CPU, NCCL on CUDA) for the run,
    and only rank 0 writes ``run_dir``, which must be on a filesystem every rank sees.
    """
    run_path = Path(run_dir) if run_dir is not None else None
    resume_state = None
    if resume:
        if run_path is None:
            raise ConfigError("resume needs a run directory")
        saved, saved_shape, _ = runs.read_config(run_path)
        if config is not None:
            changed = _config_diff(saved, config)
            if changed:
                raise ConfigError(f"--resume: {run_path / runs.CONFIG} differs from the given settings in {', '.join(changed)}; "
                                  "a resumed run must keep its settings (only train.epochs may grow)")
            if config.train.epochs != saved.train.epochs and saved.train.schedule == "cosine":
                logger.warning("extending a cosine-schedule run from %d to %d epochs: the learning rate is recomputed for the "
                               "new total and jumps back up, so the result will not equal a run trained for %d epochs from "
                               "the start", saved.train.epochs, config.train.epochs, config.train.epochs)
            saved.train.epochs = config.train.epochs
        config = saved
        resume_state = runs.load_trainer_state(run_path / runs.STATE)
    elif config is None:
        config = RunConfig()
    if run_path is not None and not resume and (run_path / runs.WEIGHTS).exists():
        raise RunError(f"{run_path} already holds a trained model; pass --resume to continue it or choose a new --run-dir")
    with distributed.process_group(resolve_device(config.train.device)) as ctx:
        return _train_run(config, run_path, resume_state, dataset, progress, ctx)


def _train_run(config: RunConfig, run_path: Path | None, resume_state: dict | None, dataset: ImageDataset | None, progress: bool,
               ctx: distributed.DistContext | None) -> TrainResult:
    from .models import build_model

    resume = resume_state is not None
    data = dataset if dataset is not None else load_training_data(config)  # data.py reports skipped files
    in_shape = data.shape
    torch.manual_seed(config.train.seed)  # initial weights come from the seed too
    model = build_model(config.model.kind, in_shape, **config.model.model_kwargs())  # ArchitectureError before any work
    train_idx, val_idx = split_indices(len(data), config.train.val_fraction, config.train.seed)

    if run_path is not None:
        if ctx is None or ctx.is_main:
            run_path.mkdir(parents=True, exist_ok=True)
        if resume:
            digest = runs.load_weights(model, run_path / runs.WEIGHTS)
            if resume_state.get("weights_sha256") not in (None, digest):
                raise RunError(f"{run_path}: {runs.WEIGHTS} does not match {runs.STATE} (a checkpoint torn by a crash?); "
                               "the weights on disk are newer than the optimizer state")
            if tuple(runs.read_config(run_path)[1]) != tuple(in_shape):
                raise RunError(f"{run_path}: the data now gives images of shape {tuple(in_shape)}, the run was trained on {runs.read_config(run_path)[1]}")
        distributed.barrier()  # every rank has read the run directory before rank 0 writes to it
        if ctx is None or ctx.is_main:
            runs.save_config(run_path, config, in_shape)
    result = train_model(model, data, config.train, train_indices=train_idx, val_indices=val_idx, run_dir=run_path,
                         run_config=config, resume_state=resume_state, progress=progress)
    return result
