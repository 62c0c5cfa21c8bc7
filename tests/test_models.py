import pytest
import torch

from convae import ArchitectureError, ConvAutoencoder, DenseAutoencoder, LayerError
from convae.models import build_model

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 37, 53), (3, 100, 100), (3, 17, 9)]
CONV_VARIANTS = [
    {},
    dict(pool="avg", norm="batch", bottleneck="conv", upsample="upsample"),
    dict(pool="stride", norm="group", kernel_size=5, convs_per_stage=2, channels=(8, 16)),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kwargs", CONV_VARIANTS)
def test_conv_reconstruction_has_input_shape(shape, kwargs):
    model = ConvAutoencoder(shape, **{"channels": (4, 8, 8), **kwargs})
    x = torch.rand(2, *shape)
    y = model(x)
    assert y.shape == x.shape
    assert 0 <= y.min() and y.max() <= 1


@pytest.mark.parametrize("shape", SHAPES)
def test_dense_reconstruction_has_input_shape(shape):
    model = DenseAutoencoder(shape, hidden=(32, 16), latent_dim=8)
    x = torch.rand(3, *shape)
    assert model(x).shape == x.shape
    assert model.encode(x).shape == (3, 8)


def test_fcae_first_layer_of_500_units_on_100x100x3_has_15000500_parameters():
    model = DenseAutoencoder((3, 100, 100), hidden=(500,), latent_dim=16)
    assert model.parameter_counts()["hidden1"] == 15_000_500
    assert model.layer_info("hidden1").params == 15_000_500


def test_conv_parameter_counts_add_up_to_total():
    model = ConvAutoencoder((1, 28, 28))
    counts = model.parameter_counts()
    assert counts["stage1"] == 1 * 32 * 9 + 32
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]


def test_too_many_stages_for_image_fails_before_training():
    with pytest.raises(ArchitectureError, match="too small for 4 stages"):
        ConvAutoencoder((1, 8, 8), channels=(4, 4, 4, 4))


@pytest.mark.parametrize("bad", [dict(kernel_size=4), dict(pool="median"), dict(channels=()), dict(latent_dim=0)])
def test_bad_architecture_is_named(bad):
    with pytest.raises(ArchitectureError):
        ConvAutoencoder((1, 28, 28), **bad)


def test_feature_info_geometry_of_default_convae():
    model = ConvAutoencoder((1, 28, 28))
    info = {i.name: i for i in model.feature_info}
    assert [i.name for i in model.feature_info] == ["stage1", "stage2", "stage3", "bottleneck"]
    assert info["stage1"].spatial == (14, 14) and info["stage1"].stride == 2
    # 3x3 conv (rf 3) then 2x2 pool (rf 4); then 3x3 conv at jump 2 (rf 8), pool (10); ...
    assert info["stage1"].receptive_field == (4, 4)
    assert info["stage2"].receptive_field == (10, 10)
    assert info["stage3"].receptive_field == (22, 22)
    assert info["stage3"].spatial == (4, 4)
    assert info["bottleneck"].spatial is None and info["bottleneck"].n_features == 64


def test_receptive_field_matches_gradient_support():
    """The computed receptive field is the set of input pixels that reach one output position."""
    # leaky_relu: a dead ReLU would cut gradient paths and shrink the measured support
    model = ConvAutoencoder((1, 40, 40), channels=(2, 2, 2), pool="avg", activation="leaky_relu").double()
    for info in model.feature_info[:-1]:
        x = torch.rand(1, 1, 40, 40, dtype=torch.float64, requires_grad=True)
        out = model.forward_intermediates(x, [info.name])[info.name]
        i = out.shape[-1] // 2
        out[0, :, i, i].sum().backward()
        rows = (x.grad[0, 0].abs().sum(1) > 0).nonzero().flatten()
        assert rows.max() - rows.min() + 1 == info.receptive_field[0]
        assert abs((rows.max() + rows.min()) / 2 - (info.offset + i * info.stride)) < 1e-9


def test_forward_intermediates_stops_at_deepest_requested_layer():
    model = ConvAutoencoder((1, 28, 28))
    calls = []
    for name, stage in zip(model.layer_names, model.stages):
        stage.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    model.to_latent.register_forward_hook(lambda m, i, o: calls.append("bottleneck"))
    out = model.forward_intermediates(torch.rand(2, 1, 28, 28), ["stage2", 0])
    assert list(out) == ["stage1", "stage2"]
    assert calls == ["stage1", "stage2"]
    calls.clear()
    model.forward_intermediates(torch.rand(2, 1, 28, 28), ["stage1"], stop_early=False)
    assert calls[-1] == "bottleneck"


def test_forward_intermediates_matches_encode():
    for model in (ConvAutoencoder((1, 16, 16), channels=(4, 8)), DenseAutoencoder((1, 16, 16), hidden=(20,))):
        model.eval()
        x = torch.rand(3, 1, 16, 16)
        assert torch.allclose(model.forward_intermediates(x, -1)["bottleneck"], model.encode(x))


@pytest.mark.parametrize("layers,message", [("stage9", "valid layers: stage1"), (7, "out of range"), (-9, "out of range")])
def test_unknown_layer_lists_valid_ones(layers, message):
    with pytest.raises(LayerError, match=message):
        ConvAutoencoder((1, 28, 28)).forward_intermediates(torch.rand(1, 1, 28, 28), layers)


def test_build_model_rejects_unknown_kind():
    with pytest.raises(ArchitectureError, match="conv, dense"):
        build_model("rnn", (1, 8, 8))


def test_flops_count_of_single_conv_layer():
    model = ConvAutoencoder((1, 8, 8), channels=(4,), latent_dim=2)
    # stage1 conv: 2 * (1*3*3) * 4*8*8; dense 4*4*4 -> 2 and back; transposed 4->4 2x2 on 4x4; conv 4->1 on 8x8
    expected = 2 * 9 * 4 * 64 + 2 * 64 * 2 + 2 * 2 * 64 + 2 * (4 * 4 * 4) * 16 + 2 * (4 * 9) * 64
    assert model.flops_per_image() == expected


@pytest.mark.parametrize("c_in, c_out, hw, bias", [(8, 8, 3, True), (6, 4, 5, True), (5, 3, 4, False)])
def test_upsample2x_equals_transposed_conv_values_and_gradients(c_in, c_out, hw, bias):
    """The 1x1-conv + pixel-shuffle path is the 2x2 stride-2 transposed conv, forward and backward."""
    from convae.models.conv import Upsample2x

    torch.manual_seed(0)
    fast = Upsample2x(c_in, c_out)
    if not bias:
        fast.bias = None
    plain = torch.nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=bias)
    plain.load_state_dict(fast.state_dict())  # the same parameter names and shapes
    x = torch.randn(3, c_in, hw, hw + 1, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(3, c_out, 2 * hw, 2 * hw + 2)
    y, y2 = fast(x), plain(x2)
    assert y.shape == y2.shape
    torch.testing.assert_close(y, y2)
    (y * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad)
    if bias:
        torch.testing.assert_close(fast.bias.grad, plain.bias.grad)


@pytest.mark.parametrize("shape, stages, words", [
    ((1, 8, 8), 4, ["an 8x8 image is too small for 4 stages", "stage4 would get a 1x1 map",
                    "8x8 -> 4x4 -> 2x2 -> 1x1", "allows at most 3 stages", "4 stages need images of at least 9x9"]),
    ((1, 3, 3), 3, ["stage3 would get a 1x1 map", "allows at most 2 stages", "3 stages need images of at least 5x5"]),
    ((1, 2, 2), 2, ["allows at most 1 stage (", "2 stages need images of at least 3x3"]),
    ((1, 1, 6), 1, ["allows no stage", "1 stage needs images of at least 2x2"]),
])
def test_too_many_stages_message_names_the_sizes_that_work(shape, stages, words):
    with pytest.raises(ArchitectureError) as info:
        ConvAutoencoder(shape, channels=(4,) * stages)
    message = str(info.value)
    assert all(w in message for w in words), message
    assert "1 stages" not in message and "16x16" not in message


@pytest.mark.parametrize("shape, stages", [((1, 8, 8), 3), ((1, 9, 9), 4), ((1, 3, 3), 2), ((1, 5, 7), 3), ((1, 2, 2), 1)])
def test_the_largest_allowed_depth_builds_and_reconstructs(shape, stages):
    # a 1x1 map out of the last stage is a valid design: the limit is on the map going into each stage
    model = ConvAutoencoder(shape, channels=(4,) * stages)
    assert model(torch.rand(2, *shape)).shape == (2, *shape)


# --- one name per idea: downsample (pool= is its old name) -------------------------------------------------
@pytest.mark.parametrize("how", ["max", "avg", "stride"])
def test_downsample_and_its_old_name_pool_build_the_same_model(how):
    torch.manual_seed(0)
    new = ConvAutoencoder((1, 12, 12), channels=(4, 8), downsample=how)
    torch.manual_seed(0)
    old = ConvAutoencoder((1, 12, 12), channels=(4, 8), pool=how)
    torch.manual_seed(0)
    positional = ConvAutoencoder((1, 12, 12), (4, 8), 3, how)  # the fourth argument, as pool was
    for other in (old, positional):
        assert other.state_dict().keys() == new.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), other.state_dict().values()))
        assert other.feature_info == new.feature_info
    assert new.config["downsample"] == how and "pool" not in new.config
    assert ConvAutoencoder((1, 12, 12), channels=(4,)).config["downsample"] == "max"  # the default


def test_downsample_and_pool_together_or_bad_are_errors():
    with pytest.raises(ArchitectureError, match="pool is the old name of downsample, give only downsample"):
        ConvAutoencoder((1, 12, 12), channels=(4,), downsample="max", pool="avg")
    with pytest.raises(ArchitectureError, match="downsample='median' is not one of"):
        ConvAutoencoder((1, 12, 12), channels=(4,), downsample="median")
    with pytest.raises(ArchitectureError, match="pool='median' is not one of"):
        ConvAutoencoder((1, 12, 12), channels=(4,), pool="median")


def test_config_kind_keys_and_choices_are_the_constructors_arguments():
    """config.KIND_KEYS (what `nothing silently ignored` checks) and config.CHOICES name exactly what the models take."""
    import inspect

    from convae.config import CHOICES, KIND_KEYS
    from convae.models import MODELS
    from convae.models.conv import DOWNSAMPLES

    for kind, cls in MODELS.items():
        params = set(inspect.signature(cls).parameters) - {"in_shape", "pool"}  # pool: the old name of downsample
        assert set(KIND_KEYS[kind]) == params, kind
    assert CHOICES["model", "downsample"] == DOWNSAMPLES


def test_a_run_directory_written_before_the_rename_rebuilds_the_same_model(tmp_path):
    """config.json of older runs says model.pool; it loads, and builds the model (weights and all) it described."""
    import json

    from convae import runs
    from convae.config import RunConfig, apply_overrides

    cfg = apply_overrides(RunConfig(), ["model.channels=4,8", "model.latent_dim=4", "model.downsample=avg"])
    torch.manual_seed(0)
    model = runs.build_from_config(cfg, (1, 12, 12))
    runs.save_config(tmp_path, cfg, (1, 12, 12))
    runs.atomic_write_bytes(tmp_path / runs.WEIGHTS, runs.weights_bytes(model))
    record = json.loads((tmp_path / runs.CONFIG).read_text())
    record["model"] = {("pool" if k == "downsample" else k): v for k, v in record["model"].items()}  # the old spelling
    (tmp_path / runs.CONFIG).write_text(json.dumps(record))
    run = runs.load_run(tmp_path)
    assert run.config == cfg and run.model.config == model.config
    x = torch.rand(2, 1, 12, 12)
    model.eval()
    assert torch.equal(run.model(x), model(x))
