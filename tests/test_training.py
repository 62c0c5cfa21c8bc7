import json

import numpy as np
import pytest
import torch

import convae
from convae import NonFiniteLossError, RunError, TrainingInterrupted
from convae.config import RunConfig, apply_overrides
from convae.runs import STATE, WEIGHTS, load_trainer_state
from convae.training import train


def small_config(spec, *extra):
    architecture = ["model.hidden=32"] if "model.kind=dense" in extra else ["model.channels=8,16"]  # each kind's own keys only
    return apply_overrides(RunConfig(), [f"data.spec={spec}", *architecture, "model.latent_dim=8", "train.epochs=3",
                                         "train.batch_size=32", "train.threads=2", "train.precision=fp32", *extra])


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_lowers_validation_loss(tmp_path, blobs_npz):
    result = train(small_config(f"npz:{blobs_npz}", "train.epochs=6", "train.lr=3e-3"), tmp_path / "run", progress=False)
    val = [r["val_mse"] for r in result.history]
    assert val[-1] < 0.7 * val[0]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss", "val_mse", "val_psnr", "val_ssim", "seconds", "images_per_s"} <= set(header)


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_load_run_rebuilds_the_trained_model(tmp_path, blobs_npz, kind):
    result = train(small_config(f"npz:{blobs_npz}", f"model.kind={kind}", "train.epochs=1"), tmp_path / "r", progress=False)
    model, config = convae.load_run(tmp_path / "r")
    assert config.model.kind == kind
    x = torch.rand(4, 1, 12, 12)
    result.model.eval()
    assert torch.equal(model(x), result.model.to(memory_format=torch.contiguous_format)(x))


# BatchNorm's forward updates its running stats, so an interrupted step must not leave them behind
@pytest.mark.parametrize("extra", [["model.norm=batch", "train.mask_ratio=0.5", "train.optimizer=adamw", "train.schedule=cosine"],
                                   ["train.noise=0.2", "train.mask_ratio=0.3", "train.flip=true", "train.shift=2"],
                                   ["model.norm=none", "model.bottleneck=dense", "train.schedule=none", "train.mask_ratio=0"]])
def test_resume_after_interrupt_equals_uninterrupted_bitwise(tmp_path, blobs_npz, monkeypatch, extra):
    cfg = small_config(f"npz:{blobs_npz}", *extra)
    full = train(cfg, tmp_path / "full", progress=False)

    import convae.training.loop as training

    original = training.reconstruction_loss
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # mid-way through epoch 2 (6 steps per epoch)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "reconstruction_loss", interrupting)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(cfg, tmp_path / "cut", progress=False)
    state = load_trainer_state(tmp_path / "cut" / STATE)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    monkeypatch.setattr(training, "reconstruction_loss", original)
    resumed = train(None, tmp_path / "cut", resume=True, progress=False)
    a, b = weights(full.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in resumed.history]


def test_resume_can_extend_epochs(tmp_path, blobs_npz):
    flat = "train.schedule=none"  # a cosine schedule depends on the epoch count, so extending one changes its course
    full = train(small_config(f"npz:{blobs_npz}", "train.epochs=3", flat), tmp_path / "full", progress=False)
    train(small_config(f"npz:{blobs_npz}", "train.epochs=1", flat), tmp_path / "short", progress=False)
    resumed = train(small_config(f"npz:{blobs_npz}", "train.epochs=3", flat), tmp_path / "short", resume=True, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(weights(full.model).values(), weights(resumed.model).values()))


def test_resume_refuses_changed_settings(tmp_path, blobs_npz):
    train(small_config(f"npz:{blobs_npz}", "train.epochs=1"), tmp_path / "r", progress=False)
    with pytest.raises(convae.ConfigError, match="train.lr"):
        train(small_config(f"npz:{blobs_npz}", "train.lr=0.5"), tmp_path / "r", resume=True, progress=False)


def test_fresh_run_never_overwrites_an_existing_run(tmp_path, blobs_npz):
    train(small_config(f"npz:{blobs_npz}", "train.epochs=1"), tmp_path / "r", progress=False)
    before = (tmp_path / "r" / WEIGHTS).read_bytes()
    with pytest.raises(RunError, match="already holds a trained model"):
        train(small_config(f"npz:{blobs_npz}", "train.epochs=1"), tmp_path / "r", progress=False)
    assert (tmp_path / "r" / WEIGHTS).read_bytes() == before


def test_exception_mid_save_keeps_previous_checkpoint(tmp_path, blobs_npz, monkeypatch):
    cfg = small_config(f"npz:{blobs_npz}", "train.epochs=1")
    train(cfg, tmp_path / "r", progress=False)
    good_weights = (tmp_path / "r" / WEIGHTS).read_bytes()
    good_state = (tmp_path / "r" / STATE).read_bytes()

    import convae.atomic as runs  # the one atomic writer's os

    def exploding_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", exploding_fsync)
    with pytest.raises(RunError, match="No space left on device"):
        train(small_config(f"npz:{blobs_npz}", "train.epochs=2"), tmp_path / "r", resume=True, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "r" / WEIGHTS).read_bytes() == good_weights
    assert (tmp_path / "r" / STATE).read_bytes() == good_state
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]
    convae.load_run(tmp_path / "r")


def test_non_finite_loss_names_epoch_and_step_and_writes_nothing(tmp_path, blobs_npz, monkeypatch):
    cfg = small_config(f"npz:{blobs_npz}", "train.epochs=1")
    train(cfg, tmp_path / "r", progress=False)
    before = (tmp_path / "r" / WEIGHTS).read_bytes()
    import convae.training.loop as training

    original = training.reconstruction_loss
    monkeypatch.setattr(training, "reconstruction_loss", lambda *a: original(*a) * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1"):
        train(small_config(f"npz:{blobs_npz}", "train.epochs=2"), tmp_path / "r", resume=True, progress=False)
    assert (tmp_path / "r" / WEIGHTS).read_bytes() == before


def test_nan_pixel_stops_training_with_non_finite_error(tmp_path):
    x = np.random.default_rng(0).random((40, 8, 8)).astype(np.float32)
    x[3, 2, 2] = np.nan
    images = torch.from_numpy(x[:, None])
    from convae.models import ConvAutoencoder
    from convae.training import train_model

    cfg = small_config("digits").train
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+"):
        train_model(ConvAutoencoder((1, 8, 8), channels=(4,)), images, cfg, progress=False)


def test_extending_a_cosine_run_warns_and_a_flat_one_does_not(tmp_path, blobs_npz, caplog):
    for schedule in ("cosine", "none"):
        short = lambda epochs: small_config(f"npz:{blobs_npz}", f"train.epochs={epochs}", f"train.schedule={schedule}")  # noqa: E731
        train(short(1), tmp_path / schedule, progress=False)
        caplog.clear()
        with caplog.at_level("WARNING", logger="convae.training"):
            train(short(2), tmp_path / schedule, resume=True, progress=False)
        warned = any("cosine-schedule run from train.epochs=1 to train.epochs=2" in r.getMessage() for r in caplog.records)
        assert warned == (schedule == "cosine")


def _translated(x, dy, dx):
    """``x`` (C, H, W) moved down by dy and right by dx pixels, zero-filled."""
    out = torch.zeros_like(x)
    h, w = x.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = x[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_augment_flips_and_shifts_each_image_and_a_share_sees_its_rows():
    from convae.config import TrainConfig
    from convae.training import augment

    x = torch.rand(64, 2, 9, 11) + 0.1  # no zeros, so every translation is told apart
    cfg = TrainConfig(flip=True, shift=2)
    out = augment(x, cfg, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    kinds = set()
    for img, aug in zip(x, out):
        matches = [(f, dy, dx) for f in (False, True) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(_translated(img.flip(2) if f else img, dy, dx), aug)]
        assert len(matches) == 1, matches
        kinds.add(matches[0])
    assert {f for f, _, _ in kinds} == {False, True} and len(kinds) > 10  # both flips, many offsets
    share = augment(x[16:40], cfg, torch.Generator().manual_seed(0), rows=(16, 64))
    assert torch.equal(share, out[16:40])
    cl = augment(x.contiguous(memory_format=torch.channels_last), cfg, torch.Generator().manual_seed(0))
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, out)
    assert torch.equal(augment(x, TrainConfig(), torch.Generator()), x)


def test_negative_shift_is_rejected():
    with pytest.raises(convae.ConfigError, match="train.shift"):
        apply_overrides(RunConfig(), ["train.shift=-1"])


def test_resume_refuses_to_turn_a_default_length_run_into_an_epoch_count(tmp_path, blobs_npz):
    # the default length (epochs=None) stops at a step cap, possibly part-way through an epoch: epochs=N on
    # --resume would lift the cap and skip the rest of that epoch, so it is refused with what to do instead
    train(small_config(f"npz:{blobs_npz}", "train.epochs=none", "train.max_steps=2"), tmp_path / "r", progress=False)
    before = (tmp_path / "r" / WEIGHTS).read_bytes()
    with pytest.raises(convae.ConfigError, match="Train a fresh run with --epochs 3"):
        train(small_config(f"npz:{blobs_npz}", "train.epochs=3", "train.max_steps=2"), tmp_path / "r", resume=True, progress=False)
    assert (tmp_path / "r" / WEIGHTS).read_bytes() == before
