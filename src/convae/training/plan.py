"""Planning a run: the train/validation split, the data order of every epoch, and how many steps the run takes.

Everything here depends on (seed, epoch) and the sizes alone, so a resumed run, a DDP rank and a rerun from
``config.json`` plan the same steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import ConfigError


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


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of ``n_train`` images (the last batch may be smaller)."""
    return math.ceil(n_train / batch_size)


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    """The run's optimizer steps: ``cfg.n_epochs`` epochs, cut to ``cfg.step_cap`` (``max_steps``, or the default
    length's steps) and to the steps a time budget planned (``cfg.planned_steps``, see :mod:`convae.training.budget`)
    when they are set."""
    steps = steps_per_epoch(n_train, cfg.batch_size) * cfg.n_epochs
    for cap in (cfg.step_cap, cfg.planned_steps):
        if cap is not None:
            steps = min(steps, cap)
    return steps


def n_train_images(n_images: int, cfg: TrainConfig) -> int:
    """How many of ``n_images`` the split leaves for training."""
    return len(split_indices(n_images, cfg.val_fraction, cfg.seed)[0])


def epochs_for_steps(steps: int, n_train: int, batch_size: int) -> int:
    """The fewest epochs that hold ``steps`` optimizer steps."""
    return math.ceil(steps / steps_per_epoch(n_train, batch_size))
