"""``convae inspect``: what a run directory holds, as a dict and as a readable table."""

from __future__ import annotations

from pathlib import Path

from .runs import load_run


def describe_run(path: str | Path) -> dict:
    """Architecture, per-layer geometry and parameters, and a metrics summary of a run."""
    run = load_run(path)
    model = run.model
    counts = model.parameter_counts()
    layers = [info.to_dict() for info in model.feature_info]
    metrics = run.metrics
    summary = {}
    if metrics:
        last = metrics[-1]
        summary = {"epochs": last.get("epoch"), "steps": last.get("step"),
                   "seconds": round(sum(m.get("seconds", 0) for m in metrics), 2),
                   **{k: last[k] for k in ("train_loss", "val_mse", "val_psnr", "val_ssim", "images_per_s") if k in last}}
    return {
        "path": str(run.path), "kind": run.config.model.kind, "in_shape": list(run.in_shape),
        "model": run.config.model.model_kwargs() | {"kind": run.config.model.kind},
        "train": run.config.train.__dict__, "data": run.config.data.__dict__,
        "layers": layers, "parameters": counts, "metrics": summary, "weights_sha256": run.weights_sha256,
        "versions": run.record.get("versions", {}), "flops_per_image": model.flops_per_image(),
    }


def format_description(d: dict) -> str:
    c, h, w = d["in_shape"]
    lines = [f"run       {d['path']}", f"model     {d['kind']}  input {c}x{h}x{w}  data {d['data']['spec']}",
             f"params    {d['parameters']['total']:,} total  ({d['flops_per_image'] / 1e6:.1f} MFLOP per image forward)", "",
             f"{'layer':<12}{'channels':>9}{'map':>9}{'stride':>8}{'recept. field':>15}{'features':>10}{'params':>12}"]
    for layer in d["layers"]:
        spatial = "x".join(map(str, layer["spatial"])) if layer["spatial"] else "-"
        rf = "x".join(map(str, layer["receptive_field"]))
        lines.append(f"{layer['name']:<12}{layer['channels']:>9}{spatial:>9}{layer['stride']:>8}{rf:>15}{layer['n_features']:>10}{layer['params']:>12,}")
    decoder = {k: v for k, v in d["parameters"].items() if k.startswith("decoder")}
    if decoder:
        lines.append(f"{'decoder':<12}{'':>51}{sum(decoder.values()):>12,}")
    m = d["metrics"]
    if m:
        lines += ["", f"trained   {m.get('epochs')} epochs, {m.get('steps')} steps, {m.get('seconds')} s"]
        if "val_mse" in m:
            lines.append(f"val       MSE {m['val_mse']:.5f}  PSNR {m['val_psnr']:.2f} dB  SSIM {m['val_ssim']:.4f}")
    else:
        lines += ["", "no metrics recorded"]
    return "\n".join(lines)
