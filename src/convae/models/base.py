"""Shared machinery of both model families: named layers, their geometry, and layer selection.

Every model exposes the same surface (after timm's feature API):

- ``layer_names``: encoder layers in depth order (``stage1``..``stageN``, ``bottleneck`` for the
  ConvAE; ``hidden1``..``hiddenN``, ``bottleneck`` for the FCAE);
- ``feature_info``: one :class:`LayerInfo` per named layer (channels, spatial size, stride,
  receptive field, output size, parameters);
- ``forward_intermediates(x, layers, stop_early=True)``: the requested layers' outputs, computing
  nothing past the deepest one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from torch import nn

from ..errors import LayerError


@dataclass(frozen=True)
class LayerInfo:
    """Geometry of one named encoder layer.

    ``spatial`` is ``(H, W)`` of the layer's map, or ``None`` for vector layers (dense bottleneck,
    FCAE units). ``stride`` is the distance in input pixels between neighbouring positions of the
    map, ``receptive_field`` the ``(H, W)`` input window one position sees. For vector layers the
    receptive field is the whole image.
    """

    name: str
    index: int
    channels: int
    spatial: tuple[int, int] | None
    stride: int
    receptive_field: tuple[int, int]
    params: int
    offset: float = 0.0

    # ``offset``: input coordinate (pixel centres at 0, 1, ...) of the centre of map position 0;
    # position ``i`` is centred at ``offset + i * stride``. Used to crop receptive-field patches.

    @property
    def n_features(self) -> int:
        """Number of values per image at this layer (channels x H x W)."""
        if self.spatial is None:
            return self.channels
        return self.channels * self.spatial[0] * self.spatial[1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["n_features"] = self.n_features
        return d


LayerSpec = str | int


def resolve_layers(layer_names: Sequence[str], layers: LayerSpec | Iterable[LayerSpec] | None) -> list[str]:
    """Turn names, indices (negative ones count from the deepest) or ``None`` (all) into names.

    The result keeps the caller's order and drops repeats. Unknown names or out-of-range indices
    raise :class:`LayerError` listing the valid choices.
    """
    if layers is None:
        return list(layer_names)
    if isinstance(layers, (str, int)):
        layers = [layers]
    resolved: list[str] = []
    n = len(layer_names)
    for layer in layers:
        if isinstance(layer, bool):
            raise LayerError(f"layer {layer!r} is not a name or an index; valid: {', '.join(layer_names)}")
        if isinstance(layer, int) or (isinstance(layer, str) and layer.lstrip("-").isdigit()):
            i = int(layer)
            if not -n <= i < n:
                raise LayerError(
                    f"layer index {i} is out of range: this model has {n} layers "
                    f"(0..{n - 1} or -{n}..-1): {', '.join(layer_names)}"
                )
            name = layer_names[i]
        elif isinstance(layer, str):
            if layer not in layer_names:
                raise LayerError(f"no layer named {layer!r}; valid layers: {', '.join(layer_names)}")
            name = layer
        else:
            raise LayerError(f"layer {layer!r} is not a name or an index; valid: {', '.join(layer_names)}")
        if name not in resolved:
            resolved.append(name)
    if not resolved:
        raise LayerError(f"no layer requested; valid layers: {', '.join(layer_names)}")
    return resolved


def count_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


class FeatureModelMixin:
    """Methods both autoencoders share; subclasses set ``layer_names`` and ``feature_info``."""

    layer_names: list[str]
    feature_info: list[LayerInfo]

    def layer_info(self, layer: LayerSpec) -> LayerInfo:
        (name,) = resolve_layers(self.layer_names, [layer])
        return self.feature_info[self.layer_names.index(name)]

    def resolve_layers(self, layers) -> list[str]:
        return resolve_layers(self.layer_names, layers)

    def target(self, x):
        """What the autoencoder reconstructs from images ``x`` (the images themselves unless a fixed stem maps them first)."""
        return x

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part, encoder layers by name, then the decoder parts."""
        counts = {info.name: info.params for info in self.feature_info}
        counts.update(self._decoder_param_counts())
        counts["total"] = sum(p.numel() for p in self.parameters())  # type: ignore[attr-defined]
        return counts

    def _decoder_param_counts(self) -> dict[str, int]:  # pragma: no cover - overridden
        return {}
