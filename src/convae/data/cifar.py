"""CIFAR-10, binary version: parsing the batch files, finding them on disk, downloading the archive.

Only the binary version is read (``cifar-10-binary.tar.gz``, which unpacks to
``cifar-10-batches-bin/``); the pickled Python version is never unpickled. A batch file is
whole records of 3,073 bytes: one label byte (0..9), then 3,072 pixel bytes, the 1,024 red,
1,024 green and 1,024 blue values of a 32×32 image, each plane row-major. The published
files hold 10,000 records each; any whole number of records is accepted (a count other than
10,000 is logged), but every file a split needs must be there:

* ``train``: ``data_batch_1.bin`` .. ``data_batch_5.bin``, in that order (50,000 images)
* ``test``: ``test_batch.bin`` (10,000 images)
* ``all``: train then test

Class names come from ``batches.meta.txt`` when it is there (ten non-empty lines), else the
standard ten.

Where the files are looked for: the folders of :func:`convae.data.idx.search_dirs` for
``cifar10`` (``$CONVAE_DATA/cifar10/``, ``~/.cache/convae/cifar10/``,
``/usr/share/datasets/cifar10/``), in order. In each folder, the batch files directly in it,
then in its ``cifar-10-batches-bin/`` sub-folder, then the archive
``cifar-10-binary.tar.gz`` itself (its members are read in one pass, never extracted;
absolute or ``..`` member names reject the archive). The first folder holding any of these
is the one used: if none of its layouts has every file the split needs, that is a DataError
naming the missing file, not a silent move to the next folder. With nothing found, the
archive is downloaded into ``~/.cache/convae/cifar10/`` through a temporary file that is
renamed only once its SHA-256 matches the pinned sum; ``CONVAE_NO_DOWNLOAD=1`` turns that off.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..atomic import atomic_file
from ..errors import DataError, DatasetNotFoundError
from .idx import cache_dir, downloads_disabled, search_dirs

logger = logging.getLogger(__name__)

NAME = "cifar10"
TITLE = "CIFAR-10"
ARCHIVE = "cifar-10-binary.tar.gz"
SUBFOLDER = "cifar-10-batches-bin"
URL = "https://www.cs.toronto.edu/~kriz/" + ARCHIVE
# SHA-256 of the published cifar-10-binary.tar.gz (170,052,171 bytes), whose MD5 the publisher
# lists on https://www.cs.toronto.edu/~kriz/cifar.html as c32a1d4ab5d03f1284b67883e8d87530.
# It could not be computed here (no network): the value was given with issue 14 and is the one
# TensorFlow Datasets' checksum registry and other projects pin for that URL.
SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
ARCHIVE_MIB = 163  # its size, for messages

PIXEL_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + PIXEL_BYTES
PUBLISHED_RECORDS = 10_000
META = "batches.meta.txt"
SPLIT_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
BATCH_FILES = SPLIT_FILES["train"] + SPLIT_FILES["test"]
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_PYTHON_VERSION = ("cifar-10-python.tar.gz", "cifar-10-batches-py")  # pickles: named in messages, never read


# ---------------------------------------------------------------------------------------------
# parsing


def check_size(size: int, name: str) -> None:
    """DataError naming `name` unless `size` bytes is a positive whole number of records."""
    if size > 0 and size % RECORD_BYTES == 0:
        return
    if size == 0:
        detail = "is empty"
    else:
        whole, extra = divmod(size, RECORD_BYTES)
        detail = f"is {whole} whole records and {extra} bytes more: truncated, or not a CIFAR-10 binary batch"
        if size % (RECORD_BYTES + 1) == 0:
            detail += f" (its size fits CIFAR-100's {RECORD_BYTES + 1}-byte records, which have 2 label bytes)"
    raise DataError(f"{name}: {size} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records "
                    f"(1 label byte + {PIXEL_BYTES} pixel bytes); the file {detail}")


def parse_batch(data: bytes | bytearray | memoryview, name: str = "CIFAR-10 batch") -> tuple[np.ndarray, np.ndarray]:
    """The bytes of one batch file -> (uint8 images (N, 3, 32, 32), int64 labels (N,)).

    The images are a read-only view of `data`. DataError naming `name` for a size that is not
    a positive multiple of 3,073 bytes or a label byte above 9.
    """
    data = memoryview(data).cast("B")
    check_size(len(data), name)
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        first = int(bad[0])
        raise DataError(f"{name}: record {first} (counting from 0) has label byte {int(labels[first])}; "
                        f"CIFAR-10 labels are 0..9 ({bad.size} of {len(labels)} records are out of range)")
    if len(records) != PUBLISHED_RECORDS:
        logger.info("%s: %d records (the published batch files hold %d each)", name, len(records), PUBLISHED_RECORDS)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels.astype(np.int64)


def parse_meta(data: bytes, name: str = META) -> tuple[str, ...] | None:
    """Ten class names from batches.meta.txt (one a line, blank lines ignored), or None (logged)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        logger.warning("%s: not UTF-8 text; using the standard CIFAR-10 class names", name)
        return None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != len(CLASS_NAMES):
        logger.warning("%s: %d class names, expected %d; using the standard CIFAR-10 class names",
                       name, len(names), len(CLASS_NAMES))
        return None
    return names


# ---------------------------------------------------------------------------------------------
# the files of one location


@dataclass(frozen=True)
class _Folder:
    """Batch files as plain files in `path` (a search folder or its cifar-10-batches-bin/)."""

    path: Path

    def read(self, names: tuple[str, ...]) -> tuple[dict[str, tuple[bytes, str]], tuple[bytes, str] | None]:
        files = {}
        for name in names:
            path = self.path / name
            try:
                check_size(path.stat().st_size, str(path))  # before reading: a wrong file may be huge
                files[name] = (path.read_bytes(), str(path))
            except OSError as error:
                raise DataError(f"{path}: cannot read CIFAR-10 batch file: {error.strerror or error}") from error
        meta = None
        if (self.path / META).is_file():
            try:
                meta = ((self.path / META).read_bytes(), str(self.path / META))
            except OSError as error:
                logger.warning("%s: cannot read (%s); using the standard class names", self.path / META,
                               error.strerror or error)
        return files, meta

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class _Archive:
    """Batch files as members of cifar-10-binary.tar.gz, at its top or under cifar-10-batches-bin/."""

    path: Path

    def read(self, names: tuple[str, ...]) -> tuple[dict[str, tuple[bytes, str]], tuple[bytes, str] | None]:
        """{name: (bytes, label for messages)} of `names`, and batches.meta.txt's (bytes, label) or None."""
        wanted = set(names) | {META}
        found: dict[str, tuple[bytes, str]] = {}
        try:
            with tarfile.open(self.path, "r:*") as archive:  # one forward pass; nothing touches the disk
                for member in archive:
                    name = self._member_name(member.name)
                    if name not in wanted:
                        continue
                    label = f"{self.path}[{member.name}]"
                    if name in found:
                        raise DataError(f"{self.path}: holds {name} twice ({found[name][1]} and {label}); "
                                        "it is ambiguous which one to read")
                    if not member.isfile():
                        raise DataError(f"{label}: is a link or special file, not a regular file; "
                                        "use the archive as published")
                    if name != META:
                        check_size(member.size, label)
                    stream = archive.extractfile(member)
                    found[name] = (stream.read() if stream is not None else b"", label)
                # Read on to the end: tarfile takes a cut-off header for the end of the archive, but
                # gzip's end-of-stream and CRC checks (over the members read too) come only there.
                while archive.fileobj.read(1 << 20):
                    pass
        except DataError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            raise DataError(f"{self.path}: not a readable tar.gz archive: {error}") from error
        missing = [name for name in names if name not in found]
        if missing:
            raise DataError(f"{self.path}: has no member {missing[0]} (looked for it at the top and under "
                            f"{SUBFOLDER}/); this split needs {_listing(names)}")
        return found, found.pop(META, None)

    def _member_name(self, raw: str) -> str | None:
        """The file name a member stands for, if it is one convae reads; DataError for unsafe names."""
        path = PurePosixPath(raw.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or (len(raw) > 1 and raw[1] == ":"):  # /x, a/../b, C:x
            raise DataError(f"{self.path}: member {raw!r} has an absolute or '..' path; the archive is "
                            "rejected (use the one published at " + URL + ")")
        parts = [part for part in path.parts if part != "."]
        if len(parts) == 1 or (len(parts) == 2 and parts[0] == SUBFOLDER):
            return parts[-1]
        return None

    def __str__(self) -> str:
        return str(self.path)


def _listing(names: tuple[str, ...]) -> str:
    return ", ".join(names)


# ---------------------------------------------------------------------------------------------
# finding and downloading


def _needed(split: str) -> tuple[str, ...]:
    return tuple(name for part in (("train", "test") if split == "all" else (split,)) for name in SPLIT_FILES[part])


def locate(split: str) -> _Folder | _Archive:
    """Where the files of `split` are read from (see the module docstring), downloading if need be."""
    needed = _needed(split)
    dirs = search_dirs(NAME)
    for folder, origin in dirs:
        partial = None
        for layout in (folder, folder / SUBFOLDER):
            present = [name for name in BATCH_FILES if (layout / name).is_file()]
            if not present:
                continue
            missing = [name for name in needed if name not in present]
            if not missing:
                logger.debug("%s: using the files in %s (%s)", TITLE, layout, origin)
                return _Folder(layout)
            partial = partial or (layout, missing)
        if (folder / ARCHIVE).is_file():
            logger.debug("%s: using %s (%s)", TITLE, folder / ARCHIVE, origin)
            return _Archive(folder / ARCHIVE)
        if partial:
            layout, missing = partial
            raise DataError(
                f"{layout}: holds CIFAR-10 batch files but not {missing[0]}, which the {split!r} split needs "
                f"({_listing(needed)}); add the missing file(s), or put {ARCHIVE} in {folder}, or remove "
                "the partial set so that the next folder is searched")

    if downloads_disabled():
        download_note = f"Downloading {URL} is turned off (CONVAE_NO_DOWNLOAD is set)."
    else:
        try:
            return _Archive(_download())
        except _DownloadFailed as error:
            download_note = f"Downloading {URL} failed: {error}."
    looked = "\n".join(f"  {folder}  ({origin})" for folder, origin in dirs)
    pickled = [str(folder / other) for folder, _ in dirs for other in _PYTHON_VERSION if (folder / other).exists()]
    note = (f"\nFound only the Python (pickled) version, which convae never reads: {', '.join(pickled)}."
            if pickled else "")
    how = [f"set CONVAE_DATA=DIR and put {ARCHIVE} (or the files unpacked from it) in DIR/{NAME}/",
           f"copy {ARCHIVE} into one of the folders above"]
    if downloads_disabled():
        how.append(f"unset CONVAE_NO_DOWNLOAD to download it (about {ARCHIVE_MIB} MiB) into {cache_dir(NAME)}")
    raise DatasetNotFoundError(
        f"{TITLE} not found. Looked in:\n{looked}\n{download_note}{note}\n"
        f"Files needed: the binary version, {ARCHIVE} from {URL}: the archive itself, or its "
        f"{', '.join(BATCH_FILES)} directly in a folder above or in its {SUBFOLDER}/ sub-folder.\n"
        "To provide them: " + "; or ".join(how) + "."
    )


class _DownloadFailed(Exception):
    """The network part of a download failed (no connection, HTTP error, cut off)."""


def _download() -> Path:
    """Download the archive into the cache: temp file, SHA-256 check, then rename.

    A failure leaves neither a partial file nor a cache folder this call created.
    """
    folder = cache_dir(NAME)
    target = folder / ARCHIVE
    created = []  # the folders this call makes, deepest first
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        created.append(parent)
    logger.info("downloading %s (about %d MiB)", URL, ARCHIVE_MIB)
    digest = hashlib.sha256()
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DataError(f"cannot create the cache folder {folder}: {error.strerror or error}; set "
                            f"CONVAE_DATA=DIR and put {ARCHIVE} in DIR/{NAME}/ instead") from error
        try:
            response = urllib.request.urlopen(URL, timeout=60)
        except (OSError, urllib.error.URLError, http.client.HTTPException) as error:
            raise _DownloadFailed(error) from error
        with response, atomic_file(target, error=DataError) as tmp:  # a failed or mismatched download leaves nothing
            while True:
                try:
                    chunk = response.read(1 << 20)
                except (OSError, http.client.HTTPException) as error:  # timed out, connection cut, short body
                    raise _DownloadFailed(error) from error
                if not chunk:
                    break
                digest.update(chunk)
                tmp.write(chunk)
            if digest.hexdigest() != SHA256:
                raise DataError(f"{URL}: SHA-256 {digest.hexdigest()} does not match the pinned {SHA256}; "
                                "the download was discarded")
    except BaseException:
        for made in created:
            try:
                made.rmdir()
            except OSError:
                break
        raise
    return target


# ---------------------------------------------------------------------------------------------
# loading


def load(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 images (N, 3, 32, 32), int64 labels (N,), class names) of `split`: train, test or all."""
    if split not in ("train", "test", "all"):
        raise DataError(f"split={split!r} is not valid; expected 'train', 'test' or 'all'")
    needed = _needed(split)
    source = locate(split)
    files, meta = source.read(needed)
    images, labels = [], []
    for name in needed:  # the split's order, whatever the order on disk
        data, label = files.pop(name)
        x, y = parse_batch(data, label)
        images.append(x)
        labels.append(y)
    class_names = (parse_meta(*meta) if meta is not None else None) or CLASS_NAMES
    return np.concatenate(images), np.concatenate(labels), list(class_names)
