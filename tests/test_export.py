"""Export: the ONNX graph gives convae's features in onnxruntime; encoder safetensors rebuild the encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import convae
from convae.cli import main
from convae.config import RunConfig, apply_overrides
from convae.errors import RunError
from convae.export import GridPool, export_onnx, grid_windows, load_encoder
from convae.features import extract_features, parse_pool

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A ConvAE on 1x10x10 images: stage1 is 5x5, stage2 3x3 (grids 2 and 3 do not divide 5)."""
    from convae.training import train

    images = (np.random.default_rng(0).random((48, 10, 10)) * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("export") / "x.npy"
    np.save(path, images)
    cfg = apply_overrides(RunConfig(), [f"data.spec=npy:{path}", "model.channels=4,8", "model.latent_dim=6", "train.epochs=1",
                                        "train.batch_size=16", "train.precision=fp32", "train.threads=2"])
    out = path.parent / "run"
    train(cfg, out, progress=False)
    return out


def test_grid_windows_are_those_of_adaptive_pooling():
    assert grid_windows(5, 2) == [(0, 3), (2, 5)]
    assert grid_windows(6, 3) == [(0, 2), (2, 4), (4, 6)]


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_exportable_grid_pooling_equals_features_pooling(kind):
    gen = torch.Generator().manual_seed(0)
    for h in range(1, 8):
        for w in range(1, 8):
            for grid in range(1, min(h, w) + 1):
                pooling = parse_pool(f"{kind}{grid}")
                x = torch.randn(2, 3, h, w, generator=gen)
                torch.testing.assert_close(GridPool(pooling, (h, w))(x), pooling(x), rtol=0, atol=1e-6)
    spp = parse_pool("spp:1,2,3")
    x = torch.randn(2, 3, 5, 7, generator=gen)
    torch.testing.assert_close(GridPool(spp, (5, 7))(x), spp(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("layers, pool", [(["stage1", "stage2", "bottleneck"], "avg2"), (["stage1", "stage2"], "spp:1,2,3")])
def test_onnx_export_matches_convae_features_for_any_batch_size(run_dir, tmp_path, layers, pool):
    out = tmp_path / "encoder.onnx"
    summary = export_onnx(run_dir, out, layers=layers, pool=pool)
    assert summary["max_abs_error"] <= 1e-4
    run = convae.load_run(run_dir)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 3, 7):  # the batch axis is dynamic
        x = torch.rand(n, 1, 10, 10, generator=torch.Generator().manual_seed(n))
        want = extract_features(run.model, x, layers=layers, pool=pool, precision="fp32")
        got = session.run(["features"], {"images": x.numpy()})[0]
        assert got.shape == want.shape == (n, summary["output"][1])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["convae.layers"]) == layers and meta["convae.pool"] == parse_pool(pool).spec
    assert meta["convae.weights_sha256"] == run.weights_sha256


def test_cli_export_safetensors_holds_the_encoder_alone_and_rebuilds_it(run_dir, tmp_path, capsys):
    from safetensors import safe_open

    out = tmp_path / "encoder.safetensors"
    assert main(["export", str(run_dir), "--format", "safetensors", "--out", str(out)]) == 0
    assert "encoder tensors" in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
    assert keys and all(k.startswith(("stages.", "to_latent.")) for k in keys)
    run = convae.load_run(run_dir)
    assert keys == {k for k in run.model.state_dict() if not k.startswith(("from_latent.", "up.", "dec."))}
    encoder = load_encoder(out)
    x = torch.rand(4, 1, 10, 10)
    with torch.no_grad():
        assert torch.equal(encoder.encode(x), run.model.encode(x))
    np.testing.assert_array_equal(extract_features(encoder, x, layers=[0, 1], pool="max2"),
                                  extract_features(run.model, x, layers=[0, 1], pool="max2"))


def test_load_encoder_refuses_a_full_run_weights_file(run_dir):
    with pytest.raises(RunError, match="not a convae encoder file"):
        load_encoder(run_dir / "model.safetensors")


def test_export_onnx_refuses_a_grid_finer_than_the_map(run_dir, tmp_path):
    with pytest.raises(convae.ConfigError, match="stage2"):
        export_onnx(run_dir, tmp_path / "x.onnx", layers="stage2", pool="avg4")
    assert not list(tmp_path.iterdir())
