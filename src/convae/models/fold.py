"""Inference copies of a model with each BatchNorm folded into the conv (or linear) layer before it.

In eval mode a BatchNorm is a per-channel affine map, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``,
so after a conv (or linear) layer it folds into that layer's weight and bias
(``torch.nn.utils.fusion.fuse_conv_bn_eval`` / ``fuse_linear_bn_eval``): one kernel and one pass over
the map fewer per block, the same function up to float rounding (~1e-6 relative in fp32).

Only pairs that are consecutive children of an ``nn.Sequential`` are folded, since there the order of
the children is the order of the calls: ``Conv1d/2d/3d -> BatchNorm1d/2d/3d`` of matching dimension and
``Linear -> BatchNorm1d``. That covers every BatchNorm of both convae models (the ConvAE's encoder
stages and decoder blocks, the FCAE's ``norm="batch"`` layers). A BatchNorm without running statistics
(``track_running_stats=False`` normalizes with the batch's own statistics even in eval mode) is left as
it is.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

_CONV_BN = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def _foldable(layer: nn.Module, norm: nn.Module) -> bool:
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.running_mean is None or norm.running_var is None:
        return False
    if isinstance(layer, nn.Linear):
        return isinstance(norm, nn.BatchNorm1d) and norm.num_features == layer.out_features
    return any(type(layer) is conv and isinstance(norm, bn) and norm.num_features == layer.out_channels
               for conv, bn in _CONV_BN)


def _pairs(model: nn.Module):
    """(sequential, index) of every foldable layer -> BatchNorm pair: the layer at ``index``, its norm at ``index + 1``."""
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module)
            for i in range(len(children) - 1):
                if _foldable(children[i], children[i + 1]):
                    yield module, i


def count_foldable_batchnorm(model: nn.Module) -> int:
    """How many BatchNorm layers :func:`fold_batchnorm` would fold into the layer before them."""
    return sum(1 for _ in _pairs(model))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable BatchNorm folded into the layer before it.

    The copy is a ``copy.deepcopy`` (same class, attributes and methods: ``forward_intermediates``,
    ``layer_names``, ``in_shape``, ``layer_info``, ...) in which each folded ``conv -> BatchNorm`` (or
    ``Linear -> BatchNorm1d``) pair of an ``nn.Sequential`` becomes ``fused conv -> nn.Identity``, so
    module names and indices stay where they were. The BatchNorms' running statistics are used (eval
    mode), whatever mode ``model`` is in. ``model`` itself is not changed. A model with nothing to fold
    comes back as a plain eval-mode copy.

    For inference only: the copy has no BatchNorm to train, and its ``parameter_counts()`` no longer
    counts the BatchNorms' parameters (its ``feature_info`` keeps the original's numbers).
    """
    folded = copy.deepcopy(model).eval()
    with torch.no_grad():
        for seq, i in list(_pairs(folded)):
            layer, norm = seq[i], seq[i + 1]
            seq[i] = fuse_linear_bn_eval(layer, norm) if isinstance(layer, nn.Linear) else fuse_conv_bn_eval(layer, norm)
            seq[i + 1] = nn.Identity()
    return folded


__all__ = ["count_foldable_batchnorm", "fold_batchnorm"]
