"""Layer selection, pooling, and streaming extraction to .npy (convae.features)."""

import json
import os
import sys
import tracemalloc

import numpy as np
import pytest
import torch

from convae.features import extract as features
from convae.config import RunConfig, apply_overrides
from convae.data import ImageDataset
from convae.errors import ConfigError, DataError, LayerError
from convae.features import extract_features, extract_to_npy, feature_layout, feature_names, parse_pool
from convae.models import ConvAutoencoder, DenseAutoencoder
from convae.runs import load_run
from convae.training import train

pytestmark = pytest.mark.usefixtures("one_thread")


POOLS = ["avg", "max", "avg2", "max3", "spp:1,2", "flatten"]


@pytest.fixture(scope="module")
def conv():
    torch.manual_seed(0)
    return ConvAutoencoder((1, 16, 16), channels=(4, 8), latent_dim=6).eval()


@pytest.fixture(scope="module")
def images():
    return (torch.rand(37, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained ConvAE run (fp32, 1x16x16) with labelled synthetic training data."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy((rng.random((64, 1, 16, 16)) * 255).astype(np.uint8))
    data = ImageDataset(images=images, labels=np.arange(64) % 4, spec="synthetic", split="train", class_names=None)
    cfg = apply_overrides(RunConfig(), ["model.stem=none", "model.channels=4,8", "model.latent_dim=6", "train.epochs=1",
                                        "train.batch_size=32", "train.precision=fp32", "data.spec=synthetic"])
    path = tmp_path_factory.mktemp("runs") / "conv"
    train(cfg, path, progress=False, dataset=data)
    return path, data


# --- pooling specs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, canonical", [("avg", "avg"), ("max", "max"), ("avg1", "avg"), ("avg2", "avg2"), ("MAX4", "max4"),
                                             ("spp:1,2,4", "spp:1,2,4"), ("flatten", "flatten")])
def test_pool_specs_parse_to_canonical_form(spec, canonical):
    assert parse_pool(spec).spec == canonical


@pytest.mark.parametrize("spec", ["mean", "avg0", "avg-2", "spp:", "spp:1,,2", "spp:1,1", "spp:0", "flat", "", None, 2])
def test_bad_pool_spec_is_a_config_error_naming_it_and_the_valid_forms(spec):
    with pytest.raises(ConfigError) as error:
        parse_pool(spec)
    assert repr(spec) in str(error.value) and "spp:1,2,4" in str(error.value)


@pytest.mark.parametrize("pool", POOLS)
def test_each_pooling_gives_the_announced_shape_and_names(conv, images, pool):
    layers = ["stage2", "stage1", "bottleneck"]
    feats = extract_features(conv, images, layers=layers, pool=pool, batch_size=16)
    names = feature_names(conv, layers, pool)
    expected = {"avg": (8, 4), "max": (8, 4), "avg2": (32, 16), "max3": (72, 36), "spp:1,2": (40, 20), "flatten": (128, 256)}[pool]
    assert feature_layout(conv, layers, pool) == [("stage2", expected[0]), ("stage1", expected[1]), ("bottleneck", 6)]
    assert feats.shape == (37, sum(expected) + 6) and feats.dtype == np.float32
    assert len(names) == feats.shape[1] == len(set(names))
    assert names[-1] == "bottleneck_u005"  # the dense bottleneck is a vector: it passes through any pooling


def test_pooled_values_match_their_names(conv, images):
    x = images[:3].float() / 255
    stage1 = conv.forward_intermediates(x, ["stage1"])["stage1"]  # (3, 4, 8, 8)
    feats = extract_features(conv, images[:3], layers="stage1", pool="avg2")
    names = list(feature_names(conv, "stage1", "avg2"))
    assert names[:5] == ["stage1_avg2x2_c000_y0x0", "stage1_avg2x2_c000_y0x1", "stage1_avg2x2_c000_y1x0", "stage1_avg2x2_c000_y1x1",
                         "stage1_avg2x2_c001_y0x0"]
    col = names.index("stage1_avg2x2_c002_y1x0")  # channel 2, bottom-left quarter
    np.testing.assert_allclose(feats[:, col], stage1[:, 2, 4:, :4].mean(dim=(1, 2)).detach().numpy(), rtol=1e-5)
    spp = feature_names(conv, "stage1", "spp:1,2")
    assert spp[0] == "stage1_spp1x1_c000" and spp[4] == "stage1_spp2x2_c000_y0x0"


def test_layers_are_concatenated_in_the_order_given(conv, images):
    both = extract_features(conv, images, layers=["stage2", 0], pool="avg")
    stage2 = extract_features(conv, images, layers="stage2", pool="avg")
    stage1 = extract_features(conv, images, layers=-3, pool="avg")
    np.testing.assert_array_equal(both, np.concatenate([stage2, stage1], axis=1))


def test_vector_layers_pass_through_any_pooling():
    fcae = DenseAutoencoder((1, 8, 8), hidden=(16,), latent_dim=4).eval()
    x = torch.rand(5, 1, 8, 8)
    for pool in POOLS:
        assert extract_features(fcae, x, layers=["hidden1", "bottleneck"], pool=pool).shape == (5, 20)
    assert feature_names(fcae, "hidden1", "avg2")[3] == "hidden1_u003"


def test_a_grid_finer_than_the_map_is_refused_before_any_work(conv, images):
    with pytest.raises(ConfigError, match="stage2 is 4x4"):
        extract_features(conv, images, layers="stage2", pool="avg5")
    with pytest.raises(ConfigError, match="stage2 is 4x4"):
        feature_layout(conv, "stage2", "spp:1,2,8")


def test_unknown_layer_lists_the_valid_names(conv, images):
    with pytest.raises(LayerError, match="stage1, stage2, bottleneck"):
        extract_features(conv, images, layers="stage3")


def test_features_do_not_depend_on_the_batch_size(conv, images):
    one = extract_features(conv, images, layers=["stage1", "stage2", "bottleneck"], pool="spp:1,2", batch_size=1)
    big = extract_features(conv, images, layers=["stage1", "stage2", "bottleneck"], pool="spp:1,2", batch_size=512)
    odd = extract_features(conv, images, layers=["stage1", "stage2", "bottleneck"], pool="spp:1,2", batch_size=7)
    np.testing.assert_allclose(one, big, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(odd, big, rtol=1e-5, atol=1e-6)


def test_bf16_features_are_float32_and_close_to_fp32(conv, images):
    fp32 = extract_features(conv, images, layers=["stage2", "bottleneck"], pool="avg2", precision="fp32")
    bf16 = extract_features(conv, images, layers=["stage2", "bottleneck"], pool="avg2", precision="bf16")
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, fp32, atol=0.05 * np.abs(fp32).max())


def test_extraction_stops_at_the_deepest_layer_in_inference_and_eval_mode(images):
    model = ConvAutoencoder((1, 16, 16), channels=(4, 8), norm="batch", latent_dim=6).train()
    seen = []
    model.stages[0].register_forward_hook(lambda mod, inp, out: seen.append((torch.is_inference_mode_enabled(), mod.training)))
    model.stages[1].register_forward_hook(lambda *a: seen.append("stage2"))
    model.to_latent.register_forward_hook(lambda *a: seen.append("bottleneck"))
    extract_features(model, images, layers="stage1", batch_size=20)
    assert seen == [(True, False), (True, False)]  # two batches, stage1 only, inference + eval
    assert model.training  # the caller's mode is restored
    assert not torch.is_inference_mode_enabled()


def test_images_of_another_shape_are_refused_unless_converted(conv):
    rgb = torch.rand(4, 3, 20, 24)
    with pytest.raises(DataError, match=r"\(3, 20, 24\).*\(1, 16, 16\)"):
        extract_features(conv, rgb)
    assert extract_features(conv, rgb, convert=True).shape == (4, 6)


def test_input_images_are_not_modified(conv):
    x = torch.rand(9, 1, 16, 16)
    before = x.clone()
    extract_features(conv, x, layers=["stage1", "bottleneck"], pool="max2")
    assert torch.equal(x, before)


# --- extraction to disk -------------------------------------------------------------------------------
def test_extract_to_npy_equals_the_in_memory_transform(run_dir, tmp_path):
    path, data = run_dir
    sidecar = extract_to_npy(path, data, tmp_path / "out" / "feats.npy", layers=["stage2", "bottleneck"], pool="avg2",
                             batch_size=5, progress=False)
    run = load_run(path)
    expected = extract_features(run.model, data, layers=["stage2", "bottleneck"], pool="avg2", batch_size=64)
    stored = np.load(tmp_path / "out" / "feats.npy")
    assert stored.dtype == np.float32
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "feats.labels.npy"), data.labels)
    on_disk = json.loads((tmp_path / "out" / "feats.json").read_text())
    assert on_disk == sidecar
    assert sidecar["shape"] == [64, 32 + 6 * 4] and sidecar["layers"] == ["stage2", "bottleneck"] and sidecar["pool"] == "avg2"
    assert sidecar["weights_sha256"] == run.weights_sha256 and sidecar["run"] == str(path.resolve())
    assert sidecar["precision"] == "fp32"  # the run's training precision
    assert sidecar["data"]["spec"] == "synthetic" and sidecar["data"]["n_images"] == 64
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []


def test_extract_reads_a_spec_of_another_size_and_channel_count(run_dir, tmp_path):
    """Transfer: 3x20x20 RGB images from an .npz, converted to the run's 1x16x16."""
    path, _ = run_dir
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "rgb.npz", x=(rng.random((11, 20, 20, 3)) * 255).astype(np.uint8), y=np.arange(11) % 2)
    sidecar = extract_to_npy(path, f"npz:{tmp_path / 'rgb.npz'}", tmp_path / "f.npy", layers="stage1", pool="avg", progress=False)
    assert np.load(tmp_path / "f.npy").shape == (11, 4) and sidecar["data"]["split"] == "all"
    np.testing.assert_array_equal(np.load(tmp_path / "f.labels.npy"), np.arange(11) % 2)


def test_a_failed_extraction_leaves_no_file_and_keeps_the_old_one(run_dir, tmp_path, monkeypatch):
    path, data = run_dir
    out = tmp_path / "feats.npy"
    extract_to_npy(path, data, out, progress=False)
    before = out.read_bytes()
    real = features.iter_features

    def failing(*args, **kwargs):
        for i, chunk in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield chunk

    monkeypatch.setattr(features, "iter_features", failing)
    with pytest.raises(KeyboardInterrupt):
        extract_to_npy(path, data, out, layers="stage1", pool="flatten", batch_size=8, progress=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.json", "feats.labels.npy", "feats.npy"]


def test_unlabelled_data_removes_stale_labels(run_dir, tmp_path):
    path, data = run_dir
    extract_to_npy(path, data, tmp_path / "f.npy", progress=False)
    sidecar = extract_to_npy(path, data.images, tmp_path / "f.npy", progress=False)
    assert sidecar["labels"] is None and not (tmp_path / "f.labels.npy").exists()


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc/self/status")
def test_extraction_memory_does_not_grow_with_the_number_of_images(run_dir, tmp_path):
    """2,000 vs 24,000 images, 1 KiB of features each (2 MiB vs 23 MiB of output): the peak stays put."""
    path, _ = run_dir
    run = load_run(path)
    peaks = {}
    for n in (2_000, 24_000):
        data = torch.from_numpy(np.random.default_rng(n).integers(0, 256, (n, 1, 16, 16), dtype=np.uint8))
        extract_to_npy(run, data[:64], tmp_path / "warm.npy", layers="stage1", pool="flatten", batch_size=256, progress=False)
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak to the current RSS
            f.write("5")
        start = _peak_rss_kib()
        tracemalloc.start()
        extract_to_npy(run, data, tmp_path / f"f{n}.npy", layers="stage1", pool="flatten", batch_size=256, progress=False)
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peaks[n] = (traced, (_peak_rss_kib() - start) * 1024)
        assert os.path.getsize(tmp_path / f"f{n}.npy") > n * 1024
    output_growth = (24_000 - 2_000) * 1024  # 21 MiB: what keeping the features in memory would add
    assert peaks[24_000][0] - peaks[2_000][0] < output_growth / 8, peaks  # Python/numpy allocations
    assert peaks[24_000][1] - peaks[2_000][1] < output_growth / 3, peaks  # everything, torch included
