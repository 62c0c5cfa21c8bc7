"""A torchrun rank's share of every global batch: cut as one process cuts it, so the gradients average to the single-process ones (see :mod:`convae.distributed`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..distributed import DistContext, shard_range
from ..errors import ConfigError


@dataclass
class RankBatch:
    """This rank's part of one global batch: ``images`` are rows ``start:start+count`` of ``total``.

    ``count == 0`` marks a stand-in: ``images`` holds one image of the batch, to be weighted 0.
    """

    images: torch.Tensor
    start: int
    count: int
    total: int



def rank_batches(data, order: np.ndarray, batch_size: int, ctx: DistContext, num_workers: int = 0) -> Iterator[RankBatch]:
    """This rank's rows of each global batch of ``order``, cut as a single process cuts it."""
    if batch_size < ctx.world_size:
        raise ConfigError(f"train.batch_size={batch_size} is smaller than the {ctx.world_size} processes; "
                          f"use a batch size of at least {ctx.world_size} (it is the global batch, split across processes)")
    order = np.asarray(order)
    n_full = len(order) // batch_size
    start, stop = shard_range(batch_size, ctx.rank, ctx.world_size)
    if n_full:
        rows = order[:n_full * batch_size].reshape(n_full, batch_size)[:, start:stop].reshape(-1)  # (n_full * b_r,)
        for images in data.batches(rows, stop - start, num_workers=num_workers):
            yield RankBatch(images, start, images.shape[0], batch_size)
    tail = order[n_full * batch_size:]
    if len(tail):
        t_start, t_stop = shard_range(len(tail), ctx.rank, ctx.world_size)
        if t_stop > t_start:
            for images in data.batches(tail[t_start:t_stop], t_stop - t_start, num_workers=num_workers):
                yield RankBatch(images, t_start, images.shape[0], len(tail))
        else:  # no image left for this rank: the batch's last image stands in, at weight 0
            for images in data.batches(tail[-1:], 1, num_workers=num_workers):
                yield RankBatch(images, len(tail) - 1, 0, len(tail))
