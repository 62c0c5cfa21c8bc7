"""Where and how tensors run: the device, the precision and its autocast, input conversion, thread limits.

Every verb resolves its string settings (``auto``, ``bf16``, ``cuda``) here, once, so training and extraction
share one meaning of each and extraction never imports the training loop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time

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



FAST_BF16 = 1.25  # bf16 autocast must make the probe's conv step at least this much faster for "auto" to pick it


# oneDNN's ISA caps (``ONEDNN_MAX_CPU_ISA``) under which its convolutions have no native bf16 instructions.
_ONEDNN_ISAS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"})


def cpu_bf16_flags() -> bool:
    """True where the CPU says it runs bf16 matrix work natively (AMX or AVX-512-BF16).

    False also where ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below its bf16 kernels (``AVX2`` for instance, the
    way to run as an AVX2-only CPU does on a newer one): oneDNN then emulates bf16 whatever the flags say.
    """
    if os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).strip().upper() in _ONEDNN_ISAS_WITHOUT_BF16:
        return False
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch
        return False


def _conv_step_seconds(precision: str, x: torch.Tensor, conv: torch.nn.Module) -> float:
    """Seconds of one forward + backward of ``conv`` on ``x`` under ``precision``'s autocast (fp32 or bf16)."""
    start = time.perf_counter()
    with autocast(precision, torch.device("cpu")):
        out = conv(x)
    out.float().sum().backward()
    return time.perf_counter() - start


def _measure_bf16_speedup() -> float:
    """fp32 time over bf16-autocast time of a conv step shaped like the default model's second stage.

    Alternating repeats, the median pair ratio: about 0.25 s at two threads. A flag is not enough: an
    AMD EPYC with AVX-512-BF16 (no AMX) trained the default model 1.9x faster in bf16, while an Intel Xeon
    with the same flags and no AMX trained it 0.72x as fast (docs/BENCHMARKS.md).
    """
    with torch.random.fork_rng(devices=[]):  # the layers' initial weights must not move the caller's global RNG
        torch.manual_seed(0)
        conv = torch.nn.Sequential(torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.Conv2d(128, 128, 3, padding=1)).to(memory_format=torch.channels_last)
        x = torch.randn(16, 64, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    for precision in ("fp32", "bf16"):  # warm-up: oneDNN builds its kernels on first use
        _conv_step_seconds(precision, x, conv)
    ratios = sorted(_conv_step_seconds("fp32", x, conv) / _conv_step_seconds("bf16", x, conv) for _ in range(3))
    return ratios[len(ratios) // 2]


@functools.cache
def bf16_speedup() -> float | None:
    """How many times faster bf16 autocast runs a conv step than fp32 on this CPU, measured once per process.

    ``None`` where the CPU has no native bf16 flag (there bf16 is emulated and was measured 11x slower;
    nothing is run). ``CONVAE_BF16_SPEEDUP`` (a number) replaces the measurement.
    """
    forced = os.environ.get("CONVAE_BF16_SPEEDUP")
    if forced:
        try:
            return float(forced)
        except ValueError:
            raise ConfigError(f"CONVAE_BF16_SPEEDUP={forced!r} is not a number (bf16 over fp32 speed, e.g. 1.9 or 0.7)") from None
    if not cpu_bf16_flags():
        return None
    speedup = _measure_bf16_speedup()
    logger.info("bf16 autocast ran a conv step %.2fx as fast as fp32 on this CPU: precision auto uses %s",
                speedup, "bf16" if speedup >= FAST_BF16 else "fp32")
    return speedup


def cpu_has_fast_bf16() -> bool:
    """True where bf16 autocast is measurably faster than fp32 here (:func:`bf16_speedup` at least ``FAST_BF16``).

    The CPU's flags (AMX, AVX-512-BF16) decide whether to measure; the measurement decides.
    """
    speedup = bf16_speedup()
    return speedup is not None and speedup >= FAST_BF16


def slow_bf16_note() -> str:
    """What bf16 costs on this CPU, for warnings: the measured ratio, or the emulation figure where it was not measured."""
    speedup = bf16_speedup()
    if speedup is None:
        return ("this CPU has no native bf16 (no AMX or AVX-512-BF16): it is emulated and was measured 11x slower than fp32 "
                "on an AVX2 CPU")
    return f"bf16 autocast ran a conv step {speedup:.2f}x as fast as fp32 on this CPU (measured at start)"


_warned_slow_bf16 = False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where it is fast (CUDA with bf16; a CPU where :func:`cpu_has_fast_bf16` measured it),
    else ``fp16`` on CUDA, else ``fp32``.

    An explicit ``bf16`` on a CPU where it is not fast is kept, with a warning once per process that says
    the cost: emulated bf16 (no AMX, no AVX-512-BF16: most laptops and AVX2 servers) was measured 11x
    slower than fp32 (a digits run, 49.4 s against 4.4 s, on a 2-core AVX2 AMD EPYC); elsewhere the
    warning gives this CPU's measured ratio.
    """
    global _warned_slow_bf16
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ConfigError("train.precision='fp16' is for GPUs; on CPU use bf16 or fp32")
        if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16() and not _warned_slow_bf16:
            _warned_slow_bf16 = True
            logger.warning("precision bf16 is not fast here: %s; use --precision fp32 (or auto) here", slow_bf16_note())
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
