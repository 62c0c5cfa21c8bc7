"""Extraction paths of the default model: images/s, share of the fp32 matmul peak, and the ratio to training.

    python bench/extraction_paths.py                 # 10,000 images, 3 repeats (several minutes on 2 cores)
    python bench/extraction_paths.py --quick         # 1,000 images, 1 repeat, 256 training images: checks that it runs
    python bench/extraction_paths.py --threads 1 --images 30000 --repeats 5

The model is the ConvAE that ``RunConfig()`` describes (since issue 15 the scattering stem, then two stages
of 128 channels, two conv -> BatchNorm -> ReLU each, a 1x1-conv bottleneck; before it 64/128/128 channels), seed-built; its BatchNorms get random affine parameters and
running statistics from a few train-mode forwards on the images (so folding them is not a no-op), then
it is in eval mode. Speed does not depend on the weights. The features are the default ones
(``ConvAEFeatures()``, :data:`LAYERS`): the two deepest stages flattened (stage1 + stage2 now, 128x7x7 + 128x4x4 =
8,320 per 28x28 image), of the first ``--images`` Fashion-MNIST training images held in memory as uint8. Every
path converts each batch to float in [0, 1], runs the encoder up to the deepest of them and returns one float32
N x 8,320 array.

Phase 1, at batch 128 (convae's default), one step at a time: ``plain`` (eval + ``torch.no_grad``, fp32,
contiguous NCHW), ``inference_mode``, ``+channels_last``, ``+bn_folded`` (each BatchNorm folded into
the conv before it, ``convae.models.fold_batchnorm``), and folding alone without channels_last; plus
``convae.extract_features`` as shipped (fp32; it folds, in channels_last, under inference mode) and
the same with folding turned off (what it did before folding). Phase 2: the fastest phase-1 manual
path at batch 128, 256, 512 and 1024. Phase 3, side by side: ``extract_features`` at batch 128 and
at the winning batch, in fp32 and (only where the CPU has a native bf16 flag, ``convae.runtime.cpu_bf16_flags()``, fast or not) bf16; the
winning manual path; and one epoch of training of the same default recipe on ``--train-images``
images (``convae.training.train_model`` with a default ``TrainConfig``, as bench/bench_training.py's
``convae_epoch`` runs it) in fp32 and in bf16 where native. The extraction/training ratios come from
phase 3. Within each phase the repeats alternate between the paths; each path runs once on a few
batches before timing (oneDNN builds its kernels on first use).

FLOPs: extraction = the forward FLOPs of the encoder up to the deepest feature layer (``torch.utils.flop_counter.
FlopCounterMode`` on one batch: convs only, 2 x multiply-accumulates); training = FlopCounterMode over forward and backward (``train_flops_per_image``, bench/bench_training.py's convention;
before issue 15's stem, 3 x the forward FLOPs of the whole autoencoder). The share of the peak is achieved
GFLOP/s over the best large fp32 dense product (``torch.matmul`` or a 1x1 conv: bench/_common.py's ``gemm_peak``, best of before
and after the timings), on both clocks (wall, and this process's CPU time).

Writes bench/results/extraction_paths.json and .md (``--quick``: extraction_paths-quick.*; ``--out``
to choose the stem).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, fashion, gemm_peak, load_average, machine_info, machine_line, rate_summary, threads, timed

SHAPE = (1, 28, 28)


def default_layers() -> list[str]:
    """``ConvAEFeatures()``'s default layers (the two deepest stages) on the default model at 28x28."""
    from convae.config import RunConfig
    from convae.models import build_from_config
    from convae.sklearn import ConvAEFeatures

    return build_from_config(RunConfig(), SHAPE).resolve_layers(ConvAEFeatures().layers)


LAYERS = default_layers()
BATCH_SIZES = (128, 256, 512, 1024)
DEFAULT_BATCH = 128


# --- the model -------------------------------------------------------------------------------------------------
def default_model(images: torch.Tensor, seed: int = 0) -> torch.nn.Module:
    """``RunConfig()``'s ConvAE with non-trivial BatchNorm affine parameters and running statistics, in eval mode."""
    from convae.config import RunConfig
    from convae.models import build_from_config

    torch.manual_seed(seed)
    model = build_from_config(RunConfig(), SHAPE)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.momentum = None  # cumulative average over the forwards below
        model.train()
        for start in range(0, min(len(images), 1024), 256):
            model(images[start:start + 256].float() / 255)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    return model.eval()


def encoder_flops_per_image(model, batch: int = DEFAULT_BATCH) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(batch, *SHAPE)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.forward_intermediates(x, LAYERS, stop_early=True)
    return counter.get_total_flops() / batch


# --- the paths ---------------------------------------------------------------------------------------------------
def manual(model, images: torch.Tensor, batch_size: int, *, inference: bool, channels_last: bool) -> np.ndarray:
    """Batches of uint8 images -> float [0, 1] -> encoder up to the deepest of LAYERS -> LAYERS flattened, float32."""
    chunks = []
    mode = torch.inference_mode if inference else torch.no_grad
    for start in range(0, len(images), batch_size):
        with mode():
            x = images[start:start + batch_size].float().div_(255.0)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model.forward_intermediates(x, LAYERS, stop_early=True)
            chunks.append(torch.cat([out[n].flatten(1) for n in LAYERS], dim=1).numpy())
    return np.concatenate(chunks)


@contextmanager
def no_folding():
    """``convae.extract_features`` without BatchNorm folding, as it ran before it folded."""
    from convae.features import extract

    real = extract.count_foldable_batchnorm
    extract.count_foldable_batchnorm = lambda model: 0
    try:
        yield
    finally:
        extract.count_foldable_batchnorm = real


def shipped(model, images, batch_size: int, precision: str, fold: bool = True) -> np.ndarray:
    from convae.features import extract_features

    with nullcontext() if fold else no_folding():
        return extract_features(model, images, layers=LAYERS, pool="flatten", batch_size=batch_size, precision=precision)


class Paths:
    """The models each path runs (built once) and a callable per path name."""

    def __init__(self, model):
        from convae.models import fold_batchnorm

        self.plain = model
        self.cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        self.folded = fold_batchnorm(model)
        self.folded_cl = fold_batchnorm(model).to(memory_format=torch.channels_last)

    def manual_spec(self, name: str):
        """name -> (model, inference, channels_last) for the manual paths."""
        return {
            "plain": (self.plain, False, False),
            "inference_mode": (self.plain, True, False),
            "inference_mode+bn_folded": (self.folded, True, False),
            "inference_mode+channels_last": (self.cl, True, True),
            "inference_mode+channels_last+bn_folded": (self.folded_cl, True, True),
        }[name]

    def extractor(self, path: str, batch_size: int):
        """A function images -> features for ``path`` at ``batch_size``."""
        if path.startswith("extract_features"):
            precision = "bf16" if path.endswith("bf16") else "fp32"
            fold = "no_fold" not in path
            return lambda images: shipped(self.plain, images, batch_size, precision, fold)
        model, inference, cl = self.manual_spec(path)
        return lambda images: manual(model, images, batch_size, inference=inference, channels_last=cl)


MANUAL = ["plain", "inference_mode", "inference_mode+bn_folded", "inference_mode+channels_last",
          "inference_mode+channels_last+bn_folded"]


def train_once(images: torch.Tensor, precision: str) -> None:
    from bench_training import convae_epoch

    convae_epoch(images, precision=precision)


# --- measuring ---------------------------------------------------------------------------------------------------
def rel_diff(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def measure_phase(rows: list[tuple[str, int, str]], paths: Paths, images, train_images, repeats: int,
                  reference: np.ndarray, check: torch.Tensor, log) -> dict:
    """rows: (path, batch size, kind "extract" | "train"); alternate ``repeats`` times. -> {key: result}."""
    runs = {}
    for path, bs, kind in rows:  # warm-up and parity on the check images
        key = f"{path} batch={bs}"
        if kind == "train":
            precision = path.split("_")[-1]
            train_once(train_images[: 2 * DEFAULT_BATCH], precision)
            runs[key] = (lambda p=precision: train_once(train_images, p), len(train_images), {"path": path, "kind": kind,
                                                                                            "batch_size": bs, "precision": precision})
            continue
        fn = paths.extractor(path, bs)
        feats = fn(check)
        precision = "bf16" if path.endswith("bf16") else "fp32"
        runs[key] = (lambda f=fn: f(images), len(images), {"path": path, "kind": kind, "batch_size": bs, "precision": precision,
                                                           "max_rel_diff_vs_plain": rel_diff(feats, reference)})
    timings = {key: [] for key in runs}
    for r in range(repeats):
        for key, (fn, _, _) in runs.items():
            with timed() as t:
                fn()
            timings[key].append(t)
            log(f"  repeat {r + 1}/{repeats} {key}: {runs[key][1] / t.wall:,.0f} img/s wall")
    return {key: {**meta, **rate_summary(n, timings[key])} for key, (_, n, meta) in runs.items()}


def add_roofline(results: dict, flops: dict, peaks: dict) -> None:
    for r in results.values():
        per_image = flops["training" if r["kind"] == "train" else "extraction"]
        r["flops_per_image"] = per_image
        for clock in ("wall", "cpu"):
            gflops = r[f"median_{clock}_img_s"] * per_image / 1e9
            r[f"{clock}_gflops"] = round(gflops, 1)
            r[f"{clock}_share_of_fp32_peak"] = round(gflops / peaks["fp32"][clock], 4)
            if "bf16" in peaks and r["precision"] == "bf16":
                r[f"{clock}_share_of_bf16_peak"] = round(gflops / peaks["bf16"][clock], 4)


def run(n_images: int, repeats: int, train_images: int, thread_count: int | None, quick: bool, log=print) -> dict:
    from convae.runtime import cpu_bf16_flags

    logging.getLogger("convae").setLevel(logging.ERROR)  # the busy-CPU warning would repeat every training trial
    info = machine_info()
    data = fashion("train").images
    images = data[:n_images].clone()  # (N, 1, 28, 28) uint8, in memory
    train_data = data[:train_images].clone()
    native_bf16 = cpu_bf16_flags()  # measure bf16 wherever it is native, also where it is slower than fp32
    peak_seconds = 0.5 if quick else 1.5
    with threads(thread_count):
        used = torch.get_num_threads()
        log(f"{n_images:,} images, {repeats} repeat(s), {used} threads, training on {train_images:,} images, native bf16: {native_bf16}")
        model = default_model(images)
        paths = Paths(model)
        from convae.config import TrainConfig
        from convae.training.cost import train_flops_per_image

        flops = {"extraction": encoder_flops_per_image(model),  # bench_training.py's convention: FlopCounterMode, forward + backward
                 "training": train_flops_per_image(model, SHAPE, TrainConfig())}
        check = images[:min(512, max(128, n_images // 4))]  # warm-up and the parity check against ``plain``
        reference = manual(model, check, DEFAULT_BATCH, inference=False, channels_last=False)
        peaks_before = {"fp32": gemm_peak(torch.float32, seconds=peak_seconds)}
        if native_bf16:
            peaks_before["bf16"] = gemm_peak(torch.bfloat16, seconds=peak_seconds)
        t0 = time.perf_counter()

        log("phase 1: one step at a time, batch 128")
        phase1_rows = [(p, DEFAULT_BATCH, "extract") for p in MANUAL]
        phase1_rows += [("extract_features_no_fold_fp32", DEFAULT_BATCH, "extract"), ("extract_features_fp32", DEFAULT_BATCH, "extract")]
        phase1 = measure_phase(phase1_rows, paths, images, train_data, repeats, reference, check, log)
        best_path = max(MANUAL, key=lambda p: phase1[f"{p} batch={DEFAULT_BATCH}"]["median_wall_img_s"])

        log(f"phase 2: batch sizes of the fastest manual path, {best_path}")
        phase2 = measure_phase([(best_path, bs, "extract") for bs in BATCH_SIZES], paths, images, train_data, repeats,
                               reference, check, log)
        best_batch = max(BATCH_SIZES, key=lambda bs: phase2[f"{best_path} batch={bs}"]["median_wall_img_s"])

        log(f"phase 3: side by side with training (best batch {best_batch})")
        batches = sorted({DEFAULT_BATCH, best_batch})
        phase3_rows = [("extract_features_fp32", bs, "extract") for bs in batches]
        if native_bf16:
            phase3_rows += [("extract_features_bf16", bs, "extract") for bs in batches]
        phase3_rows += [(best_path, best_batch, "extract"), ("train_fp32", DEFAULT_BATCH, "train")]
        if native_bf16:
            phase3_rows.append(("train_bf16", DEFAULT_BATCH, "train"))
        phase3 = measure_phase(phase3_rows, paths, images, train_data, repeats, reference, check, log)
        seconds = time.perf_counter() - t0

        peaks_after = {"fp32": gemm_peak(torch.float32, seconds=peak_seconds)}
        if native_bf16:
            peaks_after["bf16"] = gemm_peak(torch.bfloat16, seconds=peak_seconds)
    peaks = {p: {clock: max(peaks_before[p][f"{clock}_gflops"], peaks_after[p][f"{clock}_gflops"]) for clock in ("wall", "cpu")}
             for p in peaks_before}
    for phase in (phase1, phase2, phase3):
        add_roofline(phase, flops, peaks)
    return {"machine": info, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick, "threads": used, "images": n_images, "repeats": repeats,
            "train_images": train_images, "layers": LAYERS, "pool": "flatten", "n_features": int(reference.shape[1]),
            "native_bf16": native_bf16, "flops_per_image": flops, "gemm_peak_gflops": peaks,
            "gemm_peak_samples": {"before": peaks_before, "after": peaks_after},
            "phase1": phase1, "best_manual_path": best_path, "phase2": phase2, "best_batch_size": best_batch, "phase3": phase3,
            "gains": gains(phase1, phase2, phase3, best_path, best_batch),
            "ratios": ratios(phase3, best_path, best_batch, native_bf16),
            "measure_seconds": round(seconds, 1), "load_average_end": load_average()}


def gains(phase1: dict, phase2: dict, phase3: dict, best_path: str, best_batch: int) -> dict:
    def rate(phase, path, bs=DEFAULT_BATCH, clock="wall"):
        return phase[f"{path} batch={bs}"][f"median_{clock}_img_s"]

    out = {}
    for clock in ("wall", "cpu"):
        base = rate(phase1, "plain", clock=clock)
        out[clock] = {
            **{f"{p}_over_plain": round(rate(phase1, p, clock=clock) / base, 2) for p in MANUAL[1:]},
            "bn_folding_in_channels_last": round(rate(phase1, MANUAL[4], clock=clock) / rate(phase1, MANUAL[3], clock=clock), 2),
            "bn_folding_in_nchw": round(rate(phase1, MANUAL[2], clock=clock) / rate(phase1, MANUAL[1], clock=clock), 2),
            "bn_folding_in_extract_features": round(rate(phase1, "extract_features_fp32", clock=clock)
                                                    / rate(phase1, "extract_features_no_fold_fp32", clock=clock), 2),
            f"batch_{best_batch}_over_128": round(rate(phase2, best_path, best_batch, clock) / rate(phase2, best_path, clock=clock), 2),
            "best_manual_over_plain": round(rate(phase3, best_path, best_batch, clock) / base, 2),
        }
    return out


def ratios(phase3: dict, best_path: str, best_batch: int, native_bf16: bool) -> dict:
    """Extraction images/s over training images/s, all from phase 3."""
    def rate(key, clock):
        return phase3[key][f"median_{clock}_img_s"]

    out = {}
    for clock in ("wall", "cpu"):
        train32 = rate(f"train_fp32 batch={DEFAULT_BATCH}", clock)
        r = {f"extract_features_fp32_batch{bs}_over_train_fp32": round(rate(f"extract_features_fp32 batch={bs}", clock) / train32, 1)
             for bs in sorted({DEFAULT_BATCH, best_batch})}
        r["best_manual_over_train_fp32"] = round(rate(f"{best_path} batch={best_batch}", clock) / train32, 1)
        if native_bf16:
            train16 = rate(f"train_bf16 batch={DEFAULT_BATCH}", clock)
            for bs in sorted({DEFAULT_BATCH, best_batch}):
                r[f"extract_features_bf16_batch{bs}_over_train_bf16"] = round(rate(f"extract_features_bf16 batch={bs}", clock) / train16, 1)
            best_extract = max(rate(k, clock) for k, v in phase3.items() if v["kind"] == "extract")
            r["best_extraction_over_best_training"] = round(best_extract / max(train32, train16), 1)
        out[clock] = r
    return out


# --- the report --------------------------------------------------------------------------------------------------
def table(result: dict) -> list[str]:
    rows = ["| phase | path | precision | batch | img/s wall (median) | img/s per CPU-second | GFLOP/s wall | share of fp32 peak (wall / CPU) | max rel. diff vs plain |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for phase in ("phase1", "phase2", "phase3"):
        for r in result[phase].values():
            diff = f"{r['max_rel_diff_vs_plain']:.1e}" if "max_rel_diff_vs_plain" in r else ""
            path = r["path"] + (f" ({result['train_images']:,} img, 1 epoch)" if r["kind"] == "train" else "")
            rows.append(f"| {phase[-1]} | {path} | {r['precision']} | {r['batch_size']} | {r['median_wall_img_s']:,.0f} | "
                        f"{r['median_cpu_img_s']:,.0f} | {r['wall_gflops']:.1f} | {100 * r['wall_share_of_fp32_peak']:.1f}% / "
                        f"{100 * r['cpu_share_of_fp32_peak']:.1f}% | {diff} |")
    return rows


def report(result: dict) -> str:
    m, p = result["machine"], result["gemm_peak_gflops"]
    lines = [f"# Extraction paths of the default model ({'quick' if result.get('quick') else 'full'})", "",
             (f"{result['when']}, {machine_line(m)}, {result['threads']} threads, load "
              f"{m['load_average_start']} at the start, {result['load_average_end']} at the end; "
              f"{result['images']:,} Fashion-MNIST images, features {'+'.join(result['layers'])} flattened "
              f"({result['n_features']:,} per image), {result['repeats']} alternating repeat(s) per phase."), "",
             (f"FLOPs per image: extraction {result['flops_per_image']['extraction'] / 1e6:.1f} M (encoder to {LAYERS[-1]}), training "
              f"{result['flops_per_image']['training'] / 1e6:.1f} M (FlopCounterMode, forward and backward). fp32 dense-product peak "
              f"{p['fp32']['wall']:.0f} GFLOP/s wall / {p['fp32']['cpu']:.0f} per CPU-second"
              + (f"; bf16 {p['bf16']['wall']:.0f} / {p['bf16']['cpu']:.0f}" if "bf16" in p else "") + "."), "",
             *table(result), "",
             f"Fastest manual path at batch 128: {result['best_manual_path']}; its best batch size: {result['best_batch_size']}.", "",
             "Gains (median img/s ratios, wall clock): " + ", ".join(f"{k} {v}x" for k, v in result["gains"]["wall"].items()) + ".", "",
             "Extraction / training images/s (phase 3, wall clock): "
             + ", ".join(f"{k} {v}x" for k, v in result["ratios"]["wall"].items()) + "; per CPU-second: "
             + ", ".join(f"{k} {v}x" for k, v in result["ratios"]["cpu"].items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="images to extract (default 10,000; --quick 1,000)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating repeats per phase (default 3; --quick 1)")
    parser.add_argument("--train-images", type=int, default=None, help="images of the training epoch (default 2,560; --quick 256)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--quick", action="store_true", help="1,000 images, 1 repeat, 256 training images: checks that it runs, measures nothing")
    parser.add_argument("--out", default=None, help="results stem (default bench/results/extraction_paths[-quick])")
    args = parser.parse_args()
    n = args.images or (1_000 if args.quick else 10_000)
    repeats = args.repeats or (1 if args.quick else 3)
    train_images = args.train_images or (256 if args.quick else 2_560)
    result = run(n, repeats, train_images, args.threads, args.quick, log=lambda s: print(s, file=sys.stderr, flush=True))
    stem = Path(args.out) if args.out else ROOT / "bench" / "results" / ("extraction_paths-quick" if args.quick else "extraction_paths")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = report(result)
    stem.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
