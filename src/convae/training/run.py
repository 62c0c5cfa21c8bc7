"""The run: train a config into a run directory, or resume one there, and the data a run trains on."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch

from .. import distributed, runs
from ..config import RunConfig, resolve_length, resolve_stem
from ..data import ImageDataset, load_dataset
from ..errors import ConfigError, RunError
from ..models import build_from_config
from ..runtime import resolve_device
from .budget import plan_to_budget
from .loop import TrainResult, train_model
from .plan import split_indices

logger = logging.getLogger(__name__)


# --- the run-level entry point ----------------------------------------------------------------------
RESUMABLE_CHANGES = {("train", "epochs")}



def _config_diff(a: RunConfig, b: RunConfig, in_shape) -> list[str]:
    """Keys where ``b`` (the settings given to resume) differs from ``a`` (the saved run, on images of ``in_shape``);
    a ``b`` without planned steps takes the saved ones (the budget was planned when the run started), and its
    ``model.stem="auto"`` is the stem it means on those images."""
    da, db = a.to_dict(), resolve_stem(copy.deepcopy(b), in_shape).to_dict()
    if db["train"]["planned_steps"] is None:
        db["train"]["planned_steps"] = da["train"]["planned_steps"]
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
            changed = _config_diff(saved, config, saved_shape)
            if changed:
                raise ConfigError(f"--resume: {run_path / runs.CONFIG} differs from the given settings in {', '.join(changed)}; "
                                  "a resumed run must keep its settings (only train.epochs may grow)")
            if saved.train.epochs is None and config.train.epochs is not None:
                raise ConfigError(f"--resume: {run_path} was trained for {saved.train.describe_length()}; giving train.epochs="
                                  f"{config.train.epochs} now would drop its step cap part-way through an epoch. Train a fresh "
                                  f"run with --epochs {config.train.epochs} instead")
            if config.train.epochs != saved.train.epochs and saved.train.schedule == "cosine":
                logger.warning("extending a cosine-schedule run from %s to %s: the learning rate is recomputed for the "
                               "new total and jumps back up, so the result will not equal a run trained that long from "
                               "the start", saved.train.describe_length(), config.train.describe_length())
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
    resume = resume_state is not None
    if not resume:
        resolve_length(config)  # the FCAE's default length is 10 epochs
    data = dataset if dataset is not None else load_training_data(config)  # data.py reports skipped files
    in_shape = data.shape
    if not resume:
        resolve_stem(config, in_shape)  # stem="auto": the scattering stem on images of 16 pixels a side or more
    torch.manual_seed(config.train.seed)  # initial weights come from the seed too
    model = build_from_config(config, in_shape)  # ArchitectureError before any work
    train_idx, val_idx = split_indices(len(data), config.train.val_fraction, config.train.seed)
    if config.train.time_budget is not None and config.train.planned_steps is None:
        if resume:  # a run that started with a budget has its planned steps in config.json
            raise RunError(f"{run_path / runs.CONFIG} has a time budget but no planned steps; it cannot be resumed exactly")
        config = copy.deepcopy(config)  # the caller's config stays as it was given
        config.train.planned_steps = distributed.broadcast_object(plan_to_budget(model, data, config.train, train_idx, val_idx), ctx)

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
