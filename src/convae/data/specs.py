"""Datasets named by one spec string, turned into N×C×H×W image tensors (or a stream).

Specs (the same in the CLI and the Python API):

``fashion-mnist``, ``mnist``
    IDX files with train/test splits and labels; see :mod:`convae.data.idx` for where they are
    looked for and how they are downloaded (``CONVAE_NO_DOWNLOAD=1`` turns that off).
``cifar10``
    CIFAR-10's binary batch files (never the pickled version): 32×32 RGB, train (50,000),
    test (10,000) and labels; see :mod:`convae.data.cifar` for where they are looked for
    (loose, in ``cifar-10-batches-bin/``, or the ``cifar-10-binary.tar.gz`` archive) and how
    the archive is downloaded.
``digits``
    scikit-learn's bundled 8×8 digits, 0..16 scaled to uint8 0..255; no test split.
``sample-photos``
    20,000 random RGB patches (32×32; ``image_size`` sets the patch size, it crops, never
    resizes) of scikit-learn's two bundled photographs, deterministic from a fixed seed;
    uint8, no labels, no test split; see :mod:`convae.data.photos`.
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import cifar as _cifar
from . import idx as _idx
from . import photos as _photos
from .arrays import ImageDataset, as_labels, as_images, convert_images, parse_image_size, check_channels
from .folders import (DEFAULT_MAX_PIXELS, decode_files, folder_files, in_file_order, plan_files, report_skipped)
from ..errors import DataError, DatasetNotFoundError


logger = logging.getLogger(__name__)

DEFAULT_MAX_MEMORY_BYTES = 4 * 1024**3  # folders whose uint8 pixels exceed this are streamed
SPLITS = ("train", "test", "all")
_SPEC_HELP = "expected fashion-mnist, mnist, cifar10, digits, sample-photos, folder:PATH, npz:PATH or npy:PATH"


# ---------------------------------------------------------------------------------------------
# specs and small parsers


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """("fashion-mnist" | "mnist" | "cifar10" | "digits" | "sample-photos", None) or ("folder" | "npz" | "npy", path)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"dataset spec {spec!r} is empty; {_SPEC_HELP}")
    kind, sep, rest = spec.strip().partition(":")
    name = kind.lower().replace("_", "-")
    if not sep and name in ("fashion-mnist", "mnist", _cifar.NAME, "digits", _photos.NAME):
        return name, None
    if sep and name in ("folder", "npz", "npy"):
        if not rest.strip():
            raise DataError(f"dataset spec {spec!r} has no path after '{kind}:'")
        return name, Path(rest.strip()).expanduser()
    raise DataError(f"unknown dataset spec {spec!r}; {_SPEC_HELP}")


def has_test_split(spec: str) -> bool:
    """Whether `spec` has a separate test split (IDX datasets, cifar10; .npz with x_train and x_test)."""
    kind, path = parse_spec(spec)
    if kind in ("fashion-mnist", "mnist", _cifar.NAME):
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


# ---------------------------------------------------------------------------------------------
# arrays and tensors: the one conversion at the edge


# ---------------------------------------------------------------------------------------------
# the dataset


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
                labels.append(as_labels(loaded[f"y_{part}"], len(x), f"{path}[y_{part}]"))
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
    labels = as_labels(loaded[label_key], len(images), f"{path}[{label_key}]") if label_key else None
    return images, labels


def _check_on_bad_image(on_bad_image: str) -> None:
    if on_bad_image not in ("error", "skip"):
        raise DataError(f"on_bad_image={on_bad_image!r} is not valid; expected 'error' or 'skip'")


def load_image_files(paths: Sequence[str | Path], *, image_size=None, channels: int | None = None,
                     on_bad_image: str = "error", max_pixels: int = DEFAULT_MAX_PIXELS,
                     ) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """Decode `paths` in order by the module's rule: (uint8 N×C×H×W, skipped (path, reason))."""
    _check_on_bad_image(on_bad_image)
    check_channels(channels)
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
    check_channels(channels)
    size = parse_image_size(image_size)
    kind, path = parse_spec(spec)
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
        elif kind == _cifar.NAME:
            pixels, labels, class_names = _cifar.load(split)
            images = torch.from_numpy(pixels)
        elif kind == "digits":
            if split == "test":
                raise DataError("digits has no test split; use split='train' or 'all' (the same 1797 images)")
            images, labels = _load_digits()
            class_names = [str(digit) for digit in range(10)]
        elif kind == _photos.NAME:
            if split == "test":
                raise DataError(f"{_photos.NAME} has no test split; use split='train' or 'all' (the same patches)")
            images, labels = torch.from_numpy(_photos.load(size)), None  # the size crops the patches: nothing to resize
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
