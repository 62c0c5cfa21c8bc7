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
from .config import DEFAULT_EPOCHS, DEMO_BUDGETS, DEMO_BUDGETS_SMALL, DEMO_EPOCHS, demo_configs
from .data import has_test_split, load_dataset
from .errors import ConvaeError
from .report import write_report
from .runs import read_config
from .runtime import resolve_device, resolve_precision
from .training import evaluate, load_training_data, split_indices, train

logger = logging.getLogger(__name__)


def run_demo(data: str = "fashion-mnist", out: str | Path = "runs/demo", epochs: int | None = None, limit: int | None = None,
             progress: bool = True, budgets: bool = True) -> dict:
    """Train both models into ``out/<data>-<time>/{conv,dense}`` and measure them side by side.

    Each model trains to a time budget (:data:`convae.config.DEMO_BUDGETS`, smaller for tiny images) sized so
    that the demo, probe and report included, ends within about 5 minutes on any CPU; ``epochs`` (default: the
    default recipe's, 30 for digits) caps it, and whichever ends first decides. ``budgets=False`` trains the
    epochs alone.
    """
    epochs = epochs or max(DEMO_EPOCHS.get(data, 5), DEFAULT_EPOCHS)
    root = Path(out) / f"{data.replace(':', '_').replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    train_data = load_training_data(demo_configs(data, epochs, limit)["conv"])
    small = min(train_data.shape[1:]) < 16
    budget = (DEMO_BUDGETS_SMALL if small else DEMO_BUDGETS) if budgets else None
    configs = demo_configs(data, epochs, limit, in_shape=train_data.shape, budgets=budget)
    if has_test_split(data):
        eval_data, eval_idx, eval_name = load_dataset(data, "test", image_size=train_data.shape[1:], channels=train_data.shape[0]), None, "test"
    else:
        cfg = configs["conv"].train
        eval_data, eval_idx, eval_name = train_data, split_indices(len(train_data), cfg.val_fraction, cfg.seed)[1], "validation"
    results = {}
    for kind, cfg in configs.items():
        logger.info("training the %s model on %s for at most %d epochs%s", kind, data, epochs,
                    f" or {cfg.train.time_budget}, whichever ends first" if cfg.train.time_budget else "")
        result = train(cfg, root / kind, progress=progress, dataset=train_data)
        device = resolve_device(cfg.train.device)
        metrics = evaluate(result.model, eval_data, eval_idx, precision=resolve_precision(cfg.train.precision, device), device=device)
        results[kind] = {"run_dir": str(root / kind), "parameters": result.model.parameter_counts()["total"],
                         "train_seconds": round(sum(r["seconds"] for r in result.history), 2), "precision": result.precision,
                         "epochs_trained": len(result.history), "steps": result.history[-1]["step"] if result.history else 0,
                         "train_tflop": result.history[-1].get("train_tflop") if result.history else 0,
                         "time_budget": cfg.train.time_budget,
                         "reconstructs": "pixels" if getattr(result.model, "stem", None) is None else "stem maps",
                         **{f"{eval_name}_{k}": v for k, v in metrics.items()}}
    # The per-layer linear probe: ConvAE, FCAE, the untrained encoder and raw pixels side by side.
    logger.info("probing the ConvAE's layers beside the FCAE, the untrained encoder and raw pixels")
    probed = probe(root / "conv", data, fcae=root / "dense", quick=True, progress=progress)
    report = write_demo_report(root / "conv", root / "dense")
    return {"data": data, "epochs": epochs, "n_train": len(train_data), "in_shape": list(train_data.shape), "eval_split": eval_name,
            "root": str(root), "models": results,
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
            ("epochs trained", f"{conv.get('epochs_trained', result['epochs'])}", f"{dense.get('epochs_trained', result['epochs'])}"),
            ("training TFLOP", f"{conv.get('train_tflop') or 0:.2f}", f"{dense.get('train_tflop') or 0:.3f}"),
            ("precision", conv["precision"], dense["precision"])]
    width = max(len(r[0]) for r in rows) + 2
    budgets = " / ".join(str(m.get("time_budget")) for m in (conv, dense)) if conv.get("time_budget") else None
    lines = [f"convae demo: {result['data']}, {result['n_train']:,} training images, at most {result['epochs']} epochs each"
             + (f", trained to a time budget of {budgets} (ConvAE / FCAE) on this machine" if budgets else ""), "",
             f"{'':<{width}}{'ConvAE':>14}{'FCAE':>14}"]
    lines += [f"{name:<{width}}{a:>14}{b:>14}" for name, a, b in rows]
    if conv.get("reconstructs") == "stem maps":
        lines += ["(the ConvAE reconstructs its fixed scattering stem's maps, the FCAE the pixels: their MSE, PSNR and SSIM "
                  "measure different things)"]
    lines += ["", f"runs: {conv['run_dir']}  (ConvAE)", f"      {dense['run_dir']}  (FCAE)",
              f"inspect one with: convae inspect {conv['run_dir']}"]
    if result.get("probe_table"):
        lines += ["", result["probe_table"]]
    shape = result.get("in_shape")
    if shape is None:  # the runs record the image shape they were trained on
        try:
            shape = read_config(conv["run_dir"])[1]
        except (ConvaeError, OSError, KeyError):
            shape = None
    if shape is not None and min(shape[1:]) < 16:  # tiny images: little spatial structure for a pixel shuffle to destroy
        lines += ["", f"Note: the permutation effect (a ConvAE hurt by a fixed pixel shuffle, an FCAE not) needs larger images: "
                      f"{shape[1]}x{shape[2]} images leave little spatial structure to destroy. See it on Fashion-MNIST with",
                  "      convae compare --data fashion-mnist --out runs/compare"]
    if result.get("report"):
        lines += ["", f"report: {result['report']}"]
    return "\n".join(lines)


__all__ = ["run_demo", "format_demo"]
