"""Scaling: seconds per epoch of convae's trainer against dataset size and image size.

Dataset size: the first 1k, 10k and 60k Fashion-MNIST training images at 28 px. Image size: the
first ``n_images`` images resized (bilinear) to 28, 64 and 128 px, with the default architecture
built for that size (three stages; the dense bottleneck's input grows with the map). One epoch
each with ``TrainConfig`` defaults (no validation, no checkpoint); FLOP/s from
``flops_per_image()`` x 3 as in bench_training.
"""

from __future__ import annotations

import logging

import torch

from _common import default_model, fashion, resized, threads, timed


def epoch(images: torch.Tensor) -> dict:
    from convae.config import TrainConfig
    from convae.training import train_model

    torch.manual_seed(0)
    model = default_model(images.shape[1:])
    flops = 3 * model.flops_per_image()
    with timed() as t:
        result = train_model(model, images, TrainConfig(epochs=1), progress=False)
    n = len(images)
    return {"images": n, "image_size": int(images.shape[-1]), "seconds_per_epoch": round(t.wall, 2), "cpu_seconds": round(t.cpu, 2),
            "loop_seconds": result.history[-1]["seconds"], "wall_img_s": round(n / t.wall, 1), "cpu_img_s": round(n / t.cpu, 1),
            "training_flops_per_image": flops, "wall_gflops": round(flops * n / t.wall / 1e9, 1)}


def run(quick: bool = False, thread_count: int | None = None) -> dict:
    logging.getLogger("convae").setLevel(logging.ERROR)  # the busy-CPU warning would repeat every trial
    data = fashion("train").images
    sizes = (1_000, 4_000) if quick else (1_000, 10_000, 60_000)
    n_resized = 500 if quick else 2_000
    with threads(thread_count):
        used = torch.get_num_threads()
        epoch(data[:256])  # warm-up
        by_count = [epoch(data[:n]) for n in sizes]
        by_size = []
        for px in (28, 64, 128):
            images = resized(data[:n_resized], px)
            epoch(images[:128])  # warm-up for this shape
            by_size.append(epoch(images))
    return {"threads": used, "dataset_size": by_count, "image_size": by_size}


def table(result: dict) -> list[str]:
    rows = [f"Threads: {result['threads']}.", "", "| images | px | s/epoch (wall) | CPU s | img/s wall | img/s per CPU-second | GFLOP/s wall |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["dataset_size"] + result["image_size"]:
        rows.append(f"| {r['images']:,} | {r['image_size']} | {r['seconds_per_epoch']} | {r['cpu_seconds']} | {r['wall_img_s']:.0f} | "
                    f"{r['cpu_img_s']:.0f} | {r['wall_gflops']} |")
    return rows
