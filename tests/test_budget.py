"""Training to a time budget (convae.training.budget): durations, the plan, and runs that repeat exactly."""

import json
import logging

import pytest
import torch

from convae.config import RunConfig, TrainConfig, apply_overrides, parse_duration
from convae.errors import ConfigError
from convae.runs import load_run, read_config
from convae.training import train
from convae.training.budget import plan_steps

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("text, seconds", [("5m", 300), ("90s", 90), ("1h30m", 5400), ("2.5m", 150), (300, 300), ("45", 45),
                                           ("1min", 60)])
def test_durations_parse_to_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5 minutes", "m5", "-3s", "0s", True])
def test_a_bad_duration_is_a_config_error_naming_the_key(bad):
    with pytest.raises(ConfigError, match="time_budget"):
        apply_overrides(RunConfig(), [f"train.time_budget={bad}"] if not isinstance(bad, bool) else ["train.time_budget=true"])


def test_the_plan_fits_steps_validation_and_the_measurement_into_the_budget():
    cfg = TrainConfig(epochs=100, batch_size=100)
    steps, why = plan_steps(60.0, 0.1, cfg, n_train=1000, n_val=0, spent=3.0)
    epochs = -(-steps // 10)
    assert steps * 0.1 + epochs * 0.05 + 3.0 <= 60 * 0.95 + 1e-9 < (steps + 3) * 0.1 + epochs * 0.05 + 3.0  # fills it, no more
    assert "time budget ends first" in why
    with_val, _ = plan_steps(60.0, 0.1, cfg, n_train=1000, n_val=5000, spent=3.0)
    assert with_val < steps  # validation after every epoch comes out of the budget
    few, why = plan_steps(600.0, 0.1, TrainConfig(epochs=2, batch_size=100), n_train=1000, n_val=0)
    assert few == 20 and "train.epochs=2 ends first" in why


def _cfg(*extra):
    return apply_overrides(RunConfig(), ["data.spec=digits", "model.channels=4,8", "model.latent_dim=4", "train.batch_size=64",
                                         "train.precision=fp32", "train.threads=1", "train.mask_ratio=0", "data.limit=400", *extra])


def test_a_budget_writes_its_planned_steps_and_a_rerun_from_config_json_repeats_the_run(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        first = train(_cfg("train.epochs=50", "train.time_budget=4s"), tmp_path / "a", progress=False)
    saved, _, _ = read_config(tmp_path / "a")
    planned = saved.train.planned_steps
    assert planned is not None and first.history[-1]["step"] == planned < 50 * 6
    assert any("time budget 4 s" in r.getMessage() and "ends first" in r.getMessage() for r in caplog.records)
    again = train(saved, tmp_path / "b", progress=False)  # the config.json of the first run: no measuring, the same steps
    assert read_config(tmp_path / "b")[0].train.planned_steps == planned
    a, b = load_run(tmp_path / "a").model.state_dict(), load_run(tmp_path / "b").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])["train_tflop"] > 0


def test_epochs_that_end_before_the_budget_decide(tmp_path):
    result = train(_cfg("train.epochs=1", "train.time_budget=10m"), tmp_path / "r", progress=False)
    assert read_config(tmp_path / "r")[0].train.planned_steps == result.history[-1]["step"] == 6  # 360 images / 64 per step
