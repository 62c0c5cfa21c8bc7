"""The trained encoder outside convae: ONNX (layers and pooling included) and encoder-only safetensors.

ONNX. ``export_onnx(run, "encoder.onnx", layers=..., pool=...)`` writes one graph

    images   float32 (batch, C, H, W) in [0, 1]   (uint8 pixels divided by 255)
    features float32 (batch, n_features)          the vector convae.features computes

with a dynamic batch size. Pooling to an NxN grid is written out as explicit windows computed
from each layer's static map size (the windows of adaptive pooling: cell i covers
``floor(i*H/N) .. ceil((i+1)*H/N)``), because adaptive pooling exports poorly when the map is
not a multiple of the grid; where it is, a plain average/max pool of stride H/N is used. The
export is checked in onnxruntime (when installed) against :func:`convae.features.extract_features`
within 1e-4 before the file is put in place. The run, layers, pooling and feature layout are
stored in the model's metadata_props.

safetensors. ``export_safetensors(run, "encoder.safetensors")`` keeps the encoder's tensors
alone (``stages.*`` and ``to_latent.*`` of a ConvAE, ``hidden.*`` and ``to_latent.*`` of an
FCAE) and puts the model config and input shape in the header metadata, so
:func:`load_encoder` rebuilds the model from the file alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import nn

from .atomic import atomic_write_bytes
from .config import RunConfig
from .errors import ConfigError, ExportError, RunError
from .features import Pooling, extract_features, feature_layout, layer_infos, parse_pool, single_set
from .models import build_from_config, model_kind
from .runs import as_run

logger = logging.getLogger(__name__)

ENCODER_FORMAT = "convae-encoder"
ENCODER_FORMAT_VERSION = 1
ENCODER_PREFIXES = {"conv": ("stages.", "to_latent."), "dense": ("hidden.", "to_latent.")}
TOLERANCE = 1e-4


# --- exportable pooling ----------------------------------------------------------------------------------
def grid_windows(size: int, grid: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each of ``grid`` cells over ``size`` positions, as adaptive pooling cuts them."""
    return [(i * size // grid, -(-(i + 1) * size // grid)) for i in range(grid)]


class GridPool(nn.Module):
    """:class:`convae.features.Pooling` for one layer of static map size ``spatial``, in ops ONNX exports.

    (B, C, H, W) -> (B, C * sum(N*N)) channel-major, equal to ``pooling(x)``; (B, D) vectors pass through.
    """

    def __init__(self, pooling: Pooling, spatial: tuple[int, int] | None):
        super().__init__()
        self.pooling, self.spatial = pooling, spatial

    def _grid(self, x: torch.Tensor, grid: int, kind: str) -> torch.Tensor:
        h, w = self.spatial
        if h % grid == 0 and w % grid == 0:  # equal cells: one pooling op
            pool = F.avg_pool2d if kind == "avg" else F.max_pool2d
            return pool(x, (h // grid, w // grid)).flatten(1)  # (B, C * grid * grid)
        reduce = (lambda t: t.mean(dim=(2, 3))) if kind == "avg" else (lambda t: t.amax(dim=(2, 3)))
        cells = [reduce(x[:, :, y0:y1, x0:x1]) for y0, y1 in grid_windows(h, grid) for x0, x1 in grid_windows(w, grid)]
        return torch.stack(cells, dim=2).flatten(1)  # (B, C, grid * grid) -> channel, row, column

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.dim() == 2 or self.pooling.kind == "flatten":
            return x.flatten(1)
        if self.pooling.kind == "spp":
            return torch.cat([self._grid(x, g, "max") for g in self.pooling.grids], dim=1)
        return self._grid(x, self.pooling.grids[0], self.pooling.kind)


class EncoderModule(nn.Module):
    """The encoder cut at ``layers`` with pooling: (B, C, H, W) in [0, 1] -> (B, n_features) float32."""

    def __init__(self, model: nn.Module, layers="bottleneck", pool="avg"):
        super().__init__()
        self.model = model
        self.layers = model.resolve_layers(layers)
        self.pooling = parse_pool(pool)
        self.layout = feature_layout(model, self.layers, self.pooling)  # ConfigError for a grid finer than a map
        self.pools = nn.ModuleList(GridPool(self.pooling, info.spatial) for info in layer_infos(model, self.layers))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_intermediates(images, self.layers, stop_early=True)
        return torch.cat([pool(out[name]) for name, pool in zip(self.layers, self.pools)], dim=1)


# --- ONNX ---------------------------------------------------------------------------------------------------
def export_onnx(run_or_path, out_path: str | Path, *, layers="bottleneck", pool="avg", opset: int | None = None,
                verify: bool = True) -> dict:
    """Write the encoder of a run, cut at ``layers`` and pooled, as an ONNX graph with a dynamic batch.

    Returns a summary (path, input and output shapes, layout). With ``verify`` (and onnxruntime
    installed) the graph is run on random images of two batch sizes and must match
    :func:`convae.features.extract_features` within 1e-4, or nothing is written (ExportError).
    """
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx and onnxscript packages: pip install 'convae[export]'") from None
    run = as_run(run_or_path)
    model = run.model.float().to("cpu", memory_format=torch.contiguous_format).eval()
    module = EncoderModule(model, layers, pool).eval()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, *run.in_shape)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=["images"], output_names=["features"],
                                    dynamic_shapes=({0: batch},), opset_version=opset, external_data=False, verbose=False)
    proto = program.model_proto
    meta = {"convae.format": "convae-onnx-encoder", "convae.run": str(Path(run.path).resolve()),
            "convae.weights_sha256": run.weights_sha256, "convae.in_shape": json.dumps(list(run.in_shape)),
            "convae.layers": json.dumps(module.layers), "convae.pool": module.pooling.spec,
            "convae.layer_features": json.dumps(dict(module.layout)),
            "convae.input": "images: float32 (batch, C, H, W), pixels scaled to [0, 1]"}
    for key, value in meta.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    graph = proto.SerializeToString()
    max_error = _verify(graph, model, module, run.in_shape) if verify else None
    atomic_write_bytes(out, graph, error=ExportError)  # only a verified graph reaches the file
    n = sum(k for _, k in module.layout)
    logger.info("wrote %s: images (batch, %s) -> features (batch, %d)", out, ", ".join(map(str, run.in_shape)), n)
    return {"path": str(out), "format": "onnx", "input": ["batch", *run.in_shape], "output": ["batch", n], "layers": module.layers,
            "pool": module.pooling.spec, "layer_features": dict(module.layout), "max_abs_error": max_error}


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's notes that concern torch, not the user (missing torchvision ops, deprecations)."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        registry.setLevel(level)


def _verify(graph: bytes, model: nn.Module, module: EncoderModule, in_shape) -> float | None:
    """Largest |onnxruntime - convae| over random batches of 1 and 5 images; ExportError above 1e-4."""
    try:
        import onnxruntime as ort
    except ImportError:
        logger.warning("onnxruntime is not installed; the exported graph was not checked")
        return None
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    worst = 0.0
    gen = torch.Generator().manual_seed(0)
    for n in (1, 5):
        x = torch.rand(n, *in_shape, generator=gen)
        want = extract_features(model, x, layers=module.layers, pool=module.pooling, batch_size=n, precision="fp32")
        got = session.run(["features"], {"images": x.numpy()})[0]
        if got.shape != want.shape:
            raise ExportError(f"the exported graph gives features of shape {got.shape} for {n} images, convae gives {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    if worst > TOLERANCE:
        raise ExportError(f"the exported graph differs from convae's features by up to {worst:.2e} (> {TOLERANCE:g}); nothing written")
    return worst


# --- safetensors ----------------------------------------------------------------------------------------
def encoder_state(model: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    """The encoder's tensors of ``model`` (decoder left out), by their names in the full model."""
    prefixes = ENCODER_PREFIXES[kind]
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k.startswith(prefixes)}


def export_safetensors(run_or_path, out_path: str | Path) -> dict:
    """Write the encoder's weights alone, with the config that rebuilds it in the header metadata."""
    run = as_run(run_or_path)
    kind = model_kind(run.model)
    state = encoder_state(run.model, kind)
    metadata = {"format": "pt", "convae.format": ENCODER_FORMAT, "convae.format_version": str(ENCODER_FORMAT_VERSION),
                "convae.model": json.dumps(dataclasses.asdict(run.config.model)), "convae.in_shape": json.dumps(list(run.in_shape)),
                "convae.layers": json.dumps(run.model.layer_names), "convae.run_weights_sha256": run.weights_sha256}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, st_save(state, metadata=metadata), error=ExportError)
    n_params = sum(v.numel() for v in state.values())
    logger.info("wrote %s: %d encoder tensors, %d parameters", out, len(state), n_params)
    return {"path": str(out), "format": "safetensors", "tensors": len(state), "parameters": n_params, "kind": kind,
            "in_shape": list(run.in_shape)}


def load_encoder(path: str | Path) -> nn.Module:
    """Rebuild a model from an encoder-only safetensors file (eval mode, on CPU).

    The encoder (``encode``, ``forward_intermediates``, and so every convae feature) is the trained
    one; the decoder is left at its initial weights, so ``decode`` and ``forward`` are meaningless.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise RunError(f"{path}: no such file") from None
    except Exception as e:  # SafetensorError and friends
        raise RunError(f"{path}: not a readable safetensors file ({e})") from None
    if metadata.get("convae.format") != ENCODER_FORMAT:
        raise RunError(f"{path}: not a convae encoder file (no convae.format={ENCODER_FORMAT} in its metadata); "
                       "write one with `convae export RUN --format safetensors`")
    if int(metadata.get("convae.format_version", "0")) > ENCODER_FORMAT_VERSION:
        raise RunError(f"{path}: encoder format version {metadata['convae.format_version']} is newer than this convae reads")
    try:
        config = RunConfig.from_dict({"model": json.loads(metadata["convae.model"])}, source=f"{path} metadata")
        in_shape = tuple(json.loads(metadata["convae.in_shape"]))
    except (KeyError, json.JSONDecodeError, ConfigError) as e:
        raise RunError(f"{path}: damaged convae metadata ({e})") from None
    model = build_from_config(config, in_shape)
    expected = encoder_state(model, config.model.kind)
    if set(expected) != set(state):
        raise RunError(f"{path}: tensors do not match the encoder its metadata describes: missing {sorted(set(expected) - set(state))[:5]}, "
                       f"unexpected {sorted(set(state) - set(expected))[:5]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise RunError(f"{path}: tensor {key!r} has shape {tuple(tensor.shape)}, the metadata builds {tuple(expected[key].shape)}")
    model.load_state_dict(state, strict=False)
    return model.eval()


def export(run_or_path, out_path: str | Path, *, format: str = "onnx", layers="bottleneck", pool="avg", opset: int | None = None) -> dict:
    """``convae export``: ``format`` is ``onnx`` (layers and pooling included) or ``safetensors`` (encoder weights)."""
    if format == "onnx":
        return export_onnx(run_or_path, out_path, layers=single_set(layers, verb="export") or "bottleneck", pool=pool, opset=opset)
    if format == "safetensors":
        return export_safetensors(run_or_path, out_path)
    raise ConfigError(f"export format {format!r} is not one of: onnx, safetensors")
