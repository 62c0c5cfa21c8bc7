"""viz: every kind draws a Figure (1-channel 8x8 digits and 3-channel non-square images), and the numbers behind them."""

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
