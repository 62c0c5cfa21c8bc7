"""The training loop: a :class:`TrainingState` with a step, a checkpoint and interrupt recovery.

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
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .. import distributed, runs
from ..config import RunConfig, TrainConfig
from ..data import ImageDataset
from ..errors import ConfigError, NonFiniteLossError, TrainingInterrupted
from ..progress import Progress
from ..runtime import autocast, resolve_device, resolve_precision, thread_limit, to_input, warn_if_cpu_busy
from .corruption import augment, corrupt
from .cost import train_flops_per_image
from .objective import reconstruction_loss
from .evaluate import evaluate, evaluate_sharded
from .plan import epoch_generator, epoch_order, steps_per_epoch, total_steps
from .shards import rank_batches

logger = logging.getLogger(__name__)


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


class TrainingState:
    """Everything a training step changes, and the one place that saves and restores it.

    The position is (``epoch``, ``step_in_epoch``, ``global_step``); the epoch's running sums
    (``seen``, ``loss_sum``, ``mse_sum``) and its generator of noise, masks and augmentations
    (``noise_gen``) belong to it. A checkpoint holds all of it, so :meth:`restore` continues a run
    exactly. During a step, :attr:`noise_state` and :attr:`buffers_before` remember what the step
    had not yet changed, so that :meth:`interrupted` can put the state back to the last whole step.
    """

    def __init__(self, model: torch.nn.Module, data: ImageDataset, cfg: TrainConfig, train_idx: np.ndarray, *,
                 device: torch.device, precision: str, channels_last: bool, ctx: distributed.DistContext | None,
                 run_dir: Path | None, count_flops: bool = True):
        self.model, self.data, self.cfg, self.train_idx = model, data, cfg, train_idx
        self.device, self.precision, self.channels_last, self.ctx, self.run_dir = device, precision, channels_last, ctx, run_dir
        self.is_main = ctx is None or ctx.is_main
        self.optimizer = make_optimizer(model, cfg)
        # forward + backward FLOPs per image, for the records' train_tflop (0 where not counted: timing probes)
        self.flops_per_image = train_flops_per_image(model, data.shape, cfg) if count_flops else 0
        self.steps_per_epoch = steps_per_epoch(len(train_idx), cfg.batch_size)
        self.total_steps = total_steps(cfg, len(train_idx))
        self.planned_epochs = min(cfg.n_epochs, math.ceil(self.total_steps / max(self.steps_per_epoch, 1)))  # for the logs
        self.history: list[dict] = []
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.start_epoch = self.start_step_in_epoch = 0
        self.seen, self.loss_sum, self.mse_sum, self.t0 = 0, 0.0, 0.0, time.perf_counter()
        self.noise_gen: torch.Generator | None = None
        self.noise_state: torch.Tensor | None = None
        self.buffers = list(model.buffers())  # BatchNorm running statistics (and its step counter), if any
        self.buffers_before: list[torch.Tensor] | None = None
        self.resume_state: dict | None = None
        # fp16 (CUDA without bf16) needs loss scaling; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.augmenting = cfg.flip or cfg.shift > 0
        self.corrupting = cfg.noise > 0 or cfg.mask_ratio > 0
        if ctx is None:
            self.step_fn = torch.compile(model.reconstruct_logits) if cfg.compile else model.reconstruct_logits
        else:  # BatchNorm layers synchronised over the ranks, sharing the model's parameters and buffers
            self.ddp_model = distributed.wrap(model, device)
            self.step_fn = torch.compile(self.ddp_model) if cfg.compile else self.ddp_model

    # --- saving and restoring -------------------------------------------------------------------------
    def restore(self, state: dict) -> None:
        """Continue from a checkpoint's state (``trainer_state.pt``)."""
        self.resume_state = state
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state.get("history", []))
        self.start_epoch, self.start_step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.epoch, self.step_in_epoch = self.start_epoch, self.start_step_in_epoch
        self.global_step = int(state["global_step"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])

    def checkpoint(self, epoch: int, step_in_epoch: int, noise_gen: torch.Generator | None, partial: dict | None = None) -> None:
        """Write weights, state and metrics at position (epoch, step_in_epoch); rank 0 of a job only."""
        if self.run_dir is None or not self.is_main:
            return
        state = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.global_step,
                 "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(), "history": self.history,
                 "partial": partial or {}}
        if noise_gen is not None:
            state["noise_rng"] = noise_gen.get_state()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state()
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        runs.save_checkpoint(self.run_dir, self.model, state)
        runs.write_metrics(self.run_dir, self.history)

    def interrupted(self) -> TrainingInterrupted:
        """After Ctrl-C: checkpoint the last whole step and return the error that says how to resume.

        The epoch is over once its record is in the history (Ctrl-C may land in its checkpoint);
        during its validation the position is its last step, and resume redoes only the record.
        Written by rank 0 only; its state is every rank's (all finished the same steps).
        """
        at_epoch_end = bool(self.history) and self.history[-1]["epoch"] == self.epoch + 1
        if self.noise_gen is not None and self.noise_state is not None:
            self.noise_gen.set_state(self.noise_state)  # the unfinished step redraws the same noise on resume
        if self.buffers_before is not None:  # undo the unfinished step's BatchNorm statistics update
            with torch.no_grad():
                for buffer, before in zip(self.buffers, self.buffers_before):
                    buffer.copy_(before)
        if at_epoch_end:
            self.checkpoint(self.epoch + 1, 0, None)
        else:
            partial = {"seen": self.seen, "loss_sum": self.loss_sum, "mse_sum": self.mse_sum, "seconds": time.perf_counter() - self.t0}
            self.checkpoint(self.epoch, self.step_in_epoch, self.noise_gen, partial)
        return TrainingInterrupted(f"training interrupted at epoch {self.epoch + 1}, step {self.step_in_epoch}; checkpoint saved in "
                                   f"{self.run_dir}. Resume with: convae train --run-dir {self.run_dir} --resume")

    # --- an epoch -------------------------------------------------------------------------------------
    def start(self, epoch: int) -> Iterator:
        """Begin ``epoch`` (where a resumed run stopped, for its first): its generator, sums and batches."""
        cfg, resume = self.cfg, self.resume_state
        self.epoch = epoch
        order = self.train_idx[epoch_order(len(self.train_idx), cfg.seed, epoch).numpy()]
        self.noise_gen = epoch_generator(cfg.seed, epoch, stream=1)
        first = self.start_step_in_epoch if epoch == self.start_epoch else 0
        if first and resume is not None and "noise_rng" in resume:
            self.noise_gen.set_state(resume["noise_rng"])
        self.t0, self.seen, self.loss_sum, self.mse_sum = time.perf_counter(), 0, 0.0, 0.0
        if first and resume is not None:  # the interrupted epoch's running sums
            partial = resume.get("partial", {})
            self.seen, self.loss_sum = int(partial.get("seen", 0)), float(partial.get("loss_sum", 0.0))
            self.mse_sum = float(partial.get("mse_sum", 0.0))
            self.t0 -= float(partial.get("seconds", 0.0))
        self.step_in_epoch = first
        rows = order[first * cfg.batch_size:]
        if self.ctx is None:
            return self.data.batches(rows, cfg.batch_size, num_workers=cfg.num_workers)
        return rank_batches(self.data, rows, cfg.batch_size, self.ctx, num_workers=cfg.num_workers)  # this rank's rows

    def step(self, batch) -> float:
        """One optimizer step on ``batch`` (a rank's share under torchrun); returns the batch's mean loss."""
        cfg, device, gen = self.cfg, self.device, self.noise_gen
        share = None
        if self.ctx is not None:
            share, batch = batch, batch.images
        target = to_input(batch, device, self.channels_last)  # (B, C, H, W) float32 in [0, 1]
        rows = None if share is None else (share.start, share.total)
        if self.augmenting or self.corrupting:  # where this step's draws start, for a checkpoint taken mid-step
            self.noise_state = gen.get_state()
        if self.augmenting:
            target = augment(target, cfg, gen, rows)
        target = self.model.target(target)  # a fixed stem's maps: corrupted and reconstructed in their place
        x = corrupt(target, cfg, gen, rows) if self.corrupting else target
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(cfg, self.global_step, self.total_steps)
        if self.buffers:  # BatchNorm's forward updates its running stats: keep them as the last whole step left them
            self.buffers_before = [b.clone() for b in self.buffers]
        if share is not None:  # a stand-in image (count 0) stays out of the global BatchNorm statistics
            distributed.set_rank_count(self.ddp_model, share.count)
        with autocast(self.precision, device):
            logits = self.step_fn(x)
        loss = reconstruction_loss(logits, target, cfg.loss)
        b = target.shape[0]
        if share is None:
            loss_value = loss.item()
        else:  # the global batch's mean loss; ``loss`` rescaled so DDP's average is its gradient
            loss, loss_value, b = distributed.global_loss(loss, share.count, self.ctx)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(self.epoch + 1, self.step_in_epoch + 1, loss_value)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        else:
            self.scaler.scale(loss).backward()
            if cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        with held_interrupt():  # the update and its bookkeeping: all of it or none
            if self.scaler is None:
                self.optimizer.step()
            else:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            self.global_step += 1
            self.step_in_epoch += 1
            self.noise_state = self.buffers_before = None  # the step is whole: the generator's and buffers' own states are the ones to keep
            self.seen += b
            self.loss_sum += loss_value * b
            if cfg.loss == "mse":
                self.mse_sum += loss_value * b
        return loss_value

    def finish_epoch(self, val_indices) -> dict:
        """The epoch's record (losses, speed, validation), appended to the history and checkpointed."""
        cfg = self.cfg
        seconds = time.perf_counter() - self.t0
        record = {"epoch": self.epoch + 1, "step": self.global_step, "train_loss": self.loss_sum / max(self.seen, 1)}
        if cfg.loss == "mse":
            record["train_mse"] = self.mse_sum / max(self.seen, 1)
        before = self.history[-1].get("train_tflop", 0.0) if self.history else 0.0
        record.update(seconds=round(seconds, 4), images_per_s=round(self.seen / max(seconds, 1e-9), 1),
                      lr=self.optimizer.param_groups[0]["lr"],
                      train_tflop=round(before + self.seen * self.flops_per_image / 1e12, 6))  # compute so far, machine-free
        if val_indices is not None and len(val_indices):
            kwargs = dict(precision=self.precision, device=self.device, channels_last=self.channels_last)
            if self.ctx is None:
                val = evaluate(self.model, self.data, val_indices, **kwargs)
            else:
                val = evaluate_sharded(self.model, self.data, val_indices, self.ctx, **kwargs)
            record.update(val_mse=val["mse"], val_psnr=val["psnr"], val_ssim=val["ssim"])
        self.history.append(record)
        if self.is_main:
            logger.info("epoch %d/%d %s", self.epoch + 1, self.planned_epochs, {k: round(v, 5) if isinstance(v, float) else v for k, v in record.items()})
        return record


def train_model(model: torch.nn.Module, data, cfg: TrainConfig, *, train_indices=None, val_indices=None,
                run_dir: str | Path | None = None, run_config: RunConfig | None = None, resume_state: dict | None = None,
                progress: bool = True, on_epoch_end: Callable[[dict], None] | None = None,
                on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train ``model`` in place on ``data`` (an ImageDataset or uint8/float N×C×H×W tensor).

    With ``run_dir``, a checkpoint and the metrics are written atomically after every epoch and
    on Ctrl-C. ``resume_state`` (from ``trainer_state.pt``) continues exactly where it stopped.
    ``on_step(global_step, loss)`` is called after every optimizer step with the batch's mean loss.
    Inside a torch.distributed job of two or more processes (torchrun) the model trains with
    DistributedDataParallel, every rank calling this with the same arguments. ``cfg.threads``
    limits the threads for the duration of the call.
    """
    with thread_limit(cfg.threads):
        return _train_model(model, data, cfg, train_indices=train_indices, val_indices=val_indices, run_dir=run_dir,
                            run_config=run_config, resume_state=resume_state, progress=progress, on_epoch_end=on_epoch_end,
                            on_step=on_step)


def _train_model(model, data, cfg: TrainConfig, *, train_indices, val_indices, run_dir, run_config, resume_state, progress,
                 on_epoch_end, on_step) -> TrainResult:
    data = as_dataset(data)
    ctx = distributed.current()  # None in a single process
    device = resolve_device(cfg.device)
    if ctx is not None and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    # every rank measures bf16's speed itself (precision auto on a CPU): rank 0's choice holds for all
    precision = distributed.broadcast_object(resolve_precision(cfg.precision, device), ctx)
    if not cfg.threads and device.type == "cpu":
        warn_if_cpu_busy()
    train_idx = np.arange(len(data)) if train_indices is None else np.asarray(train_indices)
    if len(train_idx) == 0:
        raise ConfigError("no training images")
    channels_last = cfg.channels_last and device.type != "mps" and hasattr(model, "stages")
    torch.manual_seed(cfg.seed)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    run_dir = Path(run_dir) if run_dir is not None else None
    state = TrainingState(model, data, cfg, train_idx, device=device, precision=precision, channels_last=channels_last, ctx=ctx,
                          run_dir=run_dir)
    if resume_state is not None:
        state.restore(resume_state)

    t_start = time.perf_counter()
    model.train()
    # A bar on a terminal, else a log line every CONVAE_PROGRESS_INTERVAL seconds and at each epoch's end (convae.progress).
    bar = Progress(state.total_steps, initial=min(state.global_step, state.total_steps), enabled=progress and state.is_main,
                   desc="train", unit="step")
    try:
        for epoch in range(state.start_epoch, cfg.n_epochs):
            if state.global_step >= state.total_steps:
                break
            for batch in state.start(epoch):
                if state.global_step >= state.total_steps:
                    break
                loss_value = state.step(batch)
                if on_step is not None:
                    on_step(state.global_step, loss_value)
                bar.set_postfix(epoch=f"{epoch + 1}/{state.planned_epochs}", loss=f"{loss_value:.4f}",
                                img_s=f"{state.seen / max(time.perf_counter() - state.t0, 1e-9):.0f}")
                bar.update(1)
            record = state.finish_epoch(val_indices)
            if "val_mse" in record:
                bar.set_postfix(**bar.postfix, val_mse=f"{record['val_mse']:.5f}")
            bar.flush()  # not a terminal: a line at every epoch's end, whatever the interval
            if on_epoch_end is not None:
                on_epoch_end(record)
            state.step_in_epoch, state.noise_gen, state.noise_state = 0, None, None
            state.checkpoint(epoch + 1, 0, None)
    except KeyboardInterrupt:
        bar.close()
        if run_dir is not None:
            raise state.interrupted() from None
        raise
    finally:
        bar.close()
    if ctx is not None:
        distributed.barrier()  # no rank returns before rank 0 has written the last checkpoint
    model.eval()
    return TrainResult(model=model, history=state.history, run_dir=run_dir, config=run_config,
                       seconds=time.perf_counter() - t_start, precision=precision)
