"""Recipes (issue 7): winner-take-all sparsity (training-only, default off, round-trips through the config)
and the recipe bench's reuse of untrained rows."""

import pytest
import torch

from convae import ArchitectureError, ConvAutoencoder, RunConfig
from convae.models import build_model


def test_wta_spatial_keeps_one_value_per_map_and_lifetime_keeps_top_fraction():
    model = ConvAutoencoder((1, 16, 16), channels=(4, 8), bottleneck="conv", latent_dim=6, wta_spatial=True, wta_lifetime=0.25)
    z = torch.randn(8, 6, 4, 4)
    sparse = model.sparsify(z)
    assert ((sparse != 0).flatten(2).sum(2) <= 1).all()  # spatial: at most one winner per image and channel
    assert ((sparse != 0).flatten(2).any(2).sum(0) == 2).all()  # lifetime: 25% of 8 images per channel


def test_wta_is_training_only_and_features_are_dense():
    torch.manual_seed(0)
    model = ConvAutoencoder((1, 16, 16), channels=(4, 8), bottleneck="conv", latent_dim=6, wta_spatial=True, wta_lifetime=0.5)
    x = torch.rand(4, 1, 16, 16)
    model.eval()
    assert torch.equal(model.reconstruct_logits(x), model.decode_logits(model.encode(x)))
    model.train()
    assert not torch.allclose(model.reconstruct_logits(x), model.decode_logits(model.encode(x)))


def test_wta_defaults_off_and_config_round_trips():
    assert "wta_spatial" not in RunConfig().model.model_kwargs()  # older runs rebuild unchanged
    cfg = RunConfig.from_dict({"model": {"bottleneck": "conv", "wta_spatial": True, "wta_lifetime": 0.2}})
    model = build_model("conv", (1, 16, 16), **cfg.model.model_kwargs())
    assert model.wta_spatial and model.wta_lifetime == 0.2
    assert RunConfig.from_dict(cfg.to_dict()).model == cfg.model


def test_wta_spatial_needs_a_conv_bottleneck():
    with pytest.raises(ArchitectureError, match="bottleneck='conv'"):
        ConvAutoencoder((1, 16, 16), channels=(4,), wta_spatial=True)


def test_recipe_bench_reuses_untrained_rows_only_for_the_same_encoder_and_probe_split(tmp_path, monkeypatch):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import recipes

    model = RunConfig().to_dict()["model"]
    other = {**model, "channels": [8, 16]}
    row = {"features": "stage2:flatten", "post": "none", "dim": 10, "accuracy": 0.9}
    records = [
        {"recipe": "a", "tag": "full", "config": "configs/a.toml", "model": model, "seed": 0, "probe_train": 60000, "probe_test": 10000,
         "rows": [{**row, "family": "trained", "accuracy": 0.95}, {**row, "family": "untrained"}]},
        {"recipe": "b", "tag": "full", "config": "configs/b.toml", "model": other, "seed": 0, "probe_train": 60000, "probe_test": 10000,
         "rows": [{**row, "features": "stage1:avg", "family": "untrained"}]},
    ]
    monkeypatch.setattr(recipes, "RESULTS", tmp_path / "recipes.json")
    (tmp_path / "recipes.json").write_text(json.dumps(records))
    key = {"model": model, "seed": 0, "probe_train": 60000, "probe_test": 10000}
    assert recipes.cached_untrained(key) == {("stage2:flatten", "none", "C=1"): {**row, "family": "untrained"}}
    assert recipes.cached_untrained({**key, "seed": 1}) == {}
    assert recipes.cached_untrained({**key, "solver": 2}) == {}  # rows from another logistic-regression solver
    assert recipes.cached_untrained({**key, "probe_train": 30000}) == {}
    assert list(recipes.cached_untrained({**key, "model": other})) == [("stage1:avg", "none", "C=1")]


def test_recipe_bench_features_take_one_pooling_or_one_per_layer():
    import sys
    from pathlib import Path

    from convae.data.arrays import ImageDataset

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import recipes

    torch.manual_seed(0)
    model = ConvAutoencoder((1, 16, 16), channels=(4, 8)).eval()  # stage1 8x8, stage2 4x4
    images = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    data = ImageDataset(images=images, labels=None, spec="array", split="train")
    got = recipes.all_features(model, data, ["stage1+stage2:flatten", "stage1/avg2+stage2/flatten", "stage2"], batch_size=2)
    with torch.inference_mode():
        maps = model.forward_intermediates(images.float() / 255, ["stage1", "stage2"])
    s1, s2 = maps["stage1"], maps["stage2"]
    want_mixed = torch.cat([torch.nn.functional.adaptive_avg_pool2d(s1, 2).flatten(1), s2.flatten(1)], dim=1)
    assert got["stage1+stage2:flatten"].shape == (5, 4 * 64 + 8 * 16)
    assert torch.allclose(torch.from_numpy(got["stage1+stage2:flatten"]), torch.cat([s1.flatten(1), s2.flatten(1)], 1), atol=1e-5)
    assert torch.allclose(torch.from_numpy(got["stage1/avg2+stage2/flatten"]), want_mixed, atol=1e-5)
    assert torch.allclose(torch.from_numpy(got["stage2"]), s2.mean((2, 3)), atol=1e-5)  # no pooling given: global average


def test_recipe_bench_picks_C_on_held_out_training_images_only():
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import recipes

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 40)).astype(np.float32)
    y = rng.integers(0, 3, 900)
    X = (centers[y] + 2.5 * rng.normal(size=(900, 40))).astype(np.float32)  # noisy, so C matters
    train, test, y_train, y_test = X[:600], X[600:], y[:600], y[600:]
    acc, C, val = recipes.tuned_logreg_accuracy(train, y_train, test, y_test, [1e-4, 1e-2, 1.0, 100.0], val_size=200)
    assert set(val) == {"0.0001", "0.01", "1", "100"}
    assert val[f"{C:g}"] == max(val.values()) and len(set(val.values())) > 1
    assert acc == recipes.logreg_accuracy(train, y_train, test, y_test, C)  # refit on the whole training split
    shuffled = rng.permutation(y_test)  # the test labels play no part in the choice
    assert recipes.tuned_logreg_accuracy(train, y_train, test, shuffled, [1e-4, 1e-2, 1.0, 100.0], val_size=200)[1:] == (C, val)


def test_recipe_bench_reads_the_probe_table_quietly_and_logs_its_feature_passes(caplog, monkeypatch):
    """The bench is the [probe] table's reader, so load_config's warning about it is silenced there (and only
    there); its feature passes log progress lines when the output is no terminal."""
    import logging
    import sys
    from pathlib import Path

    from convae.config import load_config
    from convae.data.arrays import ImageDataset

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "bench"))
    import recipes

    recipe = root / "configs" / f"{recipes.DEFAULT_RECIPE}.toml"
    with caplog.at_level(logging.WARNING, logger="convae.config"):
        _, probe = recipes.read_recipe(recipe)
    assert probe["features"] and not [r for r in caplog.records if "[probe] table" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="convae.config"):
        load_config(recipe)  # outside the bench the warning stands
    assert [r for r in caplog.records if "[probe] table" in r.getMessage()]

    caplog.clear()
    monkeypatch.setenv("CONVAE_PROGRESS_INTERVAL", "0")  # a line per batch
    monkeypatch.setattr("convae.progress._is_terminal", lambda stream: False)  # log lines, also under pytest -s
    model = ConvAutoencoder((1, 16, 16), channels=(4, 8)).eval()
    data = ImageDataset(images=torch.zeros(5, 1, 16, 16, dtype=torch.uint8), labels=None, spec="array", split="train")
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        recipes.all_features(model, data, ["stage2"], batch_size=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "convae.progress"]
    assert lines and lines[-1].startswith("features (train): 5/5 img")


def test_defaults_follow_the_default_recipe_config():
    """RunConfig() and ConvAEFeatures() train what configs/<DEFAULT_RECIPE>.toml says (epochs aside)."""
    import sys
    from pathlib import Path

    from convae import ConvAEFeatures
    from convae.config import load_config

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "bench"))
    import recipes

    recipe = load_config(root / "configs" / f"{recipes.DEFAULT_RECIPE}.toml")
    default = RunConfig()
    assert default.model.model_kwargs((1, 28, 28)) == recipe.model.model_kwargs()  # model.stem="auto" is the stem on 28x28
    text = (root / "configs" / f"{recipes.DEFAULT_RECIPE}.toml").read_text()
    for key in ("optimizer", "weight_decay", "schedule", "mask_ratio", "noise", "flip", "shift", "lr", "batch_size", "loss"):
        assert getattr(default.train, key) == getattr(recipe.train, key), key
    assert "mask_ratio" in text and "schedule" in text  # the recipe sets them; the defaults are not just the old ones
    est = ConvAEFeatures()
    assert est._model_kwargs() == recipe.model.model_kwargs()  # no shape given: "auto" is the stem
    for key in ("optimizer", "weight_decay", "schedule", "mask_ratio", "flip", "shift", "lr", "batch_size"):
        assert getattr(est, key) == getattr(recipe.train, key), key


@pytest.mark.parametrize("name", sorted(p.stem for p in (__import__("pathlib").Path(__file__).resolve().parents[1] / "configs").glob("*.toml")))
def test_every_recipe_config_loads_and_builds_what_it_says(name):
    """Recipes written before the defaults changed spell out the old ones, so they rebuild as measured."""
    import tomllib
    from pathlib import Path

    from convae.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.toml"
    cfg = load_config(path)
    raw = tomllib.loads(path.read_text())
    model = build_model(cfg.model.kind, (1, 28, 28), **cfg.model.model_kwargs())
    has_bn = any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in model.modules())
    assert has_bn == (raw["model"].get("norm") == "batch"), "norm must be written out in every recipe"
    for key in ("optimizer", "schedule", "mask_ratio"):
        assert key in raw["train"], f"{name}: train.{key} must be written out (its default changed with issue 7)"
    if cfg.model.kind == "conv":
        assert "convs_per_stage" in raw["model"], f"{name}: model.convs_per_stage must be written out (its default changed)"


def test_yardstick_table_shows_the_default_recipe_with_its_own_features_and_untrained_rows_from_their_tag(tmp_path, monkeypatch):
    """The yardstick's convae rows start with the default recipe on the features its [probe] table names, and take
    the untrained rows from the tag that measured them (an --untrained-only record)."""
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "bench"))
    import recipes
    import yardstick

    name, tag, untrained_tag, features, _ = yardstick.CONVAE_ROWS[0]
    assert name == recipes.DEFAULT_RECIPE
    assert features in recipes.read_recipe(root / "configs" / f"{name}.toml")[1]["features"]

    def row(family, acc, head=None, C=None, spec=features):
        return {"features": spec, "post": "none", "family": family, "dim": 12, "accuracy": acc,
                **({"head": head, "C": C} if head else {})}

    records = [
        {"recipe": name, "tag": tag, "train_seconds": 10.0, "epochs": 1, "train_tflop": 50.0, "when": "w",
         "machine": {"cpu": "CPU X", "precision": "fp32"},
         "rows": [row("trained", 0.7, "C=val", 0.01, spec="stage9:avg"), row("trained", 0.9, "C=val", 0.003),
                  row("untrained", 0.5, "C=0.01", 0.01)]},
        {"recipe": name, "tag": untrained_tag, "train_seconds": 0.0, "epochs": 0, "train_tflop": 0.0, "when": "w",
         "rows": [row("untrained", 0.6, "C=val", 0.03, spec="stage9:avg"), row("untrained", 0.8, "C=val", 0.01)]},
    ]
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "recipes.json").write_text(json.dumps(records))
    hand = tmp_path / "yardstick.json"
    hand.write_text(json.dumps([{"features": "raw", "params": {}, "dim": 784, "accuracy_C1": 0.8, "accuracy_tuned": 0.81,
                                 "C": 0.01, "grid": [0.01], "feature_seconds": 0.1, "when": "2026-01-01",
                                 "machine": {"cpu": "CPU Y", "isa": ["avx2"], "threads": 2, "load_average_start": [0.1]}}]))
    monkeypatch.setattr(yardstick, "ROOT", tmp_path)
    monkeypatch.setattr(yardstick, "RESULTS", hand)
    lines = yardstick.table().splitlines()
    trained = next(line for line in lines if line.startswith(f"| convae default ({name})"))
    assert "| 50 TFLOP | 12 | - | 90.00% (C=0.003) |" in trained
    assert lines[lines.index(trained) + 1] == "| the same encoder, untrained | none | 12 | - | 80.00% (C=0.01) |"
    assert "CPU Y (avx2)" in lines[-1] and f"--tag {untrained_tag} --untrained-only" in lines[-1]


def test_frontier_pairs_a_trained_point_with_the_same_encoders_untrained_row_measured_apart(tmp_path, monkeypatch):
    """A record probed with --no-untrained takes the untrained row of an --untrained-only record of the same
    seed-built encoder and probe split, never one of another seed."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import recipes

    model = RunConfig().to_dict()["model"]

    def record(tag, seed, rows, **extra):
        return {"recipe": "r", "tag": tag, "train_images": 60000, "probe_train": 60000, "probe_test": 10000, "seed": seed,
                "solver": recipes.SOLVER, "model": model, "train_seconds": 60.0, "train_tflop": 50.0, "rows": rows, **extra}

    def row(family, acc):
        return {"features": "stage1+stage2:flatten", "post": "none", "family": family, "accuracy": acc, "head": "C=val", "C": 0.01}

    results = tmp_path / "recipes.json"
    results.write_text(json.dumps([record("t", 0, [row("trained", 0.93)]), record("t1", 1, [row("trained", 0.92)]),
                                   record("u", 0, [row("untrained", 0.91)], train_seconds=0.0, train_tflop=0.0)]))
    monkeypatch.setattr(recipes, "RESULTS", results)
    points = {p["tag"]: p for p in recipes.frontier_points()}
    assert set(points) == {"t", "t1"}  # the untrained-only record is no point of its own
    assert points["t"]["untrained"] == pytest.approx(91.0)
    assert points["t1"]["untrained"] is None  # seed 1's encoder was never probed untrained
