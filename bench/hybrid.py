"""A hybrid encoder (issue 15): a fixed first stage of oriented filters, learned convolutional stages above it.

The fixed stage is Kymatio's first-order scattering at one scale (J=1, L=8 angles, max_order=1): a
low-pass and 8 oriented Morlet wavelets, complex modulus, averaged and subsampled to 14x14, so 9
channels per input channel (what hybrid scattering networks put under their learned layers). It is
computed once for all 70,000 Fashion-MNIST images and scaled per channel to [0, 1] (divided by the
channel's 99.9th percentile on the training split, clipped). Above it, convae's ConvAE trains on those
9x14x14 maps without labels (the default recipe's settings: two conv -> BatchNorm -> ReLU layers per
stage, masked reconstruction of its input, AdamW, cosine) with two stages of 128 channels (14 -> 7 -> 4),
so its features (stage1 + stage2 flattened: 128x7x7 + 128x4x4 = 8,320) have the default's width and
positions. The probe is the recipe bench's screen (logistic regression at C=0.01, standardized, all
60,000 training images, the test split): the trained stages, the same stages untrained (seed-built),
and the fixed stage alone.

    python bench/hybrid.py --tflop 50 --tag h50            # writes a record into bench/results/recipes.json
    python bench/hybrid.py --reuse h50 --tag h50-val --tune-C 0.003 0.01 0.03 --no-untrained --no-fixed   # C on held-out images

Training compute counts the learned stages only (``FlopCounterMode``, forward and backward): the fixed
stage runs once per image, not once per step, and its FFTs are not counted; its wall time is recorded
(``front_seconds``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recipes import RUNS, SOLVER, all_features, images_seen, machine, plan_to_tflop, probe_scores, save_record  # noqa: E402

J, L = 1, 8


def front(images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) -> float32 (N, 9, 14, 14): first-order scattering coefficients."""
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    transform = ScatteringTorch2D(J=J, shape=tuple(images.shape[-2:]), L=L, max_order=1)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].float().div_(255.0)
            out.append(transform(x.contiguous()).flatten(1, 2))  # (B, C, 1 + L, h, w) -> (B, C * (1 + L), h, w)
    return torch.cat(out)


def main(argv=None) -> int:
    from convae.config import RunConfig, apply_overrides
    from convae.data import load_dataset
    from convae.data.arrays import ImageDataset
    from convae.models import build_model
    from convae.training import evaluate, train
    from convae.training.cost import train_flops_per_image

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tflop", type=float, default=50.0, help="training compute of the learned stages")
    p.add_argument("--tag", default="h50")
    p.add_argument("--C", type=float, default=0.01)
    p.add_argument("--tune-C", type=float, nargs="+", default=None,
                   help="pick C from these on 10,000 held-out training images (the recipes' protocol) instead of --C")
    p.add_argument("--reuse", default=None, metavar="TAG", help="probe the trained run of TAG again instead of training")
    p.add_argument("--no-untrained", action="store_true", help="probe the trained stages only")
    p.add_argument("--no-fixed", action="store_true", help="skip the fixed stage's own probe (it does not depend on the seed)")
    p.add_argument("--set", action="append", default=[], help="key=value config override (train.seed=1, ...)")
    args = p.parse_args(argv)

    train_raw, test_raw = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    t0 = time.perf_counter()
    maps_train, maps_test = front(train_raw.images), front(test_raw.images)
    front_seconds = time.perf_counter() - t0
    scale = torch.quantile(maps_train.transpose(0, 1).flatten(1)[:, ::50], 0.999, dim=1).clamp_min(1e-8)  # per channel
    maps_train = (maps_train / scale[None, :, None, None]).clamp_(0, 1)
    maps_test = (maps_test / scale[None, :, None, None]).clamp_(0, 1)
    print(f"fixed stage: {tuple(maps_train.shape[1:])} per image, {front_seconds:.0f} s for {len(maps_train) + len(maps_test):,} images",
          flush=True)
    data = ImageDataset(images=maps_train, labels=train_raw.labels, spec="array", split="train")
    test = ImageDataset(images=maps_test, labels=test_raw.labels, spec="array", split="test")

    config = apply_overrides(RunConfig(), ["model.channels=128,128", *args.set])
    shape = tuple(maps_train.shape[1:])
    torch.manual_seed(config.train.seed)
    flops_per_image = train_flops_per_image(build_model(config.model.kind, shape, **config.model.model_kwargs()), shape, config.train)
    plan_to_tflop(config.train, args.tflop, flops_per_image, len(data))
    load1 = os.getloadavg()[0]
    if args.reuse:
        from convae.runs import load_run

        run = load_run(RUNS / f"hybrid-scat1-{args.reuse}")
        model, history = run.model.eval(), run.metrics or []
    else:
        run_dir = RUNS / f"hybrid-scat1-{args.tag}"
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        result = train(config, run_dir, dataset=data, progress=False)
        model, history = result.model.eval(), result.history
    train_seconds = float(sum(h.get("seconds", 0.0) for h in history))
    images = images_seen(history, len(data), config.train)
    torch.manual_seed(config.train.seed)
    untrained = build_model(config.model.kind, shape, **config.model.model_kwargs()).eval()

    spec = "stage1+stage2:flatten"
    rows = []
    families = (("trained", model),) if args.no_untrained else (("trained", model), ("untrained", untrained))
    for family, net in families:
        t = time.perf_counter()
        a, b = all_features(net, data, [spec])[spec], all_features(net, test, [spec])[spec]
        row = {"features": "scat1 > " + spec, "post": "none", "family": family, "dim": int(a.shape[1]),
               **probe_scores(a, train_raw.labels, b, test_raw.labels, args.tune_C, args.C, config.train.seed)}
        rows.append(row)
        print(f"hybrid[{args.tag}] {family:9s} {spec} d={a.shape[1]} {row.get('head', 'C=1')} C={row.get('C', 1.0):g} "
              f"acc={row['accuracy']:.4f} ({time.perf_counter() - t:.0f}s)", flush=True)
    if not args.no_fixed:
        t = time.perf_counter()
        rows.append({"features": "scat1 alone", "post": "none", "family": "fixed", "dim": int(maps_train[0].numel()),
                     **probe_scores(maps_train.flatten(1).numpy(), train_raw.labels, maps_test.flatten(1).numpy(), test_raw.labels,
                                    None, args.C, config.train.seed)})
        print(f"hybrid[{args.tag}] fixed stage alone d={maps_train[0].numel()} acc={rows[-1]['accuracy']:.4f} "
              f"({time.perf_counter() - t:.0f}s)", flush=True)

    save_record({
        "recipe": "hybrid-scat1", "tag": args.tag, "config": "bench/hybrid.py",
        "train_images": len(data), "probe_train": len(data), "probe_test": len(test), "epochs": len(history),
        "train_seconds": round(train_seconds, 1), "images_per_s": round(images / max(train_seconds, 1e-9), 1),
        "load_avg_1m": round(load1, 2), "test_mse": evaluate(model, test)["mse"], "test_mse_wta": None, "rows": rows,
        "kind": config.model.kind, "model": config.to_dict()["model"], "solver": SOLVER, "seed": config.train.seed,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "flops_per_image": flops_per_image,
        "train_tflop": round(images * flops_per_image / 1e12, 2), "machine": machine(config.train.precision),
        "overrides": ["scattering J=1 L=8 first stage", *args.set, f"tflop={args.tflop:g}"],
        "front_seconds": round(front_seconds, 1),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
