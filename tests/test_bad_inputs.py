"""Bad inputs end to end (issue 5, section 3): every listed image case in one folder, through
load_dataset, train and `convae scan`; array and configuration errors from the command line,
caught before any training starts; layer names that do not exist.

Per-case decoding rules and most array errors are tested one by one in tests/test_data.py;
this file checks that they hold together, through the entry points a user meets."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convae import ArchitectureError, BadImageError, ConfigError, DataError, LayerError, cli, runs
from convae.config import RunConfig, apply_overrides
from convae.data import load_dataset, scan
from convae.training import train


# --- the zoo: one folder with every image case of the issue -----------------------------------------
def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png_bad_crc() -> bytes:
    data = bytearray(_encode(_noise(6, 6), "PNG"))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    data[idat + 4 + length] ^= 0xFF
    return bytes(data)


def _png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (6, 6))
    image.putpalette([200, 0, 0, 0, 90, 0] + [0] * 762)
    return _encode(image, "PNG", transparency=0)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 8 wide x 6 high, displayed 6 wide x 8 high
    return _encode(_noise(8, 6), "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.new("L", (6, 6), 10).convert("P"), Image.new("L", (6, 6), 200).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


GOOD = {  # unusual but valid: decoded by the rule in convae.data -> (mode Pillow reports, WxH as displayed)
    "gray16.png": (lambda: _encode(Image.fromarray(np.full((6, 6), 0x1234, np.uint16)), "PNG"), "I;16", "6x6"),
    "cmyk.jpg": (lambda: _encode(Image.new("CMYK", (6, 6), (0, 255, 255, 0)), "JPEG"), "CMYK", "6x6"),
    "palette_alpha.png": (_palette_with_transparency, "P", "6x6"),
    "rgba.png": (lambda: _encode(Image.new("RGBA", (6, 6), (0, 0, 255, 128)), "PNG"), "RGBA", "6x6"),
    "exif_rotated.jpg": (_exif_rotated, "RGB", "6x8"),
    "animated.gif": (_animated_gif, "P", "6x6"),
    "large.png": (lambda: _encode(_noise(12, 10), "PNG"), "RGB", "12x10"),  # mixed sizes
}
BAD = {  # name -> (bytes, the reason given)
    "truncated.jpg": (lambda: (lambda data: data[:len(data) // 2])(_encode(_noise(32, 32), "JPEG")), "cannot decode JPEG data"),
    "zero.png": (lambda: b"", r"empty file \(0 bytes\)"),
    "text.png": (lambda: b"just some text, not a picture\n", "not an image"),
    "bad_crc.png": (_png_bad_crc, "bad CRC in PNG chunk 'IDAT'"),
    "bomb.png": (_png_bomb, "decompression"),
    "unreadable.png": (lambda: _encode(_noise(6, 6), "PNG"), "cannot read file: Permission denied"),
    "self_link.png": (None, "cannot read file: Too many levels of symbolic links"),
}


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A folder with every image case; `unreadable.png` cannot be read even by root (simulated)."""
    root = tmp_path / "zoo"
    root.mkdir()
    for name, (make, *_) in GOOD.items():
        (root / name).write_bytes(make())
    for name, (make, _) in BAD.items():
        if make is not None:
            (root / name).write_bytes(make())
    os.symlink("self_link.png", root / "self_link.png")  # a link loop on a file
    (root / "sub").mkdir()
    os.symlink(root, root / "sub" / "up")  # a folder link loop: must not hang the walk
    (root / "sub" / "in_sub.png").write_bytes(_encode(_noise(6, 6, seed=3), "PNG"))
    unreadable = root / "unreadable.png"
    real_read_bytes = Path.read_bytes

    def read_bytes(self):
        if self == unreadable:  # chmod 000 does not stop root; refuse the way the kernel would
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    return root


def _flat(root: Path) -> Path:
    """The zoo without its sub-folder (a folder has images at the top or in class folders, not both)."""
    sub = root / "sub"
    for entry in sub.iterdir():
        entry.unlink()
    sub.rmdir()
    return root


def test_every_bad_image_is_an_error_naming_it(zoo):
    with pytest.raises(BadImageError) as caught:
        load_dataset(f"folder:{_flat(zoo)}", image_size=(6, 6))
    first_bad = sorted(BAD)[0]  # files are read in sorted order; the first bad one stops the load
    assert caught.value.path == str(zoo / first_bad) and first_bad in str(caught.value)


def test_skip_leaves_out_exactly_the_bad_images_deterministically_and_reports_them(zoo, caplog):
    root = _flat(zoo)
    with caplog.at_level(logging.WARNING, logger="convae"):
        dataset = load_dataset(f"folder:{root}", image_size=(6, 6), on_bad_image="skip")
    assert [Path(path).name for path, _ in dataset.skipped] == sorted(BAD)
    for path, reason in dataset.skipped:
        assert re.search(BAD[Path(path).name][1], reason), (path, reason)
    assert dataset.images.shape == (len(GOOD), 3, 6, 6) and dataset.images.dtype == torch.uint8
    assert f"skipped {len(BAD)} of {len(BAD) + len(GOOD)}" in caplog.text
    again = load_dataset(f"folder:{root}", image_size=(6, 6), on_bad_image="skip")
    assert again.skipped == dataset.skipped and torch.equal(again.images, dataset.images)


def test_mixed_sizes_without_image_size_name_two_files(zoo):
    with pytest.raises(DataError, match=r"images differ in size: .*animated.gif is 6x6 \(WxH\), .*exif_rotated.jpg is 6x8; "
                                         r"pass image_size"):
        load_dataset(f"folder:{_flat(zoo)}", on_bad_image="skip")


def test_training_with_skip_reports_the_skipped_files(zoo, tmp_path, caplog):
    cfg = apply_overrides(RunConfig(), [f"data.spec=folder:{_flat(zoo)}", "data.image_size=8x8", "data.on_bad_image=skip",
                                        "model.channels=4", "model.latent_dim=2", "train.epochs=1", "train.threads=1",
                                        "train.precision=fp32", "train.val_fraction=0"])
    threads = torch.get_num_threads()
    with caplog.at_level(logging.WARNING, logger="convae"):
        result = train(cfg, tmp_path / "run", progress=False)
    torch.set_num_threads(threads)
    assert result.history[-1]["epoch"] == 1
    assert f"skipped {len(BAD)} of {len(BAD) + len(GOOD)} image files" in caplog.text
    assert all(name in caplog.text for name in sorted(BAD)[:5]) and "and 2 more" in caplog.text


def test_scan_lists_every_bad_file_with_histograms_and_exits_nonzero(zoo, capsys):
    assert cli.main(["scan", f"folder:{zoo}"]) == 1
    out = capsys.readouterr().out
    for name, (_, reason) in BAD.items():
        line = next((line for line in out.splitlines() if name in line), "")
        assert re.search(reason, line), (name, out)
    report = scan(f"folder:{zoo}")
    assert [Path(path).name for path, _ in report.bad] == sorted(BAD)
    assert report.modes == {"I;16": 1, "CMYK": 1, "P": 2, "RGBA": 1, "RGB": 3}  # RGB: exif_rotated, large, sub/in_sub
    assert report.sizes == {"6x6": 6, "6x8": 1, "12x10": 1}
    assert "modes: RGB 3, P 2" in out and "sizes (WxH): 6x6 6" in out


def test_scan_of_a_clean_folder_exits_zero(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(_encode(_noise(5, 4), "PNG"))
    assert cli.main(["scan", f"folder:{tmp_path}"]) == 0
    assert "1 images, 0 bad" in capsys.readouterr().out


# --- arrays and configuration: errors before any training starts ---------------------------------------
def _nan_images():
    x = np.zeros((4, 6, 6), np.float32)
    x[1, 2, 3] = np.nan
    return {"x": x}


def _inf_images():
    x = np.zeros((4, 6, 6), np.float32)
    x[2, 0, 0] = np.inf
    return {"x": x}


ARRAYS = {  # arrays saved in an .npz -> the error the command line prints
    "nan": (_nan_images, r"1 NaN/Inf values, the first in image 1"),
    "inf": (_inf_images, r"1 NaN/Inf values, the first in image 2"),
    "rank 2": (lambda: {"x": np.zeros((6, 6), np.uint8)}, "rank 2"),
    "rank 5": (lambda: {"x": np.zeros((2, 1, 1, 6, 6), np.uint8)}, "rank 5"),
    "object": (lambda: {"x": np.array([None, 1], dtype=object)}, "Python objects|object"),
    "complex": (lambda: {"x": np.zeros((2, 6, 6), np.complex128)}, "complex128 cannot hold images"),
    "zero images": (lambda: {"x": np.zeros((0, 6, 6), np.uint8)}, "zero images"),
    "labels too short": (lambda: {"x": np.zeros((4, 6, 6), np.uint8), "y": np.arange(3)}, "3 labels for 4 images"),
    "labels 2-d": (lambda: {"x": np.zeros((4, 6, 6), np.uint8), "y": np.zeros((4, 2))}, r"labels have shape \(4, 2\)"),
    "labels float": (lambda: {"x": np.zeros((4, 6, 6), np.uint8), "y": np.full(4, 0.5)}, "labels have dtype float64"),
}


@pytest.mark.parametrize("case", sorted(ARRAYS))
def test_bad_arrays_stop_the_cli_before_training(tmp_path, capsys, case):
    make, message = ARRAYS[case]
    path = tmp_path / "arrays.npz"
    np.savez(path, **make())
    assert cli.main(["train", "--data", f"npz:{path}", "--run-dir", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convae: error:") and "arrays.npz" in err and re.search(message, err), err
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("npz") / "small.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (16, 8, 8), dtype=np.uint8))
    return path


CONFIGS = {  # extra CLI arguments (or a config file's text) -> the error that names the key
    "unknown key": (["--set", "model.chanels=4"], "unknown key 'model.chanels'; valid keys in \\[model\\]: kind, channels"),
    "unknown bare key": (["--set", "learning_rate=1"], "unknown key 'learning_rate'; valid keys: model.kind"),
    "wrong type": (["--set", "train.batch_size=big"], "train.batch_size must be int, got 'big'"),
    "wrong list type": (["--set", "model.channels=4,x"], r"model.channels\[1\] must be int, got 'x'"),  # once silently [4]
    "huge int": (["--set", "train.epochs=" + "9" * 5000], "train.epochs must be int"),  # once a bare ValueError
    "file: nested too deeply": ("a = " + "[" * 100000, "not valid TOML: nested too deeply"),  # once a RecursionError
    "bad choice": (["--set", "model.pool=median"], "pool='median' is not one of"),
    "too many stages": (["--set", "model.channels=4,8,16,32"], "8x8 image is too small for 4 stages"),
    "even kernel": (["--set", "model.kernel_size=4"], "kernel_size must be odd"),
    "file: unknown section": ("[trian]\nepochs = 2\n", r"unknown section\(s\) \['trian'\]; valid sections: model, train, data"),
    "file: unknown key": ("[train]\nepoch = 2\n", "unknown key 'train.epoch'"),
    "file: wrong type": ("[model]\nchannels = \"wide\"\n", "model.channels must be a list of int"),
    "file: impossible": ("[model]\nchannels = [4, 8, 16, 32, 64]\n", "too small for 5 stages"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_bad_configuration_stops_the_cli_before_training(tmp_path, capsys, small_npz, case):
    extra, message = CONFIGS[case]
    if isinstance(extra, str):
        (tmp_path / "recipe.toml").write_text(extra)
        extra = ["--config", str(tmp_path / "recipe.toml")]
    assert cli.main(["train", "--data", f"npz:{small_npz}", "--run-dir", str(tmp_path / "run"), "-q", *extra]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


# --- layer names -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with untrained weights: enough for everything that reads layers."""
    run = tmp_path_factory.mktemp("run") / "run"
    run.mkdir()
    cfg = apply_overrides(RunConfig(), ["model.channels=4,8", "model.latent_dim=4"])
    model = runs.build_from_config(cfg, (1, 8, 8))
    runs.save_config(run, cfg, (1, 8, 8))
    runs.atomic_write_bytes(run / runs.WEIGHTS, runs.weights_bytes(model))
    return run


VALID = "valid layers: stage1, stage2, bottleneck"


@pytest.mark.parametrize("layers", ["stage9", "hidden1", ["stage1", "decoder"]])
def test_unknown_layer_names_list_the_valid_ones(run_dir, tmp_path, small_npz, layers):
    from convae.features import extract_to_npy
    from convae.sklearn import EncoderFeatures

    model = runs.load_run(run_dir).model
    with pytest.raises(LayerError, match=VALID):
        model.resolve_layers(layers)
    with pytest.raises(LayerError, match=VALID):
        EncoderFeatures(run_dir, layers=layers).fit()
    with pytest.raises(LayerError, match=VALID):
        extract_to_npy(run_dir, f"npz:{small_npz}", tmp_path / "f.npy", layers=layers, progress=False)
    assert not (tmp_path / "f.npy").exists()


def test_unknown_layer_from_the_cli_lists_the_valid_ones(run_dir, tmp_path, capsys):
    verbs = cli.build_parser()._subparsers._group_actions[0].choices
    if "export" not in verbs:
        pytest.skip("this version has no `convae export`")
    assert cli.main(["export", str(run_dir), "--layers", "stage9", "--out", str(tmp_path / "e.onnx")]) == 2
    assert VALID in capsys.readouterr().err


def test_unknown_model_kind_in_a_run_directory_is_a_run_error(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    record = json.loads((copy / runs.CONFIG).read_text())
    record["model"]["kind"] = "vae"
    (copy / runs.CONFIG).write_text(json.dumps(record))
    with pytest.raises(runs.RunError, match=r"config.json: model.kind='vae' is not one of conv, dense"):
        runs.load_run(copy)


def test_impossible_architecture_is_an_architecture_error_before_any_work():
    with pytest.raises(ArchitectureError, match="too small for 4 stages"):
        runs.build_from_config(apply_overrides(RunConfig(), ["model.channels=4,8,16,32"]), (1, 8, 8))
    with pytest.raises(ConfigError, match="model.channels must be a non-empty list"):
        apply_overrides(RunConfig(), ["model.channels=[]"])
