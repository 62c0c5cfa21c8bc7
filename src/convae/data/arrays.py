"""Images as tensors: the one conversion of user arrays at the edge, resizing and channel rules, and ImageDataset."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..errors import BadImageError, DataError
from .folders import FileImages, collate_decoded

logger = logging.getLogger(__name__)


_CHUNK = 4096  # images per step when converting tensors, to bound temporary memory



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



def check_channels(channels: int | None) -> None:
    if channels not in (None, 1, 3):
        raise DataError(f"channels={channels!r} is not valid; expected 1, 3 or None (1 if every "
                        "image is grayscale, else 3)")



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



def as_labels(labels, count: int, name: str) -> np.ndarray:
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
    check_channels(channels)
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
