"""Training to a time budget: measure this machine's step time, then plan the steps so the schedule ends in time.

``train.time_budget`` (``convae train --time-budget 5m``) is the wall time the whole training call may take.
Before training, a few throwaway steps on a copy of the model (its own optimizer, the same batches,
precision and threads; the run's model, RNG streams and data order untouched) measure one step's time.
The planner then fits the steps, the per-epoch validation and checkpoints into the budget and writes the
result to ``train.planned_steps``, which ``config.json`` keeps: ``--resume`` and a rerun from that config
take the same number of steps, so the cosine schedule and the weights repeat exactly, on any machine.
With ``train.epochs`` also set, whichever ends first decides; the log says which.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np
import torch

from ..config import TrainConfig, parse_duration
from ..data import ImageDataset
from ..runtime import resolve_device, resolve_precision, thread_limit
from .loop import TrainingState
from .plan import steps_per_epoch

logger = logging.getLogger(__name__)
report = logging.getLogger("convae.progress")  # shown by the CLI like progress lines (-q hides them)

MEASURED_STEPS = 8  # timed steps on the copy; the first WARMUP_STEPS of them are not counted
WARMUP_STEPS = 3
SAFETY = 0.95  # plan 95% of the budget: step times vary


def measure_step_seconds(model: torch.nn.Module, data: ImageDataset, cfg: TrainConfig, train_idx: np.ndarray) -> float:
    """Seconds of one training step on this machine, timed on a copy of ``model`` (the run itself is untouched)."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    channels_last = cfg.channels_last and device.type != "mps" and hasattr(model, "stages")
    twin = copy.deepcopy(model).to(device)
    if channels_last:
        twin.to(memory_format=torch.channels_last)
    twin.train()
    probe_cfg = copy.copy(cfg)
    probe_cfg.epochs, probe_cfg.max_steps = 1, None
    times = []
    with thread_limit(cfg.threads), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        state = TrainingState(twin, data, probe_cfg, train_idx, device=device, precision=precision, channels_last=channels_last,
                              ctx=None, run_dir=None, count_flops=False)
        batches = state.start(0)
        for _ in range(MEASURED_STEPS):
            try:
                batch = next(batches)
            except StopIteration:
                batches = state.start(0)
                batch = next(batches)
            t0 = time.perf_counter()
            state.step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    counted = times[WARMUP_STEPS:] or times
    return float(np.median(counted))


def plan_steps(budget: float, step_seconds: float, cfg: TrainConfig, n_train: int, n_val: int, spent: float = 0.0) -> tuple[int, str]:
    """(optimizer steps, what decided) for a run of ``n_train`` training and ``n_val`` validation images.

    Validation costs about a third of a training step per batch (a forward pass, no backward), and each
    epoch ends with a checkpoint; both come out of the budget, as does ``spent`` (the measurement).
    """
    per_epoch = steps_per_epoch(n_train, cfg.batch_size)
    epoch_steps = per_epoch * cfg.n_epochs
    if cfg.step_cap is not None:
        epoch_steps = min(epoch_steps, cfg.step_cap)
    val_seconds = math.ceil(n_val / 512) * step_seconds * (512 / cfg.batch_size) / 3 if n_val else 0.0
    available = budget * SAFETY - spent
    epoch_end = val_seconds + 0.05  # validation and a checkpoint after every epoch begun

    def cost(n: int) -> float:
        return n * step_seconds + math.ceil(n / per_epoch) * epoch_end

    steps = max(1, int(available / (step_seconds + epoch_end / per_epoch)))
    while steps > 1 and cost(steps) > available:
        steps -= 1
    if steps >= epoch_steps:
        return epoch_steps, f"{_cap(cfg)} ends first ({epoch_steps} steps fit in the budget's {steps})"
    return steps, f"the time budget ends first: {steps} of the {epoch_steps} steps that {_cap(cfg)} would take"


def _cap(cfg: TrainConfig) -> str:
    """What bounds a budgeted run besides the budget: the epochs (10 when none are given) and max_steps."""
    if cfg.epochs is None and cfg.max_steps is None:
        return f"{cfg.n_epochs} epochs (a time budget's limit when train.epochs is not given)"
    return f"train.epochs={cfg.n_epochs}" + (f", train.max_steps={cfg.max_steps}" if cfg.max_steps is not None else "")


def plan_to_budget(model: torch.nn.Module, data: ImageDataset, cfg: TrainConfig, train_idx, val_idx) -> int:
    """Measure, plan, log and return ``train.planned_steps`` for ``cfg.time_budget``."""
    budget = parse_duration(cfg.time_budget)
    t0 = time.perf_counter()
    step_seconds = measure_step_seconds(model, data, cfg, np.asarray(train_idx))
    spent = time.perf_counter() - t0
    steps, why = plan_steps(budget, step_seconds, cfg, len(train_idx), 0 if val_idx is None else len(val_idx), spent)
    report.info("time budget %.0f s: one step takes %.3f s here, so the run takes %d optimizer steps (%.1f epochs); %s",
                   budget, step_seconds, steps, steps / steps_per_epoch(len(train_idx), cfg.batch_size), why)
    return steps
