"""Reconstruction quality of a model on a dataset: MSE, PSNR and SSIM, in one process or sharded over a torchrun job."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..distributed import DistContext, shard_range, sum_over_ranks
from ..data import ImageDataset
from ..metrics import psnr, ssim
from ..runtime import autocast, to_input


# --- evaluation ---------------------------------------------------------------------------------------
@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: ImageDataset, indices=None, *, batch_size: int = 512, precision: str = "fp32",
             device: torch.device | None = None, channels_last: bool = False) -> dict[str, float]:
    """Reconstruction MSE, PSNR (dB) and SSIM averaged over images (inputs uncorrupted), of what the model
    reconstructs (``model.target``: the images, or a fixed stem's maps)."""
    device = device or next(model.parameters()).device
    indices = np.arange(len(data)) if indices is None else np.asarray(indices)
    was_training = model.training
    model.eval()
    total = {"mse": 0.0, "psnr": 0.0, "ssim": 0.0}
    n = 0
    try:
        for batch in data.batches(indices, batch_size):
            x = model.target(to_input(batch, device, channels_last))  # the images, or a fixed stem's maps
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


def evaluate_sharded(model, data, indices, ctx: DistContext, **kwargs) -> dict[str, float]:
    """:func:`evaluate` over ``indices`` with each rank taking a shard; every rank gets the means."""
    indices = np.asarray(indices)
    start, stop = shard_range(len(indices), ctx.rank, ctx.world_size)
    part = evaluate(model, data, indices[start:stop], **kwargs)
    keys = sorted(part)
    device = kwargs.get("device") or next(model.parameters()).device
    sums = sum_over_ranks([part[k] * (stop - start) for k in keys] + [float(stop - start)], device)
    n = max(sums[-1], 1.0)
    return {k: sums[i] / n for i, k in enumerate(keys)}
