"""Shared pieces of the benchmarks: the machine record, timers, the matmul peak, the data.

Every timing records two clocks: wall time (what a user waits for) and this process's CPU time
(user + system of all its threads). On a machine shared with other work the wall clock stretches
with the load while CPU time stays close to what the same work costs on an idle core, so the
tables show both; ratios are always taken between measurements interleaved in one run.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# --- the machine ----------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_generation() -> str | None:
    """"family F model M" from /proc/cpuinfo: the model name ("AMD EPYC") is shared by CPU generations that
    differ in speed and in which precision is fast, so every result records this too."""
    found = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("cpu family", "model") and key not in found:
                found[key] = line.split(":", 1)[1].strip()
            if len(found) == 2:
                return f"family {found['cpu family']} model {found['model']}"
    except OSError:
        pass
    return None


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict:
    """What the numbers were measured on: CPU, cores, memory, library versions, load, niceness."""
    import sklearn

    flags = _cpu_flags()
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    from convae.runtime import bf16_speedup, cpu_has_fast_bf16

    return {
        "cpu": _cpu_model(),
        "cpu_generation": _cpu_generation(),
        "cores_online": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"}),
        # what the kernels may use: torch's own (ATEN_CPU_CAPABILITY), oneDNN's and MKL's caps. With
        # ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 a newer CPU runs as an AVX2-only one
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_caps": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if k in os.environ},
        "fast_bf16": cpu_has_fast_bf16(),
        "bf16_speedup": bf16_speedup(),  # measured conv step, or CONVAE_BF16_SPEEDUP when given (below)
        "bf16_speedup_given": os.environ.get("CONVAE_BF16_SPEEDUP"),
        "memory_gib": mem_gib,
        "torch": torch.__version__, "numpy": np.__version__, "sklearn": sklearn.__version__,
        "python": platform.python_version(),
        "torch_threads_default": torch.get_num_threads(),
        "parallel": next((l.strip() for l in torch.__config__.parallel_info().splitlines() if "parallel backend" in l), ""),
        "nice": os.nice(0),
        "load_average_start": load_average(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "argv": sys.argv,
    }


def machine_line(m: dict) -> str:
    """The CPU, its ISA flags and any ISA cap in one phrase, for result headers."""
    caps = m.get("isa_caps") or {}
    cap = (f"; run as {m.get('torch_cpu_capability', '?')} (" + " ".join(f"{k}={v}" for k, v in caps.items()) + ")") if caps else ""
    gen = f", {m['cpu_generation']}" if m.get("cpu_generation") else ""
    return f"{m['cpu']}{gen} ({', '.join(m.get('isa', []))}{cap})"


# --- timing ----------------------------------------------------------------------------------------------
@dataclass
class Timing:
    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def timed():
    """``with timed() as t: ...`` fills ``t.wall`` and ``t.cpu`` (this process's CPU seconds)."""
    t = Timing()
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        yield t
    finally:
        t.wall, t.cpu = time.perf_counter() - w0, time.process_time() - c0


def median(values) -> float:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else float("nan")


def rate_summary(count: int, timings: list[Timing]) -> dict:
    """Images/s per repeat (wall and CPU clocks) and their medians."""
    wall = [count / t.wall for t in timings]
    cpu = [count / t.cpu for t in timings]
    return {"images": count, "wall_img_s": [round(v, 1) for v in wall], "cpu_img_s": [round(v, 1) for v in cpu],
            "median_wall_img_s": round(median(wall), 1), "median_cpu_img_s": round(median(cpu), 1)}


@contextmanager
def threads(n: int | None):
    """Run a block with ``torch.set_num_threads(n)`` (None: leave as is), restoring it after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- the matmul peak -----------------------------------------------------------------------------------------
def gemm_peak(dtype: torch.dtype, *, sizes=(1024, 2048), seconds: float = 1.5) -> dict:
    """Best FLOP/s of a large dense product in ``dtype`` at the current thread count: a square ``torch.matmul``
    (MKL's GEMM) and the same product as a 1x1 convolution over a channels_last map (oneDNN's GEMM), whichever
    is faster, on both clocks. 2*n^3 FLOPs per product.

    Both paths are kept because they differ by CPU: on an AMD EPYC of family 26 MKL's fp32 matmul ran at 173
    GFLOP/s and oneDNN's 1x1 conv at 327 (and a 3x3 conv of the default model's shape at 428), so a peak from
    matmul alone would put convae's conv-bound training above 100% of it. ``path`` says which won; ``matmul_*``
    and ``conv1x1_*`` keep each one's best wall-clock rate.
    """
    best = {"wall_gflops": 0.0, "cpu_gflops": 0.0, "n": None, "path": None, "matmul_wall_gflops": 0.0, "conv1x1_wall_gflops": 0.0}
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        side = int(round(n ** 0.5))  # an n-position map: the conv's GEMM is (n positions x n channels) @ (n x n)
        x = torch.randn(1, n, side, n // side).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(n, n, 1, 1).to(dtype)
        paths = {"matmul": lambda: torch.matmul(a, b), "conv1x1": lambda: torch.nn.functional.conv2d(x, w)}
        for path, product in paths.items():
            positions = n if path == "matmul" else side * (n // side)
            for _ in range(2):
                product()
            reps = 0
            with timed() as t:
                w0 = time.perf_counter()
                while time.perf_counter() - w0 < seconds:
                    product()
                    reps += 1
            flops = 2 * n * n * positions * reps
            wall, cpu = flops / t.wall / 1e9, flops / max(t.cpu, 1e-9) / 1e9
            best[f"{path}_wall_gflops"] = round(max(best[f"{path}_wall_gflops"], wall), 1)
            if wall > best["wall_gflops"]:
                best.update(wall_gflops=round(wall, 1), n=n, path=path)
            best["cpu_gflops"] = round(max(best["cpu_gflops"], cpu), 1)
    return best


# --- data ------------------------------------------------------------------------------------------------------
_CACHE: dict = {}


def fashion(split: str = "train"):
    """Fashion-MNIST as convae loads it (ImageDataset, uint8 N×1×28×28), cached for the run."""
    if split not in _CACHE:
        from convae.data import load_dataset

        _CACHE[split] = load_dataset("fashion-mnist", split)
    return _CACHE[split]


def resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N×C×28×28 -> uint8 N×C×size×size (bilinear), for the image-size scaling rows."""
    if images.shape[-1] == size:
        return images
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM) in MiB since the last :func:`reset_peak_rss`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def default_model(in_shape=(1, 28, 28)):
    """The ConvAE that ``convae train`` builds with no architecture flags (``ModelConfig``'s defaults)."""
    from convae.config import ModelConfig
    from convae.models import build_model

    return build_model("conv", tuple(in_shape), **ModelConfig().model_kwargs())
