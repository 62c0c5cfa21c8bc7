"""Shared fixtures: small synthetic and bundled data only; nothing downloads."""

import os
import tempfile

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

os.environ.setdefault("CONVAE_NO_DOWNLOAD", "1")
os.environ.setdefault("CONVAE_CACHE", tempfile.mkdtemp(prefix="convae-test-cache-"))  # hand-designed features
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def blobs_npz(tmp_path_factory):
    """200 labelled 1x12x12 images: a bright square in one of four quadrants."""
    rng = np.random.default_rng(0)
    n = 200
    x = (rng.random((n, 12, 12)) * 40).astype(np.uint8)
    y = np.arange(n) % 4
    for i, label in enumerate(y):
        r, c = divmod(label, 2)
        x[i, r * 6 + 1 : r * 6 + 5, c * 6 + 1 : c * 6 + 5] = 220
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny problems run as fast on one thread, and one thread does not stall on a shared, oversubscribed CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):  # BLAS/OpenMP of numpy and scikit-learn too
        yield
    torch.set_num_threads(before)


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """No real dataset can be found or fetched: HOME, CONVAE_DATA and the system roots all point into tmp_path."""
    from convae.data import idx

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CONVAE_NO_DOWNLOAD", "1")
    monkeypatch.delenv("CONVAE_DATA", raising=False)
    monkeypatch.setattr(idx, "SEARCH_ROOTS", (str(tmp_path / "system"),))
    return tmp_path
