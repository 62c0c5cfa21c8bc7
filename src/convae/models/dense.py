"""The fully connected autoencoder (FCAE), the baseline that flattens the image first.

Encoder: ``hidden1``..``hiddenN`` (linear -> norm -> activation) then a linear ``bottleneck``;
the decoder mirrors it. Every input pixel has its own weight in ``hidden1``: a 3x100x100 image
into 500 units is 30,000 x 500 + 500 = 15,000,500 parameters.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ArchitectureError
from .base import FeatureModelMixin, LayerInfo, count_params, resolve_layers
from .blocks import ACTIVATIONS, check_choice, check_in_shape, count_flops, make_activation

DENSE_NORMS = (None, "batch", "layer")


def _norm1d(kind: str | None, units: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(units)
    if kind == "layer":
        return nn.LayerNorm(units)
    return nn.Identity()


class DenseAutoencoder(FeatureModelMixin, nn.Module):
    """Fully connected autoencoder on the flattened ``in_shape = (C, H, W)`` image.

    Parameters
    ----------
    in_shape : (int, int, int)
    hidden : sequence of int, default (512, 256)
        Units of each hidden encoder layer.
    latent_dim : int, default 64
    activation : {"relu", "gelu", "silu", "leaky_relu", "elu"}, default "relu"
    norm : {None, "batch", "layer"}, default None
    """

    def __init__(self, in_shape: Sequence[int], hidden: Sequence[int] = (512, 256), latent_dim: int = 64,
                 activation: str = "relu", norm: str | None = None):
        super().__init__()
        in_shape = check_in_shape(in_shape)
        hidden = tuple(int(h) for h in hidden)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("norm", norm, DENSE_NORMS)
        if min(hidden, default=1) < 1 or latent_dim < 1:
            raise ArchitectureError(f"hidden units and latent_dim must be positive, got {hidden}, {latent_dim}")
        self.config = dict(in_shape=list(in_shape), hidden=list(hidden), latent_dim=latent_dim, activation=activation, norm=norm)
        self.in_shape = in_shape
        n_in = in_shape[0] * in_shape[1] * in_shape[2]

        self.hidden = nn.ModuleList()
        prev = n_in
        for units in hidden:
            self.hidden.append(nn.Sequential(nn.Linear(prev, units), _norm1d(norm, units), make_activation(activation)))
            prev = units
        self.to_latent = nn.Linear(prev, latent_dim)

        widths = (latent_dim,) + hidden[::-1]
        self.dec = nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:]):
            self.dec.append(nn.Sequential(nn.Linear(a, b), _norm1d(norm, b), make_activation(activation)))
        self.dec.append(nn.Linear(widths[-1], n_in))

        _, h, w = in_shape
        self.layer_names = [f"hidden{i + 1}" for i in range(len(hidden))] + ["bottleneck"]
        self.feature_info = [
            LayerInfo(f"hidden{i + 1}", i, units, None, 1, (h, w), count_params(self.hidden[i]), (h - 1) / 2)
            for i, units in enumerate(hidden)
        ] + [LayerInfo("bottleneck", len(hidden), latent_dim, None, 1, (h, w), count_params(self.to_latent), (h - 1) / 2)]

    def _decoder_param_counts(self) -> dict[str, int]:
        n = len(self.dec)
        return {f"decoder.layer{i + 1}": count_params(layer) for i, layer in enumerate(self.dec) if i < n}

    def forward_intermediates(self, x: torch.Tensor, layers=None, stop_early: bool = True) -> dict[str, torch.Tensor]:
        """Outputs (B, units) of the requested layers, computing nothing past the deepest."""
        wanted = resolve_layers(self.layer_names, layers)
        deepest = max(self.layer_names.index(n) for n in wanted)
        last = deepest if stop_early else len(self.layer_names) - 1
        x = x.flatten(1)  # (B, C*H*W)
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.hidden):
            if i > last:
                return out
            x = layer(x)
            if self.layer_names[i] in wanted:
                out[self.layer_names[i]] = x
        if last == len(self.hidden):
            z = self.to_latent(x)
            if "bottleneck" in wanted:
                out["bottleneck"] = z
        return out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = layer(x)
        return self.to_latent(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self.dec:
            z = layer(z)
        return z.view(z.shape[0], *self.in_shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode_logits(z))

    def reconstruct_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_logits(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.reconstruct_logits(x))

    def flops_per_image(self) -> int:
        return count_flops(self, self.in_shape)
