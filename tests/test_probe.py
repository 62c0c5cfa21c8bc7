"""The probing harness: records, baselines, protocols, transfer and its files (convae.probe)."""

import csv
import io
import json
import logging
import time

import numpy as np
import pytest
import torch

from convae.config import RunConfig, apply_overrides
from convae.errors import ConfigError, DataError
from convae.analysis.classifiers import CLASSIFIERS
from convae.analysis.probe import probe
from convae.analysis.tables import format_table
from convae.training import train

RECORD_KEYS = {"feature_set", "family", "layers", "pool", "dim", "classifier", "labels_per_class", "n_train", "n_test", "protocol",
               "stage", "seeds", "accuracy", "accuracy_std", "accuracies", "fit_seconds", "converged"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(path, *overrides):
    cfg = apply_overrides(RunConfig(), ["data.spec=digits", "train.epochs=1", "train.batch_size=64", "train.precision=fp32",
                                        "model.latent_dim=6", *overrides])
    train(cfg, path, progress=False)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A ConvAE (stage1, stage2, bottleneck) and an FCAE (hidden1, bottleneck) trained briefly on digits."""
    root = tmp_path_factory.mktemp("runs")
    # the ConvAE with a vector (dense) bottleneck: the tables below expect it
    return _train(root / "conv", "model.channels=4,8", "model.bottleneck=dense"), _train(root / "dense", "model.kind=dense", "model.hidden=16")


@pytest.fixture(scope="module")
def rgb_npz(tmp_path_factory):
    """Keras-layout .npz of 3x16x16 RGB images (another size and channel count than digits), 3 classes by colour."""
    rng = np.random.default_rng(0)

    def part(n):
        y = np.arange(n) % 3
        x = (rng.random((n, 16, 16, 3)) * 60).astype(np.uint8)
        for i, label in enumerate(y):
            x[i, 4:12, 4:12, label] = 250
        return x, y

    (x_train, y_train), (x_test, y_test) = part(60), part(30)
    path = tmp_path_factory.mktemp("data") / "rgb.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def test_probe_records_every_feature_set_with_its_baselines_and_writes_its_files(runs, tmp_path):
    conv, dense = runs
    result = probe(conv, "digits", fcae=dense, pool=["avg", "avg2"], classifiers=["logreg", "linear_svc"], labels_per_class=[5],
                   seeds=[0, 1], train_limit=300, cv_folds=2, out_dir=tmp_path)
    records = result.records
    assert all(set(r) == RECORD_KEYS for r in records)
    scan = {r["feature_set"]: r for r in records if r["stage"] == "layers"}
    assert {"convae:stage1/avg", "convae:stage1/avg2", "convae:stage2/avg", "convae:stage2/avg2", "convae:bottleneck",
            "untrained:stage2/avg2", "untrained:bottleneck", "fcae:hidden1", "fcae:bottleneck", "raw"} <= set(scan)
    assert {r["dim"] for r in scan.values() if r["family"] == "pca_whitened"} == {4, 6, 8, 16, 32}  # one per encoder dimension
    (honest,) = [r for r in scan.values() if r["family"] == "pca"]  # one honest PCA, its dimension chosen on held-out images
    assert honest["dim"] == result.meta["baseline_params"]["pca"]["dim"] in (10, 20, 50, 64)
    assert {"hog", "scattering"} <= set(scan) and result.meta["baseline_params"]["hog"] == {"cell": 2, "block": 2, "orientations": 9}
    assert scan["raw"]["dim"] == 64 and scan["convae:stage2/avg2"]["dim"] == 32 and scan["fcae:hidden1"]["dim"] == 16
    assert all(r["protocol"] == "2-fold CV" and r["n_train"] == 150 and r["n_test"] == 150 for r in scan.values())
    assert all(0 <= r["accuracy"] <= 1 and r["fit_seconds"] >= 0 for r in records)

    best = result.meta["best"]
    assert [name.split(":")[0] for name in best[:3]] == ["convae", "untrained", "fcae"] and best[3] == "raw"
    assert best[4] == honest["feature_set"] and best[5:] == ["hog", "scattering"]
    for name in best:  # every classifier at each family's best layer, and label efficiency over two seeds
        assert {r["classifier"] for r in records if r["feature_set"] == name and r["labels_per_class"] is None} == {"logreg", "linear_svc"}
        (few,) = [r for r in records if r["feature_set"] == name and r["labels_per_class"] == 5]
        assert few["n_train"] == 50 and len(few["accuracies"]) == 2 and few["accuracy_std"] is not None

    on_disk = json.loads((tmp_path / "probe.json").read_text())
    assert on_disk == json.loads(json.dumps(result.to_dict()))
    assert len(list(csv.DictReader(io.StringIO((tmp_path / "probe.csv").read_text())))) == len(records)
    table = (tmp_path / "probe.md").read_text()
    assert table.strip() == format_table(result) == format_table(on_disk)
    assert "| stage2 | avg2 | 32 |" in table and "untrained" in table and "PCA same dim, whitened" in table and "Without training" in table and "5/class" in table


def test_every_classifier_runs_on_the_best_layer(runs, tmp_path):
    conv, _ = runs
    result = probe(conv, "digits", layers=["bottleneck"], baselines=["raw"], labels_per_class=[], seeds=[0], train_limit=200,
                   classifier_limits={"rbf_svc": 60}, cv_folds=2, write=False)
    for name in ("convae:bottleneck", "raw"):
        assert {r["classifier"] for r in result.records if r["feature_set"] == name} == set(CLASSIFIERS)
        assert {r["classifier"]: r["n_train"] for r in result.records if r["feature_set"] == name} == {
            "logreg": 100, "linear_svc": 100, "rbf_svc": 60, "random_forest": 100, "mlp": 100}
    assert "RandomForest" in format_table(result) and "RBF SVC 60" in format_table(result)


PROGRESS_PROBE = dict(layers=["bottleneck"], baselines=["raw"], classifiers=["logreg", "linear_svc"], labels_per_class=[5],
                      seeds=[0], train_limit=200, cv_folds=2, write=False)


def probe_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "convae.progress" and r.getMessage().startswith("probe: ")]


def test_probe_progress_logs_a_line_per_classifier_fit_naming_the_set_and_classifier(runs, monkeypatch, caplog):
    conv, _ = runs
    monkeypatch.setattr("convae.progress._is_terminal", lambda stream: False)  # log mode, as under CI or `| tee`
    monkeypatch.setenv("CONVAE_PROGRESS_INTERVAL", "0")  # a line at every fit
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        result = probe(conv, "digits", progress=True, **PROGRESS_PROBE)
    lines = probe_lines(caplog)
    n = len(result.records)  # 2 sets scanned, linear_svc on both, 5 labels per class on both
    assert n == 6 and len(lines) == n, lines
    assert lines[0].startswith("probe: 1/6 fit (17%) stage=layers set=convae:bottleneck clf=logreg | ")
    assert any(" stage=classifiers set=raw clf=linear_svc | " in line for line in lines), lines
    assert lines[-1].startswith("probe: 6/6 fit (100%) stage=labels set=raw clf=logreg labels=5/class | "), lines
    quiet = probe(conv, "digits", progress=False, **PROGRESS_PROBE)  # the display changes no result
    assert [{**r, "fit_seconds": 0} for r in result.records] == [{**r, "fit_seconds": 0} for r in quiet.records]


def test_probe_progress_beats_while_one_fit_runs_long(runs, monkeypatch, caplog):
    import convae.analysis.probe as probe_module

    conv, _ = runs
    fits = []

    def slow_first_fit(*args, **kwargs):  # the first fit runs long, as an SVM on 60,000 images does
        if not fits:
            time.sleep(0.6)
        fits.append(args[1])
        return evaluate_set(*args, **kwargs)

    evaluate_set = probe_module.evaluate_set
    monkeypatch.setattr(probe_module, "evaluate_set", slow_first_fit)
    monkeypatch.setattr("convae.progress._is_terminal", lambda stream: False)
    monkeypatch.setenv("CONVAE_PROGRESS_INTERVAL", "0.1")
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        probe(conv, "digits", progress=True, **PROGRESS_PROBE)
    lines = probe_lines(caplog)
    waiting = [line for line in lines if line.startswith("probe: 0/6 fit (0%) stage=layers set=convae:bottleneck clf=logreg | ")]
    assert len(waiting) >= 3, lines  # no fit ended, yet a line every interval
    assert len(fits) == 6 and lines[-1].startswith("probe: 6/6 fit (100%)"), lines


def test_transfer_to_a_dataset_of_another_size_and_channel_count_with_its_test_split(runs, rgb_npz, tmp_path):
    conv, _ = runs  # trained on 1x8x8 digits; probed on 3x16x16 RGB images
    result = probe(conv, f"npz:{rgb_npz}", layers=["stage1", "bottleneck"], pool="avg2", classifiers=["logreg"],
                   labels_per_class=[4], seeds=[0], out_dir=tmp_path)
    meta = result.meta
    assert meta["protocol"] == "test split" and meta["n_train"] == 60 and meta["n_test"] == 30 and meta["in_shape"] == [1, 8, 8]
    raw = next(r for r in result.records if r["feature_set"] == "raw")
    assert raw["dim"] == 64 and raw["n_test"] == 30  # pixels converted to the run's 1x8x8
    assert (tmp_path / "probe.md").exists()


def test_quick_mode_probes_a_middle_layer_and_the_bottleneck_with_logistic_regression(runs):
    conv, _ = runs
    result = probe(conv, "digits", quick=True, cv_folds=2, write=False)
    meta = result.meta
    assert meta["layers"] == ["stage2", "bottleneck"] and meta["classifiers"] == ["logreg"] and meta["seeds"] == [0]
    assert meta["train_limit"] == 10_000 and meta["n_train"] == 1797
    assert meta["labels_per_class"] == []  # quick asks for 100 per class: all of digits' ~90 per class in a 2-fold split
    assert {r["classifier"] for r in result.records} == {"logreg"}


def test_joined_layers_form_one_feature_set(runs):
    conv, _ = runs
    result = probe(conv, "digits", layers=["stage1+stage2", "bottleneck"], pool="avg", classifiers=["logreg"], baselines=[],
                   labels_per_class=[], seeds=[0], train_limit=200, cv_folds=2, write=False)
    assert {r["feature_set"]: r["dim"] for r in result.records} == {"convae:stage1+stage2/avg": 12, "convae:bottleneck": 6}


def test_a_grid_too_fine_for_a_layer_is_skipped_and_reported(runs):
    conv, _ = runs  # digits: stage2 is 2x2
    result = probe(conv, "digits", layers=["stage1", "stage2"], pool="avg4", classifiers=["logreg"], baselines=[],
                   labels_per_class=[], seeds=[0], train_limit=200, cv_folds=2, write=False)
    assert [r["feature_set"] for r in result.records] == ["convae:stage1/avg4"]
    assert "stage2 is 2x2" in result.meta["skipped"][0] and "Skipped" in format_table(result)


def test_bad_settings_are_refused_before_any_work(runs):
    conv, _ = runs
    with pytest.raises(ConfigError, match="unknown classifier"):
        probe(conv, "digits", classifiers=["knn"], write=False)
    with pytest.raises(ConfigError, match="unknown baseline"):
        probe(conv, "digits", baselines=["sift"], write=False)
    with pytest.raises(ConfigError, match="hog: unknown parameter"):
        probe(conv, "digits", hog={"cells": 4}, write=False)
    with pytest.raises(ConfigError, match="scattering: J must be a positive integer"):
        probe(conv, "digits", scattering={"J": 0}, write=False)
    with pytest.raises(ConfigError, match="not valid"):
        probe(conv, "digits", pool="mean", write=False)


def test_unlabelled_data_cannot_be_probed(runs, tmp_path):
    conv, _ = runs
    np.save(tmp_path / "x.npy", np.zeros((20, 8, 8), np.uint8))
    with pytest.raises(DataError, match="needs labels"):
        probe(conv, f"npy:{tmp_path / 'x.npy'}", write=False)


def test_a_thread_limit_holds_only_while_probing(runs):
    conv, _ = runs
    seen = []
    original = CLASSIFIERS["logreg"]
    CLASSIFIERS["logreg"] = lambda seed, n_jobs: (seen.append(torch.get_num_threads()), original(seed, n_jobs))[1]
    try:
        probe(conv, "digits", layers=["bottleneck"], classifiers=["logreg"], baselines=[], labels_per_class=[], seeds=[0],
              train_limit=100, cv_folds=2, threads=2, write=False)
    finally:
        CLASSIFIERS["logreg"] = original
    assert set(seen) == {2} and torch.get_num_threads() == 1  # the module's one thread is back


def _header(**meta):
    base = {"run": "r", "data": "digits", "protocol": "5-fold CV", "n_train": 1797, "n_test": None, "n_available": 1797,
            "train_limit": 10_000, "model_kind": "conv", "classifiers": ["logreg"], "scan_classifier": "logreg", "best": [],
            "labels_per_class": [], "seeds": [0], "skipped": [], "seconds": 1.0, "feature_seconds": 0.5, "precision": "fp32"}
    return format_table({"meta": {**base, **meta}, "records": []}).splitlines()[0]


def test_probe_header_says_what_was_used_not_the_limit():
    # quick mode's train_limit=10,000 on 1,797 digits: every image was used, no sample
    line = _header()
    assert "1,797 training images;" in line and "sample" not in line and "10,000" not in line
    line = _header(protocol="test split", n_train=10_000, n_test=10_000, n_available=60_000)
    assert "10,000 training images (a stratified sample of 10,000 of the 60,000)" in line and ", 10,000 test" in line


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory):
    """A ConvAE alone, trained briefly on 1x8x8 digits."""
    return _train(tmp_path_factory.mktemp("conv") / "conv", "model.channels=4,8")


def test_loading_another_size_warns_once_naming_both_sizes_and_the_conversion(conv_run, rgb_npz, caplog):
    from convae.analysis.probe import load_probe_data
    from convae.runs import load_run

    run = load_run(conv_run)  # 1x8x8 digits; rgb_npz: 3x16x16 with a test split
    with caplog.at_level("WARNING", logger="convae.analysis.probe"):
        train, test = load_probe_data(run, f"npz:{rgb_npz}", None)
    (warning,) = [r.getMessage() for r in caplog.records]  # once, though the train and test splits both convert
    assert "are 3x16x16 (CxHxW) but the run takes 1x8x8" in warning and "3 channels -> 1 (luma)" in warning
    assert "resizing 16x16 -> 8x8" in warning and train.shape == test.shape == (1, 8, 8)
    caplog.clear()
    with caplog.at_level("WARNING", logger="convae.analysis.probe"):
        train, _ = load_probe_data(run, f"npz:{rgb_npz}", None, image_size="8x8")
    (warning,) = [r.getMessage() for r in caplog.records]  # the resize was asked for; the channels were not
    assert "1x8x8 after --image-size" not in warning and "3x8x8 after --image-size" in warning and "resizing" not in warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="convae.analysis.probe"):
        load_probe_data(run, "digits", None)
    assert not caplog.records


def test_a_dataset_object_of_another_size_is_converted_once_so_the_pixel_baselines_match_the_encoder(runs):
    conv, _ = runs  # a 1x8x8 run; a 3x16x16 ImageDataset in memory
    from convae.data import ImageDataset

    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    x = torch.from_numpy((rng.random((90, 3, 16, 16)) * 255).astype(np.uint8))
    data = ImageDataset(x, y, "array", "all")
    result = probe(conv, data, layers=["stage1"], pool="avg", baselines=["raw", "hog"], classifiers=["logreg"],
                   labels_per_class=[], seeds=[0], cv_folds=2, write=False)
    dims = {r["feature_set"]: r["dim"] for r in result.records}
    assert dims["raw"] == 64 and result.meta["baseline_params"]["hog"]["cell"] == 2  # pixels and HOG at the run's 1x8x8
