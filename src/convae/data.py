"""Datasets named by one spec string, turned into N×C×H×W image tensors (or a stream).

Specs (the same in the CLI and the Python API):

``fashion-mnist``, ``mnist``
    IDX files with train/test splits and labels; see :mod:`convae._idx` for where they are
    looked for and how they are downloaded (``CONVAE_NO_DOWNLOAD=1`` turns that off).
``digits``
    scikit-learn's bundled 8×8 digits, 0..16 scaled to uint8 0..255; no test split.
``folder:PATH``
    Image files (PNG, JPEG, BMP, TIFF, WebP, GIF) anywhere under PATH, in sorted order of
    their relative paths. Labels come from the first-level sub-folder names when images
    live in sub-folders; images directly in PATH with no sub-folders are unlabeled. Hidden
    names and other extensions are ignored. Symbolic links are followed, each real folder
    once.
``npz:PATH``, ``npy:PATH``
    Arrays, see :func:`as_images`. In an .npz the images are the array named ``x``, ``X``
    or ``images``, else the only (or first saved) array not named as labels; labels come
    from ``y`` or ``labels``. An .npz with ``x_train`` and ``x_test`` (Keras' layout) has a
    test split, with labels from ``y_train``/``y_test``.

The conversion rule (every image file becomes 8-bit L or RGB, then ``channels``):

1. The first frame only (animated GIF/WebP, multi-page TIFF).
2. The EXIF orientation is applied (``ImageOps.exif_transpose``), before any size check.
3. Palette images, and L/RGB images with a transparent colour, become RGBA (or LA).
4. Alpha is composited on white: ``out = (c·a + 255·(255−a)) / 255``, rounded.
5. 16-bit images (modes ``I;16*``, and ``I`` from 16-bit PNG/TIFF) keep the top 8 bits
   (``value >> 8``; ``>> (bits−8)`` for other TIFF bit depths); 32-bit float ``F`` is
   taken to be in [0, 1]. CMYK, YCbCr, LAB and HSV become RGB through Pillow.
6. Grayscale means the file's mode is 1, L, LA, I, I;16 or F, or a palette whose every
   entry has R = G = B. ``channels=None`` gives 1 when every image is grayscale, else 3.
   Gray → 3 channels repeats the plane; RGB → 1 channel is ITU-R 601-2 luma
   ``L = (19595·R + 38470·G + 7471·B + 2¹⁵) >> 16`` (bit-exact with Pillow's ``convert("L")``;
   ``0.299R + 0.587G + 0.114B`` for float tensors).
7. Resizing to ``image_size`` = (H, W) is bilinear with antialiasing (Pillow for files,
   ``torch.nn.functional.interpolate(antialias=True)`` for tensors), after step 6.

A file that cannot be read or decoded (empty, truncated, bad PNG CRC, not an image,
declared size over ``max_pixels``) raises BadImageError, or with ``on_bad_image="skip"``
is left out and listed in ``dataset.skipped``.

Folders whose uint8 pixels would exceed ``max_memory_bytes`` (or with ``in_memory=False``)
are streamed: ``images`` is None and :meth:`ImageDataset.batches` decodes each batch in
DataLoader workers. Other sources are always held in memory.
"""


from __future__ import annotations

import hashlib
import logging
import os
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from . import _idx
from ._images import (DEFAULT_MAX_PIXELS, FileImages, collate_decoded, decode_files, decode_image,
                      folder_files, in_file_order, list_image_files, plan_files, probe_image, report_skipped)
from .errors import BadImageError, DataError, DatasetNotFoundError

__all__ = [
    "ImageDataset", "ScanReport", "load_dataset", "has_test_split", "parse_image_size", "to_float",
    "as_images", "load_image_files", "convert_images", "scan", "dataset_fingerprint",
    "DEFAULT_MAX_MEMORY_BYTES", "DEFAULT_MAX_PIXELS",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MEMORY_BYTES = 4 * 1024**3  # folders whose uint8 pixels exceed this are streamed
SPLITS = ("train", "test", "all")
_SPEC_HELP = "expected fashion-mnist, mnist, digits, folder:PATH, npz:PATH or npy:PATH"
_CHUNK = 4096  # images per step when converting tensors, to bound temporary memory


# ---------------------------------------------------------------------------------------------
# specs and small parsers


def _parse_spec(spec: str) -> tuple[str, Path | None]:
    """("fashion-mnist" | "mnist" | "digits", None) or ("folder" | "npz" | "npy", path)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"dataset spec {spec!r} is empty; {_SPEC_HELP}")
    kind, sep, rest = spec.strip().partition(":")
    name = kind.lower().replace("_", "-")
    if not sep and name in ("fashion-mnist", "mnist", "digits"):
        return name, None
    if sep and name in ("folder", "npz", "npy"):
        if not rest.strip():
            raise DataError(f"dataset spec {spec!r} has no path after '{kind}:'")
        return name, Path(rest.strip()).expanduser()
    raise DataError(f"unknown dataset spec {spec!r}; {_SPEC_HELP}")


def has_test_split(spec: str) -> bool:
    """Whether `spec` has a separate test split (IDX datasets; .npz with x_train and x_test)."""
    kind, path = _parse_spec(spec)
    if kind in ("fashion-mnist", "mnist"):
        return True
    if kind in ("npz", "npy") and path is not None and path.is_file():
        try:
            loaded = np.load(path, allow_pickle=False, mmap_mode="r")  # reads headers, not arrays
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return False  # loading it reports what is wrong
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return False
        with loaded:
            return {"x_train", "x_test"} <= set(loaded.files)
    return False


def parse_image_size(text: str | int | tuple | list | None) -> tuple[int, int] | None:
    """"28x28", "28", "37x53" (H x W), 28, (37, 53) -> (H, W); None -> None."""
    if text is None:
        return None
    bad = DataError(f"image size {text!r} is not valid; expected HxW such as 28x28 or 37x53, "
                    "or one number for a square")
    if isinstance(text, str):
        parts = text.strip().lower().replace("×", "x").split("x")
        try:
            values = [int(part.strip()) for part in parts]
        except ValueError:
            raise bad from None
    elif isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        values = [int(text)]
    elif isinstance(text, (tuple, list)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in text):
            raise bad
        values = [int(v) for v in text]
    else:
        raise bad
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(0 < v <= 65536 for v in values):
        raise bad
    return values[0], values[1]


def _check_channels(channels: int | None) -> None:
    if channels not in (None, 1, 3):
        raise DataError(f"channels={channels!r} is not valid; expected 1, 3 or None (1 if every "
                        "image is grayscale, else 3)")


# ---------------------------------------------------------------------------------------------
# arrays and tensors: the one conversion at the edge


def as_images(array, *, name: str = "array") -> torch.Tensor:
    """User images -> N×C×H×W tensor: uint8 stays uint8, float becomes float32 in [0, 1].

    Accepts (N,H,W), (N,H,W,C) or (N,C,H,W) with C in {1, 3}. The channel axis is axis 1
    when its size is 1 or 3 (so an ambiguous (N,3,5,3) is read as N×C×H×W), else the last
    axis when its size is 1 or 3. dtypes: uint8; bool (-> 0/255); other integers with
    values in 0..255 (-> uint8); floats with every value finite and in [0, 1]. A uint8
    N×C×H×W numpy array is shared, not copied. Errors name `name` and say what is wrong.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        if array.dtype in (torch.bfloat16, torch.float16):
            array = array.float()
        array = array.numpy()
    try:
        array = np.asarray(array)
    except (ValueError, TypeError) as error:
        raise DataError(f"{name}: cannot be read as a numeric array: {error}") from error
    if array.dtype.kind not in "buif":
        raise DataError(f"{name}: dtype {array.dtype} cannot hold images; expected uint8 (0..255) "
                        "or float in [0, 1]")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        if array.shape[1] not in (1, 3):
            if array.shape[3] not in (1, 3):
                raise DataError(f"{name}: shape {array.shape} has no channel axis of size 1 or 3 "
                                "(axis 1 or the last); RGBA or multi-band arrays need converting first")
            array = array.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{name}: shape {array.shape} has rank {array.ndim}; expected (N,H,W), "
                        "(N,H,W,C) or (N,C,H,W)")
    if array.shape[0] == 0:
        raise DataError(f"{name}: holds zero images (shape {array.shape})")
    if array.shape[2] == 0 or array.shape[3] == 0:
        raise DataError(f"{name}: images of size {array.shape[2]}x{array.shape[3]} are empty")

    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            first = int(np.argmin(finite.reshape(len(array), -1).all(axis=1)))
            raise DataError(f"{name}: {int(finite.size - finite.sum())} NaN/Inf values, the first "
                            f"in image {first}; clean or drop those images")
        del finite
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            hint = " (looks like 0..255: divide by 255 or pass uint8)" if high <= 255 and low >= 0 else ""
            raise DataError(f"{name}: float values must lie in [0, 1], found {low:g}..{high:g}{hint}")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if array.dtype != np.uint8:
        if array.dtype == np.bool_:
            array = array.astype(np.uint8) * 255
        else:
            low, high = int(array.min()), int(array.max())
            if low < 0 or high > 255:
                raise DataError(f"{name}: integer values must lie in 0..255, found {low}..{high}")
            array = array.astype(np.uint8)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C")  # a writable, contiguous copy
    return torch.from_numpy(array)


def _as_labels(labels, count: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{name}: labels have shape {labels.shape}; expected ({count},)")
    if labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all():
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "biu":
        raise DataError(f"{name}: labels have dtype {labels.dtype}; expected integers")
    if len(labels) != count:
        raise DataError(f"{name}: {len(labels)} labels for {count} images; they must match one to one")
    return labels.astype(np.int64)


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 / 255; float passes through as float32."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(255.0)
    if batch.is_floating_point():
        return batch.float()
    raise DataError(f"to_float: expected a uint8 or float tensor, got {batch.dtype}")


def _luma(images: torch.Tensor) -> torch.Tensor:  # (N,3,H,W) -> (N,1,H,W), the rule's luma
    if images.dtype == torch.uint8:
        weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)
        total = (images.to(torch.int32) * weights).sum(dim=1, keepdim=True)
        return ((total + 0x8000) >> 16).to(torch.uint8)
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True).clamp_(0.0, 1.0)


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    resized = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    if images.dtype == torch.uint8:
        return resized.round_().clamp_(0, 255).to(torch.uint8)
    return resized.clamp_(0.0, 1.0).to(images.dtype)


def convert_images(images: torch.Tensor, *, image_size=None, channels: int | None = None) -> torch.Tensor:
    """Resize and/or channel-convert an N×C×H×W tensor by the module's rule (dtype kept)."""
    _check_channels(channels)
    size = parse_image_size(image_size)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"convert_images: expected N×C×H×W with C in {{1, 3}}, got shape {tuple(images.shape)}")
    same_size = size is None or tuple(images.shape[2:]) == size
    if (channels is None or channels == images.shape[1]) and same_size:
        return images
    chunks = []
    for start in range(0, len(images), _CHUNK):
        chunk = images[start:start + _CHUNK]
        if channels == 1 and chunk.shape[1] == 3:
            chunk = _luma(chunk)
        if not same_size:
            chunk = _resize(chunk, size)
        if channels == 3 and chunk.shape[1] == 1:
            chunk = chunk.repeat(1, 3, 1, 1)
        chunks.append(chunk)
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0].contiguous()


# ---------------------------------------------------------------------------------------------
# the dataset


class _Chunks(torch.utils.data.Sampler):
    """Batches of `indices` in their order, as lists (a DataLoader batch_sampler)."""

    def __init__(self, indices: torch.Tensor, batch_size: int):
        self.indices, self.batch_size = indices, batch_size

    def __iter__(self):
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start:start + self.batch_size].tolist()

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)


@dataclass(repr=False)
class ImageDataset:
    """Images (N×C×H×W uint8, or float32 in [0, 1] from float arrays) with optional labels.

    A streaming dataset has ``images`` None and decodes its files in :meth:`batches`.
    """

    images: torch.Tensor | None
    labels: np.ndarray | None
    spec: str
    split: str
    class_names: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # streaming only: the files, what decode_image needs, and what to do with a bad file
    _files: list[str] | None = None
    _decode: dict | None = None
    _on_bad_image: str = "error"

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self._files or ())

    @property
    def streaming(self) -> bool:
        return self.images is None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        if self.images is not None:
            return tuple(self.images.shape[1:])
        return (self._decode["channels"], *self._decode["size"])

    def __repr__(self) -> str:
        kind = "streaming" if self.streaming else str(self.images.dtype).replace("torch.", "")
        labels = f"{len(self.class_names or ())} classes" if self.labels is not None else "unlabeled"
        return (f"ImageDataset({self.spec!r}, split={self.split!r}, n={len(self)}, shape={self.shape}, "
                f"{kind}, {labels}, skipped={len(self.skipped)})")

    def batches(self, indices, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
        """Yield image batches (uint8 or float N×C×H×W, not yet scaled) in the order of `indices`.

        In memory this is tensor indexing only (`num_workers` is ignored). Streaming decodes
        in a DataLoader with `num_workers` worker processes (pinned memory when CUDA is
        available). A file that fails to decode there raises BadImageError, or with
        on_bad_image="skip" is dropped from its batch (which comes out smaller) and added
        to ``skipped``.
        """
        indices = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        indices = indices.to(torch.long).reshape(-1).cpu()
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}")
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise DataError(f"indices must lie in 0..{len(self) - 1}, found "
                            f"{int(indices.min())}..{int(indices.max())}")
        if self.images is not None:
            return (self.images[indices[start:start + batch_size]] for start in range(0, len(indices), batch_size))
        return self._stream(indices, batch_size, num_workers)

    def _stream(self, indices: torch.Tensor, batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
        loader = DataLoader(FileImages(self._files, **self._decode), batch_sampler=_Chunks(indices, batch_size),
                            num_workers=num_workers, collate_fn=collate_decoded,
                            pin_memory=torch.cuda.is_available())
        known = {path for path, _ in self.skipped}
        for batch, failures in loader:
            for path, reason in failures:
                if self._on_bad_image == "error":
                    raise BadImageError(path, reason)
                if path not in known:
                    known.add(path)
                    self.skipped.append((path, reason))
                    logger.warning("skipped bad image %s: %s", path, reason)
            if len(batch):
                yield batch

    def subset(self, indices) -> ImageDataset:
        """The images (and labels) at `indices`, in that order; streaming stays streaming."""
        index = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices).astype(np.int64).reshape(-1)
        labels = self.labels[index] if self.labels is not None else None
        if self.images is not None:
            return ImageDataset(self.images[torch.from_numpy(index)], labels, self.spec, self.split,
                                self.class_names, list(self.skipped))
        return ImageDataset(None, labels, self.spec, self.split, self.class_names, list(self.skipped),
                            [self._files[i] for i in index], dict(self._decode), self._on_bad_image)


# ---------------------------------------------------------------------------------------------
# sources


def _load_idx(name: str, split: str) -> tuple[torch.Tensor, np.ndarray]:
    splits = ("train", "test") if split == "all" else (split,)
    paths = _idx.locate(name, splits)
    images, labels = [], []
    for part in splits:
        image_path, label_path = (paths[stem] for stem in _idx.SPLIT_FILES[part])
        x, y = _idx.read_idx(image_path), _idx.read_idx(label_path)
        if x.ndim != 3 or x.dtype != np.uint8 or len(x) == 0:
            raise DataError(f"{image_path}: expected uint8 images shaped (N, H, W) with N > 0, "
                            f"found {x.dtype} {x.shape}")
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(f"{label_path}: expected integer labels shaped (N,), found {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise DataError(f"{label_path}: {len(y)} labels for the {len(x)} images in {image_path}")
        images.append(x)
        labels.append(y.astype(np.int64))
    x = images[0] if len(images) == 1 else np.concatenate(images)
    return torch.from_numpy(x[:, None]), np.concatenate(labels)


def _load_digits() -> tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    digits = load_digits()
    values = digits.images.astype(np.int64)  # (1797, 8, 8), 0..16
    pixels = ((values * 255 + 8) // 16).astype(np.uint8)  # 0..16 -> 0..255, rounded
    return torch.from_numpy(pixels[:, None].copy()), digits.target.astype(np.int64)


def _load_arrays(path: Path, split: str, spec: str) -> tuple[torch.Tensor, np.ndarray | None]:
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such file (from dataset spec {spec!r})")
    unpickled = "holds Python objects, which convae never unpickles; save plain numeric arrays"
    try:
        loaded = np.load(path, allow_pickle=False)  # the content decides .npy or .npz, not the name
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            if split == "test":
                raise DataError(f"{spec}: a .npy file has no test split; use split='train' or 'all'")
            return as_images(loaded, name=str(path)), None
        with loaded:
            return _npz_images(path, loaded, split, spec)
    except DataError:
        raise
    except ValueError as error:  # object arrays, or a header numpy cannot parse
        reason = unpickled if "pickle" in str(error) else f"not a valid array file: {error}"
        raise DataError(f"{path}: {reason}") from error
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: not a readable .npy/.npz file: {error}") from error
    except MemoryError as error:  # a header declaring an array far larger than the file (or the machine)
        raise DataError(f"{path}: declares an array too large to load ({error}); the file is damaged or too big") from error
    except Exception as error:  # a damaged header or zip member can raise nearly anything inside numpy/zipfile
        raise DataError(f"{path}: not a readable .npy/.npz file: {type(error).__name__}: {error}") from error


def _npz_images(path: Path, loaded, split: str, spec: str) -> tuple[torch.Tensor, np.ndarray | None]:
    keys = list(loaded.files)
    if {"x_train", "x_test"} <= set(keys):  # Keras' layout, with a test split
        parts = ("train", "test") if split == "all" else (split,)
        images, labels = [], []
        for part in parts:
            x = as_images(loaded[f"x_{part}"], name=f"{path}[x_{part}]")
            images.append(x)
            if f"y_{part}" in keys:
                labels.append(_as_labels(loaded[f"y_{part}"], len(x), f"{path}[y_{part}]"))
        if len({(x.shape[1:], x.dtype) for x in images}) > 1:
            raise DataError(f"{path}: x_train and x_test differ in shape or dtype "
                            f"({', '.join(f'{tuple(x.shape[1:])} {x.dtype}' for x in images)})")
        if labels and len(labels) != len(images):
            raise DataError(f"{path}: has labels for only one of x_train/x_test")
        return torch.cat(images) if len(images) > 1 else images[0], np.concatenate(labels) if labels else None
    label_key = next((key for key in ("y", "labels") if key in keys), None)
    image_key = next((key for key in ("x", "X", "images") if key in keys), None)
    if image_key is None:
        others = [key for key in keys if key not in ("y", "labels")]
        if not others:
            raise DataError(f"{path}: no image array (keys: {keys}); name it 'x' or 'images'")
        image_key = others[0]
        if len(others) > 1:
            logger.info("%s: using array %r as images (others: %s)", path, image_key, others[1:])
    if split == "test":
        raise DataError(f"{spec}: this .npz has no test split (that needs x_train and x_test); "
                        "use split='train' or 'all'")
    images = as_images(loaded[image_key], name=f"{path}[{image_key}]")
    labels = _as_labels(loaded[label_key], len(images), f"{path}[{label_key}]") if label_key else None
    return images, labels


def _check_on_bad_image(on_bad_image: str) -> None:
    if on_bad_image not in ("error", "skip"):
        raise DataError(f"on_bad_image={on_bad_image!r} is not valid; expected 'error' or 'skip'")


def load_image_files(paths: Sequence[str | Path], *, image_size=None, channels: int | None = None,
                     on_bad_image: str = "error", max_pixels: int = DEFAULT_MAX_PIXELS,
                     ) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """Decode `paths` in order by the module's rule: (uint8 N×C×H×W, skipped (path, reason))."""
    _check_on_bad_image(on_bad_image)
    _check_channels(channels)
    paths = [Path(path) for path in paths]
    if not paths:
        raise DataError("load_image_files: the list of paths is empty")
    usable, channels, size, skipped = plan_files(paths, parse_image_size(image_size), channels,
                                                  on_bad_image, max_pixels)
    images, _, failed = decode_files(usable, channels, size, on_bad_image, max_pixels)
    skipped = in_file_order(skipped + failed, paths)
    report_skipped(skipped, len(paths), "the given paths")
    return images, skipped


def _load_folder(root: Path, spec: str, split: str, image_size, channels, on_bad_image: str,
                 in_memory: bool | None, max_pixels: int, max_memory_bytes: int) -> ImageDataset:
    files, classes = folder_files(root, spec)
    class_names = sorted({name for name in classes if name is not None}) or None
    by_path = dict(zip(map(str, files), classes))
    usable, channels, size, skipped = plan_files(files, image_size, channels, on_bad_image, max_pixels)

    def labels_of(paths: Sequence[Path]) -> np.ndarray | None:
        if class_names is None:
            return None  # class indices come from every file found, so skipping never renumbers
        index = {name: i for i, name in enumerate(class_names)}
        return np.array([index[by_path[str(path)]] for path in paths], dtype=np.int64)

    estimated = len(usable) * channels * size[0] * size[1]
    if in_memory is None:
        in_memory = estimated <= max_memory_bytes
        if not in_memory:
            logger.info("%s: %d images need about %.1f GiB as uint8, over max_memory_bytes "
                        "(%.1f GiB): streaming them from disk", root, len(usable),
                        estimated / 1024**3, max_memory_bytes / 1024**3)
    if not in_memory:
        skipped = in_file_order(skipped, files)
        report_skipped(skipped, len(files), str(root))
        decode = {"channels": channels, "size": size, "max_pixels": max_pixels}
        return ImageDataset(None, labels_of(usable), spec, split, class_names, skipped,
                            [str(path) for path in usable], decode, on_bad_image)
    images, kept, failed = decode_files(usable, channels, size, on_bad_image, max_pixels)
    skipped = in_file_order(skipped + failed, files)
    report_skipped(skipped, len(files), str(root))
    return ImageDataset(images, labels_of([usable[i] for i in kept]), spec, split, class_names, skipped)


def load_dataset(spec: str, split: str = "train", *, image_size=None, channels: int | None = None,
                 on_bad_image: str = "error", in_memory: bool | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES) -> ImageDataset:
    """Load the dataset named by `spec` (see the module docstring).

    split: "train", "test" or "all" (train + test). Datasets without a test split return
    everything for "train" and "all" and raise DataError for "test". image_size (H, W) or
    "HxW" and channels (1, 3 or None) convert by the module's rule. in_memory: None streams
    folders over `max_memory_bytes`, False always streams folders, True never streams.
    """
    if split not in SPLITS:
        raise DataError(f"split={split!r} is not valid; expected 'train', 'test' or 'all'")
    _check_on_bad_image(on_bad_image)
    _check_channels(channels)
    size = parse_image_size(image_size)
    kind, path = _parse_spec(spec)
    if kind == "folder":
        if split == "test":
            raise DataError(f"{spec}: a folder has no test split; use split='train' or 'all' "
                            "(the same images), and hold some out for testing")
        dataset = _load_folder(path, spec, split, size, channels, on_bad_image, in_memory,
                               max_pixels, max_memory_bytes)
    else:
        class_names = None
        if kind in _idx.SOURCES:
            images, labels = _load_idx(kind, split)
            class_names = list(_idx.SOURCES[kind].class_names)
        elif kind == "digits":
            if split == "test":
                raise DataError("digits has no test split; use split='train' or 'all' (the same 1797 images)")
            images, labels = _load_digits()
            class_names = [str(digit) for digit in range(10)]
        else:
            images, labels = _load_arrays(path, split, spec)
        if in_memory is False:
            logger.debug("%s: only folders stream; loading into memory", spec)
        dataset = ImageDataset(convert_images(images, image_size=size, channels=channels),
                               labels, spec, split, class_names)
    logger.debug("loaded %r", dataset)
    return dataset


# ---------------------------------------------------------------------------------------------
# scan and fingerprint


@dataclass
class ScanReport:
    """What `convae scan SPEC` prints. For folders every file is fully decoded; for other
    specs the counts are of images (n_files is the number of images)."""

    spec: str
    n_files: int
    bad: list[tuple[str, str]]
    modes: dict[str, int]  # Pillow mode of each file ("RGB", "P", "I;16", ...) -> count
    sizes: dict[str, int]  # "WxH" (after EXIF orientation) -> count
    classes: dict[str, int] = field(default_factory=dict)
    n_ignored: int = 0
    estimated_bytes: int | None = None  # uint8 in memory at image_size (or the common size)

    def format(self) -> str:
        def histogram(counts: dict[str, int]) -> str:
            return ", ".join(f"{key} {count}" for key, count in sorted(counts.items(), key=lambda kv: -kv[1]))
        lines = [f"{self.spec}: {self.n_files} images, {len(self.bad)} bad"
                 + (f", {self.n_ignored} other files ignored" if self.n_ignored else "")]
        lines.append(f"modes: {histogram(self.modes) or '-'}")
        lines.append(f"sizes (WxH): {histogram(self.sizes) or '-'}")
        if self.classes:
            lines.append(f"classes: {histogram(self.classes)}")
        if self.estimated_bytes is not None:
            lines.append(f"memory as uint8: {self.estimated_bytes / 1024**2:.1f} MiB")
        if self.bad:
            lines.append("bad files:")
            lines.extend(f"  {path}: {reason}" for path, reason in self.bad)
        return "\n".join(lines)


def scan(spec: str, *, image_size=None, max_pixels: int = DEFAULT_MAX_PIXELS) -> ScanReport:
    """Check every image of `spec`: each bad file with its reason, plus mode and size histograms."""
    size = parse_image_size(image_size)
    kind, path = _parse_spec(spec)
    if kind != "folder":
        try:
            dataset = load_dataset(spec, "all", image_size=size)
        except DatasetNotFoundError:
            raise
        except DataError as error:
            return ScanReport(spec, 0, [(str(path or spec), str(error))], {}, {})
        channels, height, width = dataset.shape
        mode = ("L" if channels == 1 else "RGB") + (" float" if dataset.images.is_floating_point() else "")
        n = len(dataset)
        return ScanReport(spec, n, [], {mode: n}, {f"{width}x{height}": n},
                          estimated_bytes=n * channels * height * width)
    if not path.is_dir():
        raise DatasetNotFoundError(f"{path}: no such folder (from dataset spec {spec!r})")
    files, ignored = list_image_files(path)
    classes = [file.relative_to(path).parts[0] if len(file.relative_to(path).parts) > 1 else None
               for file in files]
    bad, modes, sizes, class_counts = [], Counter(), Counter(), Counter()
    n_gray = 0
    for file, class_name in zip(files, classes):
        try:
            info = probe_image(file, max_pixels=max_pixels)
            decode_image(file, channels=1 if info.gray else 3, max_pixels=max_pixels)
        except BadImageError as error:
            bad.append((str(file), error.reason))
            continue
        modes[info.mode] += 1
        sizes[f"{info.size[0]}x{info.size[1]}"] += 1
        n_gray += info.gray
        if class_name is not None:
            class_counts[class_name] += 1
    n_good = len(files) - len(bad)
    estimated = None
    if size is None and len(sizes) == 1:
        width, height = map(int, next(iter(sizes)).split("x"))
        size = (height, width)
    if size is not None:
        estimated = n_good * (1 if n_gray == n_good else 3) * size[0] * size[1]
    return ScanReport(spec, len(files), bad, dict(modes), dict(sizes), dict(class_counts),
                      len(ignored), estimated)


def dataset_fingerprint(dataset: ImageDataset) -> str:
    """Short SHA-256 (16 hex digits) of the pixels: shape, dtype and bytes. A streaming
    dataset is fingerprinted by its decode settings and each file's path, size and mtime."""
    digest = hashlib.sha256()
    if dataset.images is not None:
        images = dataset.images.detach().cpu().contiguous()
        digest.update(f"{tuple(images.shape)} {images.dtype}".encode())
        digest.update(memoryview(images.numpy()).cast("B"))
    else:
        digest.update(repr(sorted(dataset._decode.items())).encode())
        for file in dataset._files:
            stat = os.stat(file)
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
