"""Encoder features: which layers (``layers``), pooled how (``pooling``), extracted in memory or to files (``extract``)."""

from .extract import (FEATURES_FORMAT, extract_features, extract_to_npy, extract_to_npy_sharded, iter_batches, iter_features,
                      iter_layer_outputs, output_paths, prepare_data, run_precision, write_labels_and_sidecar)
from .layers import parse_layer_spec, resolve_groups, separate_layers, single_set
from .pooling import POOL_FORMS, Pooling, feature_layout, feature_names, layer_infos, n_features, parse_pool, pool_outputs

__all__ = [
    "FEATURES_FORMAT", "POOL_FORMS", "Pooling", "extract_features", "extract_to_npy", "extract_to_npy_sharded", "feature_layout",
    "feature_names", "iter_batches", "iter_features", "iter_layer_outputs", "layer_infos", "n_features", "output_paths",
    "parse_layer_spec", "parse_pool", "pool_outputs", "prepare_data", "resolve_groups", "run_precision", "separate_layers", "single_set",
    "write_labels_and_sidecar",
]
