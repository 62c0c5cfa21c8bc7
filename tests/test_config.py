import json

import pytest

from convae import ConfigError, RunConfig, load_config
from convae.config import apply_overrides, to_toml


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
