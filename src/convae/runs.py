"""The run directory: convae's one artifact format.

    run_dir/
      config.json          RunConfig + in_shape + library versions + format_version
      model.safetensors    the weights (never pickled)
      trainer_state.pt     optimizer, epoch, step, RNG states (tensors and plain types only,
                           read back with torch.load(weights_only=True))
      metrics.jsonl        one JSON record per epoch
      metrics.csv          the same records as CSV

Every file is written atomically: a temporary file in the same directory, flushed and fsynced,
then renamed over the old one, and the directory fsynced. A kill at any moment leaves either the
old file or the new one, never half of one.

A checkpoint is three steps (see :func:`save_checkpoint`): the new weights go to
``model.next.safetensors``; ``trainer_state.pt``, naming their SHA-256, replaces the old state;
then ``model.next.safetensors`` is renamed over ``model.safetensors``. A kill before the state is
replaced leaves the old pair whole; a kill after it leaves a state whose weights wait in
``model.next.safetensors``, and :func:`load_trainer_state` (resume) finishes the rename. So every
kill moment leaves a run that resumes, and ``model.safetensors`` is always a whole set of weights.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import platform
from importlib.metadata import PackageNotFoundError, version
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy
import safetensors
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import atomic
from ._version import __version__
from .config import RunConfig
from .errors import ArchitectureError, ConfigError, RunError, RunFormatError
from .models import build_from_config

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG, WEIGHTS, STATE, METRICS_JSONL, METRICS_CSV = "config.json", "model.safetensors", "trainer_state.pt", "metrics.jsonl", "metrics.csv"
PENDING_WEIGHTS = "model.next.safetensors"  # weights of a checkpoint whose last rename is still to come


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """:func:`convae.atomic.atomic_write_bytes`, reporting a failure as a RunError."""
    atomic.atomic_write_bytes(path, data, error=RunError)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic.atomic_write_text(path, text, error=RunError)


# --- config ---------------------------------------------------------------------------------------
def library_versions() -> dict[str, str]:

    try:  # the installed version, without importing sklearn (seconds) just to read it
        sklearn_version = version("scikit-learn")
    except PackageNotFoundError:
        sklearn_version = "not installed"
    return {"convae": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "sklearn": sklearn_version,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


def config_record(config: RunConfig, in_shape) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, **config.to_dict(), "in_shape": [int(v) for v in in_shape], "versions": library_versions()}


def save_config(run_dir: str | Path, config: RunConfig, in_shape) -> None:
    atomic_write_text(Path(run_dir) / CONFIG, json.dumps(config_record(config, in_shape), indent=2) + "\n")


def read_config(run_dir: str | Path) -> tuple[RunConfig, tuple[int, int, int], dict]:
    """Read and check ``config.json``: returns (config, in_shape, the raw record)."""
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    if not path.is_file():
        raise RunError(f"{path}: missing; a run directory needs {CONFIG} and {WEIGHTS}")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8, an int of over 4300 digits
        raise RunError(f"{path}: not readable JSON ({'nested too deeply' if isinstance(e, RecursionError) else e})") from None
    if not isinstance(record, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(record).__name__}")
    version = record.get("format_version")
    if not isinstance(version, int):
        raise RunError(f"{path}: no integer format_version; this is not a convae run directory")
    if version > FORMAT_VERSION:
        raise RunFormatError(f"{path}: format_version {version} is newer than this convae reads ({FORMAT_VERSION}); upgrade convae")
    try:
        config = RunConfig.from_dict(record, source=str(path))
        in_shape = tuple(int(v) for v in record["in_shape"])
        if len(in_shape) != 3:
            raise ValueError
    except ConfigError as e:
        raise RunError(str(e)) from None
    except (KeyError, TypeError, ValueError):
        raise RunError(f"{path}: in_shape must be [channels, height, width], got {record.get('in_shape')!r}") from None
    return config, in_shape, record


# --- weights --------------------------------------------------------------------------------------
def weights_bytes(model: torch.nn.Module) -> bytes:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return st_save(state, metadata={"format": "pt", "convae_format_version": str(FORMAT_VERSION)})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_weights(model: torch.nn.Module, path: str | Path) -> str:
    """Load safetensors weights into ``model``; mismatches name the tensor. Returns the SHA-256."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path}: missing; the run has no saved weights") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise RunError(f"{path}: empty file (0 bytes); the weights were never written or were truncated")
    try:
        state = st_load(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise RunError(f"{path}: not a valid safetensors file ({e}); it is truncated or damaged") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise RunError(
            f"{path} does not match config.json: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}"
            " (was the config edited, or the weights copied from another run?)"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise RunError(f"{path} does not match config.json: tensor {key!r} has shape {tuple(tensor.shape)}, the config builds {tuple(expected[key].shape)}")
    model.load_state_dict(state)
    return sha256(data)


# --- trainer state ----------------------------------------------------------------------------------
def state_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load_trainer_state(path: str | Path) -> dict:
    """Read ``trainer_state.pt`` with ``weights_only=True``: a pickle that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: missing; nothing to resume (train without --resume to start over)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError...: never executed, always refused
        raise RunError(f"{path}: refused or unreadable trainer state ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                       "only plain tensors and containers are accepted") from None
    if not isinstance(state, dict) or "epoch" not in state:
        raise RunError(f"{path}: not a convae trainer state (no epoch)")
    recover_checkpoint(path.parent, state)
    return state


def _rename(source: Path, target: Path, why: str) -> None:
    try:
        atomic.replace(source, target)
    except OSError as e:
        raise RunError(f"cannot rename {source} to {target.name}: {e.strerror or e}; {why}") from e


def save_checkpoint(run_dir: str | Path, model: torch.nn.Module, state: dict) -> str:
    """Write weights and trainer state so that a kill at any moment leaves a resumable run.

    1. the weights go to ``model.next.safetensors``;
    2. ``trainer_state.pt``, naming the weights' SHA-256, replaces the old state;
    3. ``model.next.safetensors`` is renamed over ``model.safetensors``.
    Each step is atomic; :func:`recover_checkpoint` finishes step 3 after a kill. Returns the SHA-256.
    """
    run_dir = Path(run_dir)
    data = weights_bytes(model)
    digest = sha256(data)
    atomic_write_bytes(run_dir / PENDING_WEIGHTS, data)
    atomic_write_bytes(run_dir / STATE, state_bytes({**state, "weights_sha256": digest}))
    _rename(run_dir / PENDING_WEIGHTS, run_dir / WEIGHTS,
            f"{STATE} names the weights in {PENDING_WEIGHTS}; resuming the run moves them into place")
    return digest


def _temporary_files(run_dir: Path) -> list[Path]:
    """Temporary files of atomic writes that a kill cut short."""
    names = (CONFIG, WEIGHTS, PENDING_WEIGHTS, STATE, METRICS_JSONL, METRICS_CSV)
    return sorted(p for name in names for p in run_dir.glob(f".{name}.*.tmp"))


def recover_checkpoint(run_dir: str | Path, state: dict) -> None:
    """Finish a checkpoint that a kill interrupted, given the trainer state on disk.

    ``model.next.safetensors`` whose hash the state names is renamed into place (the kill came
    between steps 2 and 3 of :func:`save_checkpoint`); one the state does not name is deleted (the
    kill came before step 2, so the old pair stands). Leftover temporary files are removed, and
    the metrics files are rewritten from the state's history when a kill left them behind it.
    """
    run_dir = Path(run_dir)
    pending = run_dir / PENDING_WEIGHTS
    if pending.is_file():
        try:
            pending_digest = sha256(pending.read_bytes())
        except OSError as e:
            raise RunError(f"{pending}: cannot read ({e.strerror})") from None
        if pending_digest == state.get("weights_sha256"):
            logger.info("%s: finishing the checkpoint a kill interrupted (%s -> %s)", run_dir, PENDING_WEIGHTS, WEIGHTS)
            _rename(pending, run_dir / WEIGHTS, "the checkpoint stays unfinished")
        else:
            _unlink_quietly(pending)
    for leftover in _temporary_files(run_dir):
        _unlink_quietly(leftover)
    history = state.get("history")
    if isinstance(history, list):
        try:
            current = read_metrics(run_dir)
        except (RunError, OSError, UnicodeDecodeError):
            current = None
        if current != history:
            write_metrics(run_dir, history)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:  # harmless to leave: the next checkpoint writes over it
        logger.warning("cannot remove %s: %s", path, e.strerror)


# --- metrics ----------------------------------------------------------------------------------------
def write_metrics(run_dir: str | Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl and metrics.csv from the full history (atomic; resume-safe)."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in history))
    keys: list[str] = []
    for record in history:
        keys += [k for k in record if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / METRICS_CSV, buf.getvalue())


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        return []
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise RunError(f"{path}:{i}: not a JSON record") from None
    return records


# --- loading a run ----------------------------------------------------------------------------------
@dataclass
class Run:
    """A loaded run: ``model, config = load_run(path)`` unpacks the two that matter most."""

    model: torch.nn.Module
    config: RunConfig
    path: Path
    in_shape: tuple[int, int, int]
    weights_sha256: str
    metrics: list[dict] = field(default_factory=list)
    record: dict = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        yield self.model
        yield self.config


def load_run(path: str | Path, *, map_location: str | torch.device = "cpu") -> Run:
    """Rebuild the model of a run directory from ``config.json`` and load its weights (eval mode)."""
    path = Path(path)
    config, in_shape, record = read_config(path)
    try:
        model = build_from_config(config, in_shape)
    except ArchitectureError as e:
        raise RunError(f"{path / CONFIG}: cannot build the model it describes: {e}") from None
    digest = load_weights(model, path / WEIGHTS)
    model.to(map_location).eval()
    return Run(model=model, config=config, path=path, in_shape=in_shape, weights_sha256=digest, metrics=read_metrics(path), record=record)


def as_run(run_or_path, *, map_location: str | torch.device = "cpu") -> Run:
    """A :class:`Run` as it is, or the run directory at a path loaded (the one way every verb turns its argument into a run)."""
    return run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path, map_location=map_location)
