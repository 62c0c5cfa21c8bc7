"""The scikit-learn transformers: the estimator contract, pipelines and grid search on digits."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from convae.config import RunConfig, apply_overrides
from convae.data import ImageDataset
from convae.errors import ConfigError, DataError, LayerError
from convae.features import extract_features
from convae.runs import load_run
from convae.sklearn import ConvAEFeatures, DenseAEFeatures, EncoderFeatures
from convae.training import train

pytestmark = pytest.mark.usefixtures("one_thread")


TINY_CONV = dict(channels=(4, 8), latent_dim=6, epochs=1, batch_size=32, precision="fp32", device="cpu")
TINY_DENSE = dict(hidden=(8,), latent_dim=4, epochs=2, precision="fp32", device="cpu")

# The checks that feed ConvAEFeatures arbitrary 2-D tabular X (N, D): not images, refused with a DataError.
TABULAR = "a 2-D X of arbitrary width is not an image (set image_shape to read rows as images)"
CONV_TABULAR_CHECKS = [
    "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
    "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_dtype_object", "check_pipeline_consistency",
    "check_estimators_nan_inf", "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_transformer_data_not_an_array", "check_transformer_general", "check_transformer_preserve_dtypes",
    "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_fit2d_1sample",
    "check_fit2d_1feature", "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
    "check_n_features_in", "check_fit2d_predict1d",
]


def _expected_failures(estimator):
    return {name: TABULAR for name in CONV_TABULAR_CHECKS} if isinstance(estimator, ConvAEFeatures) else {}


@parametrize_with_checks([DenseAEFeatures(**TINY_DENSE), ConvAEFeatures(**TINY_CONV)], expected_failed_checks=_expected_failures)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    """600 digits as (N, 8, 8) floats in [0, 1], and their labels."""
    data = load_digits()
    return (data.images[:600] / 16.0), data.target[:600]


@pytest.fixture(scope="module")
def fitted(digits):
    X, _ = digits
    return ConvAEFeatures(layers=["stage1", "bottleneck"], pool="avg2", bottleneck="dense", **TINY_CONV).fit(X)


def test_clone_and_params_round_trip():
    ae = ConvAEFeatures(layers=["stage2"], pool="avg2", latent_dim=12, epochs=3)
    params = ae.get_params()
    assert params["layers"] == ["stage2"] and params["pool"] == "avg2" and params["latent_dim"] == 12
    twin = clone(ae)
    assert twin is not ae and twin.get_params() == params
    assert ae.set_params(latent_dim=5, downsample="avg") is ae and ae.latent_dim == 5 and ae.downsample == "avg"
    assert not hasattr(ae, "model_")


def test_pipeline_and_grid_search_over_autoencoder_and_classifier(digits):
    X, y = digits
    pipe = Pipeline([("ae", ConvAEFeatures(layers=["stage1"], pool="avg2", image_shape=(8, 8), **TINY_CONV)),
                     ("clf", LogisticRegression(max_iter=300))])
    grid = GridSearchCV(pipe, {"ae__latent_dim": [4, 6], "ae__pool": ["avg", "avg2"], "clf__C": [1.0]}, cv=2)
    grid.fit(X.reshape(len(X), -1), y)  # flattened rows, read as 8x8 images
    assert set(grid.best_params_) == {"ae__latent_dim", "ae__pool", "clf__C"}
    assert grid.best_score_ > 0.5  # 10 classes: chance is 0.1
    assert grid.best_estimator_.named_steps["ae"].get_feature_names_out()[0].startswith("stage1_avg")


def test_not_fitted_error_before_fit(digits):
    X, _ = digits
    for estimator in (ConvAEFeatures(), DenseAEFeatures(), EncoderFeatures("nowhere")):
        with pytest.raises(NotFittedError):
            estimator.transform(X)
        with pytest.raises(NotFittedError):
            estimator.get_feature_names_out()


def test_feature_names_are_readable_and_match_the_output(fitted, digits):
    X, _ = digits
    names = fitted.get_feature_names_out()
    feats = fitted.transform(X[:5])
    assert feats.dtype == np.float32 and feats.shape == (5, len(names)) == (5, fitted.n_features_out_)
    assert list(names[:2]) == ["stage1_avg2x2_c000_y0x0", "stage1_avg2x2_c000_y0x1"] and names[-1] == "bottleneck_u005"


def test_transform_does_not_depend_on_the_batch_size(fitted, digits):
    X, _ = digits
    big = fitted.transform(X)
    one = clone(fitted).set_params(batch_size=1)
    one.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})  # same fitted model, batch 1
    np.testing.assert_allclose(one.transform(X[:50]), big[:50], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_input_is_never_modified(dtype):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (40, 12, 12, 1)).astype(dtype)
    if dtype != np.uint8:
        X /= 255.0
    before = X.copy()
    ae = ConvAEFeatures(noise=0.1, mask_ratio=0.25, **TINY_CONV).fit(X)
    ae.transform(X)
    np.testing.assert_array_equal(X, before)


def test_fit_is_seeded_and_leaves_the_global_rng_alone(digits):
    X, _ = digits
    state = torch.random.get_rng_state()
    a = ConvAEFeatures(**TINY_CONV).fit(X[:100]).transform(X[:20])
    assert torch.equal(torch.random.get_rng_state(), state)
    b = ConvAEFeatures(**TINY_CONV).fit(X[:100]).transform(X[:20])
    c = ConvAEFeatures(**{**TINY_CONV, "seed": 1}).fit(X[:100]).transform(X[:20])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_bad_layers_or_pooling_fail_before_training(digits):
    X, _ = digits
    with pytest.raises(LayerError, match="stage1, stage2, bottleneck"):
        ConvAEFeatures(layers="stage7", **TINY_CONV).fit(X)
    with pytest.raises(ConfigError, match="stage2 is 2x2"):
        ConvAEFeatures(layers="stage2", pool="avg3", **TINY_CONV).fit(X)


def test_a_plain_2d_x_is_not_an_image_without_image_shape(digits):
    X, _ = digits
    with pytest.raises(DataError, match="image_shape"):
        ConvAEFeatures(**TINY_CONV).fit(X.reshape(len(X), -1))
    with pytest.raises(DataError, match="does not fit rows of 64"):
        ConvAEFeatures(image_shape=(7, 7), **TINY_CONV).fit(X.reshape(len(X), -1))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        ConvAEFeatures(**TINY_CONV).fit(X * 16)  # 0..16 floats are not images in [0, 1]


def test_transform_refuses_images_of_another_shape(fitted):
    with pytest.raises(DataError, match=r"fitted on \(1, 8, 8\)"):
        fitted.transform(np.zeros((3, 10, 10), np.uint8))


def test_image_paths_are_decoded_and_transformed(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        Image.fromarray((rng.random((10, 14)) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    ae = ConvAEFeatures(**TINY_CONV).fit(paths)
    assert ae.in_shape_ == (1, 10, 14)
    feats = ae.transform(paths[:3])
    stack = np.stack([np.asarray(Image.open(p)) for p in paths[:3]])
    np.testing.assert_allclose(feats, ae.transform(stack), rtol=1e-6)


def test_dense_features_read_tabular_rows_and_images():
    rng = np.random.default_rng(0)
    X = rng.random((30, 5)).astype(np.float32)
    ae = DenseAEFeatures(layers=["hidden1", "bottleneck"], **TINY_DENSE).fit(X)
    assert ae.n_features_in_ == 5 and ae.transform(X).shape == (30, 12)
    with pytest.raises(ValueError, match="X has 4 features, but DenseAEFeatures is expecting 5"):
        ae.transform(X[:, :4])
    images = DenseAEFeatures(**TINY_DENSE).fit(rng.random((30, 6, 6)))
    assert images.in_shape_ == (1, 6, 6) and not hasattr(images, "n_features_in_")


def test_fitted_transformer_pickles(fitted, digits):
    X, _ = digits
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.transform(X[:10]), fitted.transform(X[:10]))


# --- EncoderFeatures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = torch.from_numpy((rng.random((48, 1, 12, 12)) * 255).astype(np.uint8))
    data = ImageDataset(images=images, labels=None, spec="synthetic", split="train", class_names=None)
    cfg = apply_overrides(RunConfig(), ["model.channels=4,8", "model.latent_dim=6", "train.epochs=1", "train.precision=fp32",
                                        "data.spec=synthetic"])
    path = tmp_path_factory.mktemp("runs") / "conv"
    train(cfg, path, progress=False, dataset=data)
    return path


def test_encoder_features_equal_the_runs_features(run_dir):
    X = np.random.default_rng(1).integers(0, 256, (9, 12, 12), dtype=np.uint8)
    enc = EncoderFeatures(run_dir, layers=["stage2", "stage1"], pool="max2").fit(X)
    run = load_run(run_dir)
    expected = extract_features(run.model, torch.from_numpy(X[:, None]), layers=["stage2", "stage1"], pool="max2")
    np.testing.assert_array_equal(enc.transform(X), expected)
    assert enc.precision_ == "fp32" and enc.weights_sha256_ == run.weights_sha256
    assert enc.get_feature_names_out()[0] == "stage2_max2x2_c000_y0x0"
    assert clone(enc).get_params() == enc.get_params()


def test_encoder_features_fit_validates_the_shape_against_the_run(run_dir):
    wrong = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(DataError, match=r"\(3, 16, 16\).*\(1, 12, 12\)"):
        EncoderFeatures(run_dir).fit(wrong)
    converted = EncoderFeatures(run_dir, convert=True).fit(wrong)
    assert converted.transform(wrong).shape == (4, 6)


# --- configuration in one place: the estimators' parameters are the config's fields ---------------------------
# Deliberate differences from the config defaults, documented in the estimators' docstrings.
DELIBERATE = {"val_fraction": 0.0}  # fit trains on every image of X (TrainConfig: 0.1)
ESTIMATOR_MODEL_KEYS = {ConvAEFeatures: "conv", DenseAEFeatures: "dense"}


def _as_config_value(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("estimator", [ConvAEFeatures, DenseAEFeatures])
def test_estimator_defaults_are_the_config_defaults(estimator):
    import dataclasses

    from convae.config import KIND_KEYS, ModelConfig, TrainConfig
    from convae.sklearn import ESTIMATOR_DEFAULTS

    assert ESTIMATOR_DEFAULTS == DELIBERATE
    params = estimator().get_params()
    train_fields = [f.name for f in dataclasses.fields(TrainConfig)]
    model_fields = KIND_KEYS[ESTIMATOR_MODEL_KEYS[estimator]]  # every model key of the kind is a parameter
    assert set(train_fields) <= set(params) and set(model_fields) <= set(params)
    for name in train_fields:
        want = DELIBERATE.get(name, getattr(TrainConfig(), name))
        assert params[name] == want, f"{estimator.__name__}({name}={params[name]!r}) but TrainConfig().{name} is {want!r}"
    for name in model_fields:
        assert _as_config_value(params[name]) == getattr(ModelConfig(), name), name
    # and the model it builds is the one the config of those defaults describes
    cfg = estimator()._run_config()
    assert cfg.model == ModelConfig(kind=ESTIMATOR_MODEL_KEYS[estimator])
    assert cfg.train == dataclasses.replace(TrainConfig(), **DELIBERATE)


def _captured_config(monkeypatch, estimator, X):
    """The TrainConfig and model that ``estimator.fit(X)`` hands to train_model (nothing is trained)."""
    import convae.sklearn as sk

    seen = {}

    class Captured(Exception):
        pass

    def fake_train_model(model, data, cfg, **kwargs):
        seen.update(model=model, cfg=cfg, **kwargs)
        raise Captured

    monkeypatch.setattr(sk, "train_model", fake_train_model)
    with pytest.raises(Captured):
        estimator.fit(X)
    return seen


@pytest.mark.parametrize("estimator", [ConvAEFeatures, DenseAEFeatures])
def test_every_train_config_field_is_a_parameter_that_reaches_fit(monkeypatch, estimator, digits):
    import dataclasses

    from convae.config import TrainConfig

    changed = dict(epochs=3, batch_size=17, lr=2e-3, weight_decay=0.0, optimizer="adam", loss="bce", schedule="none", noise=0.05,
                   mask_ratio=0.25, flip=True, shift=1, val_fraction=0.25, seed=5, precision="fp32", channels_last=False, threads=1,
                   device="cpu", compile=True, num_workers=1, grad_clip=0.5, max_steps=7,
                   time_budget="2m", planned_steps=11)  # planned steps given: fit does not measure this machine
    assert set(changed) == {f.name for f in dataclasses.fields(TrainConfig)}  # a new field must be added here too
    assert all(changed[k] != getattr(TrainConfig(), k) for k in changed)
    X, _ = digits
    seen = _captured_config(monkeypatch, clone(estimator()).set_params(**changed), X[:40])
    assert dataclasses.asdict(seen["cfg"]) == changed
    assert len(seen["val_indices"]) == 10 and len(seen["train_indices"]) == 30  # val_fraction holds out a quarter


def test_architecture_parameters_reach_the_model(monkeypatch, digits):
    X, _ = digits
    est = ConvAEFeatures(channels=np.array([4, 8]), kernel_size=5, downsample="stride", norm="none", bottleneck="conv",
                         latent_dim=np.int64(6), upsample="upsample", convs_per_stage=1, wta_spatial=True, wta_lifetime=0.5)
    model = _captured_config(monkeypatch, est, X[:10])["model"]
    assert model.config == dict(in_shape=[1, 8, 8], channels=[4, 8], kernel_size=5, downsample="stride", norm=None,
                                bottleneck="conv", latent_dim=6, activation="relu", upsample="upsample", convs_per_stage=1,
                                wta_spatial=True, wta_lifetime=0.5)
    dense = _captured_config(monkeypatch, DenseAEFeatures(hidden=(9,), latent_dim=3, norm="layer"), X[:10])["model"]
    assert dense.config == dict(in_shape=[1, 8, 8], hidden=[9], latent_dim=3, activation="relu", norm="layer")


def test_grad_clip_threads_and_a_validation_split_train_for_real(digits):
    X, _ = digits
    ae = ConvAEFeatures(grad_clip=0.1, threads=1, val_fraction=0.25, max_steps=3, channels_last=False, **TINY_CONV).fit(X[:200])
    assert ae.history_[-1]["step"] == 3
    assert "val_mse" in ae.history_[-1]  # the held-out quarter is validated
    assert ae.transform(X[:4]).shape == (4, ae.n_features_out_)


@pytest.mark.parametrize("params, message", [
    (dict(epochs=0), "ConvAEFeatures: epochs must be >= 1, got 0"),
    (dict(optimizer="sgd"), "ConvAEFeatures: optimizer='sgd' is not one of adam, adamw"),
    (dict(threads=0), "ConvAEFeatures: threads must be >= 1 or none"),
    (dict(val_fraction=1.0), r"ConvAEFeatures: val_fraction must be in \[0, 1\)"),
    (dict(grad_clip=-1.0), "ConvAEFeatures: grad_clip must be > 0 or none"),
    (dict(latent_dim="big"), "ConvAEFeatures: latent_dim must be int, got 'big'"),
    (dict(downsample="median"), "ConvAEFeatures: downsample='median' is not one of max, avg, stride"),
    (dict(precision="fp8"), "ConvAEFeatures: precision='fp8' is not one of"),
])
def test_bad_parameters_fail_at_fit_naming_the_parameter(digits, params, message):
    X, _ = digits
    est = ConvAEFeatures(**{**TINY_CONV, **params})  # __init__ only stores
    with pytest.raises(ConfigError, match=message):
        est.fit(X[:20])
    assert not hasattr(est, "model_")


def test_dense_bad_parameter_is_named(digits):
    X, _ = digits
    with pytest.raises(ConfigError, match="DenseAEFeatures: hidden must hold positive ints"):
        DenseAEFeatures(hidden=(0,)).fit(X[:20])
