"""Pooling a layer's map to a vector, and the layout of a feature set (layers x pooling).

A feature set is (layers, pooling). Layers are names or indices (several are concatenated in the
order given); pooling turns each layer's map into a vector:

=============  ==========================================================================
``avg``        global average per channel: C values
``max``        global maximum per channel: C values
``avgN``       average over an NxN grid of cells (adaptive pooling): C*N*N values
``maxN``       maximum over an NxN grid of cells: C*N*N values
``spp:1,2,4``  spatial pyramid: max pooling on a 1x1, 2x2 and 4x4 grid, concatenated
``flatten``    the whole map: C*H*W values
=============  ==========================================================================

Vector layers (the ConvAE's dense bottleneck, every FCAE layer) have no spatial map and pass
through unchanged for any pooling. A grid finer than the layer's map is an error.
Values are ordered channel-major (channel, then row, then column), the order of
:func:`feature_names`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models import LayerInfo


POOL_FORMS = "avg, max, avgN or maxN (an NxN grid, e.g. avg2), spp:1,2,4 (spatial pyramid), flatten"



# --- pooling ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pooling:
    """A parsed pooling spec: ``kind`` in avg | max | spp | flatten, ``grids`` the NxN grid sizes."""

    kind: str
    grids: tuple[int, ...] = ()

    @property
    def spec(self) -> str:
        """The canonical spec string (``avg``, ``avg2``, ``spp:1,2,4``, ``flatten``)."""
        if self.kind == "spp":
            return "spp:" + ",".join(map(str, self.grids))
        if self.kind == "flatten":
            return "flatten"
        return self.kind if self.grids == (1,) else f"{self.kind}{self.grids[0]}"

    def __str__(self) -> str:
        return self.spec

    def check(self, info: LayerInfo) -> None:
        """Raise ConfigError when a grid is finer than ``info``'s map."""
        if info.spatial is None or self.kind == "flatten":
            return
        h, w = info.spatial
        too_fine = [g for g in self.grids if g > min(h, w)]
        if too_fine:
            raise ConfigError(f"pooling {self.spec!r} needs a {too_fine[0]}x{too_fine[0]} grid but layer {info.name} "
                              f"is {h}x{w}; use a grid of at most {min(h, w)} or 'flatten'")

    def n_features(self, info: LayerInfo) -> int:
        """Length of the pooled vector of one image at layer ``info``."""
        if info.spatial is None:
            return info.channels
        if self.kind == "flatten":
            return info.n_features
        return info.channels * sum(g * g for g in self.grids)

    def names(self, info: LayerInfo) -> list[str]:
        """Readable names of the pooled values, e.g. ``stage2_avg2x2_c017_y0x1``."""
        digits = max(3, len(str(info.channels - 1)))
        if info.spatial is None:
            return [f"{info.name}_u{c:0{digits}d}" for c in range(info.channels)]
        if self.kind == "flatten":
            h, w = info.spatial
            tag, cells = "flat", [(h, w)]
        else:
            tag, cells = ("spp" if self.kind == "spp" else self.kind), [(g, g) for g in self.grids]
        names = []
        for gh, gw in cells:
            level = tag if (gh, gw) == (1, 1) and self.kind != "spp" else f"{tag}{gh}x{gw}"
            yd, xd = len(str(gh - 1)), len(str(gw - 1))
            for c in range(info.channels):
                if (gh, gw) == (1, 1):
                    names.append(f"{info.name}_{level}_c{c:0{digits}d}")
                else:
                    names += [f"{info.name}_{level}_c{c:0{digits}d}_y{y:0{yd}d}x{x:0{xd}d}" for y in range(gh) for x in range(gw)]
        return names

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) map or (B, D) vector -> (B, n_features) float32."""
        x = x.float()
        if x.dim() == 2 or self.kind == "flatten":
            return x.flatten(1)
        if self.kind == "spp":
            return torch.cat([F.adaptive_max_pool2d(x, g).flatten(1) for g in self.grids], dim=1)
        pool = F.adaptive_avg_pool2d if self.kind == "avg" else F.adaptive_max_pool2d
        return pool(x, self.grids[0]).flatten(1)



_GRID = re.compile(r"(avg|max)(\d*)")



def parse_pool(spec: str | Pooling) -> Pooling:
    """``"avg"``, ``"max3"``, ``"spp:1,2,4"``, ``"flatten"`` -> :class:`Pooling`; anything else is a ConfigError."""
    if isinstance(spec, Pooling):
        return spec
    bad = ConfigError(f"pooling {spec!r} is not valid; use one of: {POOL_FORMS}")
    if not isinstance(spec, str):
        raise bad
    text = spec.strip().lower()
    if text == "flatten":
        return Pooling("flatten")
    if m := _GRID.fullmatch(text):
        n = int(m.group(2)) if m.group(2) else 1
        if n < 1:
            raise bad
        return Pooling(m.group(1), (n,))
    if text.startswith("spp:"):
        try:
            levels = tuple(int(v) for v in text[4:].split(","))
        except ValueError:
            raise bad from None
        if not levels or min(levels) < 1 or len(set(levels)) != len(levels):
            raise bad
        return Pooling("spp", levels)
    raise bad



# --- feature sets -----------------------------------------------------------------------------------
def layer_infos(model, layers) -> list[LayerInfo]:
    """LayerInfo of each requested layer, in the caller's order (names, indices or None for all)."""
    return [model.feature_info[model.layer_names.index(name)] for name in model.resolve_layers(layers)]



def feature_layout(model, layers, pool) -> list[tuple[str, int]]:
    """``[(layer, n_features), ...]`` of the concatenated vector, checking the pooling fits each layer."""
    pooling = parse_pool(pool)
    layout = []
    for info in layer_infos(model, layers):
        pooling.check(info)
        layout.append((info.name, pooling.n_features(info)))
    return layout



def feature_names(model, layers, pool) -> list[str]:
    """Names of the concatenated feature vector's values, in order."""
    pooling = parse_pool(pool)
    return [name for info in layer_infos(model, layers) for name in pooling.names(info)]



def n_features(model, layers, pool) -> int:
    return sum(n for _, n in feature_layout(model, layers, pool))



def pool_outputs(outputs: dict[str, torch.Tensor], layers: list[str], pooling: Pooling) -> torch.Tensor:
    """Layer outputs -> pooled features (B, n_features) float32, concatenated in ``layers``' order."""
    return torch.cat([pooling(outputs[name]) for name in layers], dim=1)
