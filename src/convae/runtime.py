"""Where and how tensors run: the device, the precision and its autocast, input conversion, thread limits.

Every verb resolves its string settings (``auto``, ``bf16``, ``cuda``) here, once, so training and extraction
share one meaning of each and extraction never imports the training loop.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch
from threadpoolctl import threadpool_limits

from .errors import ConfigError

logger = logging.getLogger(__name__)


# --- devices and precision --------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but no CUDA device is available; use device=auto or cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("train.device='mps' but MPS is not available; use device=auto or cpu")
    return torch.device(device)



def cpu_has_fast_bf16() -> bool:
    """True where the CPU runs bf16 matrix work natively (AMX or AVX-512-BF16).

    Measured: on an AMD EPYC with AVX-512-BF16 and no AMX, the default model's training step in bf16
    autocast took 0.51x the fp32 step's time; on AVX2-only CPUs bf16 is emulated and far slower.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch
        return False



_warned_slow_bf16 = False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the hardware runs it natively, else ``fp16`` on CUDA, else ``fp32``.

    An explicit ``bf16`` on a CPU without native bf16 (no AMX, no AVX-512-BF16: most laptops and AVX2
    servers) is kept, with a warning once per process: there bf16 is emulated and was measured 11x
    slower than fp32 (a digits run, 49.4 s against 4.4 s, on a 2-core AVX2 AMD EPYC).
    """
    global _warned_slow_bf16
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ConfigError("train.precision='fp16' is for GPUs; on CPU use bf16 or fp32")
        if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16() and not _warned_slow_bf16:
            _warned_slow_bf16 = True
            logger.warning("precision bf16 on a CPU without native bf16 (no AMX or AVX-512-BF16): it is emulated and was "
                           "measured 11x slower than fp32 on an AVX2 CPU; use --precision fp32 (or auto) here")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"



def autocast(precision: str, device: torch.device):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)



_warned_cpu_busy = False  # warn_if_cpu_busy speaks once per process (compare trains 7 to 9 models)


def warn_if_cpu_busy() -> None:
    """Log, once per process, when other processes keep every core busy: torch's threads then wait for each other at each op.

    On the shared 2-core machine of docs/BENCHMARKS.md, 2 threads trained 20x slower than 1 there.
    """
    global _warned_cpu_busy
    if _warned_cpu_busy:
        return
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = torch.get_num_threads()
    if threads > 1 and load > cores:
        _warned_cpu_busy = True
        logger.warning("the CPU is busy (load average %.1f on %d cores): %d torch threads wait for each other at every op, "
                       "which can be many times slower than train.threads=1 (--threads 1); see docs/BENCHMARKS.md", load, cores, threads)



def to_input(batch: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 or float (B, C, H, W) -> float32 in [0, 1] on ``device``; conversion fused after the copy."""
    non_blocking = device.type == "cuda"
    if batch.dtype == torch.uint8:
        if non_blocking:
            batch = batch.pin_memory()
        x = batch.to(device, non_blocking=non_blocking).float().div_(255.0)
    else:
        x = batch.to(device, dtype=torch.float32, non_blocking=non_blocking)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x



@contextlib.contextmanager
def thread_limit(threads: int | None):
    """Run the block on ``threads`` threads (torch and the BLAS/OpenMP pools of numpy and scikit-learn), then restore them.

    ``None`` (or 0) leaves every pool as it is. Tiny, many-step work (unit visualizations, small
    probes) runs faster on one thread on a busy CPU, where two threads wait for each other at every op.
    """
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)
