"""BatchNorm folded into the conv (or linear) before it for inference (convae.models.fold_batchnorm) and its use in extraction."""

import numpy as np
import pytest
import torch
from torch import nn

from convae.config import RunConfig
from convae.features import extract as extract_module
from convae.features import extract_features
from convae.models import DenseAutoencoder, build_from_config, count_foldable_batchnorm, fold_batchnorm

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 28, 28)


def n_modules(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def with_stats(model: nn.Module, shape, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine parameters and running statistics far from 0/1, from a few train-mode forwards."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        model.train()
        for _ in range(4):
            model(torch.rand(16, *shape, generator=g) * 0.8 + 0.1)
    return model


def default_convae(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return with_stats(build_from_config(RunConfig(), SHAPE), SHAPE, seed)


def images(n: int = 24, shape=SHAPE, seed: int = 1) -> torch.Tensor:
    return (torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)


def close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    scale = want.abs().max().item()
    assert scale > 0
    err = (got - want).abs().max().item()
    assert err <= rel * scale, f"max |diff| {err:.3g} > {rel} x feature scale {scale:.3g}"


@pytest.fixture(scope="module")
def convae():
    return default_convae()


def test_default_stats_are_not_trivial(convae):
    bns = [m for m in convae.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.running_mean.abs().max() > 1e-3 and (m.running_var - 1).abs().max() > 1e-3 for m in bns)


def test_folded_outputs_equal_unfolded(convae):
    folded = fold_batchnorm(convae)
    x = images().float() / 255
    convae.eval()
    try:
        with torch.no_grad():
            want = convae.forward_intermediates(x, None, stop_early=False)
            got = folded.forward_intermediates(x, None, stop_early=False)
            assert list(got) == list(want) == convae.layer_names
            for name in want:
                close(got[name], want[name], 1e-4)
            close(folded(x), convae(x), 1e-4)  # the decoder's BatchNorms too
            close(folded.decode_logits(folded.encode(x)), convae.decode_logits(convae.encode(x)), 1e-4)
    finally:
        convae.train()


def test_copy_has_no_batchnorm_and_original_is_untouched(convae):
    before = {k: v.clone() for k, v in convae.state_dict().items()}
    n_bn = n_modules(convae, nn.BatchNorm2d)
    assert n_bn > 0 and count_foldable_batchnorm(convae) == n_bn
    convae.train()
    folded = fold_batchnorm(convae)
    assert n_modules(folded, nn.BatchNorm2d) == 0 and count_foldable_batchnorm(folded) == 0
    assert n_modules(folded, nn.Identity) >= n_bn
    assert n_modules(convae, nn.BatchNorm2d) == n_bn
    assert convae.training and not folded.training
    after = convae.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    # no tensor is shared: changing the copy leaves the original alone
    with torch.no_grad():
        for p in folded.parameters():
            p.add_(1.0)
    for k, v in before.items():
        assert torch.equal(convae.state_dict()[k], v), k


def test_copy_keeps_the_model_api(convae):
    folded = fold_batchnorm(convae)
    assert type(folded) is type(convae)
    assert folded.layer_names == convae.layer_names and folded.in_shape == convae.in_shape
    assert folded.feature_info == convae.feature_info and folded.config == convae.config
    assert folded.layer_info("stage2") == convae.layer_info("stage2")
    assert folded.resolve_layers([-2, -1]) == convae.resolve_layers([-2, -1])
    with torch.no_grad():
        out = folded.forward_intermediates(images(4).float() / 255, ["stage1"], stop_early=True)
    assert list(out) == ["stage1"] and out["stage1"].shape[1:] == (128, 7, 7)
    assert folded.stem is not None  # the default's fixed stem has no BatchNorm: it is copied as it is
    # module names stay where they were: the folded conv replaces the conv, an Identity the norm
    names = dict(folded.named_modules())
    assert isinstance(names["stages.0.0"], nn.Conv2d) and isinstance(names["stages.0.1"], nn.Identity)


def manual_features(model, x_uint8, layers):
    model.eval()
    with torch.no_grad():
        out = model.forward_intermediates(x_uint8.float() / 255, layers, stop_early=True)
    return torch.cat([out[n].flatten(1) for n in layers], dim=1)


@pytest.mark.parametrize("precision, rel", [("fp32", 1e-4), ("bf16", 2e-2)])
def test_extract_features_equals_unfolded_forward(precision, rel):
    model = default_convae(seed=3)
    model.train()  # extraction uses the running statistics (eval mode) whatever mode the model is in
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(40, seed=4)
    feats = extract_features(model, x, layers=["stage1", "stage2"], pool="flatten", batch_size=16, precision=precision)
    assert feats.dtype == np.float32 and feats.shape == (40, 128 * 7 * 7 + 128 * 4 * 4)
    assert model.training  # its mode, statistics and layout are as they were
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.is_contiguous() for p in model.parameters())
    want = manual_features(model, x, ["stage1", "stage2"])
    close(torch.from_numpy(feats), want, rel)


def test_folds_once_per_extraction_call(monkeypatch):
    model = default_convae(seed=5).eval()
    calls = []
    real = extract_module.fold_batchnorm

    def counting(m):
        calls.append(1)
        return real(m)

    monkeypatch.setattr(extract_module, "fold_batchnorm", counting)
    feats = extract_features(model, images(50), layers="stage1", pool="avg", batch_size=8)  # 7 batches
    assert feats.shape == (50, 128) and len(calls) == 1


@pytest.mark.parametrize("norm", [None, "layer"])
def test_model_without_batchnorm(norm):
    torch.manual_seed(0)
    model = DenseAutoencoder(SHAPE, hidden=(32, 16), latent_dim=8, norm=norm).eval()
    assert count_foldable_batchnorm(model) == 0
    folded = fold_batchnorm(model)
    assert folded is not model and type(folded) is DenseAutoencoder
    x = images(12)
    with torch.no_grad():
        for a, b in zip(folded.parameters(), model.parameters(), strict=True):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
        assert torch.equal(folded(x.float() / 255), model(x.float() / 255))
    feats = extract_features(model, x, layers=["hidden1", "bottleneck"], pool="flatten")
    assert feats.shape == (12, 32 + 8)
    close(torch.from_numpy(feats), manual_features(model, x, ["hidden1", "bottleneck"]), 1e-5)


def test_dense_batchnorm1d_folds_into_linear():
    torch.manual_seed(0)
    model = with_stats(DenseAutoencoder(SHAPE, hidden=(32, 16), latent_dim=8, norm="batch"), SHAPE)
    n_bn = n_modules(model, nn.BatchNorm1d)
    assert n_bn == 4 and count_foldable_batchnorm(model) == n_bn
    folded = fold_batchnorm(model)
    assert n_modules(folded, nn.BatchNorm1d) == 0 and n_modules(model, nn.BatchNorm1d) == n_bn
    x = images(12).float() / 255
    model.eval()
    with torch.no_grad():
        close(folded(x), model(x), 1e-4)
        close(folded.encode(x), model.encode(x), 1e-4)


def test_what_is_not_folded():
    torch.manual_seed(0)
    batch_stats = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))  # no running stats
    wrong_order = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 4, 3))
    not_sequential = nn.ModuleDict({"conv": nn.Conv2d(1, 4, 3), "bn": nn.BatchNorm2d(4)})
    group = build_from_config(RunConfig(), SHAPE)
    group_norm = type(group)(SHAPE, channels=(8, 16), norm="group")
    transposed = nn.Sequential(nn.ConvTranspose2d(4, 4, 2, 2), nn.BatchNorm2d(4))
    for m in (batch_stats, wrong_order, not_sequential, group_norm, transposed):
        assert count_foldable_batchnorm(m) == 0
        assert n_modules(fold_batchnorm(m), nn.modules.batchnorm._BatchNorm) == n_modules(m, nn.modules.batchnorm._BatchNorm)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fold_batchnorm(batch_stats)(x), batch_stats.eval()(x))
