"""compare: the ConvAE-versus-FCAE measurements, each on small data, and the whole run end to end."""

import json

import numpy as np
import pytest
import torch

from convae.cli import main
from convae.analysis.compare import (SECTIONS, compare, equivariance, invariance, load_compare, parameter_table, permute_images,
                            pixel_permutation, shift_images, shifted_dataset)
from convae.config import RunConfig, apply_overrides
from convae.data import load_dataset
from convae.errors import ConfigError, RunError
from convae.models import ConvAutoencoder, DenseAutoencoder


def _centred_images(n=16, shape=(3, 24, 32), seed=0):
    """Random content in the middle, zeros around it: shifts up to 4 px keep it inside."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    x = torch.zeros(n, *shape)
    x[:, :, h // 3:h - h // 3, w // 3:w - w // 3] = torch.rand(n, c, h - 2 * (h // 3), w - 2 * (w // 3), generator=g)
    return x


@pytest.fixture(scope="module")
def rgb_npz(tmp_path_factory):
    """240 labelled 3x12x16 images (non-square, colour): four kinds of coloured bar at random places."""
    rng = np.random.default_rng(0)
    n = 240
    x = (rng.random((n, 12, 16, 3)) * 30).astype(np.uint8)
    y = np.arange(n) % 4
    for i, label in enumerate(y):
        r, c = rng.integers(1, 7), rng.integers(1, 9)
        if label < 2:  # horizontal bar, red or green
            x[i, r + 2, c:c + 6, label] = 230
        else:  # vertical bar, blue or red
            x[i, r:r + 5, c + 3, 2 if label == 2 else 0] = 230
    path = tmp_path_factory.mktemp("rgb") / "bars.npz"
    np.savez(path, x=x, y=y)
    return path


SMALL = dict(conv_overrides=["model.channels=8,16"], dense_overrides=["model.hidden=64"], overrides=["model.latent_dim=16"])


@pytest.fixture(scope="module")
def quick_result(rgb_npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    result = compare(f"npz:{rgb_npz}", out, quick=True, epochs=3, shifts=(1, 2), hunger_sizes=(80,), **SMALL)
    return out, result


# --- measurements ------------------------------------------------------------------------------------------
def test_parameter_table_has_the_15000500_reference_and_adds_up():
    plain = ["model.kind=conv", "model.stem=none", "model.channels=32,64,128", "model.norm=none", "model.bottleneck=dense", "model.convs_per_stage=1"]  # configs/baseline.toml
    configs = {"conv": apply_overrides(RunConfig(), plain), "dense": apply_overrides(RunConfig(), ["model.kind=dense"])}
    table = parameter_table(configs, (1, 28, 28))
    assert table["reference"]["hidden1"] == 15_000_500 == 3 * 100 * 100 * 500 + 500
    assert table["large"]["dense"]["hidden1"] == 30_000 * 512 + 512  # the configured FCAE on 3x100x100
    assert table["dataset"]["dense"]["hidden1"] == 784 * 512 + 512
    for label in ("dataset", "large"):
        for kind in ("conv", "dense"):
            counts = table[label][kind]
            layers = {k: v for k, v in counts.items() if k not in ("encoder", "decoder", "total")}
            assert sum(layers.values()) == counts["encoder"] and counts["encoder"] + counts["decoder"] == counts["total"]
    # conv kernels do not grow with the image (stage1 only with its input channels); the ConvAE's dense bottleneck does
    assert table["large"]["conv"]["stage2"] == table["dataset"]["conv"]["stage2"] == 32 * 9 * 64 + 64
    assert (table["dataset"]["conv"]["stage1"], table["large"]["conv"]["stage1"]) == (1 * 9 * 32 + 32, 3 * 9 * 32 + 32)
    assert table["large"]["conv"]["bottleneck"] > table["dataset"]["conv"]["bottleneck"]


def test_shift_images_moves_content_and_fills_zeros():
    x = torch.arange(12.0).view(1, 1, 3, 4) + 1
    right = shift_images(x, 0, 1)
    assert torch.equal(right[..., 1:], x[..., :-1]) and (right[..., 0] == 0).all()
    up = shift_images(x, -2, 0)
    assert torch.equal(up[..., 0, :], x[..., 2, :]) and (up[..., 1:, :] == 0).all()
    assert (shift_images(x, 0, 4) == 0).all()


def test_fcae_is_exactly_blind_to_a_fixed_permutation_and_the_convae_is_not():
    """A fixed permutation is a relabelling of the FCAE's inputs: permuting its first-layer columns the same way gives
    the same features on permuted images. No such rewiring exists for a convolution."""
    torch.manual_seed(0)
    x = _centred_images(8, (3, 12, 16))
    perm = pixel_permutation((3, 12, 16), seed=1)
    px = permute_images(x, perm)
    assert torch.equal(px.flatten(2).sort(2).values, x.flatten(2).sort(2).values)  # the same pixels, moved
    assert torch.equal(px[:, 0].flatten(1), x[:, 0].flatten(1)[:, perm]) and torch.equal(px[:, 2].flatten(1), x[:, 2].flatten(1)[:, perm])

    dense = DenseAutoencoder((3, 12, 16), hidden=(32,), latent_dim=8).eval()
    rewired = DenseAutoencoder((3, 12, 16), hidden=(32,), latent_dim=8).eval()
    rewired.load_state_dict(dense.state_dict())
    w = rewired.hidden[0][0].weight.data.view(32, 3, 12 * 16)
    w.copy_(dense.hidden[0][0].weight.data.view(32, 3, 12 * 16)[:, :, perm])  # input j of the rewired layer is pixel perm[j]
    with torch.no_grad():
        assert torch.allclose(rewired.encode(px), dense.encode(x), atol=1e-5)

    conv = ConvAutoencoder((3, 12, 16), channels=(8, 16), latent_dim=8).eval()
    with torch.no_grad():
        a, b = conv.forward_intermediates(x, ["stage1"])["stage1"], conv.forward_intermediates(px, ["stage1"])["stage1"]
    assert not torch.allclose(a.sort(-1).values, b.sort(-1).values, atol=1e-3)


def test_conv_maps_are_equivariant_when_the_stride_divides_the_shift():
    torch.manual_seed(0)
    model = ConvAutoencoder((3, 24, 32), channels=(8, 16), latent_dim=8).eval()
    rows = {r["shift"]: r for r in equivariance(model, _centred_images(), [1, 2, 4])["stage1"]}  # stride 2
    assert rows[2]["exact"] and rows[4]["exact"] and not rows[1]["exact"]
    assert rows[2]["equivariance_error"] < 1e-4 and rows[4]["equivariance_error"] < 1e-4  # zero background, zero padding
    assert rows[2]["unshifted_error"] > 0.5  # the maps did move
    assert rows[1]["equivariance_error"] > 0.3  # half a cell: max pooling is not equivariant to it
    assert "bottleneck" not in equivariance(model, _centred_images(), [2])  # a vector has no map


def test_global_average_is_invariant_to_stride_shifts_and_fcae_features_are_not():
    torch.manual_seed(0)
    x = _centred_images()
    conv = invariance(ConvAutoencoder((3, 24, 32), channels=(8, 16), latent_dim=8).eval(), x, [2], pools=("avg", "avg2"))
    dense = invariance(DenseAutoencoder((3, 24, 32), hidden=(32,), latent_dim=8).eval(), x, [2])
    assert conv["stage1/avg"][0] < 1e-4
    assert dense["hidden1"][0] > 0.3 and dense["bottleneck"][0] > 0.3
    assert set(dense) == {"hidden1", "bottleneck"}


def test_shifted_dataset_keeps_labels_and_shifts_every_image(blobs_npz):
    data = load_dataset(f"npz:{blobs_npz}")
    moved = shifted_dataset(data, 2, seed=0)
    assert len(moved) == len(data) and np.array_equal(moved.labels, data.labels)
    assert not any(torch.equal(a, b) for a, b in zip(moved.images, data.images))
    assert shifted_dataset(data, 0) is data


# --- end to end ---------------------------------------------------------------------------------------------
def test_compare_quick_on_rgb_nonsquare_measures_every_section(quick_result):
    out, in_memory = quick_result
    result = load_compare(out)
    assert result == json.loads(json.dumps(in_memory)) == json.loads((out / "compare.json").read_text())
    assert set(SECTIONS) <= set(result) and result["meta"]["in_shape"] == [3, 12, 16]
    for name in SECTIONS:
        assert (out / f"{name}.png").stat().st_size > 5000
    assert "Fixed pixel permutation" in (out / "compare.md").read_text()

    hierarchy = result["hierarchy"]
    assert [r["name"] for r in hierarchy["conv"]] == ["stage1", "stage2", "bottleneck"]
    # two 3x3 convs per stage (the default): stage1 3+2=5, pooled 6; stage2 6+2*4=14, pooled 16
    assert [r["receptive_field"] for r in hierarchy["conv"][:2]] == [[6, 6], [16, 16]] and hierarchy["conv"][0]["spatial"] == [6, 8]
    assert all(0 <= r["accuracy"] <= 1 for rows in hierarchy.values() for r in rows)

    perm = result["permutation"]
    for kind in ("conv", "dense"):
        s = perm["summary"][kind]
        assert s["mse_original"] > 0 and s["mse_permuted"] > 0 and set(s["layers"]) == set(perm[kind]["permuted"]["accuracy"]) & set(s["layers"])
    assert set(perm["summary"]["seed_noise"]) <= {"hidden1", "bottleneck"}

    tr = result["translation"]
    assert tr["probe_shifts"] == [0, 1, 2]
    assert all(len(acc) == 3 for layers in tr["probe"].values() for acc in layers.values())
    assert [r["exact"] for r in tr["equivariance"]["conv"]["stage1"]] == [False, True]
    assert tr["equivariance"]["dense"] == {}

    hunger = result["hunger"]
    n_train = result["meta"]["n_train"]
    assert hunger["sizes"] == [80, n_train] == [r["n_images"] for r in hunger["conv"]]
    assert hunger["steps"]["conv"] > 0 and all(r["train_mse"] > 0 and r["test_mse"] > 0 for r in hunger["dense"])


def test_compare_reuses_finished_runs_and_refuses_other_settings(quick_result, rgb_npz):
    out, result = quick_result
    weights = out / "runs" / "conv" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = compare(f"npz:{rgb_npz}", out, quick=True, epochs=3, sections=("parameters",), **SMALL)
    assert weights.stat().st_mtime_ns == before
    assert all(again["reconstruction"][k] == pytest.approx(result["reconstruction"][k]) for k in ("conv", "dense"))
    with pytest.raises(RunError, match="other settings"):
        compare(f"npz:{rgb_npz}", out, quick=True, epochs=4, sections=("parameters",), **SMALL)


def test_compare_takes_given_runs_and_checks_them(quick_result, rgb_npz, tmp_path):
    out, _ = quick_result
    result = compare(f"npz:{rgb_npz}", tmp_path, conv_run=out / "runs" / "conv", dense_run=out / "runs" / "dense", sections=("parameters",))
    assert result["meta"]["given_runs"] == ["conv", "dense"] and not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="expected a conv run"):
        compare(f"npz:{rgb_npz}", tmp_path, conv_run=out / "runs" / "dense", sections=("parameters",))
    with pytest.raises(ConfigError, match="unknown compare section"):
        compare(f"npz:{rgb_npz}", tmp_path, sections=("colour",))


def test_compare_cli_prints_tables(quick_result, rgb_npz, tmp_path, capsys):
    out, _ = quick_result
    assert main(["compare", "--data", f"npz:{rgb_npz}", "--out", str(tmp_path), "--conv-run", str(out / "runs" / "conv"),
                 "--dense-run", str(out / "runs" / "dense"), "--sections", "parameters", "-q"]) == 0
    text = capsys.readouterr().out
    assert "15,000,500" in text and "compare.json" in text


def test_the_busy_cpu_warning_is_logged_once_per_process(monkeypatch, caplog):
    # compare and grid searches train 7 to 9 models in one process: the warning is said once
    from convae import runtime

    monkeypatch.setattr(runtime, "_warned_cpu_busy", False, raising=False)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(runtime.torch, "get_num_threads", lambda: 2)
    with caplog.at_level("WARNING", logger="convae.runtime"):
        for _ in range(8):
            runtime.warn_if_cpu_busy()
    busy = [r for r in caplog.records if "the CPU is busy" in r.getMessage()]
    assert len(busy) == 1 and "load average 64.0 on 2 cores" in busy[0].getMessage()


def _fake_run(path, val_mses, records, kind="conv"):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "train_mse": 2 * m, "val_mse": m}) + "\n"
                                                for i, m in enumerate(val_mses)))
    meta = {"model_kind": kind, "data": "digits", "protocol": "5-fold CV"}
    (path / "probe.json").write_text(json.dumps({"meta": meta, "records": records}))
    return path


def _record(feature_set, accuracy, labels_per_class=None, classifier="logreg"):
    family = feature_set.split(":")[0].rstrip("0123456789")
    return {"feature_set": feature_set, "family": family, "classifier": classifier, "labels_per_class": labels_per_class,
            "accuracy": accuracy}


@pytest.fixture
def three_runs(tmp_path):
    return [
        _fake_run(tmp_path / "a", [0.05, 0.01], [_record("convae:stage1/avg2", 0.80), _record("convae:stage2/avg2", 0.90),
                                                 _record("raw", 0.97), _record("convae:stage2/avg2", 0.99, labels_per_class=10)]),
        _fake_run(tmp_path / "b", [0.02], [_record("convae:bottleneck", 0.85, classifier="mlp"), _record("untrained:bottleneck", 0.95)]),
        _fake_run(tmp_path / "c", [0.09, 0.04], [_record("fcae:hidden1", 0.60)], kind="dense"),
    ]


def test_recon_vs_probe_pairs_last_val_mse_with_the_best_own_probe_and_correlates(three_runs, tmp_path):
    from scipy.stats import pearsonr

    from convae.analysis.compare import format_recon_vs_probe, recon_vs_probe

    result = recon_vs_probe(three_runs, out=tmp_path / "rvp.json")
    rows = result["runs"]
    assert [(r["val_mse"], r["accuracy"], r["feature_set"], r["classifier"], r["epoch"]) for r in rows] == [
        (0.01, 0.90, "convae:stage2/avg2", "logreg", 2), (0.02, 0.85, "convae:bottleneck", "mlp", 1),
        (0.04, 0.60, "fcae:hidden1", "logreg", 2)]  # baselines and label budgets are not the run's best
    corr = result["correlation"]
    assert corr["n"] == 3 and corr["spearman"]["rho"] == pytest.approx(-1.0)
    assert corr["pearson"]["r"] == pytest.approx(pearsonr([0.01, 0.02, 0.04], [0.90, 0.85, 0.60]).statistic)
    assert json.loads((tmp_path / "rvp.json").read_text()) == json.loads(json.dumps(result))
    text = format_recon_vs_probe(result)
    assert "| convae:stage2/avg2 | logreg |" in text  # one row per run, its best set named
    assert "90.0" in text and "0.01000" in text and "Pearson r = -0.9" in text and "Spearman rho = -1.00" in text and "n = 3" in text


def test_recon_vs_probe_needs_probe_json_and_val_mse(three_runs, tmp_path):
    from convae.analysis.compare import recon_vs_probe

    (three_runs[1] / "probe.json").unlink()
    with pytest.raises(RunError, match="probe.json"):
        recon_vs_probe(three_runs)
    few = recon_vs_probe(three_runs[::2])
    assert few["correlation"]["n"] == 2 and few["correlation"]["pearson"] is None  # 3 runs at least


def test_compare_cli_runs_prints_recon_vs_probe_and_writes_json(three_runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", "--runs", *map(str, three_runs), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Spearman rho = -1.00" in text and "recon_vs_probe.json" in text
    assert json.loads((out / "recon_vs_probe.json").read_text())["correlation"]["n"] == 3
    assert main(["compare", "--out", str(out)]) == 2  # neither --data nor --runs
    assert "--data" in capsys.readouterr().err
    assert main(["compare", "--data", "digits", "--shifts", "1,x", "--out", str(tmp_path / "none")]) == 2
    assert "'x' is not a whole number" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_compare_figures_say_when_the_convae_reconstructs_stem_maps(quick_result):
    import copy

    from convae.viz.compare_plots import compare_figures

    result = json.loads(json.dumps(quick_result[1]))  # the first compare's result (later tests rewrite its directory)
    assert result["meta"]["configs"]["conv"]["model"]["stem"] == "none"  # 12x16 images: model.stem="auto" gives none
    plain = compare_figures(result)
    assert "stem" not in plain["permutation"].axes[1].get_ylabel()
    stem = copy.deepcopy(result)
    stem["meta"]["configs"]["conv"]["model"]["stem"] = "scattering"
    figures = compare_figures(stem)
    assert "stem's maps" in figures["permutation"].axes[1].get_ylabel()
    assert "stem's maps" in figures["hunger"].axes[0].get_ylabel()
