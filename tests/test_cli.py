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
