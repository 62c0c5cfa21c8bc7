"""Fuzzing (issue 5, section 4): the IDX parser, the array loader, the config parser and the image
loader, fed random bytes and mutated valid files.

Each target is a plain function of one generated input, paired with its strategy in TARGETS; the
property is that it returns an array of exactly the shape the input declares, or raises one of
convae's own errors (ConvaeError) naming the file. Anything else escaping is a failure, and so is
an example that runs longer than HANG_SECONDS (a SIGALRM stops it). The suite runs a few dozen
examples per target; ``nice python bench/fuzz.py`` runs 2,000 or more of each and prints the counts.
"""

from __future__ import annotations

import atexit
import contextlib
import gzip
import io
import json
import shutil
import signal
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from convae import runs
from convae.data import idx as _idx
from convae.data.folders import decode_image, probe_image
from convae.config import RunConfig, apply_overrides, load_config
from convae.data import load_dataset, load_image_files
from convae.errors import ConvaeError

HANG_SECONDS = 10
MAX_PIXELS = 1 << 20  # keeps each example fast; the default limit's own guard is tested in test_data.py
SUITE_EXAMPLES = 60
WORKDIR = Path(tempfile.mkdtemp(prefix="convae-fuzz-"))  # each example's file is written over the last one
atexit.register(shutil.rmtree, WORKDIR, ignore_errors=True)


class Hang(AssertionError):
    pass


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS):
    def alarm(signum, frame):
        raise Hang(f"one example ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def write(name: str, data: bytes) -> Path:
    path = WORKDIR / name
    path.write_bytes(data)
    return path


def expect_only_convae_errors(call, path: Path | None = None):
    """call() under the hang guard: its value, or None when it raised a ConvaeError naming `path`."""
    try:
        with no_hang():
            return call()
    except ConvaeError as error:
        assert path is None or path.name in str(error), f"error does not name the file: {error}"
        return None


# --- mutation of valid inputs ----------------------------------------------------------------------------
@st.composite
def mutated(draw, valid: st.SearchStrategy[bytes], max_edits: int = 4):
    """A valid byte string with up to `max_edits` bit flips, byte sets, cuts, inserts or deletions."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, max_edits))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        if not data and op != "insert":
            continue
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i:i + draw(st.integers(1, 8))]
    return bytes(data)


def random_or_mutated(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=512), valid, mutated(valid))


small_dims = st.lists(st.integers(0, 6), min_size=1, max_size=4)


# --- IDX ------------------------------------------------------------------------------------------------------
IDX_CODES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@st.composite
def valid_idx(draw):
    code = draw(st.sampled_from(sorted(IDX_CODES)))
    dims = draw(small_dims)
    body = draw(st.binary(min_size=int(np.prod(dims)) * np.dtype(IDX_CODES[code]).itemsize,
                          max_size=int(np.prod(dims)) * np.dtype(IDX_CODES[code]).itemsize))
    return struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + body


@st.composite
def idx_headers(draw):
    """Well-formed headers with hostile shapes (many dimensions, zeros beside huge sizes), the
    body as long as declared when that is small, else a few bytes."""
    code = draw(st.sampled_from(sorted(IDX_CODES) + [0x00, 0x0A, 0xFF]))
    ndim = draw(st.one_of(st.integers(0, 6), st.integers(60, 70), st.integers(250, 255)))
    dims = [draw(st.one_of(st.integers(0, 3), st.sampled_from([2**31, 2**32 - 1]))) for _ in range(ndim)]
    itemsize = np.dtype(IDX_CODES.get(code, "u1")).itemsize
    n = int(np.prod(dims, dtype=object)) * itemsize if dims else 0
    body = bytes(n) if n <= 4096 else draw(st.binary(max_size=16))
    return struct.pack(">BBBB", 0, 0, code, ndim) + b"".join(struct.pack(">I", d) for d in dims) + body


def check_idx(data: bytes) -> None:
    """parse_idx returns exactly what the header declares, or DataError; the same through a .gz file."""
    array = expect_only_convae_errors(lambda: _idx.parse_idx(data, "fuzz.idx"), Path("fuzz.idx"))
    if array is not None:
        code, ndim = data[2], data[3]
        dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        assert array.shape == dims and array.dtype == np.dtype(IDX_CODES[code]).newbyteorder("=")
        assert len(data) == 4 + 4 * ndim + array.nbytes
        assert array.tobytes() == np.frombuffer(data, IDX_CODES[code], offset=4 + 4 * ndim).astype(array.dtype).tobytes()
    for name, stored in (("fuzz-idx", data), ("fuzz-idx.gz", gzip.compress(data, mtime=0))):
        path = write(name, stored)
        again = expect_only_convae_errors(lambda: _idx.read_idx(path), path)
        assert (again is None) == (array is None)
        if array is not None:
            assert again.shape == array.shape and again.tobytes() == array.tobytes()


def check_idx_gzip(data: bytes) -> None:
    """Damaged gzip around an IDX file: DataError naming it, never zlib's or gzip's own errors."""
    path = write("fuzz-gz-idx", data)
    array = expect_only_convae_errors(lambda: _idx.read_idx(path), path)
    assert array is None or array.ndim >= 1


valid_gzip_idx = valid_idx().map(lambda data: gzip.compress(data, mtime=0))


# --- arrays ----------------------------------------------------------------------------------------------------
ARRAY_DTYPES = ["u1", "i1", "<i2", "<i4", "<i8", "<u2", "<f2", "<f4", "<f8", ">f4", "?", "<c8", "<U1"]


@st.composite
def arrays(draw):
    shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=5))
    dtype = np.dtype(draw(st.sampled_from(ARRAY_DTYPES)))
    n = int(np.prod(shape))
    if dtype.kind == "f":
        values = draw(st.sampled_from(["unit", "wide", "special"]))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        array = rng.random(n) if values == "unit" else rng.normal(0, 100, n)
        if values == "special" and n:
            array[rng.integers(0, n)] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1.0000001, -0.0]))
        return array.astype(dtype).reshape(shape)
    if dtype.kind == "U":
        return np.full(shape, "a", dtype)
    if dtype.kind == "c":
        return np.zeros(shape, dtype)
    return np.frombuffer(draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize)), dtype).reshape(shape).copy()


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@st.composite
def npz_bytes(draw):
    members = draw(st.dictionaries(st.sampled_from(["x", "images", "y", "labels", "x_train", "x_test", "y_train", "other"]),
                                   arrays(), min_size=0, max_size=3))
    buffer = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buffer, **members)
    return buffer.getvalue()


def expected_image_shape(array: np.ndarray) -> tuple[int, ...]:
    """The N×C×H×W shape convae.data.as_images documents for a (valid) array."""
    if array.ndim == 3:
        return (array.shape[0], 1, *array.shape[1:])
    n, a, h, b = array.shape
    return array.shape if a in (1, 3) else (n, b, a, h)


def check_dataset(dataset) -> None:
    images = dataset.images
    assert images.ndim == 4 and images.shape[0] >= 1 and images.shape[1] in (1, 3) and min(images.shape[2:]) >= 1
    assert images.dtype in (torch.uint8, torch.float32)
    if images.dtype == torch.float32:
        assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    if dataset.labels is not None:
        assert dataset.labels.shape == (len(images),) and dataset.labels.dtype == np.int64


def check_npy(data: bytes) -> None:
    path = write("fuzz.npy", data)
    dataset = expect_only_convae_errors(lambda: load_dataset(f"npy:{path}"), path)
    if dataset is not None:
        check_dataset(dataset)
        declared = np.load(path, allow_pickle=False)  # it loaded, so it is an .npy file numpy reads
        assert tuple(dataset.images.shape) == expected_image_shape(declared)


def check_npz(data: bytes) -> None:
    path = write("fuzz.npz", data)
    for split in ("train", "all"):
        dataset = expect_only_convae_errors(lambda: load_dataset(f"npz:{path}", split), path)
        if dataset is not None:
            check_dataset(dataset)


# --- configuration -------------------------------------------------------------------------------------------
def valid_toml(cfg: RunConfig) -> str:
    from convae.config import to_toml

    return to_toml(cfg)


KEYS = [f"{section}.{key}" for section, values in RunConfig().to_dict().items() for key in values]
override_text = st.one_of(st.text(max_size=30), st.sampled_from(["1", "-1", "0", "1e999", "nan", "[]", "[[1]]", "4x4", "x", "4,x",
                                                                 "none", "true", "{}", '"s"', "1" * 5000, "[" * 5000]))


@st.composite
def overrides(draw):
    """A key=value for a real key (dotted or bare) or a random one, then up to two random strings."""
    key = draw(st.one_of(st.sampled_from(KEYS), st.sampled_from([k.split(".")[1] for k in KEYS]), st.text(max_size=12)))
    return [f"{key}={draw(override_text)}"] + draw(st.lists(st.text(max_size=20), max_size=2))


def check_overrides(items: list[str]) -> None:
    cfg = expect_only_convae_errors(lambda: apply_overrides(RunConfig(), items))
    if cfg is not None:  # accepted: a config that is valid and survives the round trip of a run directory
        assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
                           max_leaves=12)


@st.composite
def config_documents(draw):
    """A config file's bytes: random, a mutated valid TOML/JSON, or valid structure with random values."""
    kind = draw(st.sampled_from(["toml", "json"]))
    base = RunConfig().to_dict()
    if draw(st.booleans()):  # replace a few values by random JSON values
        for _ in range(draw(st.integers(1, 3))):
            section = draw(st.sampled_from(sorted(base)))
            base[section][draw(st.sampled_from(sorted(base[section])))] = draw(json_values)
    if kind == "json":
        text = json.dumps(base, allow_nan=True)
    else:
        text = valid_toml(RunConfig()) if draw(st.booleans()) else "".join(
            f"[{s}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items() if v is not None) for s, values in base.items())
    data = draw(st.one_of(st.just(text.encode()), mutated(st.just(text.encode())), st.binary(max_size=200)))
    return kind, data


def check_config_file(document: tuple[str, bytes]) -> None:
    kind, data = document
    path = write(f"fuzz-config.{kind}", data)
    cfg = expect_only_convae_errors(lambda: load_config(path), path)
    if cfg is not None:
        assert RunConfig.from_dict(cfg.to_dict()) == cfg
    # the same bytes as a run directory's config.json
    run = WORKDIR / "fuzz-run"
    run.mkdir(exist_ok=True)
    (run / runs.CONFIG).write_bytes(data)
    record = expect_only_convae_errors(lambda: runs.read_config(run), Path(runs.CONFIG))
    if record is not None:
        config, in_shape, _ = record
        assert isinstance(config, RunConfig) and len(in_shape) == 3


# --- images ----------------------------------------------------------------------------------------------------
IMAGE_KINDS = {  # name -> (Pillow mode, format, suffix, save parameters)
    "png-L": ("L", "PNG", ".png", {}), "png-RGB": ("RGB", "PNG", ".png", {}), "png-RGBA": ("RGBA", "PNG", ".png", {}),
    "png-LA": ("LA", "PNG", ".png", {}), "png-P": ("P", "PNG", ".png", {"transparency": 0}), "png-I16": ("I;16", "PNG", ".png", {}),
    "png-1": ("1", "PNG", ".png", {}), "jpeg-RGB": ("RGB", "JPEG", ".jpg", {}), "jpeg-L": ("L", "JPEG", ".jpg", {}),
    "jpeg-CMYK": ("CMYK", "JPEG", ".jpg", {}), "gif-P": ("P", "GIF", ".gif", {}), "bmp-RGB": ("RGB", "BMP", ".bmp", {}),
    "tiff-RGB": ("RGB", "TIFF", ".tif", {}), "tiff-I16": ("I;16", "TIFF", ".tif", {}), "tiff-F": ("F", "TIFF", ".tif", {}),
    "webp-RGB": ("RGB", "WEBP", ".webp", {}), "jpeg-exif": ("RGB", "JPEG", ".jpg", {"exif": "rotate"}),
}


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk's CRC, so mutations reach the decoder instead of the checksum test."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, pos = bytearray(data), 8
    while pos + 12 <= len(out):
        length = int.from_bytes(out[pos:pos + 4], "big")
        end = pos + 12 + length
        if end > len(out):
            break
        out[end - 4:end] = zlib.crc32(bytes(out[pos + 4:end - 4])).to_bytes(4, "big")
        pos = end
    return bytes(out)


@st.composite
def valid_image(draw):
    kind = draw(st.sampled_from(sorted(IMAGE_KINDS)))
    mode, fmt, suffix, params = IMAGE_KINDS[kind]
    width, height = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode == "F":
        image = Image.fromarray(rng.random((height, width)).astype(np.float32))
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    params = dict(params)
    if params.get("exif") == "rotate":
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(1, 8))
        params["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return suffix, buffer.getvalue()


@st.composite
def image_files(draw):
    suffix, valid = draw(valid_image())
    data = draw(st.one_of(st.just(valid), mutated(st.just(valid)), st.binary(max_size=256)))
    if suffix == ".png" and draw(st.booleans()):
        data = fix_png_crcs(data)
    return suffix, data


def check_image(file: tuple[str, bytes]) -> None:
    """Header and pixels agree: a decoded image has the displayed size the header declared."""
    suffix, data = file
    path = write(f"fuzz-image{suffix}", data)
    info = expect_only_convae_errors(lambda: probe_image(path, max_pixels=MAX_PIXELS), path)
    if info is None:
        return
    width, height = info.size
    channels = 1 if info.gray else 3
    pixels = expect_only_convae_errors(lambda: decode_image(path, channels=channels, max_pixels=MAX_PIXELS), path)
    if pixels is not None:
        assert pixels.shape == (channels, height, width) and pixels.dtype == np.uint8
    loaded = expect_only_convae_errors(lambda: load_image_files([path], max_pixels=MAX_PIXELS), path)
    assert (loaded is None) == (pixels is None)
    if loaded is not None:
        images, skipped = loaded
        assert skipped == [] and tuple(images.shape) == (1, channels, height, width)
        assert np.array_equal(images[0].numpy(), pixels)


# --- the targets ---------------------------------------------------------------------------------------------
TARGETS = {  # name -> (property, strategy)
    "idx": (check_idx, st.one_of(random_or_mutated(valid_idx()), idx_headers())),
    "idx-gzip": (check_idx_gzip, random_or_mutated(valid_gzip_idx)),
    "npy": (check_npy, random_or_mutated(arrays().map(npy_bytes))),
    "npz": (check_npz, random_or_mutated(npz_bytes())),
    "config-overrides": (check_overrides, overrides()),
    "config-file": (check_config_file, config_documents()),
    "image": (check_image, image_files()),
}


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns on the corrupt EXIF it is fed
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_only_convae_errors_escape(name):
    check, strategy = TARGETS[name]
    fuzz_settings(SUITE_EXAMPLES)(given(strategy)(check))()


def _npy_header(shape: str) -> bytes:
    header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}".ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(18)


FINDINGS = {  # what fuzzing found, each once an uncaught exception; kept as fixed examples
    "idx with 65 dimensions (numpy ValueError)": ("idx", bytes([0, 0, 8, 65]) + b"\0\0\0\1" * 65 + b"\0"),
    "idx zero beside huge sizes (numpy ValueError)": ("idx", bytes([0, 0, 8, 3]) + struct.pack(">3I", 0, 2**32 - 1, 2**32 - 1)),
    "npy header with null bytes (SyntaxError)": ("npy", b"\x93NUMPY\x01\x00\x12\x00" + bytes(17) + b"{"),
    "npy header cut inside a string (tokenize.TokenError)": ("npy", b"\x93NUMPY\x01\x00\x06\x00\x00\x00\x00\'\'\'"),
    "146-byte npy declaring 16 TiB (MemoryError)": ("npy", _npy_header("(2000000000000, 3, 3)")),
    "config file not UTF-8 (UnicodeDecodeError)": ("config-file", ("json", b"\x80{}")),
    "config file with a 5000-digit int (ValueError)": ("config-file", ("toml", b"[train]\nepochs = " + b"9" * 5000)),
    "config file nested too deep (RecursionError)": ("config-file", ("json", b"[" * 100000)),
    "--set with a 5000-digit int (ValueError)": ("config-overrides", ["train.epochs=" + "9" * 5000]),
    "--set nested too deep (RecursionError)": ("config-overrides", ["model.channels=" + "[" * 100000]),
}


@pytest.mark.parametrize("finding", sorted(FINDINGS))
def test_fuzz_findings_stay_fixed(finding):
    target, value = FINDINGS[finding]
    TARGETS[target][0](value)
