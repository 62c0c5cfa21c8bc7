"""The one atomic writer: readers see the old file or the new one, never half of one.

Every file convae writes (run directories, features, labels, sidecars, exports, downloads, reports)
goes through :func:`atomic_file`: a temporary file in the target's folder, flushed and fsynced, then
renamed over the target and the folder fsynced. A failure or a kill at any moment leaves the old file
(or none) and removes the temporary one. Files get the usual permissions (``0666 & ~umask``), not
``mkstemp``'s 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from .errors import ConvaeError, WriteError

_UMASK = os.umask(0)
os.umask(_UMASK)


def fsync_dir(directory: str | Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace(source: str | Path, target: str | Path) -> None:
    """``os.replace`` then fsync of the target's folder: a rename that survives a crash."""
    os.replace(source, target)
    fsync_dir(Path(target).parent)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", *, error: type[Exception] | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``, otherwise it is removed.

    ``error``: the exception class an OSError is reported as (default :class:`WriteError`), with
    a message naming ``path`` and saying the previous file is unchanged.
    """
    path = Path(path)
    wrap = error or WriteError

    def failed(e: OSError) -> Exception:
        return wrap(f"cannot write {path}: {e.strerror or e}; the previous file, if any, is unchanged")

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise failed(e) from e
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, ConvaeError):
            raise failed(e) from e
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, *, error: type[Exception] | None = None) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path, error=error) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, *, error: type[Exception] | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), error=error)


def atomic_write_json(path: str | Path, value, *, error: type[Exception] | None = None) -> None:
    """``value`` as indented JSON with a final newline."""
    atomic_write_text(path, json.dumps(value, indent=2) + "\n", error=error)


def atomic_save_npy(path: str | Path, array: np.ndarray, *, error: type[Exception] | None = None) -> None:
    """``np.save`` of ``array`` to ``path`` atomically."""
    with atomic_file(path, error=error) as f:
        np.save(f, array)


@contextlib.contextmanager
def atomic_npy_stream(path: str | Path, n_rows: int, width: int, *, error: type[Exception] | None = None) -> Iterator[IO]:
    """A ``.npy`` of float32 (n_rows, width) written row block by row block: yields the file after its header.

    The caller writes exactly ``n_rows * width`` little-endian float32 values; memory stays flat in N.
    """
    with atomic_file(path, error=error) as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (n_rows, width)}
        np.lib.format.write_array_header_1_0(f, header)
        yield f
