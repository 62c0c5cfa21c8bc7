"""Extraction speed and memory: ``convae.extract_to_npy`` (the function behind ``convae extract``).

Speed: images/s over the first 30,000 Fashion-MNIST training images held in memory, for each
encoder layer with global average pooling, in the run's precision (bf16 where native) and in
fp32, at PyTorch's default thread count and at one thread, at the default batch size (256) and
at 128; repeats alternate between the settings.

Memory: each image count runs in a fresh process. The data are loaded first; then the peak
resident set is reset (``/proc/self/clear_refs``) and the extraction's peak increment above the
loaded data is recorded. Streaming extraction keeps that increment flat in the number of images.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _common import ROOT, fashion, median, peak_rss_mib, reset_peak_rss, rss_mib, threads, timed


def make_run(run_dir: Path, *, steps: int = 30, precision: str = "auto") -> Path:
    """A default ConvAE run on Fashion-MNIST, trained for a few steps (weights do not change speed)."""
    from convae.config import RunConfig
    from convae.training import train

    cfg = RunConfig()
    cfg.train.max_steps, cfg.train.epochs, cfg.train.precision = steps, 1, precision
    train(cfg, run_dir, progress=False, dataset=fashion("train").subset(range(steps * cfg.train.batch_size)))
    return run_dir


def _extract(run, images, layer: str, precision: str | None, batch_size: int, out: Path) -> None:
    from convae.features import extract_to_npy

    extract_to_npy(run, images, out, layers=layer, pool="avg", precision=precision, batch_size=batch_size, progress=False)


def speed(run_dir: Path, *, n_images: int, repeats: int, layers=("stage1", "stage2", "bottleneck"),
          batch_sizes=(256, 128)) -> dict:
    from convae import load_run
    from convae.runtime import resolve_precision

    run = load_run(run_dir)
    images = fashion("train").images[:n_images]
    settings = [(layer, prec, bs) for layer in layers for prec in (None, "fp32") for bs in batch_sizes
                if bs == batch_sizes[0] or prec is None]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "feats.npy"
        for thread_count in (None, 1):
            with threads(thread_count):
                used = torch.get_num_threads()
                timings = {s: [] for s in settings}
                for layer, prec, bs in settings:  # warm-up: oneDNN builds its kernels on first use
                    _extract(run, images[:bs], layer, prec, bs, target)
                for _ in range(repeats):
                    for layer, prec, bs in settings:
                        with timed() as t:
                            _extract(run, images, layer, prec, bs, target)
                        timings[(layer, prec, bs)].append(t)
            for (layer, prec, bs), ts in timings.items():
                precision = prec or resolve_precision(run.config.train.precision, torch.device("cpu"))
                key = f"threads={used} layer={layer} precision={precision} batch={bs}"
                out[key] = {"threads": used, "layer": layer, "precision": precision, "batch_size": bs, "images": n_images,
                            "wall_img_s": [round(n_images / t.wall) for t in ts], "cpu_img_s": [round(n_images / t.cpu) for t in ts],
                            "median_wall_img_s": round(median([n_images / t.wall for t in ts])),
                            "median_cpu_img_s": round(median([n_images / t.cpu for t in ts]))}
    return out


def _memory_child(run_dir: str, n_images: int, layer: str) -> None:
    """In a fresh process: load the data, reset the peak, extract, print the peak increment."""
    from convae import load_run

    run = load_run(run_dir)
    images = fashion("train").images
    images = torch.cat([images] * (1 + n_images // len(images)))[:n_images].clone()  # (N, 1, 28, 28) uint8
    base = rss_mib()
    reset = reset_peak_rss()
    with tempfile.TemporaryDirectory() as tmp:
        _extract(run, images, layer, None, 256, Path(tmp) / "feats.npy")
    peak = peak_rss_mib()
    print(json.dumps({"n_images": n_images, "layer": layer, "data_mib": round(images.numel() / 2**20, 1),
                      "rss_before_mib": round(base, 1), "peak_rss_mib": round(peak, 1),
                      "peak_increment_mib": round(peak - base, 1) if reset else None, "peak_reset": reset}))


def memory(run_dir: Path, counts=(10_000, 60_000, 240_000), layers=("stage2", "bottleneck")) -> list[dict]:
    rows = []
    for layer in layers:
        for n in counts:
            proc = subprocess.run([sys.executable, __file__, "--memory-child", str(run_dir), str(n), layer],
                                  capture_output=True, text=True, cwd=ROOT / "bench")
            if proc.returncode != 0:
                rows.append({"n_images": n, "layer": layer, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def run(work: Path, quick: bool = False) -> dict:
    run_dir = make_run(work / "extract-run")
    n, repeats = (8192, 1) if quick else (30_000, 3)
    counts = (2_000, 8_000) if quick else (10_000, 60_000, 240_000)
    return {"run": str(run_dir), "speed": speed(run_dir, n_images=n, repeats=repeats), "memory": memory(run_dir, counts)}


def table(result: dict) -> list[str]:
    rows = ["| threads | layer | precision | batch | img/s wall (median) | img/s per CPU-second |", "|---|---|---|---:|---:|---:|"]
    for r in result["speed"].values():
        rows.append(f"| {r['threads']} | {r['layer']} | {r['precision']} | {r['batch_size']} | {r['median_wall_img_s']:,} | {r['median_cpu_img_s']:,} |")
    return rows


def memory_table(result: dict) -> list[str]:
    rows = ["| layer | images | data in memory (MiB) | peak RSS (MiB) | extraction's peak above the loaded data (MiB) |", "|---|---:|---:|---:|---:|"]
    for r in result["memory"]:
        if "error" in r:
            rows.append(f"| {r['layer']} | {r['n_images']:,} | error: {r['error']} | | |")
            continue
        rows.append(f"| {r['layer']} | {r['n_images']:,} | {r['data_mib']} | {r['peak_rss_mib']} | {r['peak_increment_mib']} |")
    return rows


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--memory-child":
    sys.path.insert(0, str(Path(__file__).parent))
    _memory_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
