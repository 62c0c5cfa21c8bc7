"""Scanning a dataset spec before training: unreadable files, sizes and channels, without decoding everything."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import BadImageError, DataError, DatasetNotFoundError
from .folders import DEFAULT_MAX_PIXELS, decode_image, list_image_files, probe_image
from .arrays import parse_image_size
from .specs import load_dataset, parse_spec


TOP_SIZES = 5  # sizes listed by `convae scan` when a folder holds more than TOP_SIZES + 1


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
        lines.append(f"sizes (WxH): {self.format_sizes()}")
        if self.classes:
            lines.append(f"classes: {histogram(self.classes)}")
        if self.estimated_bytes is not None:
            lines.append(f"memory as uint8: {self.estimated_bytes / 1024**2:.1f} MiB")
        if self.bad:
            lines.append("bad files:")
            lines.extend(f"  {path}: {reason}" for path, reason in self.bad)
        return "\n".join(lines)

    def format_sizes(self, top: int = TOP_SIZES) -> str:
        """Every size with its count when there are few; else the ``top`` most common, how many others, and the ranges."""
        if len(self.sizes) <= top + 1:
            return ", ".join(f"{key} {count}" for key, count in sorted(self.sizes.items(), key=lambda kv: -kv[1])) or "-"
        dims = {key: tuple(map(int, key.split("x"))) for key in self.sizes}
        ranked = sorted(self.sizes.items(), key=lambda kv: (-kv[1], dims[kv[0]]))
        rest = ranked[top:]
        widths, heights = [w for w, _ in dims.values()], [h for _, h in dims.values()]
        return (f"{len(self.sizes)} sizes; most common " + ", ".join(f"{key} {count}" for key, count in ranked[:top])
                + f"; {len(rest)} other sizes ({sum(count for _, count in rest)} images)"
                + f"; widths {min(widths)}..{max(widths)}, heights {min(heights)}..{max(heights)}")



def scan(spec: str, *, image_size=None, max_pixels: int = DEFAULT_MAX_PIXELS) -> ScanReport:
    """Check every image of `spec`: each bad file with its reason, plus mode and size histograms."""
    size = parse_image_size(image_size)
    kind, path = parse_spec(spec)
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
