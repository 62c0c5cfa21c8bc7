"""The training objective: how a reconstruction is scored against its clean target."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    logits = logits.float()
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(torch.sigmoid(logits), target)
