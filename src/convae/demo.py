"""``convae demo``: a ConvAE and an FCAE trained side by side on the same images, compared.

The comparison is on the dataset's test split where it has one, otherwise on the validation
split the trainer held out. Later steps of the demo (probe, report) build on the two runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .analysis.probe import probe
from .analysis.tables import format_table
from .config import DEMO_EPOCHS, demo_configs
from .data import has_test_split, load_dataset
from .report import write_report
from .runtime import resolve_device, resolve_precision
from .training import evaluate, load_training_data, split_indices, train

logger = logging.getLogger(__name__)


def run_demo(data: str = "fashion-mnist", out: str | Path = "runs/demo", epochs: int | None = None, limit: int | None = None,
             progress: bool = True) -> dict:
    """Train both models into ``out/<data>-<time>/{conv,dense}`` and measure them side by side."""
    epochs = epochs or DEMO_EPOCHS.get(data, 5)
    root = Path(out) / f"{data.replace(':', '_').replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    train_data = load_training_data(demo_configs(data, epochs, limit)["conv"])
    configs = demo_configs(data, epochs, limit, in_shape=train_data.shape)
    if has_test_split(data):
        eval_data, eval_idx, eval_name = load_dataset(data, "test", image_size=train_data.shape[1:], channels=train_data.shape[0]), None, "test"
    else:
        cfg = configs["conv"].train
        eval_data, eval_idx, eval_name = train_data, split_indices(len(train_data), cfg.val_fraction, cfg.seed)[1], "validation"
    results = {}
    for kind, cfg in configs.items():
        logger.info("training the %s model on %s for %d epochs", kind, data, epochs)
        result = train(cfg, root / kind, progress=progress, dataset=train_data)
        device = resolve_device(cfg.train.device)
        metrics = evaluate(result.model, eval_data, eval_idx, precision=resolve_precision(cfg.train.precision, device), device=device)
        results[kind] = {"run_dir": str(root / kind), "parameters": result.model.parameter_counts()["total"],
                         "train_seconds": round(sum(r["seconds"] for r in result.history), 2), "precision": result.precision,
                         **{f"{eval_name}_{k}": v for k, v in metrics.items()}}
    # The per-layer linear probe: ConvAE, FCAE, the untrained encoder and raw pixels side by side.
    logger.info("probing the ConvAE's layers beside the FCAE, the untrained encoder and raw pixels")
    probed = probe(root / "conv", data, fcae=root / "dense", quick=True, progress=progress)
    report = write_demo_report(root / "conv", root / "dense")
    return {"data": data, "epochs": epochs, "n_train": len(train_data), "eval_split": eval_name, "root": str(root), "models": results,
            "probe_table": format_table(probed), "report": str(report)}


def write_demo_report(conv_run: Path, dense_run: Path) -> Path:
    """The demo's last step: the ConvAE's HTML report, the FCAE beside it (probe tables where probe.json exists)."""
    return write_report(conv_run, fcae=dense_run)


def format_demo(result: dict) -> str:
    conv, dense = result["models"]["conv"], result["models"]["dense"]
    split = result["eval_split"]
    rows = [("parameters", f"{conv['parameters']:,}", f"{dense['parameters']:,}"),
            (f"{split} MSE", f"{conv[f'{split}_mse']:.5f}", f"{dense[f'{split}_mse']:.5f}"),
            (f"{split} PSNR (dB)", f"{conv[f'{split}_psnr']:.2f}", f"{dense[f'{split}_psnr']:.2f}"),
            (f"{split} SSIM", f"{conv[f'{split}_ssim']:.4f}", f"{dense[f'{split}_ssim']:.4f}"),
            ("training time (s)", f"{conv['train_seconds']:.1f}", f"{dense['train_seconds']:.1f}"),
            ("precision", conv["precision"], dense["precision"])]
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"convae demo: {result['data']}, {result['n_train']:,} training images, {result['epochs']} epochs each", "",
             f"{'':<{width}}{'ConvAE':>14}{'FCAE':>14}"]
    lines += [f"{name:<{width}}{a:>14}{b:>14}" for name, a, b in rows]
    lines += ["", f"runs: {conv['run_dir']}  (ConvAE)", f"      {dense['run_dir']}  (FCAE)",
              f"inspect one with: convae inspect {conv['run_dir']}"]
    if result.get("probe_table"):
        lines += ["", result["probe_table"]]
    if result.get("report"):
        lines += ["", f"report: {result['report']}"]
    return "\n".join(lines)


__all__ = ["run_demo", "format_demo"]
