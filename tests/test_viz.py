"""viz: every kind draws a Figure (1-channel 8x8 digits and 3-channel non-square images), and the numbers behind them."""

import importlib

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from convae import viz
from convae.cli import main
from convae.config import RunConfig, apply_overrides
from convae.data import load_dataset
from convae.errors import ConfigError
from convae.models import ConvAutoencoder
from convae.runs import load_run
from convae.training import train

TINY = ["train.epochs=1", "train.precision=fp32", "model.latent_dim=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs: ConvAE and FCAE on digits (1x8x8), ConvAE on 3x12x16 coloured images."""
    root = tmp_path_factory.mktemp("viz")
    rng = np.random.default_rng(0)
    x = (rng.random((96, 12, 16, 3)) * 40).astype(np.uint8)
    for i in range(len(x)):
        r, c = rng.integers(0, 8), rng.integers(0, 10)
        x[i, r:r + 4, c:c + 6, i % 3] = 220
    np.savez(root / "rgb.npz", x=x, y=np.arange(len(x)) % 3)
    specs = {"conv": ["data.spec=digits", "model.kind=conv", "model.channels=8,16"],
             "dense": ["data.spec=digits", "model.kind=dense", "model.hidden=32"],
             "rgb": [f"data.spec=npz:{root / 'rgb.npz'}", "model.kind=conv", "model.channels=8,16"]}
    for name, sets in specs.items():
        train(apply_overrides(RunConfig(), sets + TINY), root / name, progress=False)
    return {name: load_run(root / name) for name in specs}


@pytest.mark.parametrize("name", ["conv", "dense", "rgb"])
@pytest.mark.parametrize("kind", viz.KINDS)
def test_every_kind_draws_figures_for_gray_rgb_and_dense(runs, name, kind):
    figures = viz.figures(runs[name], kind, others=[runs["conv"]] if kind == "recon" and name == "dense" else (), n=4)
    assert figures and all(isinstance(f, Figure) for f in figures.values())
    if kind == "patches":  # one figure per layer
        assert set(figures) == {f"patches_{layer}" for layer in runs[name].model.layer_names}


def test_render_writes_pngs_and_opens_no_window(runs, tmp_path):
    import matplotlib.pyplot as plt

    paths = viz.render(runs["rgb"], "recon", out_dir=tmp_path, others=[])
    assert [p.name for p in paths] == ["recon.png"]
    with Image.open(paths[0]) as image:
        assert image.mode in ("RGBA", "RGB") and min(image.size) > 100
    assert plt.get_fignums() == []  # figures are plain Figure objects, never pyplot's


def test_filters_mosaic_scales_each_filter_to_its_own_range(runs):
    model = runs["rgb"].model
    weights = viz.first_layer_filters(model)
    assert weights.shape == (8, 3, 3, 3)
    fig = viz.plot_filters(model)
    tiles = fig.axes[0].images[0].get_array()  # (rows*(k+1)-1, cols*(k+1)-1, 3): colour for RGB input
    assert tiles.ndim == 3 and tiles.shape[-1] == 3
    first = np.asarray(tiles[:3, :3])
    assert first.min() == pytest.approx(0.0) and first.max() == pytest.approx(1.0)
    dense_templates = viz.first_layer_filters(runs["dense"].model)
    assert dense_templates.shape == (32, 1, 8, 8)  # an FCAE's "filters" are whole-image templates


def test_receptive_field_crop_holds_every_pixel_a_unit_depends_on():
    """Changing pixels outside the crop leaves the unit as it is; its gradient lies inside the crop."""
    torch.manual_seed(0)
    model = ConvAutoencoder((3, 12, 16), channels=(4, 8), kernel_size=3, latent_dim=4).eval()
    for layer, (y, x) in (("stage1", (1, 2)), ("stage2", (1, 2)), ("stage2", (0, 0))):
        info = model.layer_info(layer)
        numbered = torch.arange(1, 3 * 12 * 16 + 1, dtype=torch.float32).view(3, 12, 16)
        window = viz.crop_receptive_field(numbered, info, y, x)  # zeros where the window leaves the image
        assert window.shape == (3, *info.receptive_field)
        inside = torch.zeros(3 * 12 * 16, dtype=torch.bool)
        inside[window[window > 0].long() - 1] = True
        base = torch.rand(1, 3, 12, 16, requires_grad=True)
        unit = model.forward_intermediates(base, [layer])[layer][0, :, y, x]
        (grad,) = torch.autograd.grad(unit.sum(), base)
        assert grad.view(-1)[~inside].abs().max() == 0 and grad.view(-1)[inside].abs().max() > 0
        with torch.no_grad():
            changed = base.detach().clone().view(-1)
            changed[~inside] = torch.rand(int((~inside).sum()))
            assert torch.allclose(model.forward_intermediates(changed.view(1, 3, 12, 16), [layer])[layer][0, :, y, x], unit.detach())


def test_top_patches_are_sorted_and_match_the_channel_maximum(runs):
    model = runs["conv"].model
    data = load_dataset("digits")
    result = viz.top_patches(model, data, "stage2", k=5, max_channels=4, limit=300)
    assert result["patches"].shape == (4, 5, 1, 16, 16)  # stage2's receptive field with two 3x3 convs per stage
    assert np.all(np.diff(result["scores"], axis=1) <= 0)
    images, _ = viz.sample_images(data, 300)
    out = viz.layer_outputs(model, images, ["stage2"])["stage2"]
    for j, channel in enumerate(result["channels"]):
        assert result["scores"][j, 0] == pytest.approx(float(out[:, channel].max()), rel=1e-5)


def test_maximize_raises_the_unit_above_data_for_8x8_gray(runs):
    model = runs["conv"].model
    data, _ = viz.sample_images(load_dataset("digits"), 200)
    centre = lambda x: viz.layer_outputs(model, x, ["stage1"])["stage1"][:, :4, 1, 1]  # noqa: E731
    blind = viz.maximize_activation(model, "stage1", channels=[0, 1, 2, 3], steps=48)  # random starts only
    assert blind.shape == (4, 1, 8, 8) and blind.min() >= 0 and blind.max() <= 1
    found = viz.maximize_activation(model, "stage1", channels=[0, 1, 2, 3], steps=48, starts=data)
    ours, theirs = centre(found).diagonal(), centre(data).max(0).values
    # the data starts stay candidates, so the result never falls below the best data image; against the
    # random-start run there is no such guarantee (a batch of another size takes another path)
    assert (ours >= theirs - 1e-6).all()
    assert ours.mean() >= centre(blind).diagonal().mean() * 0.9
    assert (ours > 0).any()


def test_traverse_passes_through_the_image_own_reconstruction(runs):
    model = runs["dense"].model
    image = viz.sample_images(load_dataset("digits"), 1)[0][0]
    result = viz.traverse_latent(model, image, units=[0, 3], steps=5, span=2.0)
    assert result["images"].shape == (2, 5, 1, 8, 8) and result["labels"] == ["unit 0", "unit 3"]
    assert torch.allclose(result["images"][0, 2], viz.reconstruct(model, image[None])[0], atol=1e-5)
    pca = viz.traverse_latent(model, image, load_dataset("digits"), direction="pca", n_units=3, steps=3)
    assert pca["labels"] == ["PC1", "PC2", "PC3"]
    with pytest.raises(ConfigError, match="direction"):
        viz.traverse_latent(model, image, direction="diagonal")


def test_embedding_is_coloured_by_label_and_names_missing_umap(runs):
    data = load_dataset("digits")
    result = viz.embed_features(runs["conv"].model, data, layer="stage2", pool="avg", limit=200)
    assert result["coords"].shape == (200, 2) and result["labels"].shape == (200,)
    try:
        import umap  # noqa: F401  (installed: nothing to refuse)
    except ImportError:
        with pytest.raises(ConfigError, match="umap-learn"):
            viz.embed_features(runs["conv"].model, data, method="umap", limit=50)


def test_viz_cli_saves_pngs_and_rejects_unknown_kinds(runs, tmp_path, capsys):
    run_dir = str(runs["conv"].path)
    assert main(["viz", run_dir, "filters", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "filters.png").is_file() and "filters.png" in capsys.readouterr().out
    assert main(["viz", run_dir, "recon", "--with", str(runs["dense"].path), "--out", str(tmp_path), "--n", "3"]) == 0
    assert main(["viz", run_dir, "patches", "--layer", "stage1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "patches_stage1.png").is_file() and not (tmp_path / "patches_stage2.png").exists()
    with pytest.raises(SystemExit):
        main(["viz", run_dir, "colours"])
    with pytest.raises(ConfigError):
        viz.figures(runs["conv"], "colours")
    assert main(["viz", run_dir, "recon", "--with", str(runs["rgb"].path)]) == 2  # shapes differ: a clean error


# --- latent traversal: what the code controls, for both bottleneck kinds ------------------------------------
@pytest.fixture(scope="module")
def blob_runs(tmp_path_factory, blobs_npz):
    """ConvAEs (the default 1x1-conv bottleneck, a 3x3 map; and a dense one) trained until they reconstruct
    the blobs (a bright square in one of four quadrants of 1x12x12): what the code holds is *where* the square is."""
    root = tmp_path_factory.mktemp("blobs")
    sets = [f"data.spec=npz:{blobs_npz}", "model.channels=8,16", "model.latent_dim=8", "train.epochs=40", "train.lr=1e-2",
            "train.precision=fp32", "train.threads=1"]
    for name, extra in {"conv": [], "dense": ["model.bottleneck=dense"]}.items():
        train(apply_overrides(RunConfig(), sets + extra), root / name, progress=False)
    return {name: load_run(root / name) for name in ("conv", "dense")}


@torch.inference_mode()
def latents(model, data) -> torch.Tensor:
    """The bottleneck of every image (the blobs are fewer than the traversal's 1,000 samples), in eval mode."""
    model.eval()
    return model.encode(viz.sample_images(data, 1000)[0]).float()


@pytest.mark.parametrize("bottleneck", ["conv", "dense"])
@pytest.mark.parametrize("direction", ["unit", "pca"])
def test_traversal_rows_are_not_flat_for_either_bottleneck(blob_runs, bottleneck, direction):
    """Every row changes the decoded image visibly between -3 and +3 data standard deviations.

    Moving a whole channel map by the standard deviation of its mean (the only move there was for a conv
    bottleneck) barely changes these images: what the map codes is where, and its mean hardly varies.
    """
    run = blob_runs[bottleneck]
    data = viz.images_of_run(run, None)
    image = viz.sample_images(data, 1)[0][0]
    result = viz.traverse_latent(run.model, image, data, direction=direction, n_units=3)
    assert result["images"].shape == (3, 7, 1, 12, 12)
    change = (result["images"][:, -1] - result["images"][:, 0]).abs().flatten(1)  # (rows, pixels): last step vs first
    assert (change.max(1).values > 0.25).all(), change.max(1).values  # some part of the image changes by a quarter of the range
    assert (change.mean(1) > 0.02).all(), change.mean(1)


def test_conv_traversal_moves_one_channel_at_its_position_of_largest_variance(blob_runs):
    model = blob_runs["conv"].model
    data = viz.images_of_run(blob_runs["conv"], None)
    zs = latents(model, data)  # (N, 8, 3, 3)
    per_position = zs.std(0)
    found = viz.latent_directions(model, data, n_units=3)
    assert found["latent_shape"] == (8, 3, 3) and found["where"] == "position" and found["n_samples"] == len(zs)
    best, at = per_position.flatten(1).max(1)
    assert [int(c) for c in best.argsort(descending=True)[:3]] == [int(label.split()[1]) for label in found["labels"]]
    for v, label, (y, x), std in zip(found["vectors"], found["labels"], found["positions"], found["std"]):
        channel = int(label.split()[1])
        assert divmod(int(at[channel]), 3) == (y, x) and f"at ({y},{x})" in label
        assert int((v != 0).sum()) == 1 and float(v[channel, y, x]) == pytest.approx(float(per_position[channel, y, x]), rel=1e-4)
        assert std == pytest.approx(float(per_position[channel, y, x]), rel=1e-4)
    fixed = viz.latent_directions(model, data, units=[5, 1], position=(0, 2))
    assert fixed["positions"] == [(0, 2), (0, 2)] and fixed["labels"] == ["unit 5 at (0,2)", "unit 1 at (0,2)"]


def test_conv_traversal_over_the_whole_map_moves_every_position_by_the_std_of_the_mean(blob_runs):
    model = blob_runs["conv"].model
    data = viz.images_of_run(blob_runs["conv"], None)
    zs = latents(model, data)
    found = viz.latent_directions(model, data, where="map", units=[2, 6])
    assert found["labels"] == ["unit 2 (map)", "unit 6 (map)"] and found["positions"] is None
    for v, channel, std in zip(found["vectors"], (2, 6), found["std"]):
        mean_std = float(zs[:, channel].mean((1, 2)).std())
        assert torch.allclose(v[channel], torch.full((3, 3), mean_std), rtol=1e-4)
        assert float(v.abs().sum()) == pytest.approx(9 * mean_std, rel=1e-4)  # nothing outside the channel
        # the data's std along the unit direction 1/3 on the map is 3 (= sqrt(3*3)) times the std of the mean
        assert std == pytest.approx(float((zs[:, channel].sum((1, 2)) / 3).std()), rel=1e-4)


def test_pca_traversal_directions_are_the_principal_axes_scaled_to_one_std(blob_runs):
    model = blob_runs["conv"].model
    data = viz.images_of_run(blob_runs["conv"], None)
    flat = latents(model, data).flatten(1)  # (N, 72)
    found = viz.latent_directions(model, data, direction="pca", n_units=3)
    assert found["labels"] == ["PC1", "PC2", "PC3"] and found["explained"][0] >= found["explained"][1] >= found["explained"][2]
    centred = flat - flat.mean(0)
    for v, std in zip(found["vectors"], found["std"]):
        u = v.flatten() / v.norm()
        assert float(v.norm()) == pytest.approx(std, rel=1e-4)
        assert float((centred @ u).std()) == pytest.approx(std, rel=1e-3)  # one data std along the direction
    variances = torch.linalg.eigvalsh(torch.cov(centred.T)).flip(0)[:3]
    assert [s * s for s in found["std"]] == pytest.approx(variances.tolist(), rel=1e-3)
    picked = viz.latent_directions(model, data, direction="pca", units=[2])
    assert picked["labels"] == ["PC2"] and picked["std"] == pytest.approx(found["std"][1:2], rel=1e-5)


def test_traversal_span_steps_and_the_middle_column(blob_runs):
    model = blob_runs["conv"].model
    data = viz.images_of_run(blob_runs["conv"], None)
    image = viz.sample_images(data, 1)[0][0]
    result = viz.traverse_latent(model, image, data, units=[1], steps=5, span=1.5)
    assert result["images"].shape == (1, 5, 1, 12, 12) and np.allclose(result["offsets"], [-1.5, -0.75, 0, 0.75, 1.5])
    assert torch.allclose(result["images"][0, 2], viz.reconstruct(model, image[None])[0], atol=1e-5)
    z = latents(model, image[None])
    (y, x), std = result["positions"][0], result["std"][0]
    shifted = z.clone()
    shifted[0, 1, y, x] += 1.5 * std
    with torch.inference_mode():
        assert torch.allclose(result["images"][0, -1], model.decode(shifted)[0], atol=1e-5)


def test_traversal_refuses_what_it_cannot_honour(blob_runs):
    conv, dense = blob_runs["conv"].model, blob_runs["dense"].model
    data = viz.images_of_run(blob_runs["conv"], None)
    image = viz.sample_images(data, 1)[0][0]
    for kwargs, words in (({"where": "map"}, "spatial"), ({"position": (0, 0)}, "spatial"), ({"units": [8]}, "out of range"),
                          ({"direction": "pca", "units": [99]}, "out of range"), ({"where": "middle"}, "where"), ({"steps": 1}, "steps"),
                          ({"span": 0}, "span"), ({"direction": "pca", "data": None}, "needs data")):
        model = dense if words == "spatial" else conv
        kwargs = {"data": data} | kwargs
        with pytest.raises(ConfigError, match=words):
            viz.traverse_latent(model, image, kwargs.pop("data"), **kwargs)
    with pytest.raises(ConfigError, match="outside"):
        viz.traverse_latent(conv, image, data, position=(3, 0))
    with pytest.raises(ConfigError, match="applies to"):
        viz.traverse_latent(conv, image, data, where="map", position=(0, 0))


def test_viz_cli_traverse_options(blob_runs, tmp_path, capsys, monkeypatch):
    figures_module = importlib.import_module("convae.viz.figures")  # the module: convae.viz.figures is also the function

    seen = []
    original = figures_module.traverse_latent

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(figures_module, "traverse_latent", spy)
    run_dir = str(blob_runs["conv"].path)
    assert main(["viz", run_dir, "traverse", "--direction", "pca", "--units", "1,2", "--span", "2", "--steps", "5", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "traverse.png").is_file()
    assert {k: seen[-1][k] for k in ("direction", "units", "span", "steps")} == {"direction": "pca", "units": [1, 2], "span": 2.0, "steps": 5}
    assert main(["viz", run_dir, "traverse", "--where", "map", "--out", str(tmp_path)]) == 0
    assert seen[-1]["where"] == "map"
    assert main(["viz", run_dir, "traverse", "--position", "1,2", "--units", "0", "--out", str(tmp_path)]) == 0
    assert seen[-1]["position"] == [1, 2] and seen[-1]["units"] == [0]
    capsys.readouterr()
    assert main(["viz", run_dir, "traverse", "--position", "1", "--out", str(tmp_path)]) == 2
    assert "--position" in capsys.readouterr().err
    assert main(["viz", run_dir, "traverse", "--position", "5,5", "--out", str(tmp_path)]) == 2
    assert "outside the 3x3" in capsys.readouterr().err
    assert main(["viz", str(blob_runs["dense"].path), "traverse", "--where", "map", "--out", str(tmp_path)]) == 2


# --- embedding methods ------------------------------------------------------------------------------------
def test_umap_missing_is_a_config_error_naming_the_package_and_the_pip_command(runs, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` now raises ImportError, installed or not
    with pytest.raises(ConfigError, match=r"umap-learn.*pip install"):
        viz.embed_features(runs["conv"].model, load_dataset("digits"), method="umap", limit=50)
    with pytest.raises(ConfigError, match="is not one of"):
        viz.embed_features(runs["conv"].model, load_dataset("digits"), method="isomap", limit=50)


def test_umap_embedding_where_installed(runs):
    pytest.importorskip("umap", reason="umap-learn not installed (pip install 'convae[umap]')")
    result = viz.embed_features(runs["conv"].model, load_dataset("digits"), method="umap", limit=60)
    assert result["coords"].shape == (60, 2) and np.isfinite(result["coords"]).all() and result["method"] == "umap"


def test_viz_cli_embedding_method_tsne(blob_runs, tmp_path, monkeypatch):
    figures_module = importlib.import_module("convae.viz.figures")  # the module: convae.viz.figures is also the function

    methods = []
    original = figures_module.embed_features

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        methods.append(result["method"])
        return result

    monkeypatch.setattr(figures_module, "embed_features", spy)
    assert main(["viz", str(blob_runs["conv"].path), "embedding", "--method", "tsne", "--out", str(tmp_path)]) == 0
    assert methods == ["tsne"] and (tmp_path / "embedding_bottleneck.png").is_file()
    with pytest.raises(SystemExit):
        main(["viz", str(blob_runs["conv"].path), "embedding", "--method", "isomap"])
