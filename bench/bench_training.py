"""Training speed: convae's trainer against a tutorial-style PyTorch loop, and the roofline.

The reference is written the way tutorials write it: fp32, contiguous (NCHW) tensors, a
``Dataset`` whose ``__getitem__`` turns one uint8 image into a float tensor (what
``transforms.ToTensor()`` does), a shuffling ``DataLoader`` with its default single process,
``optimizer.zero_grad()``, ``nn.MSELoss`` on the sigmoid output, ``loss.item()`` every step, and
PyTorch's default thread settings. It trains the same architecture: the ConvAE ``convae train``
builds with no flags (``ModelConfig``'s defaults: since issue 15 the fixed scattering stem and two stages of
128 channels, BatchNorm, 1x1-conv bottleneck; 64/128/128 channels before), except that its 2x2 transposed convs are plain ``nn.ConvTranspose2d`` layers, as a
tutorial writes them, where convae runs them as a 1x1 conv plus pixel shuffle. Optimizer Adam,
lr 1e-3, batch 128.

convae's side is ``convae.training.train_model`` with a default ``TrainConfig`` (one epoch,
no validation, no checkpoint): bf16 autocast where the CPU runs it natively, channels_last,
batches indexed from the in-memory uint8 tensor, and the default recipe's extra work (AdamW, the
cosine schedule, masking half of the 4x4 input patches). ``convae_fp32`` is the same with
``precision="fp32"``, to split the gain between the data path and the precision.

Trials alternate (reference, convae, convae_fp32, reference, ...), each on the same images,
``repeats`` times; the tables give medians and their ratios.

Roofline convention: FLOPs per training image as ``torch.utils.flop_counter.FlopCounterMode`` counts the
forward and backward pass (``convae.training.cost.train_flops_per_image``, the recipes' count; the fixed stem
runs forward only). Results before issue 15's stem used 3 x the forward FLOPs of
``ConvAutoencoder.flops_per_image()`` (their JSON's ``convention`` says which). Elementwise ops, pooling and the
optimizer are not counted. Achieved FLOP/s divided by the best large dense product's FLOP/s (``_common.gemm_peak``: MKL's ``torch.matmul`` or
oneDNN's 1x1 conv, whichever is faster) in the same
precision, measured in the same run at the same thread count.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from _common import default_model, fashion, gemm_peak, median, rate_summary, threads, timed

BATCH = 128


# --- the reference loop (tutorial style) ------------------------------------------------------------------------
class OneImageAtATime(Dataset):
    """A map-style dataset returning one (1, 28, 28) float image in [0, 1] per index."""

    def __init__(self, images: np.ndarray):  # (N, 28, 28) uint8
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images[i]).float().div(255).unsqueeze(0)


def tutorial_layers(model: nn.Module) -> nn.Module:
    """Swap convae's 2x upsampling layers for the ``nn.ConvTranspose2d`` a tutorial would write.

    Same weights, same function; only the kernel PyTorch runs differs (see ``Upsample2x``).
    """
    from convae.models.conv import Upsample2x

    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, Upsample2x):
                plain = nn.ConvTranspose2d(child.in_channels, child.out_channels, 2, stride=2)
                plain.load_state_dict(child.state_dict())
                setattr(parent, name, plain)
    return model


def reference_epoch(images: np.ndarray, seed: int = 0) -> None:
    torch.manual_seed(seed)
    model = tutorial_layers(default_model())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.MSELoss()
    loader = DataLoader(OneImageAtATime(images), batch_size=BATCH, shuffle=True)
    model.train()
    running_loss = 0.0
    for x in loader:
        optimizer.zero_grad()
        output = model(x)
        loss = criterion(output, model.target(x))  # the image, or the fixed stem's maps it reconstructs
        loss.backward()
        optimizer.step()
        running_loss += loss.item()


# --- convae's trainer -------------------------------------------------------------------------------------------
def convae_epoch(images: torch.Tensor, seed: int = 0, **overrides) -> None:
    from convae.config import TrainConfig
    from convae.training import train_model

    torch.manual_seed(seed)
    model = default_model()
    cfg = TrainConfig(epochs=1, seed=seed, **overrides)
    train_model(model, images, cfg, progress=False)


def _quiet():
    logging.getLogger("convae").setLevel(logging.ERROR)  # the busy-CPU warning would repeat every trial


def compare(n_images: int, repeats: int, thread_count: int | None) -> dict:
    """Alternating trials of the three loops at ``thread_count`` (None: PyTorch's default)."""
    _quiet()
    data = fashion("train").images[:n_images]  # (N, 1, 28, 28) uint8
    as_numpy = data[:, 0].numpy()
    loops = {
        "reference": lambda: reference_epoch(as_numpy),
        "convae": lambda: convae_epoch(data),
        "convae_fp32": lambda: convae_epoch(data, precision="fp32"),
    }
    timings: dict[str, list] = {name: [] for name in loops}
    with threads(thread_count):
        used = torch.get_num_threads()
        warm = as_numpy[: 4 * BATCH]
        reference_epoch(warm)
        convae_epoch(data[: 4 * BATCH])
        convae_epoch(data[: 4 * BATCH], precision="fp32")
        peaks_before = {"bf16": gemm_peak(torch.bfloat16), "fp32": gemm_peak(torch.float32)}
        for _ in range(repeats):
            for name, run in loops.items():
                with timed() as t:
                    run()
                timings[name].append(t)
        peaks_after = {"bf16": gemm_peak(torch.bfloat16), "fp32": gemm_peak(torch.float32)}
    rates = {name: rate_summary(n_images, ts) for name, ts in timings.items()}
    ratios = {}
    for clock in ("wall", "cpu"):
        per_repeat = [c / r for c, r in zip(rates["convae"][f"{clock}_img_s"], rates["reference"][f"{clock}_img_s"])]
        ratios[f"convae_over_reference_{clock}"] = round(rates["convae"][f"median_{clock}_img_s"] / rates["reference"][f"median_{clock}_img_s"], 2)
        ratios[f"convae_over_reference_{clock}_per_repeat"] = [round(v, 2) for v in per_repeat]
        ratios[f"convae_fp32_over_reference_{clock}"] = round(rates["convae_fp32"][f"median_{clock}_img_s"] / rates["reference"][f"median_{clock}_img_s"], 2)
    peaks = {p: {clock: max(peaks_before[p][f"{clock}_gflops"], peaks_after[p][f"{clock}_gflops"]) for clock in ("wall", "cpu")}
             for p in ("bf16", "fp32")}
    return {"threads": used, "n_images": n_images, "repeats": repeats, "batch_size": BATCH, "rates": rates, "ratios": ratios,
            "gemm_peak_gflops": peaks, "gemm_peak_samples": {"before": peaks_before, "after": peaks_after},
            "roofline": roofline(rates, peaks)}


def roofline(rates: dict, peaks: dict) -> dict:
    from convae.runtime import resolve_device, resolve_precision

    from convae.config import TrainConfig
    from convae.training.cost import train_flops_per_image

    model = default_model()
    forward = model.flops_per_image()
    per_image = train_flops_per_image(model, model.in_shape, TrainConfig())
    convae_precision = resolve_precision("auto", resolve_device("auto"))
    out = {"forward_flops_per_image": forward, "training_flops_per_image": per_image,
           "convention": "training = FlopCounterMode over forward and backward (convae.training.cost.train_flops_per_image)",
           "convae_precision": convae_precision}
    for name, precision in (("convae", convae_precision), ("convae_fp32", "fp32"), ("reference", "fp32")):
        for clock in ("wall", "cpu"):
            gflops = rates[name][f"median_{clock}_img_s"] * per_image / 1e9
            out[f"{name}_{clock}_gflops"] = round(gflops, 1)
            out[f"{name}_{clock}_fraction_of_{precision}_peak"] = round(gflops / peaks[precision][clock], 3)
    return out


def run(quick: bool = False) -> dict:
    """Both thread settings: PyTorch's default (what the target is about) and one thread."""
    n, repeats = (1024, 2) if quick else (2560, 5)
    return {"default_threads": compare(n, repeats, None), "one_thread": compare(n, repeats, 1)}


def table(result: dict) -> list[str]:
    rows = ["| threads | loop | img/s wall (median) | img/s per CPU-second (median) | vs reference (wall / CPU) | share of the dense-product peak (wall / CPU) |",
            "|---|---|---:|---:|---:|---:|"]
    for key, block in result.items():
        roof = block["roofline"]
        for name in ("reference", "convae_fp32", "convae"):
            r = block["rates"][name]
            if name == "reference":
                vs = "1.00"
            else:
                vs = f"{block['ratios'][f'{name}_over_reference_wall']:.2f} / {block['ratios'][f'{name}_over_reference_cpu']:.2f}"
            precision = roof["convae_precision"] if name == "convae" else "fp32"
            share = (f"{100 * roof[f'{name}_wall_fraction_of_{precision}_peak']:.1f}% / "
                     f"{100 * roof[f'{name}_cpu_fraction_of_{precision}_peak']:.1f}% of {precision}")
            rows.append(f"| {block['threads']} | {name} ({precision}) | {r['median_wall_img_s']:.0f} | {r['median_cpu_img_s']:.0f} | {vs} | {share} |")
    return rows


def peaks_table(result: dict) -> list[str]:
    rows = ["| threads | bf16 peak GFLOP/s (wall / CPU) | fp32 peak GFLOP/s (wall / CPU) |", "|---|---:|---:|"]
    for block in result.values():
        p = block["gemm_peak_gflops"]
        rows.append(f"| {block['threads']} | {p['bf16']['wall']:.0f} / {p['bf16']['cpu']:.0f} | {p['fp32']['wall']:.0f} / {p['fp32']['cpu']:.0f} |")
    return rows


__all__ = ["run", "table", "peaks_table", "reference_epoch", "convae_epoch", "median"]


def main(argv=None) -> int:
    """One block at PyTorch's default threads, written as ``OUT.json`` and ``OUT.md``.

    ``convae`` runs ``precision="auto"``; where that is fp32 on a CPU with a native bf16 flag, run with
    ``CONVAE_BF16_SPEEDUP=2`` to time its bf16 beside ``convae_fp32`` (the Intel Xeon of docs/BENCHMARKS.md).
    """
    import argparse
    import json
    from pathlib import Path

    from _common import machine_info, machine_line

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2560)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True, help="results stem, e.g. bench/results/training-mycpu")
    args = parser.parse_args(argv)
    machine = machine_info()  # before the timing: its load average is the load the timing started under
    result = {"default_threads": compare(args.images, args.repeats, None)}
    lines = [f"{machine_line(machine)}, load {machine['load_average_start']} at the start", ""] + table(result) + [""] + peaks_table(result)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "training": result}, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
