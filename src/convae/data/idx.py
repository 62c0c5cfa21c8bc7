"""IDX files (the MNIST family): parsing, finding them on disk, downloading them.

An IDX file is a 4-byte magic number ``00 00 TT DD`` (TT: element type, DD: number of
dimensions), DD big-endian uint32 sizes, then the elements, big-endian, row-major.
:func:`parse_idx` checks every part of that against the actual byte length, so any
byte string gives either an array or a :class:`DataError` naming the file.

Where the files are looked for, in order (the first folder holding the files wins):

1. ``$CONVAE_DATA/<name>/``
2. ``~/.cache/convae/<name>/``
3. ``<root>/<name>/`` for each root in :data:`SEARCH_ROOTS` (Debian's
   ``dataset-fashion-mnist`` package installs into ``/usr/share/datasets/fashion-mnist/``)

Each file may be gzipped (``.gz``) or plain; the content decides, not the name. Files
found on disk are trusted as given (only their structure is checked). Missing files are
downloaded into ``~/.cache/convae/<name>/`` from the publisher's mirror, each through a
temporary file that is renamed only once its SHA-256 matches the pinned sum; setting
``CONVAE_NO_DOWNLOAD=1`` turns downloading off.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..atomic import atomic_file
from ..errors import DataError, DatasetNotFoundError

logger = logging.getLogger(__name__)

# Folders searched after $CONVAE_DATA and ~/.cache/convae; a tuple so tests can monkeypatch it.
SEARCH_ROOTS: tuple[str, ...] = ("/usr/share/datasets",)

# element type code -> numpy dtype (big-endian on disk)
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class IdxSource:
    """One IDX dataset: where to download it and the SHA-256 of each published .gz file."""

    name: str
    title: str
    mirror: str
    sha256: dict[str, str]  # "<file>.gz" -> hex digest of the published archive
    class_names: tuple[str, ...]
    apt_package: str | None = None


SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

SOURCES = {
    # Sums of the archives the publisher serves (md5s match torchvision's pins). Debian's
    # package re-compresses the same content, so its .gz bytes differ; their decompressed
    # sums equal upstream's (train-images: c59f468a...d888), but local files are not hashed.
    "fashion-mnist": IdxSource(
        name="fashion-mnist",
        title="Fashion-MNIST",
        mirror="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        apt_package="dataset-fashion-mnist",
    ),
    "mnist": IdxSource(
        name="mnist",
        title="MNIST",
        mirror="https://ossci-datasets.s3.amazonaws.com/mnist/",
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        class_names=tuple(str(digit) for digit in range(10)),
    ),
}


def parse_idx(data: bytes | bytearray | memoryview, name: str = "IDX data") -> np.ndarray:
    """Parse the bytes of one (decompressed) IDX file into a native-endian array.

    Raises DataError naming `name` for a bad magic number, unknown type code, a header
    shorter than declared, or a body that is shorter or longer than the declared shape.
    """
    data = memoryview(data).cast("B")
    if len(data) < 4:
        raise DataError(f"{name}: {len(data)} bytes is too short for an IDX header (needs at least 4)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: not an IDX file (magic number {bytes(data[:4]).hex()} "
                        "should start with 0000)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise DataError(f"{name}: unknown IDX element type 0x{type_code:02x} "
                        f"(known: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions")
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise DataError(f"{name}: truncated IDX header: {ndim} dimensions need {header_bytes} "
                        f"bytes, the file has {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header_bytes + int(np.prod(dims, dtype=object)) * dtype.itemsize  # Python ints: no overflow
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{name}: IDX file {kind}: shape {dims} of {dtype.name} needs "
                        f"{expected} bytes, the file has {len(data)}")
    try:
        array = np.frombuffer(data, dtype=dtype, offset=header_bytes).reshape(dims)
    except ValueError as error:  # over numpy's 64 dimensions, or an empty shape too large to index
        raise DataError(f"{name}: IDX shape {dims} cannot be an array: {error}") from None
    return array.astype(dtype.newbyteorder("="), copy=True)  # writable, native byte order


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped or plain (decided by its first bytes)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read IDX file: {error.strerror or error}") from error
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path}: damaged gzip data: {error}") from error
    return parse_idx(raw, str(path))


def search_dirs(name: str) -> list[tuple[Path, str]]:
    """The folders searched for dataset `name`, in order, each with where it came from."""
    dirs = []
    if os.environ.get("CONVAE_DATA"):
        dirs.append((Path(os.environ["CONVAE_DATA"]).expanduser() / name, "from $CONVAE_DATA"))
    dirs.append((cache_dir(name), "convae's cache"))
    dirs.extend((Path(root) / name, "system datasets") for root in SEARCH_ROOTS)
    return dirs


def cache_dir(name: str) -> Path:
    return Path("~/.cache/convae").expanduser() / name


def downloads_disabled() -> bool:
    return os.environ.get("CONVAE_NO_DOWNLOAD", "").strip().lower() not in ("", "0", "false", "no")


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate(name: str, splits: tuple[str, ...]) -> dict[str, Path]:
    """Paths of the IDX files that `splits` need, found on disk or downloaded.

    Returns {file stem: path}. Raises DatasetNotFoundError saying where it looked and how
    to provide the files.
    """
    source = SOURCES[name]
    stems = [stem for split in splits for stem in SPLIT_FILES[split]]
    dirs = search_dirs(name)
    for folder, _ in dirs:
        found = {stem: _find_file(folder, stem) for stem in stems}
        if all(found.values()):
            logger.debug("%s: using files in %s", source.title, folder)
            return found  # type: ignore[return-value]

    if downloads_disabled():
        download_note = "Downloading is turned off (CONVAE_NO_DOWNLOAD is set)."
    else:
        try:
            return {stem: _download(source, f"{stem}.gz") for stem in stems}
        except _DownloadFailed as error:  # no network, refused, timed out, cut off
            download_note = f"Downloading from {source.mirror} failed: {error.__cause__}."
        except OSError as error:  # the cache folder cannot be made
            download_note = f"Downloading from {source.mirror} failed: {error}."
    looked = "\n".join(f"  {folder}  ({origin})" for folder, origin in dirs)
    how = [f"set CONVAE_DATA=DIR and put the files in DIR/{name}/"]
    if source.apt_package:
        how.append(f"apt-get install {source.apt_package} (Debian/Ubuntu)")
    how.append("copy the files into one of the folders above")
    files = ", ".join(f"{stem}[.gz]" for split in ("train", "test") for stem in SPLIT_FILES[split])
    raise DatasetNotFoundError(
        f"{source.title} not found. Looked in:\n{looked}\n{download_note}\n"
        f"Files needed (gzipped or plain): {files}.\nTo provide them: " + "; or ".join(how) + "."
    )


def _download(source: IdxSource, filename: str) -> Path:
    """Download one archive into the cache: temp file, SHA-256 check, then rename."""
    folder = cache_dir(source.name)
    target = folder / filename
    if target.is_file():  # an earlier, partial run fetched this one already
        return target
    created = [d for d in (folder, *folder.parents) if not d.exists()]  # deepest first: ~/.cache/convae/mnist, ~/.cache/convae, ...
    url = source.mirror + filename
    logger.info("downloading %s", url)
    digest = hashlib.sha256()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(target, error=DataError) as tmp:  # a failed or mismatched download leaves nothing behind
            for chunk in _fetch(url):
                digest.update(chunk)
                tmp.write(chunk)  # a write error (disk full) is the atomic writer's DataError, not a download failure
            if digest.hexdigest() != source.sha256[filename]:
                raise DataError(f"{url}: SHA-256 {digest.hexdigest()} does not match the pinned "
                                f"{source.sha256[filename]}; the download was discarded")
    except BaseException:
        _remove_if_empty(created)
        raise
    return target


class _DownloadFailed(Exception):
    """The network side of a download failed; ``__cause__`` is the error (kept apart from the writer's OSErrors)."""


def _fetch(url: str) -> Iterator[bytes]:
    """The bytes at ``url`` in chunks; any network error is a :class:`_DownloadFailed`."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                yield chunk
    except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, resets; IncompleteRead
        raise _DownloadFailed(str(error)) from error


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the cache folders this attempt created (deepest first) while they are empty: a failed download leaves no trace."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty (an earlier download, another process): it and its parents stay
            return
