"""Every CLI verb end to end on small data (verbs of later modules have their own test files)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from convae.cli import main


def test_train_then_inspect(tmp_path, blobs_npz, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", f"npz:{blobs_npz}", "--epochs", "2", "--run-dir", str(run), "--set", "model.channels=8,16",
                 "--precision", "fp32", "-q"]) == 0
    out = capsys.readouterr().out
    assert "trained conv model for 2 epoch(s)" in out and "validation: MSE" in out
    assert main(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "stage2" in out and "recept. field" in out and "trained   2 epochs" in out
    assert main(["inspect", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in report["layers"]] == ["stage1", "stage2", "bottleneck"]
    assert report["parameters"]["total"] > 0


def test_train_resume_from_run_dir_alone(tmp_path, blobs_npz, capsys):
    run = tmp_path / "run"
    main(["train", "--data", f"npz:{blobs_npz}", "--epochs", "1", "--run-dir", str(run), "--set", "model.channels=4", "-q"])
    assert main(["train", "--run-dir", str(run), "--resume", "--epochs", "2", "-q"]) == 0
    assert "2 epoch(s)" in capsys.readouterr().out


def test_bad_override_is_a_one_line_error_with_exit_2(tmp_path, blobs_npz, capsys):
    code = main(["train", "--data", f"npz:{blobs_npz}", "--run-dir", str(tmp_path / "r"), "--set", "train.learnrate=1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.learnrate'" in err
    assert not (tmp_path / "r").exists()


def test_impossible_architecture_fails_before_training(tmp_path, capsys):
    code = main(["train", "--data", "digits", "--run-dir", str(tmp_path / "r"), "--set", "model.channels=4,4,4,4", "-q"])
    assert code == 2
    assert "too small for 4 stages" in capsys.readouterr().err
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_demo_on_digits_prints_side_by_side(tmp_path, capsys):
    assert main(["demo", "--data", "digits", "--epochs", "2", "--out", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "ConvAE" in out and "FCAE" in out and "validation MSE" in out and "parameters" in out
    runs = sorted(p.name for p in next(tmp_path.iterdir()).iterdir())
    assert runs[:2] == ["conv", "dense"]


def test_scan_exits_nonzero_on_bad_file(tmp_path, capsys):
    from PIL import Image

    Image.new("L", (9, 7), 128).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["scan", f"folder:{tmp_path}"]) == 1
    out = capsys.readouterr().out
    assert "bad.png" in out


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "convae", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "convae" in result.stdout


def test_extract_writes_features_labels_and_sidecar(tmp_path, blobs_npz, capsys):
    run = tmp_path / "run"
    main(["train", "--data", f"npz:{blobs_npz}", "--epochs", "1", "--run-dir", str(run), "--set", "model.channels=4,8", "-q"])
    out = tmp_path / "f.npy"
    assert main(["extract", str(run), "--layers", "stage1,stage2", "--pool", "avg2", "--out", str(out), "-q"]) == 0
    feats = np.load(out)
    assert feats.shape == (200, (4 + 8) * 4) and feats.dtype == np.float32
    assert np.load(tmp_path / "f.labels.npy").shape == (200,)
    sidecar = json.loads((tmp_path / "f.json").read_text())
    assert sidecar["layers"] == ["stage1", "stage2"] and sidecar["pool"] == "avg2"


def test_probe_prints_table_with_baselines_and_writes_files(tmp_path, blobs_npz, capsys):
    run = tmp_path / "run"
    main(["train", "--data", f"npz:{blobs_npz}", "--epochs", "1", "--run-dir", str(run), "--set", "model.channels=4,8", "-q"])
    assert main(["probe", str(run), "--layers", "stage2", "--classifiers", "logreg", "--labels-per-class", "10",
                 "--seeds", "0", "-q"]) == 0
    out = capsys.readouterr().out
    assert "untrained" in out and "raw" in out and "stage2" in out
    records = json.loads((run / "probe.json").read_text())
    assert records
    assert (run / "probe.csv").exists() and (run / "probe.md").exists()


@pytest.mark.parametrize("text, expected", [
    ("avg2", ["avg2"]),
    ("avg2,max", ["avg2", "max"]),
    ("spp:1,2,4", ["spp:1,2,4"]),
    ("avg2, spp:1,2,4 ,max3", ["avg2", "spp:1,2,4", "max3"]),
    ("SPP:1,2,avg", ["SPP:1,2", "avg"]),
])
def test_probe_pool_list_keeps_spp_levels_together(text, expected):
    from convae.cli import _pool_list

    assert _pool_list(text) == expected


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits") / "run"
    assert main(["train", "--data", "digits", "--epochs", "1", "--run-dir", str(run), "--set", "model.channels=4,8",
                 "--set", "model.latent_dim=6", "--precision", "fp32", "--threads", "1", "-q"]) == 0
    return run


@pytest.fixture(scope="module")
def big_npz(tmp_path_factory):
    """60 labelled 1x16x16 images (twice digits' size), 3 classes by where a bright square sits."""
    rng = np.random.default_rng(0)
    x = (rng.random((60, 16, 16)) * 40).astype(np.uint8)
    y = np.arange(60) % 3
    for i, label in enumerate(y):
        x[i, 2:8, 2 + 4 * label:8 + 4 * label] = 230
    path = tmp_path_factory.mktemp("npz") / "big.npz"
    np.savez(path, x=x, y=y)
    return path


def test_probe_with_all_in_the_label_counts_finishes_and_writes_probe_json(digits_run, tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["probe", str(digits_run), "--labels-per-class", "10,all", "--quick", "--layers", "bottleneck",
                 "--train-limit", "300", "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "10/class" in text and "| all |" in text
    meta = json.loads((out / "probe.json").read_text())["meta"]
    assert meta["labels_per_class"] == [10] and meta["n_train"] == 300 and meta["n_available"] == 1797


@pytest.mark.parametrize("counts, words", [("0", "at least 1"), ("abc", "'abc'"), ("10,-5", "at least 1"), ("10,,x", "'x'")])
def test_a_bad_label_count_fails_before_any_feature_is_extracted(digits_run, tmp_path, capsys, monkeypatch, counts, words):
    import convae.analysis.probe as probe_module

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted before the bad option was refused")

    monkeypatch.setattr(probe_module, "build_feature_sets", no_extraction)
    monkeypatch.setattr(probe_module, "load_probe_data", no_extraction)
    assert main(["probe", str(digits_run), "--labels-per-class", counts, "--out", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convae: error: ") and err.count("\n") == 1 and words in err and "labels" in err
    assert not (tmp_path / "probe.json").exists()


def test_probe_warns_by_default_when_it_resizes_another_dataset(digits_run, big_npz, tmp_path):
    # a subprocess: the warning must pass the CLI's own logging setup (WARNING and above)
    result = subprocess.run([sys.executable, "-m", "convae", "probe", str(digits_run), "--data", f"npz:{big_npz}", "--quick",
                             "--layers", "bottleneck", "--out", str(tmp_path), "-q"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("WARNING") and "resiz" in line]
    assert len(warning) == 1, result.stderr
    assert "1x16x16" in warning[0] and "1x8x8" in warning[0] and "16x16 -> 8x8" in warning[0]


def test_probe_image_size_resizes_on_load(digits_run, big_npz, tmp_path, capsys, caplog):
    assert main(["probe", str(digits_run), "--data", f"npz:{big_npz}", "--image-size", "8x8", "--quick", "--layers", "bottleneck",
                 "--out", str(tmp_path), "-q"]) == 0
    meta = json.loads((tmp_path / "probe.json").read_text())["meta"]
    assert meta["image_size"] == [8, 8] and meta["n_train"] == 60
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "resiz" in r.getMessage()]  # asked for: no warning
    assert main(["probe", str(digits_run), "--data", f"npz:{big_npz}", "--image-size", "8by8", "-q"]) == 2
    assert "image size '8by8' is not valid" in capsys.readouterr().err


# --- pipes, file modes, help text, import cost -------------------------------------------------------------
def tiny_run(tmp_path, blobs_npz):
    run = tmp_path / "run"
    assert main(["train", "--data", f"npz:{blobs_npz}", "--epochs", "1", "--run-dir", str(run), "--set", "model.channels=4",
                 "--precision", "fp32", "--threads", "1", "-q"]) == 0
    return run


def test_stdout_closed_early_exits_quietly_with_141(tmp_path, blobs_npz):
    """`convae inspect RUN --json | head`: the reader leaves; no BrokenPipeError traceback, exit 128 + SIGPIPE."""
    run = tiny_run(tmp_path, blobs_npz)
    proc = subprocess.Popen([sys.executable, "-m", "convae", "inspect", str(run), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # closed before convae writes anything: its first write to stdout fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err


def test_extract_and_export_files_get_mode_644_under_umask_022(tmp_path, blobs_npz):
    import os
    import stat

    run = tiny_run(tmp_path, blobs_npz)
    verbs = [["extract", str(run), "--out", str(tmp_path / "f.npy"), "-q"],
             ["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "encoder.safetensors")]]
    code = f"import sys; from convae.cli import main; sys.exit(max(main(args) for args in {verbs!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, umask=0o022, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    for name in ("f.npy", "f.labels.npy", "f.json", "encoder.safetensors"):
        assert oct(stat.S_IMODE((tmp_path / name).stat().st_mode)) == oct(0o644), name


def test_train_help_explains_epochs_lr_seed_and_batch_size(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help column
    for flag, key in (("--epochs EPOCHS", "train.epochs"), ("--lr LR", "train.lr"), ("--seed SEED", "train.seed"),
                      ("--batch-size BATCH_SIZE", "train.batch_size")):
        assert flag in text and f"({key}; default" in text, flag


def test_cli_parser_and_help_import_neither_torch_nor_sklearn():
    code = ("import sys, convae.cli\n"
            "convae.cli.build_parser()\n"
            "for argv in (['--help'], ['train', '--help'], ['probe', '--help']):\n"
            "    try:\n"
            "        convae.cli.main(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print('heavy:', sorted(m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "heavy: []"


# --- the permutation note for tiny images ------------------------------------------------------------------
def _demo_result(run_dir, **extra) -> dict:
    model = {"parameters": 1000, "validation_mse": 0.01, "validation_psnr": 20.0, "validation_ssim": 0.9, "train_seconds": 1.0,
             "precision": "fp32", "run_dir": str(run_dir)}
    return {"data": "digits", "epochs": 2, "n_train": 1437, "eval_split": "validation", "root": str(run_dir),
            "models": {"conv": model, "dense": dict(model)}, **extra}


@pytest.mark.parametrize("shape, noted", [((1, 8, 8), True), ((1, 28, 28), False), ((3, 32, 32), False)])
def test_demo_output_says_the_permutation_effect_needs_larger_images(tmp_path, shape, noted):
    from convae.config import RunConfig
    from convae.demo import format_demo
    from convae.runs import save_config

    run = tmp_path / "conv"
    run.mkdir()
    save_config(run, RunConfig(), shape)  # the image shape, as a trained run records it
    for result in (_demo_result(run), _demo_result(tmp_path / "elsewhere", in_shape=list(shape))):
        text = format_demo(result)
        assert ("permutation effect" in text and "needs larger images" in text) is noted, text
        assert ("convae compare --data fashion-mnist --out runs/compare" in text) is noted
        if noted:
            assert f"{shape[1]}x{shape[2]} images leave little spatial structure" in text


def _compare_result(in_shape) -> dict:
    layer = {"original": 0.90, "permuted": 0.881, "delta": -0.019, "noise_2se": 0.03, "within_noise": True}
    model = {"layers": {"bottleneck": layer}, "mse_original": 0.01, "mse_permuted": 0.012, "mse_ratio": 1.2}
    meta = {"in_shape": list(in_shape), "data": "digits" if in_shape[1] == 8 else "fashion-mnist", "n_train": 1000, "n_test": 300,
            "test_source": "held out", "epochs": {"conv": 2, "dense": 2}, "probe": "logreg", "probe_train_limit": None, "pool": "avg2"}
    return {"meta": meta, "permutation": {"summary": {"conv": model, "dense": model, "seed_noise": {"bottleneck": 0.004}}}}


@pytest.mark.parametrize("shape, noted", [((1, 8, 8), True), ((1, 28, 28), False)])
def test_compare_markdown_says_the_permutation_effect_needs_larger_images(shape, noted):
    from convae.analysis.tables import format_compare

    text = format_compare(_compare_result(shape))
    assert "### Fixed pixel permutation" in text and "unchanged" in text
    assert ("the permutation effect needs larger images" in text) is noted, text
    assert ("convae compare --data fashion-mnist --out runs/compare" in text) is noted
    if noted:
        assert "At 8x8 there is little spatial structure" in text


def test_viz_help_documents_the_traversal_and_embedding_options(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["viz", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--units LIST", "--direction {unit,pca}", "--where {position,map}", "--position Y,X", "--span SPAN", "--steps STEPS",
                 "--method {pca,tsne,umap}"):
        assert flag in text, flag
    assert "data standard deviations" in text and "pip install 'convae[umap]'" in text


def test_probe_takes_its_baselines_and_their_settings_from_the_command_line(digits_run, tmp_path, capsys):
    out = tmp_path / "probe"
    code = main(["probe", str(digits_run), "--data", "digits", "--layers", "stage1", "--pool", "avg", "--classifiers", "logreg",
                 "--labels-per-class", "all", "--baselines", "raw,hog", "--hog", "cell=3,orientations=6", "--out", str(out), "-q"])
    assert code == 0
    meta = json.loads((out / "probe.json").read_text())["meta"]
    assert meta["baselines"] == ["raw", "hog"] and meta["baseline_params"]["hog"] == {"cell": 3, "block": 2, "orientations": 6}
    assert "HOG" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value", [("--hog", "cell"), ("--hog", "cells=4"), ("--scattering", "J=two")])
def test_a_bad_baseline_setting_is_a_one_line_error(digits_run, tmp_path, capsys, flag, value):
    code = main(["probe", str(digits_run), "--data", "digits", flag, value, "--out", str(tmp_path / "p"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("convae: error:") and flag.lstrip("-") in err and not (tmp_path / "p").exists()
