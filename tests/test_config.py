import json
import logging

import pytest

from convae import ConfigError, RunConfig, load_config
from convae.config import KIND_KEYS, ModelConfig, apply_overrides, to_toml


def test_overrides_accept_dotted_and_bare_keys():
    cfg = apply_overrides(RunConfig(), ["model.channels=16,32", "lr=3e-4", "train.precision=fp32", "data.image_size=37x53", "norm=none"])
    assert cfg.model.channels == [16, 32]
    assert cfg.train.lr == 3e-4
    assert cfg.train.precision == "fp32"
    assert cfg.data.image_size == [37, 53]
    assert cfg.model.norm is None


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.learning_rate=1", "unknown key 'train.learning_rate'"),
        ("epochs=ten", "train.epochs must be int"),
        ("model.channels=a,b", r"model.channels\[0\] must be int"),
        ("optimizer=sgd", "train.optimizer='sgd' is not one of adam, adamw"),
        ("nosuch=1", "unknown key 'nosuch'"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("channels_last=3", "train.channels_last must be bool"),
        ("lr", "expected key=value"),
        ("train.noise=-0.1", r"train.noise must be >= 0, got -0.1"),
        ("train.mask_ratio=1", r"train.mask_ratio must be in \[0, 1\), got 1.0"),
        ("train.weight_decay=-1e-4", r"train.weight_decay must be >= 0"),  # once torch's ValueError at the first step
        ("train.num_workers=-1", r"train.num_workers must be >= 0"),
        ("train.grad_clip=0", r"train.grad_clip must be > 0 or none"),  # 0 would zero every gradient
        ("model.downsample=median", "model.downsample='median' is not one of max, avg, stride"),
    ],
)
def test_bad_override_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), [override])


def test_ambiguous_bare_key_lists_the_sections():
    with pytest.raises(ConfigError, match="model.channels, data.channels"):
        apply_overrides(RunConfig(), ["channels=3"])


def test_toml_and_json_round_trip(tmp_path):
    cfg = apply_overrides(RunConfig(), ["model.kind=dense", "model.hidden=100,50", "train.epochs=3", "data.spec=digits"])
    (tmp_path / "c.toml").write_text(to_toml(cfg))
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "c.toml") == cfg
    assert load_config(tmp_path / "c.json") == cfg


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepochs = 2\nlearnrate = 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown key 'train.learnrate'"):
        load_config(path)


def test_wrong_type_in_file_names_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\nlatent_dim = "big"\n')
    with pytest.raises(ConfigError, match="model.latent_dim must be int"):
        load_config(path)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "x.toml").write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "x.toml")


def test_recipe_probe_table_is_ignored_by_training_config(tmp_path):
    """configs/*.toml carry a [probe] table for bench/recipes.py; `convae train --config` reads the rest."""
    path = tmp_path / "recipe.toml"
    path.write_text('[model]\nchannels = [8, 16]\n\n[probe]\nfeatures = ["stage2:flatten"]\npost = ["none"]\n')
    assert load_config(path).model.channels == [8, 16]
    path.write_text('[model]\nchannels = [8, 16]\n\n[prob]\nfeatures = []\n')
    with pytest.raises(ConfigError, match="prob"):
        load_config(path)


def test_none_is_a_word_for_string_keys_and_the_absence_for_optional_ones():
    cfg = apply_overrides(RunConfig(), ["train.schedule=none", "model.norm=none", "train.threads=none"])
    assert cfg.train.schedule == "none" and cfg.model.norm is None and cfg.train.threads is None


# --- one name per idea: model.downsample, read from its old name model.pool -------------------------------
def test_downsample_is_the_key_and_pool_its_old_name():
    assert RunConfig().model.downsample == "max" and "pool" not in RunConfig().to_dict()["model"]
    assert apply_overrides(RunConfig(), ["model.pool=avg"]).model.downsample == "avg"  # --set model.pool=avg
    assert apply_overrides(RunConfig(), ["pool=stride"]).model.downsample == "stride"  # bare, as before
    assert apply_overrides(RunConfig(), ["model.downsample=avg"]).model.downsample == "avg"
    with pytest.raises(ConfigError, match="model.pool='median' is not one of max, avg, stride"):  # named as written
        apply_overrides(RunConfig(), ["model.pool=median"])
    with pytest.raises(ConfigError, match="model.pool must be str"):
        apply_overrides(RunConfig(), ["model.pool=3"])


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_config_files_written_before_the_rename_still_load(tmp_path, suffix):
    path = tmp_path / f"old{suffix}"
    path.write_text('[model]\npool = "avg"\nchannels = [8, 16]\n' if suffix == ".toml"
                    else json.dumps({"model": {"pool": "avg", "channels": [8, 16]}}))
    cfg = load_config(path)
    assert cfg.model.downsample == "avg" and cfg.model.model_kwargs()["downsample"] == "avg"
    assert cfg == apply_overrides(RunConfig(), ["model.downsample=avg", "model.channels=8,16"])


def test_old_run_record_with_pool_loads(tmp_path):
    record = {"format_version": 1, **RunConfig().to_dict(), "in_shape": [1, 8, 8]}
    model = record["model"]
    record["model"] = {("pool" if k == "downsample" else k): ("stride" if k == "downsample" else v) for k, v in model.items()}
    assert RunConfig.from_dict(record, source="config.json").model.downsample == "stride"


def test_both_names_in_one_table_is_an_error(tmp_path):
    path = tmp_path / "both.toml"
    path.write_text('[model]\npool = "avg"\ndownsample = "max"\n')
    with pytest.raises(ConfigError, match=r"both.toml: \[model\] has both model.pool and model.downsample"):
        load_config(path)


# --- nothing silently ignored: a key the chosen model does not use is an error ------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["model.kind=dense", "model.wta_spatial=true"],
     r"--set: model.wta_spatial does not apply to model.kind='dense' \(the FCAE\).*setting of model.kind='conv'.*"
     r"set model.kind=conv; model.kind='dense' uses model.hidden, model.latent_dim, model.activation, model.norm"),
    (["model.wta_spatial=true", "model.kind=dense"], "model.wta_spatial does not apply to model.kind='dense'"),  # any order
    (["model.kind=dense", "model.channels=8,16"], "model.channels does not apply to model.kind='dense'"),
    (["model.kind=dense", "model.pool=avg"], "model.pool does not apply to model.kind='dense'"),  # named as written
    (["model.kind=dense", "model.bottleneck=dense"], "model.bottleneck does not apply"),  # even a value the FCAE might mean
    (["model.hidden=100,50"], r"model.hidden does not apply to model.kind='conv' \(the ConvAE\).*set model.kind=dense"),
])
def test_a_key_the_model_kind_does_not_use_is_an_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), overrides)


@pytest.mark.parametrize("kind", sorted(KIND_KEYS))
def test_every_key_of_the_kind_and_the_shared_ones_are_accepted(kind):
    defaults = ModelConfig()
    sets = [f"model.kind={kind}"] + [f"model.{k}={json.dumps(getattr(defaults, k))}" for k in KIND_KEYS[kind] if k != "norm"]
    apply_overrides(RunConfig(), sets + ["model.norm=none", "train.lr=3e-4"])


def test_a_config_file_key_the_model_kind_does_not_use_is_an_error(tmp_path):
    path = tmp_path / "fcae.toml"
    path.write_text('[model]\nkind = "dense"\nhidden = [64]\nwta_spatial = true\n')
    with pytest.raises(ConfigError, match=r"fcae.toml: model.wta_spatial does not apply to model.kind='dense'"):
        load_config(path)
    path.write_text('[model]\nchannels = [8, 16]\n')  # a ConvAE recipe ...
    cfg = load_config(path)
    with pytest.raises(ConfigError, match=r"fcae.toml: model.channels does not apply to model.kind='dense'"):
        apply_overrides(cfg, ["model.kind=dense"])  # ... trained with --model dense names the file's key


def test_run_records_and_whole_dumps_hold_every_key_and_load(tmp_path):
    from convae import runs

    cfg = apply_overrides(RunConfig(), ["model.kind=dense", "model.hidden=32"])
    runs.save_config(tmp_path, cfg, (1, 8, 8))  # config.json holds channels, wta_spatial, ... of a dense run
    assert runs.read_config(tmp_path)[0] == cfg
    assert load_config(tmp_path / "config.json") == cfg  # a run's config.json as --config: the whole record
    resumed = apply_overrides(runs.read_config(tmp_path)[0], ["train.epochs=3"])  # --resume with a flag
    assert resumed.train.epochs == 3
    with pytest.raises(ConfigError, match="model.wta_spatial does not apply to model.kind='dense'"):
        apply_overrides(runs.read_config(tmp_path)[0], ["model.wta_spatial=true"])  # --resume --set of a ConvAE key


def test_cli_train_refuses_a_key_the_model_does_not_use(tmp_path, capsys):
    from convae import cli

    code = cli.main(["train", "--model", "dense", "--set", "model.wta_spatial=true", "--data", "digits",
                     "--run-dir", str(tmp_path / "run"), "-q"])
    assert code == 2
    assert "model.wta_spatial does not apply to model.kind='dense'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_recipe_probe_table_is_left_out_with_a_warning(tmp_path, caplog):
    path = tmp_path / "recipe.toml"
    path.write_text('[model]\nchannels = [8, 16]\n\n[probe]\nfeatures = ["stage2:flatten"]\n')
    with caplog.at_level(logging.WARNING, logger="convae.config"):
        assert load_config(path).model.channels == [8, 16]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "recipe.toml" in warning.getMessage() and "[probe] table is read by bench/recipes.py" in warning.getMessage()
    assert "not by training" in warning.getMessage()
    caplog.clear()
    path.write_text('[model]\nchannels = [8, 16]\n')
    with caplog.at_level(logging.WARNING, logger="convae.config"):
        load_config(path)
    assert not caplog.records


def test_to_toml_writes_only_the_keys_of_the_kind():
    dense = to_toml(apply_overrides(RunConfig(), ["model.kind=dense"]))
    assert "hidden = " in dense and "channels = " not in dense.split("[train]")[0] and "downsample" not in dense
    conv = to_toml(RunConfig())
    assert "downsample = \"max\"" in conv and "hidden" not in conv and "pool" not in conv


def test_the_default_length_is_1099_steps_or_10_epochs_and_any_given_epochs_win():
    from convae.config import DEFAULT_EPOCHS, DEFAULT_STEPS, RunConfig, TrainConfig, apply_overrides, to_toml
    from convae.training.plan import total_steps

    default = TrainConfig()
    assert default.epochs is None and default.step_cap == DEFAULT_STEPS == 1099 and default.n_epochs == DEFAULT_EPOCHS == 10
    assert total_steps(default, 54_000) == 1099  # Fashion-MNIST's 54,000 training images: 2.6 epochs
    assert total_steps(default, 1_000) == 10 * 8  # a small dataset: 10 epochs of 8 steps come first
    given = TrainConfig(epochs=20)
    assert given.step_cap is None and total_steps(given, 54_000) == 20 * 422  # --epochs 20 trains 20 epochs
    assert total_steps(TrainConfig(epochs=20, max_steps=100), 54_000) == 100
    assert total_steps(TrainConfig(max_steps=1000), 54_000) == 1000  # a given cap replaces the default one
    cfg = apply_overrides(RunConfig(), ["train.epochs=3"])
    assert cfg.train.epochs == 3 and cfg.train.step_cap is None
    back = RunConfig.from_dict(RunConfig().to_dict())
    assert back.train.epochs is None and back.train.step_cap == 1099
    assert "epochs" not in to_toml(RunConfig()).split("[train]")[1].split("[")[0]


def test_a_time_budget_or_max_steps_given_alone_replaces_the_default_length():
    from convae.config import TrainConfig
    from convae.training.plan import total_steps

    assert TrainConfig(time_budget="5m").step_cap is None  # the budget plans the steps (at most 10 epochs)
    assert "time budget" in TrainConfig(time_budget="5m").describe_length()
    assert total_steps(TrainConfig(time_budget="5m", planned_steps=900), 54_000) == 900
    assert "1099 steps" in TrainConfig().describe_length()
    assert TrainConfig(epochs=3).describe_length() == "train.epochs=3"


def test_the_fcae_keeps_ten_epochs_as_its_default_length_and_config_json_says_so():
    from convae.config import RunConfig, apply_overrides, resolve_length

    dense = resolve_length(apply_overrides(RunConfig(), ["model.kind=dense"]))
    assert dense.train.epochs == 10 and dense.train.step_cap is None  # 1,099 steps would be 2.6 epochs of a cheap model
    assert resolve_length(RunConfig()).train.epochs is None  # the ConvAE keeps the 1,099-step default
    assert resolve_length(apply_overrides(RunConfig(), ["model.kind=dense", "train.epochs=3"])).train.epochs == 3
    assert resolve_length(apply_overrides(RunConfig(), ["model.kind=dense", "train.max_steps=50"])).train.epochs is None
