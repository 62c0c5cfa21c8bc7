"""Kill a training run with SIGKILL, resume it, and compare with a run that was never killed.

    nice python bench/kill_resume.py                 # 20 random kills + every checkpoint step
    nice python bench/kill_resume.py --kills 5 --no-steps

Two experiments on a tiny ConvAE (synthetic 8x8 images, fp32, one CPU thread):

random kills
    ``convae train`` runs as a subprocess and is sent SIGKILL at a random moment after it has
    written its first checkpoint; it is resumed (``--resume``, or a fresh start when no checkpoint exists
    yet) until ``--kills`` kills have landed, then runs to the end. Epochs are two steps long,
    with a checkpoint after each; half the kills wait for a checkpoint write to be under way.
checkpoint steps
    A driver process forks one child per kill point; the child kills itself with SIGKILL right
    after a step of the checkpoint protocol (a temporary file written and fsynced, or a rename),
    then a second child resumes the run. Every on-disk state a checkpoint passes through is hit.

Both end by comparing ``model.safetensors`` byte for byte with an uninterrupted run. The test
suite (tests/test_reliability.py) imports this file and runs both with fewer kills.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EPOCHS = 200
SETTINGS = ["model.channels=4,8", "model.latent_dim=4", "train.batch_size=16", "train.threads=1",
            "train.precision=fp32", "train.seed=0", "train.val_fraction=0.2",
            "train.schedule=none"]  # flat: the tests extend runs with --epochs on resume, which a cosine schedule would bend
RUN_FILES = ("config.json", "model.safetensors", "trainer_state.pt")


def make_data(path: Path) -> Path:
    """40 random 8x8 uint8 images: 32 train + 8 validation, two steps per epoch."""
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    np.savez(path, x=images)
    return path


def settings(data: Path, epochs: int) -> list[str]:
    return [f"data.spec=npz:{data}", f"train.epochs={epochs}", *SETTINGS]


def reference_weights(data: Path, run_dir: Path, epochs: int) -> Path:
    """Train uninterrupted in this process; the path of the weights file."""
    import torch

    from convae.config import RunConfig, apply_overrides
    from convae.training import train

    threads = torch.get_num_threads()
    try:
        train(apply_overrides(RunConfig(), settings(data, epochs)), run_dir, progress=False)
    finally:
        torch.set_num_threads(threads)
    return run_dir / "model.safetensors"


def _env() -> dict[str, str]:
    return {**os.environ, "CONVAE_NO_DOWNLOAD": "1", "PYTHONUNBUFFERED": "1"}


def cli_command(data: Path, run_dir: Path, epochs: int) -> list[str]:
    """A fresh ``convae train`` when the run has no checkpoint yet, else ``--resume``."""
    base = [sys.executable, "-m", "convae", "train", "--run-dir", str(run_dir), "-q"]
    if (run_dir / "trainer_state.pt").exists():
        return base + ["--resume"]
    return base + [arg for s in settings(data, epochs) for arg in ("--set", s)]


def epochs_done(run_dir: Path) -> int:
    """Epochs the run has finished, from metrics.jsonl (replaced atomically after each checkpoint)."""
    try:
        return len((run_dir / "metrics.jsonl").read_bytes().splitlines())
    except FileNotFoundError:
        return 0


def in_checkpoint_write(run_dir: Path) -> bool:
    """Whether a checkpoint is half-written (a temporary or pending file exists)."""
    try:
        return any(e.name.endswith(".tmp") or e.name == "model.next.safetensors" for e in os.scandir(run_dir))
    except FileNotFoundError:
        return False


def random_kills(data: Path, run_dir: Path, epochs: int, kills: int, *, seed: int = 0, max_delay: float = 0.4,
                 aim_at_writes: float = 0.5, log=print) -> dict:
    """SIGKILL ``convae train`` ``kills`` times, resuming each time; then let it finish.

    Kills are paced by training progress, not by the clock, so they land on a fast machine and a
    slow one alike: kill ``i`` (from 1) waits until this process has written a checkpoint and the run
    has finished at least ``i * epochs // (kills + 1)`` epochs, then a random time of at most one
    epoch (as measured in this process) and ``max_delay`` s. A fraction ``aim_at_writes`` of the
    kills then also waits (polling the directory) until a checkpoint write is under way.
    Returns the counts and the final weights' path.
    """
    rng = random.Random(seed)
    landed = during_write = launches = 0
    while True:
        command = cli_command(data, run_dir, epochs)
        started = time.time_ns()
        launches += 1
        proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if landed < kills:
            state = run_dir / "trainer_state.pt"  # rewritten by every checkpoint: this process is in the loop
            while proc.poll() is None and not (state.exists() and state.stat().st_mtime_ns >= started):
                time.sleep(0.002)
            first_seen, first_epochs = time.monotonic(), epochs_done(run_dir)
            target = max(first_epochs + 1, (landed + 1) * epochs // (kills + 1))
            while proc.poll() is None and epochs_done(run_dir) < target:
                time.sleep(0.001)
            per_epoch = (time.monotonic() - first_seen) / max(1, epochs_done(run_dir) - first_epochs)
            time.sleep(rng.uniform(0.0, min(max_delay, per_epoch)))
            if rng.random() < aim_at_writes:
                deadline = time.monotonic() + 2.0
                while proc.poll() is None and time.monotonic() < deadline and not in_checkpoint_write(run_dir):
                    pass  # busy-poll: a write lasts about a millisecond
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                landed += 1
                mid = in_checkpoint_write(run_dir)
                during_write += mid
                log(f"kill {landed}: {'during a checkpoint write' if mid else 'between checkpoints'}")
                continue
        _, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {proc.returncode} after {landed} kills:\n{stderr.decode()}")
        if landed >= kills:
            break
        log(f"run finished after {landed} kills; fewer than {kills} asked (raise --epochs)")
        break
    return {"kills": landed, "during_write": during_write, "launches": launches,
            "weights": run_dir / "model.safetensors",
            "leftovers": sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_FILES and not p.name.startswith("metrics."))}


# --- kill points inside the checkpoint protocol ------------------------------------------------------
_DRIVER = r'''
import json, os, signal, stat, sys
from pathlib import Path
import convae.runs as runs  # imports torch; this process never computes, its forked children do
import torch._dynamo  # imported lazily by the optimizer: import it once here, not in every child
from convae.config import RunConfig, apply_overrides
from convae.training import train

spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["bench"])
from kill_resume import same_weights
config = lambda: apply_overrides(RunConfig(), spec["settings"])

def child(body):
    pid = os.fork()
    if pid == 0:
        try:
            body()
            code = 0
        except BaseException as e:
            print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status

def kill_at(point, run_dir):
    """Count the protocol's steps; SIGKILL this process right after step number `point`."""
    count = {"n": 0, "label": None}
    real_fsync, real_replace = os.fsync, os.replace
    def step(label):
        count["n"] += 1
        if count["n"] == point:
            with open(os.path.join(spec["out"], f"label-{point}"), "w") as f:
                f.write(label)
            os.kill(os.getpid(), signal.SIGKILL)
    def fsync(fd):
        real_fsync(fd)
        if stat.S_ISREG(os.fstat(fd).st_mode):  # a temporary file written and flushed, not yet renamed
            step("wrote " + os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
    def replace(src, dst):
        real_replace(src, dst)
        step(f"renamed {os.path.basename(src)} -> {os.path.basename(dst)}")
    os.fsync, os.replace = fsync, replace
    train(config(), run_dir, progress=False)

results = []
for point in spec["points"]:
    run_dir = Path(spec["out"]) / f"run-{point}"
    status = child(lambda: kill_at(point, run_dir))
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    label_file = Path(spec["out"]) / f"label-{point}"
    label = label_file.read_text() if label_file.exists() else None
    if not killed:
        results.append({"point": point, "killed": False})
        continue
    fresh = not (run_dir / runs.STATE).exists()
    if fresh:  # killed before the first checkpoint: nothing to resume, start again
        resumed = child(lambda: train(config(), run_dir, progress=False))
    else:
        resumed = child(lambda: train(None, run_dir, resume=True, progress=False))
    same = resumed == 0 and same_weights(run_dir / runs.WEIGHTS, spec["reference"])
    epochs = [json.loads(line)["epoch"] for line in (run_dir / runs.METRICS_JSONL).read_text().splitlines()] if resumed == 0 else None
    leftovers = sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".") or p.name == "model.next.safetensors")
    results.append({"point": point, "killed": True, "label": label, "restarted_fresh": fresh, "resumed": resumed == 0,
                    "bitwise_equal": same, "metrics_epochs": epochs, "leftovers": leftovers})
print(json.dumps(results))
'''


def same_weights(a, b) -> bool:
    """Every tensor of two safetensors files bitwise equal (same names, dtypes, shapes, bytes).

    Not the files' bytes: safetensors writes its metadata in an order that varies between processes.
    """
    from safetensors.numpy import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and x[k].shape == y[k].shape
                                        and x[k].tobytes() == y[k].tobytes() for k in x)


def checkpoint_step_kills(data: Path, out: Path, reference: Path, epochs: int, points: list[int]) -> list[dict]:
    """For each kill point (1-based step of the write protocol, counted from the start of a fresh
    run), kill a forked training child right after that step, resume it, compare the weights."""
    out.mkdir(parents=True, exist_ok=True)
    spec = {"settings": settings(data, epochs), "points": points, "out": str(out), "reference": str(reference),
            "bench": str(Path(__file__).resolve().parent)}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(spec)], env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"kill-point driver failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Steps of a fresh run: config.json (2), then per epoch: weights to model.next (2), state (2),
# model.next -> model (1), metrics.jsonl (2), metrics.csv (2): 9 steps per checkpoint.
STEPS_PER_CHECKPOINT = 9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=0.4, help="seconds; kills land uniformly in [0, this] after training starts")
    parser.add_argument("--no-steps", action="store_true", help="skip the kill-at-every-checkpoint-step experiment")
    args = parser.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory(prefix="convae-kill-") as tmp:
        tmp = Path(tmp)
        data = make_data(tmp / "images.npz")
        t0 = time.perf_counter()
        reference = reference_weights(data, tmp / "reference", args.epochs)
        result = random_kills(data, tmp / "killed", args.epochs, args.kills, seed=args.seed, max_delay=args.max_delay)
        equal = same_weights(result["weights"], reference)
        ok &= equal and result["kills"] == args.kills and not result["leftovers"]
        print(f"random SIGKILLs: {result['kills']}/{args.kills} survived ({result['during_write']} during a checkpoint write), "
              f"{result['launches']} launches; final weights bitwise equal to the uninterrupted run: {'yes' if equal else 'NO'}; "
              f"leftover files: {result['leftovers'] or 'none'}  [{time.perf_counter() - t0:.0f} s]")
        if not args.no_steps:
            t0 = time.perf_counter()
            short = 3
            short_reference = reference_weights(data, tmp / "reference-short", short)
            points = list(range(1, 2 + STEPS_PER_CHECKPOINT * short + 1))  # config.json, then all 3 checkpoints
            rows = checkpoint_step_kills(data, tmp / "steps", short_reference, short, points)
            # a fresh restart (killed before the first checkpoint) does not clean up: only resume does
            good = [r for r in rows if r["killed"] and r["bitwise_equal"] and (r["restarted_fresh"] or not r["leftovers"])
                    and r["metrics_epochs"] == list(range(1, short + 1))]
            stale = sum(bool(r.get("leftovers")) for r in rows)
            ok &= len(good) == len(points)
            for r in rows:
                if r not in good:
                    print(f"  kill point {r['point']} ({r.get('label')}): {r}")
            print(f"kills at checkpoint steps: {len(good)}/{len(points)} resumed bitwise equal "
                  f"(every step of writing config.json and 3 checkpoints; metrics complete); {stale} left a stale "
                  f"temporary file (killed before the first checkpoint, restarted fresh)  [{time.perf_counter() - t0:.0f} s]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
