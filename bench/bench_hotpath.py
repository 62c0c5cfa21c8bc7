"""Where a training step's time goes, and the hot-path candidates measured side by side.

``profile``: torch.profiler over convae's training step (the trainer's own step: bf16 autocast
where native, channels_last, AdamW, ``loss.item()``; the default ConvAE; masking left out), self CPU time summed per layer for the
convolutions and per kind for the rest (ReLU, pooling, casts, optimizer, ...).

``candidates``: variants of that step, each built once, then run in interleaved rounds of a
fixed CPU-time budget; images per CPU-second and per wall-second, medians over rounds. The
warm-up column holds the first two steps (for ``compile``, the compile time).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch
from torch import nn

from _common import default_model, threads

BATCH = 128


def make_step(*, batch: int = BATCH, precision: str | None = None, fused: bool = False, item: bool = True,
              set_to_none: bool = True, compile: bool = False, transpose: bool = False):
    """A closure running one training step of the default ConvAE, built like the trainer builds it."""
    from convae.runtime import autocast, resolve_device, resolve_precision
    from convae.training import reconstruction_loss

    device = torch.device("cpu")
    precision = precision or resolve_precision("auto", resolve_device("cpu"))
    torch.manual_seed(0)
    model = default_model()
    if transpose:
        from bench_training import tutorial_layers

        tutorial_layers(model)
    model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, fused=True if fused else None)
    x = model.target(torch.rand(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last))  # a stem's maps, computed once
    forward = torch.compile(model.reconstruct_logits) if compile else model.reconstruct_logits

    def step():
        with autocast(precision, device):
            logits = forward(x)
        loss = reconstruction_loss(logits, x, "mse")
        if item:
            loss.item()
        optimizer.zero_grad(set_to_none=set_to_none)
        loss.backward()
        optimizer.step()

    step.model, step.batch = model, batch
    return step


CANDIDATES = {
    "trainer step (bf16, channels_last, AdamW foreach, item)": {},
    "fused AdamW": {"fused": True},
    "no loss.item()": {"item": False},
    "zero_grad(set_to_none=False)": {"set_to_none": False},
    "batch 64": {"batch": 64},
    "batch 256": {"batch": 256},
    "fp32": {"precision": "fp32"},
    "nn.ConvTranspose2d upsampling (before Upsample2x)": {"transpose": True},
    "torch.compile": {"compile": True},
}


def candidates(rounds: int = 5, budget_s: float = 2.0, thread_count: int | None = 1, names=None) -> dict:
    names = names or list(CANDIDATES)
    out = {}
    with threads(thread_count):
        steps, warm = {}, {}
        for name in names:
            t0 = time.perf_counter()
            steps[name] = make_step(**CANDIDATES[name])
            steps[name]()
            steps[name]()
            warm[name] = time.perf_counter() - t0
        wall, cpu = defaultdict(list), defaultdict(list)
        for _ in range(rounds):
            for name, step in steps.items():
                images, w0, c0 = 0, time.perf_counter(), time.process_time()
                while time.process_time() - c0 < budget_s:
                    step()
                    images += step.batch
                wall[name].append(images / (time.perf_counter() - w0))
                cpu[name].append(images / (time.process_time() - c0))
        used = torch.get_num_threads()
    base = statistics.median(cpu[names[0]])
    for name in names:
        out[name] = {"threads": used, "warmup_seconds": round(warm[name], 1),
                     "median_cpu_img_s": round(statistics.median(cpu[name])), "median_wall_img_s": round(statistics.median(wall[name])),
                     "cpu_img_s": [round(v) for v in cpu[name]], "vs_trainer_step": round(statistics.median(cpu[name]) / base, 3)}
    return out


# --- the profile -----------------------------------------------------------------------------------------------------
def _layer_names(model) -> dict[tuple, str]:
    """Conv weight shape -> layer label; the profiler knows ops only by their input shapes."""
    from convae.models.conv import Upsample2x

    names: dict[tuple, str] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            kind = "convT" if isinstance(mod, nn.ConvTranspose2d) else "conv"
            shape = tuple(mod.weight.shape)
            if isinstance(mod, Upsample2x):  # runs as a 1x1 conv to 4x the channels
                shape = (mod.out_channels * 4, mod.in_channels, 1, 1)
            label = f"{name} ({kind} {mod.in_channels}->{mod.out_channels}, k{mod.kernel_size[0]})"
            names[shape] = f"{names[shape]} or {label}" if shape in names else label  # same shape: can't tell apart
    return names


def _kind(name: str) -> str:
    if name in ("aten::clamp_min", "aten::relu", "aten::threshold_backward", "aten::relu_"):
        return "ReLU forward/backward"
    if "max_pool" in name:
        return "max-pool forward/backward"
    if name in ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous"):
        return "copies and dtype casts (autocast, layouts)"
    if name in ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul"):
        return "dense bottleneck (linear layers)"
    if name in ("aten::fill_", "aten::zero_", "aten::zeros", "aten::empty", "aten::empty_strided", "aten::empty_like"):
        return "allocation and fills"
    if "batch_norm" in name:
        return "BatchNorm forward/backward"
    if "pixel_shuffle" in name or "pixel_unshuffle" in name:
        return "pixel shuffle (Upsample2x) forward/backward"
    if "mse_loss" in name or "sigmoid" in name:
        return "loss and sigmoid"
    return "other"


def profile(steps: int = 10, thread_count: int | None = 1) -> dict:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with threads(thread_count):
        step = make_step()
        for _ in range(3):
            step()
        layers = _layer_names(step.model)
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(steps):
                step()
        used = torch.get_num_threads()
    totals: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        top = ev
        while top.cpu_parent is not None:
            top = top.cpu_parent
        us = ev.self_cpu_time_total
        if top.name.startswith("Optimizer.step") or top.name.startswith("Optimizer.zero_grad"):
            totals["optimizer (AdamW step, zero_grad)"] += us
            continue
        shapes = ev.input_shapes or []
        if ev.name in ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution_backward",
                       "aten::slow_conv_transpose2d", "aten::mkldnn_convolution_transpose"):
            weight = tuple(shapes[2]) if ev.name == "aten::convolution_backward" and len(shapes) > 2 else tuple(shapes[1]) if len(shapes) > 1 else ()
            direction = "backward" if ev.name == "aten::convolution_backward" else "forward"
            totals[f"{layers.get(weight, 'conv ' + str(weight))} {direction}"] += us
        else:
            totals[_kind(ev.name)] += us
    total = sum(totals.values())
    rows = sorted(((k, v) for k, v in totals.items()), key=lambda kv: -kv[1])
    groups: dict[str, float] = defaultdict(float)
    for k, v in totals.items():
        groups[_group(k)] += v
    return {"threads": used, "steps": steps, "batch": BATCH, "ms_per_step": round(total / steps / 1e3, 1),
            "groups": [{"what": k, "ms_per_step": round(v / steps / 1e3, 2), "share": round(v / total, 3)}
                       for k, v in sorted(groups.items(), key=lambda kv: -kv[1])],
            "breakdown": [{"what": k, "ms_per_step": round(v / steps / 1e3, 2), "share": round(v / total, 3)} for k, v in rows]}


def _group(what: str) -> str:
    if "(convT" in what:
        return "transposed convs (2x2, stride 2), forward + backward"
    if "(conv 1->" in what or "->1," in what:
        return "1-channel convs (first and last layer), forward + backward"
    if "(conv" in what or what.startswith("conv "):
        return "3x3 and 1x1 convs with 64-128 channels, forward + backward"
    return what


def table_candidates(result: dict) -> list[str]:
    rows = ["| variant | img per CPU-second (median) | img/s wall | vs trainer step | warm-up s |", "|---|---:|---:|---:|---:|"]
    for name, r in result.items():
        rows.append(f"| {name} | {r['median_cpu_img_s']} | {r['median_wall_img_s']} | {r['vs_trainer_step']:.2f} | {r['warmup_seconds']} |")
    return rows


def table_profile(result: dict) -> list[str]:
    rows = [f"Threads {result['threads']}, batch {result['batch']}, {result['ms_per_step']} ms of self CPU time per step (profiler clock).", "",
            "| where (grouped) | ms/step | share |", "|---|---:|---:|"]
    rows += [f"| {r['what']} | {r['ms_per_step']} | {100 * r['share']:.1f}% |" for r in result["groups"] if r["share"] >= 0.005]
    rows += ["", "| where (per layer) | ms/step | share |", "|---|---:|---:|"]
    for r in result["breakdown"]:
        if r["share"] >= 0.005:
            rows.append(f"| {r['what']} | {r['ms_per_step']} | {100 * r['share']:.1f}% |")
    return rows
