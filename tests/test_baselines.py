"""Hand-designed baselines (convae.analysis.baselines): HOG and scattering on grayscale and colour, square and not;
their parameters, the cache, and a clear skip when the library is missing; the honest PCA's choice of dimension."""

import sys

import numpy as np
import pytest
import torch

from convae.analysis import baselines
from convae.analysis.baselines import default_params, hand_designed_features, hog_features, resolve_params, scattering_features
from convae.analysis.feature_sets import honest_pca_set
from convae.data import ImageDataset
from convae.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
skimage = pytest.importorskip("skimage")
kymatio = pytest.importorskip("kymatio")


def images(n, c, h, w, seed=0):
    return torch.from_numpy((np.random.default_rng(seed).random((n, c, h, w)) * 255).astype(np.uint8))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 20, 28), (3, 16, 24)])
def test_hog_has_the_length_its_cells_and_blocks_give(shape):
    c, h, w = shape
    params = default_params("hog", shape)
    feats = hog_features(images(3, c, h, w), params)
    cells_y, cells_x = h // params["cell"], w // params["cell"]
    blocks = (cells_y - params["block"] + 1) * (cells_x - params["block"] + 1)
    assert feats.shape == (3, blocks * params["block"] ** 2 * params["orientations"]) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and feats.std() > 0


def test_hog_of_a_colour_image_follows_its_strongest_channel():
    gray = images(2, 1, 32, 32)
    colour = torch.cat([gray, torch.zeros_like(gray), torch.zeros_like(gray)], dim=1)  # all the gradient is in red
    params = default_params("hog", (3, 32, 32))
    np.testing.assert_allclose(hog_features(colour, params), hog_features(gray, params), atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 20, 28)])
def test_scattering_has_one_map_per_path_and_channel(shape):
    c, h, w = shape
    params = {"J": 2, "L": 4}
    feats = scattering_features(images(2, c, h, w), params)
    paths = 1 + params["J"] * params["L"] + params["L"] ** 2 * params["J"] * (params["J"] - 1) // 2
    assert feats.shape == (2, c * paths * (h // 4) * (w // 4))


def test_default_parameters_follow_the_image_size():
    assert default_params("hog", (1, 28, 28)) == {"cell": 4, "block": 2, "orientations": 9}
    assert default_params("hog", (1, 8, 8))["cell"] == 2 and default_params("hog", (3, 100, 100))["cell"] == 14
    assert default_params("scattering", (1, 28, 28)) == {"J": 2, "L": 8} and default_params("scattering", (3, 128, 128))["J"] == 3
    assert resolve_params("hog", (1, 28, 28), {"cell": 7}) == {"cell": 7, "block": 2, "orientations": 9}
    with pytest.raises(ConfigError, match="does not fit 8x8"):
        resolve_params("hog", (1, 8, 8), {"cell": 8})
    with pytest.raises(ConfigError, match="J=4 needs images of at least 16"):
        resolve_params("scattering", (1, 8, 8), {"J": 4})


def test_features_are_cached_by_dataset_split_and_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVAE_CACHE", str(tmp_path))
    data = ImageDataset(images(4, 1, 28, 28), np.arange(4), "npz:x", "train")
    first = hand_designed_features("hog", data, default_params("hog", (1, 28, 28)))
    assert len(list(tmp_path.glob("hog-*.npy"))) == 1
    monkeypatch.setitem(baselines.EXTRACTORS, "hog", lambda *a, **k: pytest.fail("computed again instead of read from the cache"))
    np.testing.assert_array_equal(hand_designed_features("hog", data, default_params("hog", (1, 28, 28))), first)
    other = ImageDataset(images(4, 1, 28, 28, seed=1), np.arange(4), "npz:x", "train")  # other pixels: another key
    assert baselines.cache_key("hog", {"cell": 4}, other) != baselines.cache_key("hog", {"cell": 4}, data)
    assert baselines.cache_key("hog", {"cell": 5}, data) != baselines.cache_key("hog", {"cell": 4}, data)


def test_a_missing_library_skips_the_baseline_and_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.feature", None)
    reason = baselines.available("hog")
    assert reason is not None and "scikit-image" in reason and "convae[baselines]" in reason


def test_honest_pca_chooses_its_dimension_without_the_test_labels():
    rng = np.random.default_rng(0)
    n = 400
    labels = np.arange(n) % 4
    pixels = rng.normal(size=(n, 64)).astype(np.float32) + labels[:, None] * np.linspace(0, 1, 64, dtype=np.float32)
    folds = [(np.arange(300), np.arange(300, n))]
    calls = []

    def score(X, train, test):
        calls.append((train, test))
        return float(X.shape[1] == 20)  # a scorer that prefers 20 dimensions

    fs, choice = honest_pca_set(pixels, labels, folds, 0, score)
    assert fs.dim == choice["dim"] == 20 and not fs.standardize and choice["whitened"] is False
    assert all(max(train.max(), test.max()) < 300 for train, test in calls)  # only training rows are ever scored
    X = fs.matrix(0)
    assert X.shape == (n, 20) and np.isclose(X[:300].var(axis=0).mean(), 1.0, rtol=0.05)  # one global scale
    assert X[:300, 0].var() > 3 * X[:300, -1].var()  # not whitened: the leading component keeps more variance


def test_hand_designed_features_show_no_progress_when_asked(caplog, monkeypatch):
    """The probe's -q reaches the HOG and scattering passes: progress=False logs no progress line."""
    import logging

    import convae.progress as progress_module

    monkeypatch.setattr(progress_module, "_is_terminal", lambda stream: False)  # log mode, even under pytest -s
    monkeypatch.setenv("CONVAE_PROGRESS_INTERVAL", "0")
    data = images(4, 1, 28, 28)
    params = default_params("hog", (1, 28, 28))
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        hog_features(data, params, progress=False)
    assert not [r for r in caplog.records if r.name == "convae.progress"]
    with caplog.at_level(logging.INFO, logger="convae.progress"):
        hog_features(data, params)
    assert [r for r in caplog.records if r.name == "convae.progress" and "hog" in r.getMessage()]
