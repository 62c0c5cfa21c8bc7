"""Corruptions and augmentations of a training batch, drawn from the step's generator.

Draws are made for the whole global batch, so a DDP rank's share and a resumed step see the same images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import TrainConfig


def draw_rows(b: int, rows: tuple[int, int] | None) -> tuple[int, slice]:
    """How many rows to draw for, and which of them are this batch's (see :func:`corrupt`)."""
    return (b, slice(None)) if rows is None else (rows[1], slice(rows[0], rows[0] + b))



def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Random left-right flips and zero-filled translations of a batch (``cfg.flip``, ``cfg.shift``).

    The augmented batch is both the input and the target. Draws come from ``gen`` for the whole
    batch, as in :func:`corrupt`, so a DDP rank's share and a resumed step see the same images.
    """
    b, c, h, w = x.shape
    total, keep_rows = draw_rows(b, rows)
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
    total, keep_rows = draw_rows(b, rows)
    if cfg.noise > 0:
        noise = torch.randn((total, *x.shape[1:]), generator=gen)[keep_rows].to(x.device, memory_format=torch.preserve_format)
        x = (x + cfg.noise * noise).clamp_(0, 1)
    if cfg.mask_ratio > 0:
        keep = (torch.rand(total, 1, math.ceil(h / 4), math.ceil(w / 4), generator=gen)[keep_rows] >= cfg.mask_ratio).to(x.device, x.dtype)
        keep = keep.repeat_interleave(4, 2).repeat_interleave(4, 3)[:, :, :h, :w]
        x = x * keep
    return x
