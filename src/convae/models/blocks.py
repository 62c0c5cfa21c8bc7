"""Building blocks both model families share: input-shape checks, choices, activations, norms, the fast 2x upsampling, FLOP counting."""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchitectureError


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.1), "elu": nn.ELU}



class Upsample2x(nn.ConvTranspose2d):
    """A 2x2, stride-2 transposed conv computed as a 1x1 conv to 4x the channels plus a reshuffle.

    With kernel = stride the output windows do not overlap, so the two are the same sum of the same
    products. oneDNN runs the 1x1 conv as one matmul. The conv's channels come out ordered (row,
    column, channel), so in channels_last memory the reshuffle to the 2x map is one strided copy
    (faster than ``F.pixel_shuffle`` there). The whole bf16 training step of the default model is
    1.35x the one with ``nn.ConvTranspose2d`` on this project's CPU (bench/bench_hotpath.py,
    docs/BENCHMARKS.md). The parameters, their names and shapes are a plain
    ``nn.ConvTranspose2d``'s, so saved weights load either way.
    """

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__(channels_in, channels_out, 2, stride=2)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        n, _, h, w = x.shape
        c = self.out_channels
        # weight (in, out, 2, 2) -> (2 * 2 * out, in, 1, 1): output channel (i * 2 + j) * out + o
        weight = self.weight.permute(2, 3, 1, 0).reshape(4 * c, self.in_channels, 1, 1)
        bias = self.bias.repeat(4) if self.bias is not None else None
        y = F.conv2d(x, weight, bias)  # (n, 4 * out, h, w)
        y = y.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, c)  # (n, h, w, i, j, out): a view in channels_last
        y = y.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)  # output pixel (2h + i, 2w + j)
        return y.permute(0, 3, 1, 2)  # NCHW shape, channels_last memory



def check_in_shape(in_shape) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in in_shape)
    except (TypeError, ValueError):
        raise ArchitectureError(f"in_shape must be (channels, height, width), got {in_shape!r}") from None
    if min(c, h, w) < 1:
        raise ArchitectureError(f"in_shape must be positive (channels, height, width), got {tuple(in_shape)}")
    return c, h, w



def check_choice(name: str, value, choices: Iterable) -> None:
    if value not in tuple(choices):
        raise ArchitectureError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")



def make_activation(name: str) -> nn.Module:
    check_choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()



def norm_layer(kind: str | None, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    return nn.Identity()



def count_flops(model: nn.Module, in_shape) -> int:
    """Forward FLOPs (2 x MACs) of conv, transposed conv and linear layers, measured with hooks."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.weight[0].numel()  # C_in/groups * kh * kw
            total += 2 * k * out.numel()
        elif isinstance(mod, nn.ConvTranspose2d):
            total += 2 * mod.weight.numel() * inp[0].shape[-1] * inp[0].shape[-2]
        elif isinstance(mod, nn.Linear):
            total += 2 * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
