"""Two CPU processes (gloo) give what one process gives: per-step losses, weights, resume, extraction.

One module-scoped job spawns two ranks once and runs every distributed scenario in them; the
tests compare its outputs with single-process runs made here. The model is the default ConvAE,
BatchNorm on (synchronised over the ranks), with one more training run without BatchNorm. Data:
71 blobs images, so 64 train images in global batches of 7 (shards of 4 and 3) and a last batch
of 1 (one rank runs a stand-in at weight 0, which must stay out of the BatchNorm statistics).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from convae import load_run
from convae.config import RunConfig, apply_overrides
from convae.distributed import DistContext, shard_range
from convae.training.shards import RankBatch, rank_batches
from convae.runs import METRICS_JSONL, STATE, WEIGHTS

WORLD = 2
ALL_FILES = {"config.json", WEIGHTS, STATE, METRICS_JSONL, "metrics.csv"}


def ddp_config(spec, *extra):
    return apply_overrides(RunConfig(), [f"data.spec={spec}", "data.limit=71", "model.channels=4,8", "model.latent_dim=6",
                                         "train.epochs=2", "train.batch_size=7", "train.threads=1", "train.precision=fp32",
                                         "train.noise=0.1", "train.mask_ratio=0.2", "train.flip=true", "train.shift=1", "train.lr=3e-3", *extra])


NORMS = {"batch": (), "none": ("model.norm=none",)}  # the default model (BatchNorm), and one without


def gradient_free(weights: dict) -> set[str]:
    """The biases of convs feeding a BatchNorm layer (``P.i.bias`` where ``P.{i+1}`` is one), and its running means.

    BatchNorm takes out any per-channel shift of its input, so such a bias has a true gradient of
    exactly 0 and Adam moves it on rounding noise alone (its step is noise / (|noise| + eps)); its
    BatchNorm's running mean follows it. Two single-process runs with 1 and 2 threads differ there
    by about 5% (and agree to 1e-5 elsewhere), so these are left out of the weight comparison;
    what the network computes does not depend on them in training, and the validation metrics
    (eval mode) are compared in the history.
    """
    free = set()
    for key in weights:
        prefix, _, name = key.rpartition(".")
        parent, _, index = prefix.rpartition(".")
        if name == "running_mean" and index.isdigit():
            free |= {key, f"{parent}.{int(index) - 1}.bias"} & weights.keys()
    return free


def max_relative_difference(a: dict, b: dict, skip=()) -> float:
    """The largest per-tensor max|a - b| / max|b| over two state dicts with the same keys (less those in ``skip``)."""
    assert a.keys() == b.keys()
    worst = 0.0
    for key in b.keys() - set(skip):
        x, y = a[key].double(), b[key].double()
        scale = float(y.abs().max())
        worst = max(worst, float((x - y).abs().max()) / (scale if scale > 0 else 1.0))
    return worst


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(model):
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, port: int, spec: str, out: str) -> None:
    """One rank: per-step losses of train_model, train() interrupted and resumed, sharded extraction.

    The rank's stderr (and a native crash's Python stack, via faulthandler) goes to ``rank{N}.log``
    in ``out``, so a failure in the fixture can say what the rank printed.
    """
    import faulthandler

    import torch.distributed as dist

    log = open(f"{out}/rank{rank}.log", "w", buffering=1)
    os.dup2(log.fileno(), 2)
    faulthandler.enable(log)

    import convae.training.loop as training
    from convae.features import extract_to_npy_sharded
    from convae.models import build_model
    from convae.training import load_training_data, split_indices, train, train_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for norm, extra in NORMS.items():
            cfg = ddp_config(spec, *extra)
            data = load_training_data(cfg)
            torch.manual_seed(cfg.train.seed)
            model = build_model("conv", data.shape, **cfg.model.model_kwargs())
            train_idx, val_idx = split_indices(len(data), cfg.train.val_fraction, cfg.train.seed)
            losses = []
            result = train_model(model, data, cfg.train, train_indices=train_idx, val_indices=val_idx, progress=False,
                                 on_step=lambda step, loss, losses=losses: losses.append(loss))
            if rank == 0:
                torch.save({"losses": torch.tensor(losses, dtype=torch.float64), "weights": _state(model),
                            "history": json.dumps(result.history), "model_class": type(model.stages[0][1]).__name__},
                           f"{out}/steps-{norm}.pt")
        cfg = ddp_config(spec)

        # train() through a run directory, interrupted mid-epoch 2 on every rank, then resumed.
        original, calls = training.reconstruction_loss, {"n": 0}

        def interrupting(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 13:  # step 3 of epoch 2 (10 steps per epoch)
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        training.reconstruction_loss = interrupting
        try:
            train(cfg, f"{out}/cut", progress=False)
        except KeyboardInterrupt:  # TrainingInterrupted
            pass
        training.reconstruction_loss = original
        dist.barrier()
        resumed = train(None, f"{out}/cut", resume=True, progress=False)
        if rank == 0:
            torch.save({"weights": _state(resumed.model), "history": json.dumps(resumed.history)}, f"{out}/resumed.pt")

        extract_to_npy_sharded(f"{out}/cut", spec, f"{out}/feats/sharded.npy", layers=["stage1", "bottleneck"], pool="max2",
                               batch_size=50, precision="fp32", progress=False)
        dist.barrier()  # leave together
    finally:
        dist.destroy_process_group()


def _rank_logs(out) -> str:
    return "\n".join(f"--- rank {r} stderr (last 3000 characters) ---\n{(out / f'rank{r}.log').read_text(errors='replace')[-3000:]}"
                     for r in range(WORLD) if (out / f"rank{r}.log").exists())


@pytest.fixture(scope="module")
def ddp_job(tmp_path_factory, blobs_npz):
    """Spawn the two ranks once; their outputs are in the returned folder.

    A rank killed by a signal (a native crash in gloo's socket code, as in pytorch/pytorch#188266,
    seen once on CI as SIGABRT and never reproduced here) gets the whole job run again once, in a
    fresh folder on a fresh port, with a warning carrying the ranks' stderr. A Python exception in
    a rank, or a second crash, fails the tests with that stderr.
    """
    for attempt in (1, 2):
        out = tmp_path_factory.mktemp("ddp")
        try:
            mp.start_processes(_worker, args=(_free_port(), f"npz:{blobs_npz}", str(out)), nprocs=WORLD, start_method="spawn")
            return out
        except mp.ProcessExitedException as e:
            if attempt == 2 or not e.signal_name:
                raise RuntimeError(f"the two-rank job failed ({e})\n{_rank_logs(out)}") from e
            warnings.warn(f"two-rank job: {e}; running it once more\n{_rank_logs(out)}", stacklevel=1)
        except mp.ProcessRaisedException as e:
            raise RuntimeError(f"a rank raised\n{e}\n{_rank_logs(out)}") from e


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_rank_batches_cut_each_global_batch_like_one_process():
    from convae.data import ImageDataset

    images = torch.arange(23, dtype=torch.uint8).view(23, 1, 1, 1)
    data = ImageDataset(images=images, labels=None, spec="array", split="train")
    order = np.random.default_rng(0).permutation(23)
    shares = [list(rank_batches(data, order, 5, DistContext(r, 3))) for r in range(3)]
    assert [len(s) for s in shares] == [5, 5, 5]  # every rank steps together, the last batch (3 images) included
    for step in range(5):
        parts: list[RankBatch] = [s[step] for s in shares]
        got = torch.cat([p.images[: p.count] for p in parts]).flatten().tolist()
        assert got == order[step * 5:(step + 1) * 5].tolist()
        assert [p.start for p in parts] == [shard_range(parts[0].total, r, 3)[0] for r in range(3)]
    assert [p.count for p in (s[4] for s in shares)] == [1, 1, 1]
    tail = [list(rank_batches(data, order[:21], 5, DistContext(r, 3)))[-1] for r in range(3)]  # last batch of 1 image
    assert [p.count for p in tail] == [1, 0, 0] and all(len(p.images) == 1 for p in tail)


@pytest.mark.parametrize("norm", list(NORMS))
def test_two_process_step_losses_and_weights_match_one_process(ddp_job, blobs_npz, one_thread, norm):
    from convae.models import build_model
    from convae.training import load_training_data, split_indices, train_model

    cfg = ddp_config(f"npz:{blobs_npz}", *NORMS[norm])
    data = load_training_data(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model("conv", data.shape, **cfg.model.model_kwargs())
    train_idx, val_idx = split_indices(len(data), cfg.train.val_fraction, cfg.train.seed)
    losses = []
    single = train_model(model, data, cfg.train, train_indices=train_idx, val_indices=val_idx, progress=False,
                         on_step=lambda step, loss: losses.append(loss))
    ddp = torch.load(ddp_job / f"steps-{norm}.pt", weights_only=True)
    weights = _state(model)
    # BatchNorm's layers and running statistics are there (or not), and the trained model is the plain one
    assert any(key.endswith("running_var") for key in weights) == (norm == "batch")
    assert ddp["model_class"] == ("BatchNorm2d" if norm == "batch" else "Identity")
    assert len(losses) == len(ddp["losses"]) == 20
    np.testing.assert_allclose(ddp["losses"].numpy(), losses, rtol=1e-5, atol=0)
    free = gradient_free(weights)
    assert bool(free) == (norm == "batch")
    assert max_relative_difference(ddp["weights"], weights, skip=free) <= 1e-4
    for key in (k for k in weights if k.endswith("num_batches_tracked")):
        assert int(ddp["weights"][key]) == int(weights[key]) == 20, key
    # Eval mode uses the running means, which follow the gradient-free biases: with BatchNorm the validation
    # metrics of two single-process runs with 1 and 2 threads differ by about 1e-3 too.
    val_rel = 5e-3 if norm == "batch" else 1e-5
    for a, b in zip(json.loads(ddp["history"]), single.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        for key in ("val_mse", "val_psnr", "val_ssim"):
            assert a[key] == pytest.approx(b[key], rel=val_rel), key


def test_two_process_resume_after_interrupt_matches_uninterrupted_one_process(ddp_job, blobs_npz, tmp_path, one_thread):
    from convae.training import train

    full = train(ddp_config(f"npz:{blobs_npz}"), tmp_path / "full", progress=False)
    resumed = torch.load(ddp_job / "resumed.pt", weights_only=True)
    weights = _state(full.model)
    assert any(key.endswith("running_var") for key in weights)  # Ctrl-C restored the BatchNorm statistics of the cut step
    assert max_relative_difference(resumed["weights"], weights, skip=gradient_free(weights)) <= 1e-4
    for key in (k for k in weights if k.endswith("num_batches_tracked")):
        assert int(resumed["weights"][key]) == int(weights[key]) == 20, key
    history = json.loads(resumed["history"])
    assert [r["epoch"] for r in history] == [1, 2]
    assert [r["train_loss"] for r in history] == pytest.approx([r["train_loss"] for r in full.history], rel=1e-5)
    assert {p.name for p in (ddp_job / "cut").iterdir()} == ALL_FILES  # rank 0's files only, no leftovers
    assert load_run(ddp_job / "cut").config == full.config


def test_sharded_extraction_equals_one_process_output(ddp_job, blobs_npz, tmp_path):
    from convae.features import extract_to_npy

    single = extract_to_npy(ddp_job / "cut", f"npz:{blobs_npz}", tmp_path / "single.npy", layers=["stage1", "bottleneck"],
                            pool="max2", batch_size=50, precision="fp32", progress=False)
    sharded = json.loads((ddp_job / "feats" / "sharded.json").read_text())
    a, b = np.load(tmp_path / "single.npy"), np.load(ddp_job / "feats" / "sharded.npy")
    assert a.shape == b.shape == (200, 4 * 4 + 6 * 4)
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.load(ddp_job / "feats" / "sharded.labels.npy"), np.load(tmp_path / "single.labels.npy"))
    for key in ("seconds", "features", "labels", "world_size"):
        single.pop(key, None), sharded.pop(key, None)
    assert sharded == single
    assert sorted(p.name for p in (ddp_job / "feats").iterdir()) == ["sharded.json", "sharded.labels.npy", "sharded.npy"]


def test_cli_train_nproc_runs_torchrun_and_rank0_alone_writes(tmp_path, blobs_npz):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in (1, 2):  # once more only if a rank died by a signal, as ddp_job does
        run = tmp_path / f"run{attempt}"
        proc = subprocess.run([sys.executable, "-m", "convae", "train", "--nproc", "2", "--data", f"npz:{blobs_npz}", "--limit", "40",
                               "--set", "model.channels=4", "--set", "model.latent_dim=4", "--epochs", "1", "--batch-size", "8",
                               "--precision", "fp32", "--run-dir", str(run), "-q"], capture_output=True, text=True, env=env, timeout=300)
        if proc.returncode == 0 or attempt == 2 or "received by PID" not in proc.stderr:
            break
        warnings.warn(f"torchrun job: a rank died by a signal; running it once more\n{proc.stderr[-3000:]}", stacklevel=1)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("trained conv model") == 1  # printed by rank 0 only
    assert {p.name for p in run.iterdir()} == ALL_FILES
    assert [r["epoch"] for r in map(json.loads, (run / METRICS_JSONL).read_text().splitlines())] == [1]
