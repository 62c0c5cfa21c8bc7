"""The one layer-spec parser: which layers make each feature set, with one meaning in every verb.

A spec is a comma-separated list of feature sets; each set is one layer or several joined with ``+``,
whose pooled vectors are concatenated in that order. Layers are names (``stage2``, ``bottleneck``)
or indices (``1``, ``-1`` for the deepest)::

    "stage2"                  -> [["stage2"]]                      one set
    "stage1,stage2"           -> [["stage1"], ["stage2"]]          two sets, side by side (probe rows, viz panels)
    "stage2+stage3,-1"        -> [["stage2", "stage3"], [-1]]      a joined set and the deepest layer

Verbs that write one feature vector (``extract``, ``export``, the scikit-learn estimators) take one
set; given several, :func:`single_set` joins them and says so. Python callers may pass the parsed
form, a list of layers (one joined set) or a spec string; :func:`resolve_groups` turns any of them into
validated layer names for a model, raising :class:`~convae.errors.LayerError` with the valid choices.
"""

from __future__ import annotations

import logging
from typing import Sequence

from ..errors import LayerError

logger = logging.getLogger(__name__)

Layer = str | int


def _layer(text: str, spec: str) -> Layer:
    text = text.strip()
    if not text:
        raise LayerError(f"layer spec {spec!r} has an empty layer name; write names or indices separated by ',' "
                         "(separate sets) or '+' (one joined set), e.g. stage1,stage2+stage3")
    return int(text) if text.lstrip("-").isdigit() else text


def parse_layer_spec(spec: str | int | Sequence | None) -> list[list[Layer]] | None:
    """A spec string (or int) -> feature sets, each a list of layer names or indices; None stays None.

    A list is taken as already parsed: its string items may themselves hold ``+`` joins
    (``["stage1+stage2", "bottleneck"]`` is two sets), and a list item is one joined set.
    """
    if spec is None:
        return None
    if isinstance(spec, bool):
        raise LayerError(f"layer spec {spec!r} is not a name, an index or a spec string")
    if isinstance(spec, int):
        return [[spec]]
    if isinstance(spec, str):
        if not spec.strip():
            raise LayerError("layer spec is empty; name a layer (stage1, bottleneck) or an index (-1)")
        return [[_layer(part, spec) for part in item.split("+")] for item in spec.split(",")]
    groups: list[list[Layer]] = []
    for item in spec:
        if isinstance(item, str):
            groups += parse_layer_spec(item)
        elif isinstance(item, (list, tuple)):
            groups.append([_layer(v, str(item)) if isinstance(v, str) else v for v in item])
        else:
            groups.append([item])
    if not groups:
        raise LayerError("layer spec is empty; name a layer (stage1, bottleneck) or an index (-1)")
    return groups


def resolve_groups(model, spec) -> list[list[str]]:
    """Feature sets of ``model`` as lists of layer names (None: every layer on its own)."""
    groups = parse_layer_spec(spec)
    if groups is None:
        return [[name] for name in model.layer_names]
    return [model.resolve_layers(group) for group in groups]


def single_set(spec, *, verb: str = "this verb") -> list[Layer] | None:
    """The one feature set a verb that writes one vector takes; several sets are joined, with a warning."""
    groups = parse_layer_spec(spec)
    if groups is None:
        return None
    if len(groups) > 1:
        joined = "+".join(str(v) for group in groups for v in group)
        logger.warning("%s writes one feature vector: joining the layer sets %s into %s (write it that way to silence this)",
                       verb, ",".join("+".join(map(str, g)) for g in groups), joined)
    return [v for group in groups for v in group]


def separate_layers(spec, *, verb: str = "this verb") -> list[Layer] | None:
    """Layers one at a time, for a verb that draws a panel per layer (``viz``); a ``+`` join is an error there."""
    groups = parse_layer_spec(spec)
    if groups is None:
        return None
    joined = ["+".join(map(str, g)) for g in groups if len(g) > 1]
    if joined:
        raise LayerError(f"{verb} shows one layer at a time, and {', '.join(joined)} joins several; "
                         "list layers with ',' (e.g. stage1,stage2)")
    return [g[0] for g in groups]
