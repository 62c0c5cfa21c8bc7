"""Datasets named by one spec string, turned into N×C×H×W image tensors (or a stream).

``specs`` names and loads datasets, ``arrays`` converts user arrays once at the edge and holds
:class:`ImageDataset`, ``folders`` decodes image files, ``idx`` reads (and downloads) IDX files,
``scan`` checks a dataset before training. The conversion rule is written in :mod:`convae.data.specs`.
"""

from .arrays import ImageDataset, as_images, convert_images, parse_image_size, to_float
from .folders import DEFAULT_MAX_PIXELS
from .scan import ScanReport, scan
from .specs import DEFAULT_MAX_MEMORY_BYTES, dataset_fingerprint, has_test_split, load_dataset, load_image_files

__all__ = [
    "ImageDataset", "ScanReport", "load_dataset", "has_test_split", "parse_image_size", "to_float",
    "as_images", "load_image_files", "convert_images", "scan", "dataset_fingerprint",
    "DEFAULT_MAX_MEMORY_BYTES", "DEFAULT_MAX_PIXELS",
]
