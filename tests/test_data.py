"""Contracts of convae.data: specs, IDX parsing and lookup, the image conversion rule,
bad-file handling, array validation, batching and streaming. Small synthetic files only."""

from __future__ import annotations

import gzip
import io
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convae.data import idx as _idx
from convae.data import (ImageDataset, as_images, convert_images, dataset_fingerprint, has_test_split,
                         load_dataset, load_image_files, parse_image_size, scan, to_float)
from convae.errors import BadImageError, DataError, DatasetNotFoundError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------
# helpers


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    codes = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    header = struct.pack(">BBBB", 0, 0, codes[big.dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + big.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_fake_mnist(folder: Path, n_train: int = 6, n_test: int = 4, fill: int = 0, gz: bool = True) -> Path:
    """Tiny IDX files under `folder`; pixel [0, 0] of every image is `fill` to tell copies apart."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.arange(n * 4 * 5, dtype=np.uint8).reshape(n, 4, 5)
        images[:, 0, 0] = fill
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8), gz)
    return folder


def save(path: Path, image: Image.Image, **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **params)
    return path


def gray(value: int, size=(4, 3)) -> Image.Image:  # size is (W, H), as Pillow has it
    return Image.new("L", size, value)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_with_declared_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR (CRC fixed) claims width x height: a decompression bomb header."""
    data = bytearray(png_bytes(gray(0, (1, 1))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **params)
    return buffer.getvalue()


def noise(size=(32, 32), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
def test_idx_round_trip_plain_and_gzip(tmp_path, gz, dtype):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == "u1":
        array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    read = _idx.read_idx(write_idx(tmp_path / "x.idx", array, gz))
    assert read.shape == (2, 3, 5) and read.dtype.isnative
    np.testing.assert_array_equal(read, array)


@pytest.mark.parametrize("damage", ["truncated", "trailing", "magic", "type", "header", "empty", "zero-dims"])
@pytest.mark.parametrize("gz", [False, True])
def test_damaged_idx_raises_data_error_naming_file(tmp_path, damage, gz):
    good = struct.pack(">BBBBII", 0, 0, 0x08, 2, 3, 4) + bytes(12)
    data = {"truncated": good[:-1], "trailing": good + b"\0", "magic": b"\1" + good[1:],
            "type": good[:2] + b"\x07" + good[3:], "header": good[:10], "empty": b"",
            "zero-dims": b"\0\0\x08\0"}[damage]
    path = tmp_path / "images.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match="images.idx"):
        _idx.read_idx(path)


def test_idx_random_bytes_raise_only_data_error():
    rng = np.random.default_rng(0)
    for _ in range(300):
        header = bytes([0, 0, int(rng.choice([8, 9, 11, 12, 13, 14, 7])), int(rng.integers(0, 4))])
        data = header + rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        try:
            _idx.parse_idx(data, "fuzz")
        except DataError as error:
            assert "fuzz" in str(error)


def test_damaged_gzip_idx_raises_data_error(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x02ab")[:-6])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        _idx.read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_convae_data_dir_is_searched_first(isolated_data, monkeypatch, gz):
    write_fake_mnist(isolated_data / "data" / "mnist", fill=11, gz=gz)
    write_fake_mnist(isolated_data / "home" / ".cache" / "convae" / "mnist", fill=22)
    write_fake_mnist(isolated_data / "system" / "mnist", fill=33)
    monkeypatch.setenv("CONVAE_DATA", str(isolated_data / "data"))
    dataset = load_dataset("mnist")
    assert dataset.images.shape == (6, 1, 4, 5) and dataset.images.dtype == torch.uint8
    assert int(dataset.images[0, 0, 0, 0]) == 11
    assert dataset.labels.dtype == np.int64 and dataset.class_names == [str(d) for d in range(10)]


def test_cache_then_system_roots_are_searched(isolated_data):
    write_fake_mnist(isolated_data / "system" / "fashion-mnist", fill=33)
    assert int(load_dataset("fashion-mnist").images[0, 0, 0, 0]) == 33
    write_fake_mnist(isolated_data / "home" / ".cache" / "convae" / "fashion-mnist", fill=22)
    dataset = load_dataset("fashion-mnist", "test")
    assert int(dataset.images[0, 0, 0, 0]) == 22 and len(dataset) == 4
    assert dataset.class_names[0] == "T-shirt/top"


def test_idx_split_all_concatenates_train_then_test(isolated_data):
    write_fake_mnist(isolated_data / "system" / "mnist", n_train=6, n_test=4)
    everything = load_dataset("mnist", "all")
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    assert torch.equal(everything.images, torch.cat([train.images, test.images]))
    np.testing.assert_array_equal(everything.labels, np.concatenate([train.labels, test.labels]))
    assert has_test_split("mnist") and has_test_split("fashion-mnist")


def test_missing_dataset_error_says_where_it_looked_and_how_to_fix(isolated_data, monkeypatch):
    monkeypatch.setenv("CONVAE_DATA", str(isolated_data / "data"))
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("fashion-mnist")
    message = str(caught.value)
    for expected in (str(isolated_data / "data" / "fashion-mnist"),
                     str(isolated_data / "home" / ".cache" / "convae" / "fashion-mnist"),
                     str(isolated_data / "system" / "fashion-mnist"), "CONVAE_NO_DOWNLOAD",
                     "CONVAE_DATA", "apt-get install dataset-fashion-mnist", "t10k-labels-idx1-ubyte"):
        assert expected in message


def test_idx_label_count_mismatch_raises(isolated_data):
    folder = write_fake_mnist(isolated_data / "system" / "mnist")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), gz=True)
    with pytest.raises(DataError, match="5 labels for the 6 images"):
        load_dataset("mnist")


@pytest.mark.parametrize("cache_root_exists", [False, True])
def test_failed_download_leaves_no_cache_folder_behind(isolated_data, monkeypatch, cache_root_exists):
    import urllib.error
    import urllib.request

    home = isolated_data / "home"
    if cache_root_exists:
        (home / ".cache" / "convae").mkdir(parents=True)
    monkeypatch.setenv("CONVAE_NO_DOWNLOAD", "0")  # downloads allowed, but the network refuses
    urls = []

    def refuse(url, *args, **kwargs):
        urls.append(url)
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(DatasetNotFoundError, match="Downloading from .* failed: .*no network here"):
        load_dataset("mnist")
    assert urls and urls[0].startswith(_idx.SOURCES["mnist"].mirror)
    assert not (home / ".cache" / "convae" / "mnist").exists()
    # the folders above it stay exactly as they were: an existing cache root is kept, none is created
    assert (home / ".cache" / "convae").is_dir() if cache_root_exists else not home.exists()


def test_download_cut_off_midway_is_dataset_not_found_and_leaves_nothing(isolated_data, monkeypatch):
    import urllib.request

    class CutOff:
        def __init__(self):
            self.sent = False

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            if self.sent:
                raise ConnectionResetError(104, "Connection reset by peer")
            self.sent = True
            return b"\x1f\x8b" + bytes(100)

    monkeypatch.setenv("CONVAE_NO_DOWNLOAD", "0")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: CutOff())
    with pytest.raises(DatasetNotFoundError, match="failed: .*Connection reset by peer"):
        load_dataset("mnist")
    assert not (isolated_data / "home").exists()  # neither the cache folder nor a temporary file in it


@pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CONVAE_NO_DOWNLOAD", "1")
    monkeypatch.delenv("CONVAE_DATA", raising=False)
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert set(np.unique(train.labels)) == set(range(10)) == set(np.unique(test.labels))
    assert np.bincount(train.labels).tolist() == [6000] * 10


# ---------------------------------------------------------------------------------------------
# digits and specs


def test_digits_shape_labels_and_no_test_split():
    dataset = load_dataset("digits")
    assert dataset.images.shape == (1797, 1, 8, 8) and dataset.images.dtype == torch.uint8
    assert int(dataset.images.max()) == 255 and int(dataset.images.min()) == 0
    assert dataset.labels.shape == (1797,) and set(dataset.labels) == set(range(10))
    assert len(load_dataset("digits", "all")) == 1797
    assert not has_test_split("digits")
    with pytest.raises(DataError, match="test split"):
        load_dataset("digits", "test")


def test_transfer_conversion_of_named_datasets():
    dataset = load_dataset("digits", image_size="28x28", channels=3)
    assert dataset.images.shape == (1797, 3, 28, 28) and dataset.images.dtype == torch.uint8


@pytest.mark.parametrize("spec", ["", "cifar", "folder:", "npz:", "folder"])
def test_unknown_or_incomplete_spec_raises(spec):
    with pytest.raises(DataError):
        load_dataset(spec)


def test_bad_split_channels_and_policy_raise():
    for kwargs in ({"split": "valid"}, {"channels": 2}, {"on_bad_image": "ignore"}):
        with pytest.raises(DataError):
            load_dataset("digits", **kwargs)


@pytest.mark.parametrize("text, expected", [("28x28", (28, 28)), ("28", (28, 28)), ("37x53", (37, 53)),
                                            (" 37 X 53 ", (37, 53)), (32, (32, 32)), ((5, 7), (5, 7)),
                                            (None, None)])
def test_parse_image_size_accepts_h_x_w(text, expected):
    assert parse_image_size(text) == expected


@pytest.mark.parametrize("text", ["", "x", "28x", "0x5", "-3", "2x3x4", "abc", 2.5, (1, 2, 3), (True, 2), "28.0"])
def test_parse_image_size_rejects_bad_text(text):
    with pytest.raises(DataError):
        parse_image_size(text)


# ---------------------------------------------------------------------------------------------
# folders: labels, sizes and the conversion rule


def test_folder_labels_come_from_first_level_subfolders(tmp_path):
    save(tmp_path / "dog" / "b.png", gray(20))
    save(tmp_path / "cat" / "z.png", gray(10))
    save(tmp_path / "cat" / "deeper" / "a.png", gray(11))
    save(tmp_path / "dog" / "a.png", gray(21))
    (tmp_path / "notes.txt").write_text("ignored")
    dataset = load_dataset(f"folder:{tmp_path}")
    assert dataset.class_names == ["cat", "dog"]
    assert dataset.images[:, 0, 0, 0].tolist() == [11, 10, 21, 20]  # sorted by relative path
    assert dataset.labels.tolist() == [0, 0, 1, 1]
    assert dataset.images.shape == (4, 1, 3, 4) and dataset.split == "train"


def test_folder_without_subfolders_is_unlabeled(tmp_path):
    for index in range(3):
        save(tmp_path / f"{index}.png", gray(index))
    dataset = load_dataset(f"folder:{tmp_path}", "all")
    assert dataset.labels is None and dataset.class_names is None
    assert dataset.images[:, 0, 0, 0].tolist() == [0, 1, 2]
    assert not has_test_split(f"folder:{tmp_path}")
    with pytest.raises(DataError, match="no test split"):
        load_dataset(f"folder:{tmp_path}", "test")


def test_folder_with_images_at_top_and_in_subfolders_raises(tmp_path):
    save(tmp_path / "top.png", gray(0))
    save(tmp_path / "cls" / "a.png", gray(0))
    with pytest.raises(DataError, match="top.png"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_resize_to_image_size(tmp_path):
    save(tmp_path / "a.png", gray(100, (10, 20)))
    save(tmp_path / "b.jpg", noise((33, 7)))
    dataset = load_dataset(f"folder:{tmp_path}", image_size=(6, 5))
    assert dataset.images.shape == (2, 3, 6, 5) and dataset.shape == (3, 6, 5)
    assert (dataset.images[0] == 100).all()


def test_mixed_sizes_without_image_size_name_both_files(tmp_path):
    save(tmp_path / "a.png", gray(0, (4, 3)))
    save(tmp_path / "b.png", gray(0, (4, 3)))
    save(tmp_path / "c.png", gray(0, (5, 3)))
    with pytest.raises(DataError, match=r"a\.png is 4x3.*c\.png is 5x3"):
        load_dataset(f"folder:{tmp_path}")


def decode_one(tmp_path, name: str, image: Image.Image | bytes, **kwargs) -> torch.Tensor:
    path = tmp_path / name
    if isinstance(image, bytes):
        path.write_bytes(image)
    else:
        save(path, image)
    images, skipped = load_image_files([path], **kwargs)
    assert skipped == []
    return images[0]


def test_rgba_is_composited_on_white(tmp_path):
    pixels = np.zeros((1, 3, 4), np.uint8)
    pixels[0, 0] = (0, 0, 0, 0)  # transparent black -> white
    pixels[0, 1] = (255, 0, 0, 128)  # half red -> pink
    pixels[0, 2] = (0, 0, 255, 255)  # opaque blue stays blue
    image = decode_one(tmp_path, "rgba.png", Image.fromarray(pixels, "RGBA"))
    assert image.shape == (3, 1, 3)
    assert image[:, 0, 0].tolist() == [255, 255, 255]
    assert image[:, 0, 1].tolist() == [255, 127, 127]
    assert image[:, 0, 2].tolist() == [0, 0, 255]


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([200, 0, 0, 0, 90, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    decoded = load_image_files([path])[0][0]
    assert decoded[:, 0, 0].tolist() == [255, 255, 255] and decoded[:, 0, 1].tolist() == [0, 90, 0]


def test_gray_palette_gif_counts_as_grayscale(tmp_path):
    image = Image.new("P", (3, 2))
    image.putpalette([value for value in range(256) for _ in range(3)])
    image.putpixel((1, 1), 77)
    decoded = decode_one(tmp_path, "gray.gif", image)
    assert decoded.shape == (1, 2, 3) and int(decoded[0, 1, 1]) == 77


def test_16bit_is_scaled_by_its_bit_depth(tmp_path):
    pixels = np.array([[0x0000, 0x1234, 0xFFFF]], dtype=np.uint16)
    for name in ("deep.png", "deep.tif"):
        decoded = decode_one(tmp_path, name, Image.fromarray(pixels))
        assert decoded.shape == (1, 1, 3) and decoded[0, 0].tolist() == [0x00, 0x12, 0xFF]


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    decoded = decode_one(tmp_path, "cmyk.jpg", jpeg_bytes(cmyk, quality=100))
    assert decoded.shape == (3, 8, 8)
    red, green, blue = (int(decoded[c].float().mean()) for c in range(3))
    assert red > 240 and green < 15 and blue < 15


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((8, 16), np.uint8)
    pixels[:, :8] = 255  # stored: left half white, 16 wide x 8 high
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    decoded = decode_one(tmp_path, "rotated.jpg", jpeg_bytes(Image.fromarray(pixels), exif=exif.tobytes(), quality=100))
    assert decoded.shape == (1, 16, 8)  # displayed: 8 wide x 16 high
    assert decoded[0, :8].float().mean() > 240 and decoded[0, 8:].float().mean() < 15


def test_gray_to_rgb_repeats_and_rgb_to_gray_is_pillow_luma(tmp_path):
    decoded = decode_one(tmp_path, "g.png", gray(42), channels=3)
    assert decoded.shape == (3, 3, 4) and (decoded == 42).all()
    color = noise((6, 5))
    decoded = decode_one(tmp_path, "c.png", color, channels=1)
    np.testing.assert_array_equal(decoded[0].numpy(), np.asarray(color.convert("L")))
    as_tensor = torch.from_numpy(np.asarray(color).transpose(2, 0, 1).copy())[None]
    np.testing.assert_array_equal(convert_images(as_tensor, channels=1)[0, 0].numpy(), np.asarray(color.convert("L")))


def test_channels_none_is_one_only_when_every_image_is_gray(tmp_path):
    save(tmp_path / "gray" / "a.png", gray(1))
    save(tmp_path / "gray" / "b.tif", Image.fromarray(np.zeros((3, 4), np.uint16)))
    assert load_dataset(f"folder:{tmp_path / 'gray'}").shape == (1, 3, 4)
    save(tmp_path / "mixed" / "a.png", gray(1))
    save(tmp_path / "mixed" / "b.png", noise((4, 3)))
    mixed = load_dataset(f"folder:{tmp_path / 'mixed'}")
    assert mixed.shape == (3, 3, 4) and (mixed.images[0] == 1).all()


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [gray(10, (4, 4)).convert("P"), gray(200, (4, 4)).convert("P")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 2
    decoded = load_image_files([path])[0][0]
    assert decoded.shape == (1, 4, 4) and (decoded == 10).all()


# ---------------------------------------------------------------------------------------------
# bad files


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    return truncated(png_bytes(noise()))


def png_with_bad_idat_crc() -> bytes:
    data = bytearray(png_bytes(noise()))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    data[idat + 4 + length] ^= 0xFF  # first CRC byte of the IDAT chunk
    return bytes(data)


BAD_FILES = {
    "truncated.jpg": lambda: truncated(jpeg_bytes(noise())),  # header intact, pixel data cut
    "truncated.png": truncated_png,
    "zero.png": lambda: b"",
    "text.png": lambda: b"this is not an image\n",
    "bad_crc.png": png_with_bad_idat_crc,
    "bomb.png": lambda: png_with_declared_size(9000, 9000),  # 81 Mpx: over convae's 64 Mpx limit
    "huge_bomb.png": lambda: png_with_declared_size(30000, 30000),  # over Pillow's own hard limit too
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_image_file_raises_bad_image_error_naming_it(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name]())
    with pytest.raises(BadImageError) as caught:
        load_image_files([path])
    assert caught.value.path == str(path) and name in str(caught.value)
    save(tmp_path / "good.png", gray(0))
    with pytest.raises(BadImageError, match=name):
        load_dataset(f"folder:{tmp_path}")


def test_pixel_limit_is_configurable(tmp_path):
    path = save(tmp_path / "a.png", gray(0, (10, 10)))
    with pytest.raises(BadImageError, match="over the limit of 99"):
        load_image_files([path], max_pixels=99)
    assert load_dataset(f"folder:{tmp_path}", max_pixels=100).shape == (1, 10, 10)


def test_symlink_loops_do_not_hang(tmp_path):
    root = tmp_path / "root"
    save(root / "cls" / "a.png", gray(5))
    os.symlink(root, root / "cls" / "loop")  # a folder loop
    os.symlink("self.png", root / "cls" / "self.png")  # a file that links to itself
    dataset = load_dataset(f"folder:{root}", on_bad_image="skip")
    assert len(dataset) == 1
    assert [Path(path).name for path, _ in dataset.skipped] == ["self.png"]
    with pytest.raises(BadImageError, match="self.png"):
        load_dataset(f"folder:{root}")


def test_unreadable_path_raises_bad_image_error(tmp_path):
    directory = tmp_path / "folder.png"
    directory.mkdir()
    with pytest.raises(BadImageError, match="folder.png"):
        load_image_files([directory])


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_file_without_read_permission_raises_bad_image_error(tmp_path):
    path = save(tmp_path / "secret.png", gray(0))
    path.chmod(0)
    try:
        with pytest.raises(BadImageError, match="secret.png"):
            load_image_files([path])
    finally:
        path.chmod(0o644)


def test_skip_drops_exactly_the_bad_files_and_reports_them(tmp_path, caplog):
    for index in range(4):
        save(tmp_path / "cls" / f"good{index}.png", gray(index))
    save(tmp_path / "other" / "good.png", gray(9))
    for name in ("truncated.jpg", "zero.png", "bad_crc.png"):
        (tmp_path / "cls" / name).write_bytes(BAD_FILES[name]())
    with caplog.at_level(logging.WARNING, logger="convae.data"):
        dataset = load_dataset(f"folder:{tmp_path}", on_bad_image="skip")
    assert [Path(path).name for path, _ in dataset.skipped] == ["bad_crc.png", "truncated.jpg", "zero.png"]
    assert all(reason for _, reason in dataset.skipped)
    assert dataset.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 9] and dataset.labels.tolist() == [0, 0, 0, 0, 1]
    assert "skipped 3 of 8" in caplog.text and "zero.png" in caplog.text
    again = load_dataset(f"folder:{tmp_path}", on_bad_image="skip")
    assert again.skipped == dataset.skipped and torch.equal(again.images, dataset.images)


def test_folder_of_only_bad_files_raises(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 1"):
        load_dataset(f"folder:{tmp_path}", on_bad_image="skip")


def test_empty_or_missing_folder_raises(tmp_path):
    with pytest.raises(DataError, match="no image files"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="1 other files ignored"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(DatasetNotFoundError):
        load_dataset(f"folder:{tmp_path / 'absent'}")


# ---------------------------------------------------------------------------------------------
# arrays


LAYOUTS = {"NHW": lambda x: x[:, 0], "NHWC": lambda x: x.transpose(0, 2, 3, 1), "NCHW": lambda x: x}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64"])
@pytest.mark.parametrize("kind", ["npz", "npy"])
def test_arrays_in_every_layout_and_dtype(tmp_path, layout, dtype, kind):
    channels = 1 if layout == "NHW" else 3
    reference = np.random.default_rng(0).integers(0, 256, (5, channels, 6, 7), dtype=np.uint8)
    array = reference if dtype == "uint8" else (reference / 255).astype(dtype)
    labels = np.arange(5)
    path = tmp_path / f"data.{kind}"
    if kind == "npz":
        np.savez(path, images=LAYOUTS[layout](array), labels=labels)
    else:
        np.save(path, LAYOUTS[layout](array))
    dataset = load_dataset(f"{kind}:{path}")
    assert dataset.images.shape == (5, channels, 6, 7)
    assert dataset.images.dtype == (torch.uint8 if dtype == "uint8" else torch.float32)
    np.testing.assert_allclose(to_float(dataset.images).numpy(), reference / 255, atol=1e-6)
    if kind == "npz":
        assert dataset.labels.tolist() == labels.tolist()
    else:
        assert dataset.labels is None


def test_npz_key_choice_and_keras_layout(tmp_path):
    path = tmp_path / "first.npz"
    np.savez(path, pixels=np.zeros((2, 3, 3), np.uint8), y=np.array([1, 2]))
    assert load_dataset(f"npz:{path}").labels.tolist() == [1, 2]
    keras = tmp_path / "keras.npz"
    np.savez(keras, x_train=np.zeros((3, 4, 4), np.uint8), y_train=np.arange(3),
             x_test=np.ones((2, 4, 4), np.uint8), y_test=np.arange(2))
    assert has_test_split(f"npz:{keras}")
    assert len(load_dataset(f"npz:{keras}", "test")) == 2
    everything = load_dataset(f"npz:{keras}", "all")
    assert len(everything) == 5 and everything.labels.tolist() == [0, 1, 2, 0, 1]
    assert not has_test_split(f"npz:{path}")
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros((2, 3, 3), np.uint8))
    assert not has_test_split(f"npy:{plain}") and not has_test_split(f"npz:{tmp_path / 'absent.npz'}")


def test_ambiguous_array_layout_prefers_nchw():
    assert as_images(np.zeros((2, 3, 5, 3), np.uint8)).shape == (2, 3, 5, 3)
    assert as_images(np.zeros((2, 5, 4, 3), np.uint8)).shape == (2, 3, 5, 4)


def test_bool_and_other_integer_arrays_become_uint8():
    assert as_images(np.ones((1, 2, 2), bool)).unique().tolist() == [255]
    converted = as_images(np.full((1, 2, 2), 200, np.int64))
    assert converted.dtype == torch.uint8 and converted.unique().tolist() == [200]
    with pytest.raises(DataError, match="0..255, found 0..256"):
        as_images(np.array([[[0, 256]]]))


def non_finite():
    array = np.zeros((4, 3, 3), np.float32)
    array[2, 1, 1], array[3, 0, 0] = np.nan, np.inf
    return array


BAD_ARRAYS = {
    "nan": (non_finite, r"2 NaN/Inf values, the first in image 2"),
    "range": (lambda: np.full((2, 3, 3), 1.5), r"\[0, 1\].*1\.5"),
    "range255": (lambda: np.full((2, 3, 3), 200.0), "divide by 255"),
    "rank2": (lambda: np.zeros((3, 3), np.uint8), "rank 2"),
    "rank5": (lambda: np.zeros((1, 1, 3, 3, 3), np.uint8), "rank 5"),
    "complex": (lambda: np.zeros((2, 3, 3), np.complex64), "complex"),
    "strings": (lambda: np.array([[["a"]]]), "cannot hold images"),
    "zero": (lambda: np.zeros((0, 3, 3), np.uint8), "zero images"),
    "channels": (lambda: np.zeros((2, 5, 5, 4), np.uint8), "no channel axis"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_bad_arrays_raise_data_error_naming_the_file(tmp_path, case):
    make, message = BAD_ARRAYS[case]
    path = tmp_path / f"{case}.npy"
    np.save(path, make())
    with pytest.raises(DataError, match=message) as caught:
        load_dataset(f"npy:{path}")
    assert f"{case}.npy" in str(caught.value)
    with pytest.raises(DataError, match="my_array"):
        as_images(make(), name="my_array")


def test_object_arrays_are_never_unpickled(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="objects.npy.*never unpickles"):
        load_dataset(f"npy:{path}")
    npz = tmp_path / "objects.npz"
    np.savez(npz, x=np.array([None, 1], dtype=object))
    with pytest.raises(DataError, match="objects.npz"):
        load_dataset(f"npz:{npz}")
    with pytest.raises(DataError, match="object"):
        as_images(np.array([None], dtype=object))


def test_label_length_mismatch_raises(tmp_path):
    path = tmp_path / "mismatch.npz"
    np.savez(path, x=np.zeros((4, 3, 3), np.uint8), labels=np.arange(3))
    with pytest.raises(DataError, match=r"mismatch\.npz\[labels\]: 3 labels for 4 images"):
        load_dataset(f"npz:{path}")


def test_garbage_array_file_raises(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataError, match="garbage.npz"):
        load_dataset(f"npz:{path}")
    with pytest.raises(DatasetNotFoundError):
        load_dataset(f"npy:{tmp_path / 'absent.npy'}")


def test_to_float_and_convert_images():
    batch = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    assert to_float(batch).dtype == torch.float32 and to_float(batch).tolist() == [[[[0.0, 1.0]]]]
    floats = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    assert to_float(floats).dtype == torch.float32
    with pytest.raises(DataError):
        to_float(torch.zeros(1, dtype=torch.int64))
    converted = convert_images(torch.full((2, 1, 8, 8), 0.5), image_size=(4, 6), channels=3)
    assert converted.shape == (2, 3, 4, 6) and torch.allclose(converted, torch.tensor(0.5))
    uint8 = convert_images(torch.full((2, 3, 8, 8), 90, dtype=torch.uint8), image_size="5", channels=1)
    assert uint8.dtype == torch.uint8 and uint8.shape == (2, 1, 5, 5) and (uint8 == 90).all()


# ---------------------------------------------------------------------------------------------
# batches, streaming, subset, scan, fingerprint


@pytest.fixture
def small_folder(tmp_path):
    root = tmp_path / "small"
    for index in range(7):
        save(root / ("even" if index % 2 == 0 else "odd") / f"{index}.png", noise((5, 4), seed=index))
    return root


def test_in_memory_batches_follow_index_order(small_folder):
    dataset = load_dataset(f"folder:{small_folder}")
    order = np.array([6, 0, 3, 3, 1])
    batches = list(dataset.batches(order, batch_size=2))
    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert all(batch.dtype == torch.uint8 for batch in batches)
    assert torch.equal(torch.cat(batches), dataset.images[torch.from_numpy(order)])
    assert torch.equal(torch.cat(list(dataset.batches(torch.tensor(order), 3))), torch.cat(batches))
    with pytest.raises(DataError, match="indices"):
        dataset.batches([7], 2)  # checked when called, not at the first batch
    with pytest.raises(DataError, match="batch_size"):
        dataset.batches([0], 0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_equals_in_memory(small_folder, num_workers):
    in_memory = load_dataset(f"folder:{small_folder}")
    streaming = load_dataset(f"folder:{small_folder}", in_memory=False)
    assert streaming.images is None and streaming.streaming
    assert len(streaming) == 7 and streaming.shape == in_memory.shape == (3, 4, 5)
    np.testing.assert_array_equal(streaming.labels, in_memory.labels)
    order = np.random.default_rng(1).permutation(7)
    batches = list(streaming.batches(order, batch_size=3, num_workers=num_workers))
    assert [len(batch) for batch in batches] == [3, 3, 1] and batches[0].dtype == torch.uint8
    assert torch.equal(torch.cat(batches), in_memory.images[torch.from_numpy(order)])


def test_streaming_starts_when_over_the_memory_budget(small_folder):
    dataset = load_dataset(f"folder:{small_folder}", max_memory_bytes=80, image_size=(2, 2))  # needs 84
    assert dataset.streaming and dataset.shape == (3, 2, 2)
    assert load_dataset(f"folder:{small_folder}", max_memory_bytes=80, in_memory=True).images is not None


def test_streaming_handles_files_that_fail_only_when_decoded(small_folder):
    (small_folder / "odd" / "9.jpg").write_bytes(BAD_FILES["truncated.jpg"]())  # header fine, data cut
    strict = load_dataset(f"folder:{small_folder}", in_memory=False, image_size=(4, 5))
    assert len(strict) == 8
    with pytest.raises(BadImageError, match="9.jpg"):
        list(strict.batches(np.arange(8), 4))
    lenient = load_dataset(f"folder:{small_folder}", in_memory=False, image_size=(4, 5), on_bad_image="skip")
    batches = list(lenient.batches(np.arange(8), 4))
    assert sum(len(batch) for batch in batches) == 7
    assert [Path(path).name for path, _ in lenient.skipped] == ["9.jpg"]


def test_subset_keeps_images_labels_and_mode(small_folder):
    dataset = load_dataset(f"folder:{small_folder}")
    part = dataset.subset(np.array([4, 1]))
    assert isinstance(part, ImageDataset) and len(part) == 2
    assert torch.equal(part.images, dataset.images[[4, 1]]) and part.labels.tolist() == dataset.labels[[4, 1]].tolist()
    streamed = load_dataset(f"folder:{small_folder}", in_memory=False).subset(torch.tensor([4, 1]))
    assert streamed.streaming and torch.equal(next(streamed.batches([0, 1], 2)), part.images)


def test_scan_lists_bad_files_and_histograms(small_folder):
    (small_folder / "odd" / "zero.png").write_bytes(b"")
    (small_folder / "odd" / "cut.jpg").write_bytes(BAD_FILES["truncated.jpg"]())
    save(small_folder / "even" / "big.png", gray(0, (8, 6)))
    (small_folder / "even" / "notes.txt").write_text("x")
    report = scan(f"folder:{small_folder}")
    assert report.n_files == 10 and report.n_ignored == 1
    assert [Path(path).name for path, _ in report.bad] == ["cut.jpg", "zero.png"]
    assert report.modes == {"RGB": 7, "L": 1}
    assert report.sizes == {"5x4": 7, "8x6": 1}
    assert report.classes == {"even": 5, "odd": 3}
    text = report.format()
    assert "cut.jpg" in text and "zero.png" in text and "5x4 7" in text and "RGB 7" in text


def test_scan_of_array_spec_reports_instead_of_raising(tmp_path):
    path = tmp_path / "nan.npy"
    np.save(path, non_finite())
    report = scan(f"npy:{path}")
    assert report.bad and "NaN" in report.bad[0][1]
    assert scan("digits").sizes == {"8x8": 1797}


def test_fingerprint_tracks_pixels(small_folder):
    dataset = load_dataset(f"folder:{small_folder}")
    assert dataset_fingerprint(dataset) == dataset_fingerprint(load_dataset(f"folder:{small_folder}"))
    changed = dataset.subset(np.arange(7))
    changed.images[0, 0, 0, 0] ^= 1
    assert dataset_fingerprint(changed) != dataset_fingerprint(dataset)
    assert len(dataset_fingerprint(load_dataset(f"folder:{small_folder}", in_memory=False))) == 16


def test_scan_of_many_sizes_prints_the_most_common_and_a_count_of_the_rest(tmp_path):
    for i in range(40):  # 40 images: 6 of 16x12, 4 of 20x20, 3 of 9x30, then 27 sizes of one image each
        size = (16, 12) if i < 6 else (20, 20) if i < 10 else (9, 30) if i < 13 else (30 + i, 5 + i)
        Image.new("L", size, i).save(tmp_path / f"{i:02d}.png")
    report = scan(f"folder:{tmp_path}")
    assert len(report.sizes) == 30 and report.sizes["16x12"] == 6
    line = next(line for line in report.format().splitlines() if line.startswith("sizes"))
    assert line.startswith("sizes (WxH): 30 sizes; most common 16x12 6, 20x20 4, 9x30 3, ")
    assert "25 other sizes (25 images)" in line
    assert "most common 16x12 6, 20x20 4, 9x30 3, 43x18 1, 44x19 1; " in line and line.endswith("widths 9..69, heights 12..44")
    assert line.count("x") < 15  # not every size


def test_scan_of_few_sizes_lists_them_all():
    from convae.data.scan import ScanReport

    report = ScanReport("folder:x", 5, [], {"L": 5}, {"5x4": 3, "8x6": 2})
    assert "sizes (WxH): 5x4 3, 8x6 2" in report.format()
