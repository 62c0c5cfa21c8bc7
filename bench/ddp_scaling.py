"""Training throughput of one process against N processes (torchrun, gloo) on this machine.

    python bench/ddp_scaling.py [--images 4096] [--size 28] [--epochs 2] [--repeats 2] [--nproc 2]

Writes a synthetic uint8 dataset, then trains the default ConvAE (fp32, global batch 128) with
each configuration in turn, ``--repeats`` rounds interleaved so that other load on the machine
falls on all of them alike, and prints the images/s of the last epoch of each run (the first
epoch pays for start-up). Configurations: one process with all threads, one process with one
thread, and N processes with one thread each (``convae train --nproc N``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def run(name: str, args: list[str], workdir: Path, threads: int) -> float:
    run_dir = workdir / f"{name}-{len(list(workdir.iterdir()))}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "convae", "train", *args, "--threads", str(threads), "--run-dir", str(run_dir), "-q"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return float(last["images_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--nproc", type=int, default=2)
    a = p.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        np.savez(tmp / "data.npz", x=(rng.random((a.images, a.size, a.size)) * 255).astype(np.uint8))
        common = ["--data", f"npz:{tmp / 'data.npz'}", "--epochs", str(a.epochs), "--batch-size", "128", "--precision", "fp32",
                  "--set", "train.val_fraction=0"]
        configs = {f"1 process x {cores} threads": (common, cores), "1 process x 1 thread": (common, 1),
                   f"{a.nproc} processes x 1 thread": (common + ["--nproc", str(a.nproc)], 1)}
        results: dict[str, list[float]] = {k: [] for k in configs}
        for _ in range(a.repeats):
            for name, (args, threads) in configs.items():
                results[name].append(run(name.replace(" ", "_"), args, tmp, threads))
    base = statistics.median(results[f"1 process x {cores} threads"])
    print(f"{a.images} images {a.size}x{a.size}, default ConvAE, fp32, global batch 128, {cores} CPU cores; "
          f"images/s of epoch {a.epochs} (median of {a.repeats}, each run)")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:28s} {median:8.0f} img/s  ({median / base:4.2f}x)   runs: {', '.join(f'{v:.0f}' for v in values)}")


if __name__ == "__main__":
    main()
