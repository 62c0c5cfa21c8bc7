"""CIFAR-10's settings (issue 14): the demo's and compare's configs for 32x32x3 images, configs/cifar10.toml
(it loads, its model builds at 32x32x3 and at a larger --image-size), and the cost its comment states."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
import torch

from convae.config import DEMO_EPOCHS, demo_configs, load_config
from convae.models import build_from_config
from convae.training.cost import train_flops_per_image

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "cifar10.toml"
CIFAR = (3, 32, 32)
BUDGET_TFLOP = 50  # the accuracy-per-compute issue's budget, which the recipe's comment is about
N_TRAIN = 45_000  # CIFAR-10's 50,000 training images less the default 10% held out for validation


def _forward_shape(model, shape) -> tuple[int, ...]:
    model.eval()
    with torch.no_grad():
        return tuple(model(torch.rand(2, *shape)).shape)


def test_demo_configs_for_cifar10_build_a_conv_and_a_dense_model_at_32x32x3():
    configs = demo_configs("cifar10", DEMO_EPOCHS["cifar10"], in_shape=CIFAR, budgets={"conv": "120s", "dense": "40s"})
    assert configs["conv"].model.kind == "conv" and configs["dense"].model.kind == "dense"
    assert configs["conv"].data.spec == "cifar10"
    assert configs["conv"].train.time_budget == "120s" and configs["dense"].train.time_budget == "40s"
    # 32x32 is not a tiny image: the default scattering stem, two stages and 4x4 masking, not the 8x8 digits' settings.
    assert configs["conv"].model.channels == [128, 128] and configs["conv"].train.mask_ratio > 0
    torch.manual_seed(0)
    conv = build_from_config(configs["conv"], CIFAR)
    assert [(info.name, info.spatial) for info in conv.feature_info if info.spatial] == [
        ("stem", (16, 16)), ("stage1", (8, 8)), ("stage2", (4, 4)), ("bottleneck", (4, 4))]
    assert conv.feature_info[0].channels == 3 * 9  # the stem maps each colour channel alike
    assert _forward_shape(conv, CIFAR) == (2, 27, 16, 16)  # it reconstructs the stem's maps
    assert _forward_shape(build_from_config(configs["dense"], CIFAR), CIFAR) == (2, *CIFAR)


def test_compare_epochs_for_cifar10_fit_the_compute_budget():
    cfg = demo_configs("cifar10", DEMO_EPOCHS["cifar10"], in_shape=CIFAR)["conv"]
    torch.manual_seed(0)
    flops = train_flops_per_image(build_from_config(cfg, CIFAR), CIFAR, cfg.train)
    assert DEMO_EPOCHS["cifar10"] * N_TRAIN * flops <= BUDGET_TFLOP * 1e12


def test_cifar10_recipe_loads_and_builds_at_32x32_and_at_a_larger_image_size():
    cfg = load_config(RECIPE)
    assert cfg.model.kind == "conv" and cfg.data.spec == "cifar10"
    for shape in (CIFAR, (3, 64, 64)):
        torch.manual_seed(0)
        model = build_from_config(cfg, shape)
        assert model.stem is not None  # the default recipe's scattering stem, as demo and compare use on 32x32x3
        assert _forward_shape(model, shape) == (2, 3 * 9, shape[1] // 2, shape[2] // 2)  # it reconstructs the stem's maps
    assert tomllib.loads(RECIPE.read_text())["probe"]["features"]  # bench/recipes.py reads it, as in the other recipes


def _stated(pattern: str) -> float:
    match = re.search(pattern, RECIPE.read_text())
    assert match, f"configs/cifar10.toml's comment does not state {pattern!r}"
    return float(match.group(1).replace(",", ""))


@pytest.mark.parametrize("shape, pattern", [
    (CIFAR, r"([\d,.]+) MFLOP per 32x32x3 image"),
    ((3, 64, 64), r"--image-size 64x64: ([\d,.]+) MFLOP per image"),
])
def test_the_cost_the_recipe_states_is_the_counted_one(shape, pattern):
    cfg = load_config(RECIPE)
    torch.manual_seed(0)
    counted = train_flops_per_image(build_from_config(cfg, shape), shape, cfg.train) / 1e6
    assert _stated(pattern) == pytest.approx(counted, rel=0.01)


def test_the_recipe_fits_the_budget_it_states():
    cfg = load_config(RECIPE)
    torch.manual_seed(0)
    flops = train_flops_per_image(build_from_config(cfg, CIFAR), CIFAR, cfg.train)
    assert cfg.train.epochs * N_TRAIN * flops <= BUDGET_TFLOP * 1e12
    stated_epochs = _stated(r"([\d.]+) epochs of the 45,000 training images")
    assert stated_epochs == pytest.approx(BUDGET_TFLOP * 1e12 / (flops * N_TRAIN), abs=0.01)


def test_the_cifar10_recipe_is_the_default_recipe_with_its_own_length_and_data():
    """configs/cifar10.toml says it is the default recipe (bench/recipes.DEFAULT_RECIPE) for CIFAR-10: the same model and
    optimisation, only the epochs and the data differ."""
    import sys

    sys.path.insert(0, str(RECIPE.parents[1] / "bench"))
    import recipes

    cifar, default = load_config(RECIPE), load_config(RECIPE.parent / f"{recipes.DEFAULT_RECIPE}.toml")
    assert cifar.model.model_kwargs(CIFAR) == default.model.model_kwargs(CIFAR)
    train, want = dataclasses.asdict(cifar.train), dataclasses.asdict(default.train)
    assert train.pop("epochs") == 2 and want.pop("epochs") is None  # two epochs: 47.4 TFLOP, within the budget
    assert train == want
