"""Nothing lost, no one let in: checkpoint safety, damaged run directories, kills, full disks,
read-only directories, non-finite losses and Ctrl-C (issue 5, sections 1 and 2).

The kill experiments use bench/kill_resume.py, which runs the same ones with more kills."""

from __future__ import annotations

import ast
import errno
import importlib.util
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import convae
from convae import NonFiniteLossError, RunError, RunFormatError, TrainingInterrupted, atomic, cli, runs
from convae.config import RunConfig, apply_overrides
from convae.runs import CONFIG, METRICS_JSONL, PENDING_WEIGHTS, STATE, WEIGHTS, load_run, load_trainer_state
from convae.training import train

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "convae"

_spec = importlib.util.spec_from_file_location("kill_resume", REPO / "bench" / "kill_resume.py")
kill_resume = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kill_resume)
same_weights = kill_resume.same_weights


@pytest.fixture(autouse=True)
def keep_thread_count():
    """The tiny runs use one thread (bitwise resume); give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Synthetic 8x8 data and uninterrupted 3-epoch and 20-epoch runs of the bench's tiny ConvAE."""
    root = tmp_path_factory.mktemp("tiny")
    data = kill_resume.make_data(root / "images.npz")
    refs = {epochs: kill_resume.reference_weights(data, root / f"reference-{epochs}", epochs) for epochs in (3, 20)}
    return {"root": root, "data": data, "reference": refs}


def tiny_config(tiny, epochs=3, *extra):
    return apply_overrides(RunConfig(), kill_resume.settings(tiny["data"], epochs) + list(extra))


def trained_run(tiny, tmp_path, epochs=1, name="run"):
    """A copy of a finished run (trained once per module, copied per test)."""
    source = tiny["root"] / f"trained-{epochs}"
    if not source.exists():
        train(tiny_config(tiny, epochs), source, progress=False)
    shutil.copytree(source, tmp_path / name)
    return tmp_path / name


# --- 1. checkpoint safety -------------------------------------------------------------------------
def _calls(tree: ast.AST, module: str, function: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and _is_attribute(node.func, module, function)]


def _is_attribute(node: ast.AST, module: str, name: str) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == name and isinstance(node.value, ast.Name) and node.value.id == module


def _keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def test_every_torch_load_in_the_source_passes_weights_only_true():
    unsafe, n_loads = [], 0
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        calls = _calls(tree, "torch", "load")
        n_loads += len(calls)
        unsafe += [f"{path.name}:{c.lineno} torch.load without weights_only=True" for c in calls if not _keyword_is(c, "weights_only", True)]
        # torch.load used other than as a direct call (aliased, passed around) escapes the check above
        references = [n for n in ast.walk(tree) if _is_attribute(n, "torch", "load")]
        unsafe += [f"{path.name}:{n.lineno} torch.load referenced, not called" for n in references if not any(c.func is n for c in calls)]
        unsafe += [f"{path.name}:{n.lineno} imports a loader from torch or pickle" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   and n.module in ("torch", "torch.serialization", "pickle") and {a.name for a in n.names} & {"load", "loads"}]
        unsafe += [f"{path.name}:{c.lineno} pickle.{c.func.attr}" for c in _calls(tree, "pickle", "load") + _calls(tree, "pickle", "loads")]
        unsafe += [f"{path.name}:{c.lineno} np.load with allow_pickle=True" for c in _calls(tree, "np", "load") if _keyword_is(c, "allow_pickle", True)]
    assert n_loads >= 1  # the scan sees runs.load_trainer_state's call
    assert not unsafe, unsafe


class _Payload:
    """Unpickling this creates `marker`: a stand-in for any code an attacker would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_states(marker: Path) -> dict[str, bytes]:
    zipped = io.BytesIO()
    torch.save({"epoch": 1, "optimizer": _Payload(marker)}, zipped)  # torch's own (zip) format
    return {"torch-zip": zipped.getvalue(), "raw-pickle": pickle.dumps({"epoch": 1, "x": _Payload(marker)})}


def test_the_malicious_payload_is_live_when_unpickled_unsafely(tmp_path):
    """Control: the crafted file would run code if anyone loaded it the unsafe way."""
    marker = tmp_path / "pwned"
    data = _malicious_states(marker)["torch-zip"]
    torch.load(io.BytesIO(data), weights_only=False)  # noqa: S614 - deliberately unsafe, in a test
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["torch-zip", "raw-pickle"])
def test_malicious_trainer_state_is_refused_without_running(tiny, tmp_path, kind, capsys):
    run = trained_run(tiny, tmp_path)
    marker = tmp_path / "pwned"
    (run / STATE).write_bytes(_malicious_states(marker)[kind])
    with pytest.raises(RunError, match=rf"{STATE}: refused"):
        load_trainer_state(run / STATE)
    with pytest.raises(RunError, match=STATE):
        train(None, run, resume=True, progress=False)
    assert cli.main(["train", "--run-dir", str(run), "--resume", "-q"]) == 2
    assert STATE in capsys.readouterr().err
    assert not marker.exists()


# --- damaged run directories: every entry point names the file ----------------------------------------
def _edit_config(run: Path, edit) -> None:
    record = json.loads((run / CONFIG).read_text())
    edit(record)
    (run / CONFIG).write_text(json.dumps(record))


DAMAGE = {
    # name: (how to damage the run, what the error says)
    "truncated weights": (lambda r: (r / WEIGHTS).write_bytes((r / WEIGHTS).read_bytes()[:-100]), rf"{WEIGHTS}: not a valid safetensors.*truncated"),
    "zero-byte weights": (lambda r: (r / WEIGHTS).write_bytes(b""), rf"{WEIGHTS}: empty file \(0 bytes\)"),
    "garbled weights": (lambda r: (r / WEIGHTS).write_bytes(os.urandom(2000)), rf"{WEIGHTS}: not a valid safetensors"),
    "garbled header": (lambda r: (r / WEIGHTS).write_bytes((r / WEIGHTS).read_bytes().replace(b'"shape"', b'"shope"')),
                       rf"{WEIGHTS}: not a valid safetensors"),
    "shape mismatch": (lambda r: _edit_config(r, lambda c: c["model"].update(latent_dim=5)),
                       rf"{WEIGHTS} does not match {CONFIG}: tensor '.*' has shape"),
    "layer mismatch": (lambda r: _edit_config(r, lambda c: c["model"].update(channels=[4, 8, 8])),
                       rf"{WEIGHTS} does not match {CONFIG}: missing tensors \['.*unexpected tensors \['"),
    "newer format": (lambda r: _edit_config(r, lambda c: c.update(format_version=99)), rf"{CONFIG}: format_version 99 is newer"),
    "missing config": (lambda r: (r / CONFIG).unlink(), rf"{CONFIG}: missing"),
    "missing weights": (lambda r: (r / WEIGHTS).unlink(), rf"{WEIGHTS}: missing"),
    "garbled config": (lambda r: (r / CONFIG).write_text("{not json"), rf"{CONFIG}: not readable JSON"),
    "unknown config key": (lambda r: _edit_config(r, lambda c: c["train"].update(learning_rate=1)), rf"{CONFIG}: unknown key 'train.learning_rate'"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_run_directory_errors_name_the_file(tiny, tmp_path, case, capsys):
    run = trained_run(tiny, tmp_path)
    damage, message = DAMAGE[case]
    damage(run)
    error = RunFormatError if case == "newer format" else RunError
    with pytest.raises(error, match=message):
        load_run(run)
    with pytest.raises(error, match=message):
        train(None, run, resume=True, progress=False)
    for name, call in _library_entry_points(tiny, tmp_path):
        with pytest.raises(error, match=message):
            call(run)
    for argv in _cli_entry_points(run, tmp_path):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("convae: error:") and re.search(message, err), (argv, err)


def _library_entry_points(tiny, tmp_path):
    """Every library function that opens a run directory (those this version has)."""
    from convae.features import extract_to_npy
    from convae.sklearn import EncoderFeatures

    yield "EncoderFeatures", lambda run: EncoderFeatures(run).fit()
    yield "extract_to_npy", lambda run: extract_to_npy(run, f"npz:{tiny['data']}", tmp_path / "features.npy", progress=False)
    try:
        from convae.analysis.probe import probe
    except ImportError:
        pass
    else:
        yield "probe", lambda run: probe(run, f"npz:{tiny['data']}")
    try:
        from convae.export import export
    except ImportError:
        pass
    else:
        yield "export", lambda run: export(run, tmp_path / "encoder.safetensors", format="safetensors")


def _cli_entry_points(run, tmp_path):
    verbs = cli.build_parser()._subparsers._group_actions[0].choices
    yield ["inspect", str(run)]
    yield ["train", "--run-dir", str(run), "--resume", "-q"]
    if "export" in verbs:
        yield ["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "encoder.safetensors")]
    if "viz" in verbs:
        yield ["viz", str(run), "filters", "--out", str(tmp_path / "viz")]
    if "report" in verbs:
        yield ["report", str(run), "--out", str(tmp_path / "report.html")]
    if "extract" in verbs:
        yield ["extract", str(run), "--out", str(tmp_path / "features.npy")]
    if "probe" in verbs:
        yield ["probe", str(run)]


def test_missing_trainer_state_says_there_is_nothing_to_resume(tiny, tmp_path):
    run = trained_run(tiny, tmp_path)
    (run / STATE).unlink()
    with pytest.raises(RunError, match=rf"{STATE}: missing; nothing to resume"):
        train(None, run, resume=True, progress=False)
    load_run(run)  # the weights alone still load


# --- 2. kills --------------------------------------------------------------------------------------------
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted_bitwise(tiny, tmp_path):
    result = kill_resume.random_kills(tiny["data"], tmp_path / "run", 20, kills=2, seed=1, max_delay=0.3, log=lambda _: None)
    assert result["kills"] == 2
    assert same_weights(result["weights"], tiny["reference"][20])
    assert result["leftovers"] == []
    assert [json.loads(line)["epoch"] for line in (tmp_path / "run" / METRICS_JSONL).read_text().splitlines()] == list(range(1, 21))


# Steps of a fresh 3-epoch run's writes, counted from 1 (see bench/kill_resume.py): config.json is
# steps 1-2, then each checkpoint is 9: weights to model.next (tmp, rename), state (tmp, rename),
# model.next -> model.safetensors, metrics.jsonl (tmp, rename), metrics.csv (tmp, rename).
KILL_POINTS = {
    6: "first checkpoint: state renamed, model.safetensors not there yet",
    13: "model.next written, state still the old one",
    15: "state renamed, weights still in model.next",
    24: "last checkpoint: state renamed, weights in model.next (nothing left to train)",
    25: "last checkpoint whole, metrics behind (nothing left to train)",
}


def test_sigkill_at_each_step_of_a_checkpoint_resumes_bitwise(tiny, tmp_path):
    rows = kill_resume.checkpoint_step_kills(tiny["data"], tmp_path, tiny["reference"][3], 3, sorted(KILL_POINTS))
    for row in rows:
        assert row["killed"] and row["resumed"], (KILL_POINTS[row["point"]], row)
        assert row["bitwise_equal"], (KILL_POINTS[row["point"]], row)
        assert row["metrics_epochs"] == [1, 2, 3] and row["leftovers"] == [], (KILL_POINTS[row["point"]], row)
    labels = {row["point"]: row["label"] for row in rows}
    assert labels[15].startswith("renamed .trainer_state.pt") and labels[25] == "renamed model.next.safetensors -> model.safetensors"


def test_torn_checkpoint_is_finished_on_resume_and_load_run_reads_whole_weights(tiny, tmp_path):
    """The pair a kill between steps 2 and 3 leaves: load_run reads the older whole weights,
    resume moves the newer ones into place."""
    one = trained_run(tiny, tmp_path, epochs=1, name="one")
    two = trained_run(tiny, tmp_path, epochs=2, name="two")
    shutil.copy(two / WEIGHTS, one / PENDING_WEIGHTS)
    shutil.copy(two / STATE, one / STATE)
    (one / ".model.next.safetensors.abc123.tmp").write_bytes(b"half")
    assert same_weights(load_run(one).path / WEIGHTS, tiny["root"] / "trained-1" / WEIGHTS)
    state = load_trainer_state(one / STATE)
    assert state["epoch"] == 2 and not (one / PENDING_WEIGHTS).exists()
    assert load_run(one).weights_sha256 == state["weights_sha256"]
    assert [p.name for p in one.iterdir() if p.name.startswith(".")] == []
    assert len((one / METRICS_JSONL).read_text().splitlines()) == 2


def test_stale_pending_weights_are_discarded(tiny, tmp_path):
    run = trained_run(tiny, tmp_path, epochs=1)
    (run / PENDING_WEIGHTS).write_bytes(b"weights of a checkpoint whose state was never written")
    before = (run / WEIGHTS).read_bytes()
    load_trainer_state(run / STATE)
    assert not (run / PENDING_WEIGHTS).exists() and (run / WEIGHTS).read_bytes() == before


# --- full disk, read-only directory ---------------------------------------------------------------------
def _fd_name(fd: int) -> str:
    return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))


def _inject(monkeypatch, fault: str, target: str) -> None:
    """Make the write of `target` (a run file name) fail the way `fault` says."""
    real_fdopen, real_fsync, real_mkstemp, real_replace = os.fdopen, os.fsync, atomic.tempfile.mkstemp, os.replace

    class FullFile(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return FullFile(f) if fault == "write ENOSPC" and _fd_name(fd).startswith(f".{target}.") else f

    def fsync(fd):
        if fault == "fsync ENOSPC" and _fd_name(fd).startswith(f".{target}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    def mkstemp(*args, prefix="", **kwargs):
        if fault == "mkstemp EROFS" and prefix.startswith(f".{target}."):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, prefix=prefix, **kwargs)

    def replace(src, dst):
        if fault == "replace EACCES" and os.path.basename(dst) == target:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(atomic.os, "replace", replace)


FAULTS = [
    ("write ENOSPC", PENDING_WEIGHTS, "No space left on device"),
    ("fsync ENOSPC", STATE, "No space left on device"),
    ("write ENOSPC", METRICS_JSONL, "No space left on device"),
    ("mkstemp EROFS", CONFIG, "Read-only file system"),  # a read-only run directory: the first write on resume
    ("mkstemp EROFS", PENDING_WEIGHTS, "Read-only file system"),
    ("replace EACCES", STATE, "Permission denied"),
    ("replace EACCES", WEIGHTS, "Permission denied"),  # the last step: the state already names model.next
]


@pytest.mark.parametrize("fault,target,reason", FAULTS, ids=[f"{f} {t}" for f, t, _ in FAULTS])
def test_full_disk_or_read_only_directory_keeps_last_checkpoint(tiny, tmp_path, monkeypatch, fault, target, reason):
    run = trained_run(tiny, tmp_path, epochs=2)
    _inject(monkeypatch, fault, target)
    with pytest.raises(RunError, match=rf"{target}.*{reason}"):
        train(tiny_config(tiny, 3), run, resume=True, progress=False)
    monkeypatch.undo()
    # the last good checkpoint is readable: the 2-epoch weights, or the 3-epoch ones once they were whole
    weights = run / WEIGHTS
    load_run(run)
    assert same_weights(weights, tiny["root"] / "trained-2" / WEIGHTS) or same_weights(weights, tiny["reference"][3])
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    train(tiny_config(tiny, 3), run, resume=True, progress=False)  # the fault gone, the run finishes as if never hit
    assert same_weights(run / WEIGHTS, tiny["reference"][3])


def test_read_only_directory_from_the_cli_is_a_clear_error(tiny, tmp_path, monkeypatch, capsys):
    run = trained_run(tiny, tmp_path, epochs=1)
    _inject(monkeypatch, "mkstemp EROFS", CONFIG)
    assert cli.main(["train", "--run-dir", str(run), "--resume", "--epochs", "2", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {run / CONFIG}: Read-only file system; the previous file, if any, is unchanged" in err


# --- non-finite loss ------------------------------------------------------------------------------------------
def test_absurd_learning_rate_stops_with_epoch_and_step_before_writing_a_checkpoint(tiny, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at epoch 1, step \d+") as caught:
        train(tiny_config(tiny, 3, "train.lr=1e10"), tmp_path / "run", progress=False)
    assert caught.value.epoch == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CONFIG]  # no NaN weights written


# --- Ctrl-C ------------------------------------------------------------------------------------------------------
def test_sigint_exits_130_and_leaves_a_resumable_run(tiny, tmp_path):
    run = tmp_path / "run"
    command = kill_resume.cli_command(tiny["data"], run, 20)
    proc = subprocess.Popen(command, env=kill_resume._env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / STATE).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # interrupt once training is under way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"checkpoint saved in {run}. Resume with: convae train --run-dir {run} --resume" in err
    state = load_trainer_state(run / STATE)
    assert 1 <= state["epoch"] < 20
    result = train(None, run, resume=True, progress=False)
    assert same_weights(run / WEIGHTS, tiny["reference"][20])
    assert [r["epoch"] for r in result.history] == list(range(1, 21))


def test_ctrl_c_during_the_optimizer_step_is_held_until_the_step_is_whole(tiny, tmp_path, monkeypatch):
    """SIGINT arriving inside the optimizer's step (it loops over parameters in Python) waits for the step.

    Before this was held, a checkpoint could hold the step's new weights with the position before
    it, and resuming redid the step: CI saw it once in the CLI Ctrl-C test above (1 run in 40 here).
    """
    import convae.training.loop as training

    original, calls = training.make_optimizer, {"n": 0}

    def interrupting_optimizer(model, cfg):
        optimizer = original(model, cfg)
        step = optimizer.step

        def step_then_sigint(*args, **kwargs):
            calls["n"] += 1
            out = step(*args, **kwargs)
            if calls["n"] == 3:  # epoch 2, step 1: the update is done, the step counters are not
                signal.raise_signal(signal.SIGINT)
            return out

        optimizer.step = step_then_sigint
        return optimizer

    monkeypatch.setattr(training, "make_optimizer", interrupting_optimizer)
    with pytest.raises(TrainingInterrupted, match="epoch 2, step 1;"):
        train(tiny_config(tiny, 3), tmp_path / "run", progress=False)
    monkeypatch.undo()
    assert load_trainer_state(tmp_path / "run" / STATE)["global_step"] == 3
    train(None, tmp_path / "run", resume=True, progress=False)
    assert same_weights(tmp_path / "run" / WEIGHTS, tiny["reference"][3])


@pytest.mark.parametrize("where", ["evaluate", "save_checkpoint"])
def test_ctrl_c_at_the_end_of_an_epoch_resumes_bitwise(tiny, tmp_path, monkeypatch, where):
    """Ctrl-C while the epoch's validation or checkpoint runs: the epoch counts once, and only once."""
    import convae.training.loop as training

    module = training if where == "evaluate" else runs
    original = getattr(module, where)
    calls = {"n": 0}

    def interrupted_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # during epoch 2's end
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, where, interrupted_once)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(tiny_config(tiny, 3), tmp_path / "run", progress=False)
    monkeypatch.undo()
    result = train(None, tmp_path / "run", resume=True, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert same_weights(tmp_path / "run" / WEIGHTS, tiny["reference"][3])


def test_pickled_arrays_are_refused_without_running(tmp_path):
    from convae.data import load_dataset

    marker = tmp_path / "pwned"
    np.save(tmp_path / "evil.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "evil.npz", x=np.array([_Payload(marker)], dtype=object))
    for spec in (f"npy:{tmp_path / 'evil.npy'}", f"npz:{tmp_path / 'evil.npz'}"):
        with pytest.raises(convae.DataError, match="evil.np"):
            load_dataset(spec)
    assert not marker.exists()
