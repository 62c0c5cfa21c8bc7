"""The fixed scattering stem (convae.models.stem) and ConvAEs built on it (model.stem="scattering")."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import convae
from convae.config import RunConfig, apply_overrides
from convae.errors import ArchitectureError, ConfigError
from convae.models import ConvAutoencoder, build_from_config
from convae.models.stem import ScatteringStem


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Blurred random images in [0, 1]: strokes and edges at every orientation."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size // 4, size // 4, generator=gen)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("J", [1, 2])
def test_stem_equals_kymatio_first_order_scattering_away_from_the_borders(J):
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    x = smooth_images(6, 64)
    stem = ScatteringStem(1, J=J, L=8)
    ours = stem._maps(x)
    theirs = ScatteringTorch2D(J=J, shape=(64, 64), L=8, max_order=1)(x.contiguous()).flatten(1, 2)
    assert ours.shape == theirs.shape == (6, 1 + 8 * J, 64 // 2 ** J, 64 // 2 ** J)
    m = math.ceil((stem.receptive_field // 2) / stem.stride)  # output positions whose windows stay inside the image
    inner = (slice(None), slice(None), slice(m, -m), slice(m, -m))
    err = (ours[inner] - theirs[inner]).flatten(2).norm(dim=2) / theirs[inner].flatten(2).norm(dim=2)
    # J=2: Kymatio subsamples the scale-1 wavelet maps by 2 before their modulus (an approximation, aliasing
    # a little of their band); the stem computes them at full resolution
    assert err.max() < (1e-3 if J == 1 else 1e-2)


def test_stem_scale_maps_the_strongest_edge_to_one_and_a_flat_image_to_its_grey_level():
    stem = ScatteringStem(1, J=1, L=8)
    u = torch.arange(64, dtype=torch.float64) - 32
    rows, cols = torch.meshgrid(u, u, indexing="ij")
    for t in range(8):
        theta = (int(8 - 8 / 2 - 1) - t) * math.pi / 8
        edge = (rows * math.cos(theta) + cols * math.sin(theta) >= 0).float()[None, None]
        out = stem(edge)[0, 1 + t, 4:-4, 4:-4]
        assert abs(float(out.max()) - 1.0) < 0.02, t  # the scale is this edge's own peak response
    flat = stem(torch.full((2, 1, 20, 20), 0.3))
    torch.testing.assert_close(flat[:, 0], torch.full((2, 10, 10), 0.3))
    assert float(flat[:, 1:].abs().max()) < 1e-4  # the Morlet wavelets have zero mean
    noisy = stem(torch.rand(4, 1, 28, 28))
    assert float(noisy.min()) >= 0.0 and float(noisy.max()) <= 1.0


def test_stem_treats_each_input_channel_alike_and_orders_maps_by_channel():
    x = smooth_images(4, 24, seed=1)
    rgb = torch.cat([x, x.flip(-1), 1 - x], dim=1)
    stem3, stem1 = ScatteringStem(3), ScatteringStem(1)
    out = stem3(rgb)
    assert out.shape == (4, 27, 12, 12)
    for c in range(3):
        torch.testing.assert_close(out[:, 9 * c:9 * c + 9], stem1(rgb[:, c:c + 1]))


def test_a_convae_on_the_stem_reconstructs_the_stems_maps_and_names_it_a_layer():
    model = ConvAutoencoder((1, 28, 28), channels=(8, 16), norm="batch", bottleneck="conv", stem="scattering").eval()
    x = torch.rand(3, 1, 28, 28)
    assert model.layer_names == ["stem", "stage1", "stage2", "bottleneck"]
    assert model(x).shape == model.target(x).shape == (3, 9, 14, 14)
    out = model.forward_intermediates(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "stem": (3, 9, 14, 14), "stage1": (3, 8, 7, 7), "stage2": (3, 16, 4, 4), "bottleneck": (3, 64, 4, 4)}
    torch.testing.assert_close(out["stem"], model.stem(x))
    torch.testing.assert_close(out["bottleneck"], model.encode(x))
    assert list(model.forward_intermediates(x, ["stem"])) == ["stem"]
    info = {i.name: i for i in model.feature_info}
    assert info["stem"].params == 0 and info["stem"].n_features == 9 * 14 * 14
    assert [i.index for i in model.feature_info] == [0, 1, 2, 3]
    assert not any(k.startswith("stem") for k in model.state_dict())  # fixed and derived from the config
    assert model.config["stem"] == "scattering" and (model.config["stem_J"], model.config["stem_L"]) == (1, 8)


def test_stem_receptive_fields_and_offsets_match_gradient_support():
    model = ConvAutoencoder((1, 64, 64), channels=(2, 2), downsample="avg", activation="leaky_relu", stem="scattering").double()
    for info in model.feature_info[:-1]:
        x = torch.rand(1, 1, 64, 64, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            h = model.stem._maps(x) / model.stem.scale.double().repeat(1)[:, None, None]  # unclipped: gradients reach every pixel
            for stage in model.stages[:info.index]:
                h = stage(h)
        i = h.shape[-1] // 2
        h[0, :, i, i].sum().backward()
        rows = (x.grad[0, 0].abs().sum(1) > 0).nonzero().flatten()
        assert rows.max() - rows.min() + 1 == info.receptive_field[0], info.name
        assert abs((rows.max() + rows.min()) / 2 - (info.offset + i * info.stride)) < 1e-9, info.name


def test_stem_settings_are_checked_and_too_small_images_name_the_stem():
    with pytest.raises(ArchitectureError, match="stem_J"):
        ConvAutoencoder((1, 28, 28), stem="scattering", stem_J=0)
    with pytest.raises(ArchitectureError, match="stem='wavelets' is not one of"):
        ConvAutoencoder((1, 28, 28), stem="wavelets")
    with pytest.raises(ArchitectureError, match="8x8 -> stem -> 4x4"):
        ConvAutoencoder((1, 8, 8), channels=(4, 4, 4), stem="scattering")
    with pytest.raises(ConfigError, match="model.stem"):
        apply_overrides(RunConfig(), ["model.stem=wavelets"])


def test_stem_config_round_trips_and_older_configs_build_without_one():
    cfg = apply_overrides(RunConfig(), ["model.stem=scattering", "model.stem_J=2", "model.channels=16"])
    model = build_from_config(cfg, (1, 32, 32))
    assert model.stem is not None and model.stem.J == 2 and model.feature_info[0].spatial == (8, 8)
    assert "stem" not in apply_overrides(RunConfig(), ["model.stem=none"]).model.model_kwargs()
    # model.stem="auto" (the default): the stem on images of 16 pixels a side or more, none on 8x8 digits
    assert RunConfig().model.model_kwargs((1, 28, 28))["stem"] == "scattering"
    assert "stem" not in RunConfig().model.model_kwargs((1, 8, 8)) and "stem" not in RunConfig().model.model_kwargs((3, 15, 40))
    assert build_from_config(RunConfig(), (1, 16, 16)).layer_names[0] == "stem"
    assert build_from_config(RunConfig(), (1, 8, 8)).layer_names[0] == "stage1"
    # a run's config.json saved before the stem existed has no stem key: it rebuilds without one
    from convae.config import resolve_stem
    record = {"format_version": 1, **RunConfig().to_dict(), "in_shape": [1, 28, 28]}
    del record["model"]["stem"]
    assert RunConfig.from_dict(record).model.stem == "none"
    assert resolve_stem(RunConfig(), (1, 28, 28)).model.stem == "scattering"
    assert resolve_stem(RunConfig(), (1, 8, 8)).model.stem == "none"


def test_training_flops_count_the_stem_every_step():
    from convae.training.cost import train_flops_per_image

    cfg = apply_overrides(RunConfig(), ["model.stem=scattering", "model.channels=8,8"])
    with_stem = build_from_config(cfg, (1, 28, 28))
    stem_flops = train_flops_per_image(with_stem, (1, 28, 28), cfg.train)
    learned = ConvAutoencoder((9, 14, 14), **{**cfg.model.model_kwargs(), "stem": None})
    # 16 wavelet filters of 13x13 and 9 low-passes of 7x7 at stride 2, 2 FLOPs per multiply-add
    expected = 2 * (16 * 13 * 13 * 28 * 28 + 9 * 7 * 7 * 14 * 14)
    assert stem_flops - train_flops_per_image(learned, (9, 14, 14), cfg.train) == pytest.approx(expected, rel=0.02)


@pytest.fixture(scope="module")
def stem_run(tmp_path_factory):
    from convae.training import train

    images = (smooth_images(64, 12, seed=2)[:, 0].numpy() * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("stem") / "x.npy"
    np.save(path, images)
    cfg = apply_overrides(RunConfig(), [f"data.spec=npy:{path}", "model.stem=scattering", "model.channels=8,8", "train.epochs=3",
                                        "train.batch_size=16", "train.precision=fp32", "train.threads=2", "train.lr=3e-3"])
    out = path.parent / "run"
    result = train(cfg, out, progress=False)
    return out, result


def test_a_stem_run_trains_saves_and_reloads_the_same_features(stem_run):
    run_dir, result = stem_run
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert json.loads((run_dir / "config.json").read_text())["model"]["stem"] == "scattering"
    run = convae.load_run(run_dir)
    x = smooth_images(5, 12, seed=3)
    want = result.model.eval().forward_intermediates(x, ["stem", "stage2"])
    got = run.model.forward_intermediates(x, ["stem", "stage2"])
    for k in want:
        torch.testing.assert_close(got[k], want[k])


def test_a_stem_run_exports_to_onnx_with_the_same_features(stem_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from convae.export import export_onnx
    from convae.features import extract_features

    run_dir, _ = stem_run
    out = tmp_path / "encoder.onnx"
    summary = export_onnx(run_dir, out, layers=["stem", "stage2"], pool="avg2")
    assert summary["max_abs_error"] <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    run = convae.load_run(run_dir)
    for n in (1, 4):
        x = smooth_images(n, 12, seed=n)
        want = extract_features(run.model, x, layers=["stem", "stage2"], pool="avg2", precision="fp32")
        np.testing.assert_allclose(session.run(["features"], {"images": x.numpy()})[0], want, rtol=0, atol=1e-4)


def test_reconstruction_figure_shows_a_stem_models_low_pass_maps(stem_run):
    from convae.viz.figures import plot_reconstructions, viewable

    run = convae.load_run(stem_run[0])
    x = smooth_images(4, 12, seed=4)
    shown = viewable(run.model, run.model.target(x))
    assert shown.shape == x.shape
    fig = plot_reconstructions({"ConvAE": run.model}, x)
    assert any("stem's maps" in t.get_text() for ax in fig.axes for t in ax.get_yticklabels())


def test_filters_of_a_stem_model_are_its_wavelets_and_the_filter_study_refuses_it(stem_run):
    from convae.analysis.filters import filter_study
    from convae.viz.figures import first_layer_filters

    run = convae.load_run(stem_run[0])
    torch.testing.assert_close(first_layer_filters(run.model), run.model.stem.wavelets)
    with pytest.raises(ArchitectureError, match="model.stem=none"):
        filter_study(run)


def test_the_report_of_a_stem_run_shows_the_fixed_wavelets(stem_run, tmp_path):
    from convae.report import build_report

    html = build_report(stem_run[0])
    assert "the fixed scattering stem" in html and "Morlet wavelets" in html


def test_gradients_reach_the_image_through_the_stem_and_it_runs_in_fp32_under_autocast():
    model = ConvAutoencoder((1, 28, 28), channels=(8, 8), norm="batch", bottleneck="conv", stem="scattering").eval()
    x = smooth_images(2, 28).requires_grad_(True)
    model.forward_intermediates(x, ["stage2"])["stage2"].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # activation maximization ascends through the stem
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = model.target(smooth_images(2, 28))
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, model.target(smooth_images(2, 28)))


def test_flops_per_image_counts_the_stem():
    with_stem = ConvAutoencoder((1, 28, 28), channels=(8, 8), stem="scattering")
    learned = ConvAutoencoder((9, 14, 14), channels=(8, 8))
    stem = 2 * (16 * 13 * 13 * 28 * 28 + 9 * 7 * 7 * 14 * 14)
    assert with_stem.stem.flops(28, 28) == stem
    # the decoders differ only in their last conv's output channels (9 maps here, 9 channels there): equal
    assert with_stem.flops_per_image() == learned.flops_per_image() + stem


def test_an_encoder_exported_before_the_stem_rebuilds_without_one():
    import dataclasses

    from convae.config import ModelConfig

    old = dataclasses.asdict(ModelConfig(channels=[64, 128, 128]))
    for key in ("stem", "stem_J", "stem_L"):
        del old[key]
    cfg = RunConfig.from_dict({"model": old}, source="an old encoder header")
    assert cfg.model.stem == "none" and "stem" not in cfg.model.model_kwargs((1, 28, 28))


def test_an_fcae_run_records_no_stem():
    from convae.config import resolve_stem

    assert resolve_stem(apply_overrides(RunConfig(), ["model.kind=dense"]), (1, 28, 28)).model.stem == "none"
