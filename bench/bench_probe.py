"""The probe: wall time of ``convae probe --quick``, and what bf16 costs in probe accuracy.

Precision protocol: default ConvAE runs on the first ``n_images`` Fashion-MNIST training images
(10% of them held out for validation, as ``convae train`` does), ``epochs`` epochs, identical but
for ``train.precision`` (fp32 or bf16), for each seed. Each run is probed with
``convae.probe(quick=True)`` without baselines: logistic regression on the middle layer (stage2,
avg2 pooling) and the bottleneck, fitted on a stratified 10,000 of the 60,000 training images
(all labels) and scored on the 10,000 test images. The bf16 runs are probed twice, extracting in
bf16 (end to end, as a user gets it) and in fp32 (the training's share alone). The cost of bf16
is fp32 accuracy minus bf16 accuracy, per seed and layer; the spread between seeds of the fp32
runs is printed beside it as the noise floor of the comparison.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, threads as thread_limit, timed


def train_run(run_dir: Path, *, precision: str, seed: int, n_images: int, epochs: int) -> dict:
    from convae.config import RunConfig
    from convae.training import train

    cfg = RunConfig()
    cfg.train.precision, cfg.train.seed, cfg.train.epochs, cfg.data.limit = precision, seed, epochs, n_images
    with timed() as t:
        result = train(cfg, run_dir, progress=False)
    last = result.history[-1]
    return {"run": str(run_dir), "precision": result.precision, "seed": seed, "seconds": round(t.wall, 1),
            "cpu_seconds": round(t.cpu, 1), "val_mse": last.get("val_mse"), "val_psnr": last.get("val_psnr")}


def probe_accuracy(run_dir: Path, precision: str | None) -> dict:
    from convae import probe

    with timed() as t:
        result = probe(run_dir, quick=True, baselines=(), precision=precision, write=False)
    acc = {r["layers"] if isinstance(r["layers"], str) else "+".join(r["layers"]): r["accuracy"]
           for r in result.records if r["stage"] == "layers" and r["family"] == "convae"}
    return {"accuracy": acc, "seconds": round(t.wall, 1)}


def precision_study(work: Path, *, n_images: int, epochs: int, seeds=(0, 1)) -> dict:
    runs, probes = [], []
    for seed in seeds:
        for precision in ("fp32", "bf16"):
            run_dir = work / f"precision-{precision}-seed{seed}"
            runs.append(train_run(run_dir, precision=precision, seed=seed, n_images=n_images, epochs=epochs))
            extract_as = [precision] if precision == "fp32" else ["bf16", "fp32"]
            for extraction in extract_as:
                p = probe_accuracy(run_dir, extraction)
                probes.append({"seed": seed, "trained": precision, "extracted": extraction, **p})
    costs = []
    for seed in seeds:
        ref = next(p for p in probes if p["seed"] == seed and p["trained"] == "fp32")
        for p in probes:
            if p["seed"] == seed and p["trained"] == "bf16":
                for layer, acc in p["accuracy"].items():
                    costs.append({"seed": seed, "extracted": p["extracted"], "layer": layer, "fp32": ref["accuracy"][layer],
                                  "bf16": acc, "cost_points": round(100 * (ref["accuracy"][layer] - acc), 2)})
    fp32 = [p for p in probes if p["trained"] == "fp32"]
    seed_spread = {layer: round(100 * (max(p["accuracy"][layer] for p in fp32) - min(p["accuracy"][layer] for p in fp32)), 2)
                   for layer in fp32[0]["accuracy"]} if len(fp32) > 1 else {}
    end_to_end = [c["cost_points"] for c in costs if c["extracted"] == "bf16"]
    return {"protocol": {"n_images": n_images, "epochs": epochs, "seeds": list(seeds), "probe": "quick, no baselines"},
            "runs": runs, "probes": probes, "costs": costs, "fp32_seed_spread_points": seed_spread,
            "mean_cost_points_end_to_end": round(float(np.mean(end_to_end)), 2) if end_to_end else None,
            "max_cost_points_end_to_end": round(float(np.max(end_to_end)), 2) if end_to_end else None}


def probe_wall_time(run_dir: Path, threads: int | None, repeats: int = 1) -> dict:
    """``convae probe --quick RUN`` as a user runs it, in a fresh process each time."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "convae", "probe", "--quick", str(run_dir), "--out", out, "-q"],
                                  capture_output=True, text=True, env=env, cwd=ROOT)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-3:]}
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        times.append({"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)})
    return {"command": "convae probe --quick RUN --out DIR -q", "threads": threads or "default", "repeats": times,
            "median_wall_seconds": float(np.median([t["wall_seconds"] for t in times]))}


def run(work: Path, *, quick: bool = False, threads: int | None = None, with_precision: bool = True) -> dict:
    n_images, epochs = (2000, 1) if quick else (10_000, 3)
    out: dict = {}
    with thread_limit(threads):  # training here runs in this process; the probes limit their own threads
        if with_precision:
            out["precision"] = precision_study(work, n_images=n_images, epochs=epochs, seeds=(0,) if quick else (0, 1))
            probe_run = work / "precision-bf16-seed0"
        else:
            probe_run = work / "probe-run"
            train_run(probe_run, precision="auto", seed=0, n_images=n_images, epochs=1)
    out["probe_quick"] = probe_wall_time(probe_run, threads)
    return out


def table(result: dict) -> list[str]:
    rows = []
    if "precision" in result:
        p = result["precision"]
        rows += [f"Protocol: {p['protocol']}; fp32 seed-to-seed spread (points): {p['fp32_seed_spread_points']}", "",
                 "| seed | layer | extracted in | fp32 accuracy | bf16-trained accuracy | cost (points) |", "|---|---|---|---:|---:|---:|"]
        for c in p["costs"]:
            rows.append(f"| {c['seed']} | {c['layer']} | {c['extracted']} | {100 * c['fp32']:.2f} | {100 * c['bf16']:.2f} | {c['cost_points']:+.2f} |")
        rows += ["", "| run | precision | seed | train wall s | train CPU s | val MSE |", "|---|---|---|---:|---:|---:|"]
        for r in p["runs"]:
            rows.append(f"| {Path(r['run']).name} | {r['precision']} | {r['seed']} | {r['seconds']} | {r['cpu_seconds']} | {r['val_mse']:.5f} |")
        rows.append("")
    q = result.get("probe_quick", {})
    if "error" in q:
        rows.append(f"`convae probe --quick`: failed: {q['error']}")
    elif q:
        rows.append(f"`convae probe --quick` (threads: {q['threads']}): {q['median_wall_seconds']} s wall, "
                    f"{q['repeats'][0]['cpu_seconds']} CPU s")
    return rows
