"""Image files: finding them in a folder, reading their headers, decoding them to uint8.

The conversion rule that turns any file into an 8-bit L or RGB array is written out in
:mod:`convae.data`'s docstring; :func:`decode_image` is its implementation.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadImageError, DataError, DatasetNotFoundError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
DEFAULT_MAX_PIXELS = 64_000_000  # decompression-bomb guard, checked on the declared size

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says, before any pixel is decoded."""

    mode: str  # Pillow mode of the file (first frame): "RGB", "P", "I;16", ...
    size: tuple[int, int]  # (W, H) as displayed, i.e. after the EXIF orientation
    gray: bool  # decodes to one channel under the rule (see convae.data)


def list_image_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(image files, ignored files) under `root`, each sorted by relative path.

    Symbolic links are followed, but each real folder is visited once, so a link loop
    ends. Hidden names (starting with '.') and other extensions are ignored.
    """
    seen = {os.path.realpath(root)}
    images: list[Path] = []
    ignored: list[Path] = []

    def warn(error: OSError) -> None:
        logger.warning("cannot list %s: %s", error.filename, error.strerror)

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=warn):
        keep = []
        for name in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, name))
            if name.startswith(".") or real in seen:
                continue  # hidden, or already visited (a link loop or a second link)
            seen.add(real)
            keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            path = Path(dirpath, name)
            if not name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(path)
            else:
                ignored.append(path)
    def order(path: Path) -> str:
        return path.relative_to(root).as_posix()
    return sorted(images, key=order), sorted(ignored, key=order)


def _png_damage(data: memoryview) -> str | None:
    """Why a PNG's chunk stream is broken (bad CRC, cut short), or None. Pillow skips IDAT CRCs."""
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = bytes(data[pos + 4:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            break
        if zlib.crc32(data[pos + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return f"bad CRC in PNG chunk {kind.decode('latin-1')!r} at byte {pos} (file is corrupt)"
        if kind == b"IEND":
            return None
        pos = end
    return "truncated PNG (the file ends before its IEND chunk)"


def _open(path: Path, max_pixels: int) -> Image.Image:
    """Open `path` with its header parsed and checked, pixels not yet decoded."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadImageError(path, f"cannot read file: {error.strerror or error}") from error
    if not data:
        raise BadImageError(path, "empty file (0 bytes)")
    if data.startswith(_PNG_SIGNATURE) and (damage := _png_damage(memoryview(data))):
        raise BadImageError(path, damage)
    try:
        with warnings.catch_warnings():  # our own pixel limit below replaces Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        raise BadImageError(path, "not an image Pillow can identify") from error
    except Image.DecompressionBombError as error:
        raise BadImageError(path, f"declared size is a decompression bomb: {error}") from error
    except MemoryError:
        raise
    except Exception as error:  # a damaged header can raise nearly anything inside a plugin
        raise BadImageError(path, f"damaged header: {type(error).__name__}: {error}") from error
    width, height = image.size
    if width * height > max_pixels:
        raise BadImageError(path, f"declares {width}x{height} = {width * height:,} pixels, over the "
                                  f"limit of {max_pixels:,} (decompression-bomb guard; raise "
                                  "max_pixels if the image is genuine)")
    if width == 0 or height == 0:
        raise BadImageError(path, f"declares an empty size {width}x{height}")
    return image


def _is_gray(image: Image.Image) -> bool:
    if image.mode in _GRAY_MODES:
        return True
    if image.mode in ("P", "PA"):
        try:
            palette = image.getpalette("RGB")  # may decode the frame (GIF): guarded
        except Exception:
            return False  # damaged; decoding reports it
        return bool(palette) and palette[0::3] == palette[1::3] == palette[2::3]
    return False


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # unreadable EXIF: shown as stored, in probe and decode alike
        return 1


def probe_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read only the header of `path`; BadImageError if it is not a usable image."""
    path = Path(path)
    with _open(path, max_pixels) as image:
        width, height = image.size
        if _orientation(image) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        return ImageInfo(mode=image.mode, size=(width, height), gray=_is_gray(image))


def _on_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite uint8 `color` (H,W) or (H,W,3) over white by uint8 `alpha` (H,W), rounded."""
    if color.ndim == 3:
        alpha = alpha[..., None]
    color, alpha = color.astype(np.uint32), alpha.astype(np.uint32)
    return ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _bits_per_sample(image: Image.Image) -> int:
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # TIFF BitsPerSample
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if bits and 8 < int(bits) <= 32 else 16


def _to_8bit(image: Image.Image) -> np.ndarray:
    """Pixels under the rule: uint8 (H, W) for grayscale, (H, W, 3) for color."""
    gray = _is_gray(image)
    mode = image.mode
    if mode in ("P", "PA") or (mode in ("1", "L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("La", "RGBa", "RGBX"):
        image = image.convert("LA" if mode == "La" else "RGBA")
        mode = image.mode
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode in ("L", "RGB"):
        return np.asarray(image)
    if mode == "LA":
        pixels = np.asarray(image)
        return _on_white(pixels[..., 0], pixels[..., 1])
    if mode == "RGBA":
        pixels = np.asarray(image)
        composited = _on_white(pixels[..., :3], pixels[..., 3])
        return composited[..., 0].copy() if gray else composited  # gray palette: R == G == B
    if mode.startswith("I;16"):
        return (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
    if mode == "I":
        bits = _bits_per_sample(image)
        pixels = np.clip(np.asarray(image, dtype=np.int64), 0, (1 << bits) - 1)
        return (pixels >> (bits - 8)).astype(np.uint8)
    if mode == "F":
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        return np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"))  # CMYK, YCbCr, LAB, HSV


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of uint8 (..., 3), bit-exact with Pillow's convert("L")."""
    rgb = rgb.astype(np.uint32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def decode_image(path: str | os.PathLike, *, channels: int, size: tuple[int, int] | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` to a uint8 array (channels, H, W), resized to `size` = (H, W) if given."""
    path = Path(path)
    image = _open(path, max_pixels)
    try:
        image.load()  # decodes the first frame; truncation and corrupt data surface here
        if (orientation := _orientation(image)) != 1:
            try:
                image = ImageOps.exif_transpose(image)
            except Exception as error:
                logger.debug("%s: EXIF orientation %s not applied: %s", path, orientation, error)
        pixels = _to_8bit(image)
    except MemoryError:
        raise
    except Exception as error:
        raise BadImageError(path, f"cannot decode {image.format or 'image'} data: "
                                  f"{type(error).__name__}: {error}") from error
    finally:
        image.close()
    if channels == 1 and pixels.ndim == 3:
        pixels = luma(pixels)
    elif channels == 3 and pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if size is not None and pixels.shape[:2] != tuple(size):
        resized = Image.fromarray(pixels).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized)  # Pillow's bilinear widens its support when shrinking: antialiased
    if pixels.ndim == 2:
        return pixels[None].copy()
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------------
# many files: plan from headers, then decode into one array


def report_skipped(skipped: list[tuple[str, str]], total: int, where: str) -> None:
    if skipped:
        shown = "; ".join(f"{path} ({reason})" for path, reason in skipped[:5])
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        logger.warning("skipped %d of %d image files in %s that cannot be used: %s%s",
                       len(skipped), total, where, shown, more)


def plan_files(paths: Sequence[Path], image_size, channels, on_bad_image: str, max_pixels: int):
    """Read every header: (usable paths, channels, (H, W), skipped). Pixels are decoded only
    to tell a damaged file from a genuine size mismatch."""
    usable, infos, skipped = [], [], []
    for path in paths:
        try:
            infos.append(probe_image(path, max_pixels=max_pixels))
            usable.append(path)
        except BadImageError as error:
            if on_bad_image == "error":
                raise
            skipped.append((str(path), error.reason))
    if not usable:
        raise DataError(f"none of the {len(paths)} image files can be used; the first: "
                        f"{skipped[0][0]}: {skipped[0][1]}")
    if image_size is None:
        image_size = _common_size(usable, infos, skipped, on_bad_image, max_pixels)
    if channels is None:
        channels = 1 if all(info.gray for info in infos) else 3
    return usable, channels, image_size, skipped


def _common_size(usable: list[Path], infos: list, skipped: list, on_bad_image: str,
                 max_pixels: int) -> tuple[int, int]:
    """(H, W) shared by every header, or DataError naming two files of different sizes.

    A file that differs is decoded first: a damaged file (its header intact) is a bad image,
    not a size mismatch. Bad files are removed from `usable`/`infos` in place.
    """
    while True:
        first = infos[0].size
        other = next((i for i, info in enumerate(infos) if info.size != first), None)
        if other is None:
            return first[1], first[0]
        for candidate in (other, 0):
            try:
                decode_image(usable[candidate], channels=1, max_pixels=max_pixels)
            except BadImageError as error:
                if on_bad_image == "error":
                    raise
                skipped.append((str(usable[candidate]), error.reason))
                del usable[candidate], infos[candidate]
                break
        else:
            raise DataError(f"images differ in size: {usable[0]} is {first[0]}x{first[1]} (WxH), "
                            f"{usable[other]} is {infos[other].size[0]}x{infos[other].size[1]}; pass "
                            "image_size=(H, W) (CLI: --image-size HxW) to resize them all")


def decode_files(paths: Sequence[Path], channels: int, size: tuple[int, int], on_bad_image: str,
                  max_pixels: int) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Decode into one preallocated uint8 N×C×H×W array: (images, kept positions, skipped)."""
    out = np.empty((len(paths), channels, *size), dtype=np.uint8)
    kept, skipped = [], []
    for position, path in enumerate(paths):
        try:
            out[len(kept)] = decode_image(path, channels=channels, size=size, max_pixels=max_pixels)
            kept.append(position)
        except BadImageError as error:
            if on_bad_image == "error":
                raise
            skipped.append((str(path), error.reason))
    if not kept:
        raise DataError(f"none of the {len(paths)} image files can be decoded; the first: "
                        f"{skipped[0][0]}: {skipped[0][1]}")
    return torch.from_numpy(out[:len(kept)]), kept, skipped


def in_file_order(skipped: list[tuple[str, str]], paths: Sequence[Path]) -> list[tuple[str, str]]:
    order = {str(path): position for position, path in enumerate(paths)}
    return sorted(skipped, key=lambda item: order.get(item[0], len(order)))


def folder_files(root: Path, spec: str) -> tuple[list[Path], list[str | None]]:
    """Image files under `root` and the first-level folder (class) of each, None at top level."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root}: no such folder (from dataset spec {spec!r})")
    files, ignored = list_image_files(root)
    if not files:
        raise DataError(f"{root}: no image files (looked for .png .jpg .jpeg .bmp .tif .tiff .webp "
                        f".gif in it and its sub-folders; {len(ignored)} other files ignored)")
    if ignored:
        logger.debug("%s: ignored %d files that are hidden or not images", root, len(ignored))
    classes = [path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else None
               for path in files]
    top = [path for path, name in zip(files, classes) if name is None]
    if top and len(top) < len(files):
        nested = next(path for path, name in zip(files, classes) if name is not None)
        raise DataError(f"{root}: has images both directly inside it ({top[0].name}) and in "
                        f"sub-folders ({nested.relative_to(root)}); put every image in a class "
                        "sub-folder (labeled) or none in sub-folders (unlabeled)")
    return files, classes

class FileImages(torch.utils.data.Dataset):
    """Decodes files lazily for streaming datasets; a failure comes back as data, not as an
    exception, so the main process decides (raise BadImageError or skip) whatever the workers."""

    def __init__(self, files: list[str], *, channels: int, size: tuple[int, int], max_pixels: int):
        self.files, self.channels, self.size, self.max_pixels = files, channels, size, max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str, str]:
        path = self.files[index]
        try:
            pixels = decode_image(path, channels=self.channels, size=self.size, max_pixels=self.max_pixels)
        except BadImageError as error:
            return None, path, error.reason
        return torch.from_numpy(pixels), path, ""


def collate_decoded(items: list[tuple[torch.Tensor | None, str, str]]) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """(stacked images that decoded, [(path, reason)] of those that did not)."""
    good = [image for image, _, _ in items if image is not None]
    failed = [(path, reason) for image, path, reason in items if image is None]
    if good:
        return torch.stack(good), failed
    return torch.empty((0,), dtype=torch.uint8), failed
