"""What training costs, in FLOPs: counted once per run by ``torch.utils.flop_counter.FlopCounterMode``.

FLOPs compare across machines where seconds do not (an AMX server trains the same recipe several times
faster than an AVX2 laptop), so every epoch record carries the training compute so far (``train_tflop``:
FLOPs per training image, forward and backward, times the images seen) beside its seconds.
"""

from __future__ import annotations

import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import TrainConfig
from .objective import reconstruction_loss

PROBE_BATCH = 2  # images in the counted step; FLOPs per image do not depend on it


def train_flops_per_image(model: torch.nn.Module, in_shape, cfg: TrainConfig) -> int:
    """FLOPs of one training step per image: the forward pass, the loss and the backward pass (2 x multiply-adds).

    Counted on a copy of ``model`` in fp32 on the CPU, so the model, its BatchNorm statistics and the
    global RNG are left as they were.
    """
    twin = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).float().train()
    x = torch.zeros(PROBE_BATCH, *(int(v) for v in in_shape))
    with FlopCounterMode(display=False) as counter, torch.random.fork_rng(devices=[]):
        x = twin.target(x)  # a fixed stem's maps (counted: training computes them every step)
        loss = reconstruction_loss(twin.reconstruct_logits(x), x, cfg.loss)
        loss.backward()
    return int(round(counter.get_total_flops() / PROBE_BATCH))
