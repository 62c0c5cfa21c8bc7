"""``convae report``: one self-contained HTML page about a run.

The page holds the configuration and layer geometry, training curves, reconstruction metrics and
grids (beside an FCAE when one is given), the per-layer probe table with accuracy-versus-depth
and accuracy-versus-labels plots (from the run's ``probe.json``), the visualizations of
:mod:`convae.viz`, a ConvAE's first-layer filters beside its untrained twin's with their edge
scores (:mod:`convae.analysis.filters`), and the results of ``convae compare`` when a compare directory is given.
Every image is an embedded base64 PNG and there is no script and no external link, so the file
opens anywhere, offline, and can be mailed as it is.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from . import viz
from ._version import __version__
from .analysis.compare import load_compare
from .analysis.filters import filter_study, format_filter_table
from .analysis.tables import format_compare, format_table
from .atomic import atomic_write_text
from .runs import Run, as_run
from .runtime import thread_limit
from .training import evaluate
from .viz.compare_plots import compare_figures
from .viz.filter_plots import plot_filter_comparison
from .viz.plots import figure_png

logger = logging.getLogger(__name__)

TITLES = {"conv": "ConvAE", "dense": "FCAE"}
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px; padding: 1.5em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-top: 1.4em; } .muted { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.86em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; margin-top: 0.3em; }
nav a { margin-right: 1em; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
"""


# --- HTML pieces ---------------------------------------------------------------------------------------
def _esc(value) -> str:
    return html.escape(str(value))


def figure_html(fig: Figure, caption: str, alt: str | None = None, dpi: int = 90) -> str:
    """``fig`` as an ``<figure>`` holding an embedded PNG."""
    data = base64.b64encode(figure_png(fig, dpi=dpi)).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt or caption)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def table_html(header: list, rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_html(text: str) -> str:
    """The Markdown that convae's formatters emit (paragraphs, ``#`` headings, pipe tables) as HTML."""
    out, table, para = [], [], []

    def flush() -> None:
        if table:
            cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
            rows = [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append(table_html(cells[0], rows))
            table.clear()
        if para:
            out.append(f"<p>{_esc(' '.join(para))}</p>")
            para.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            if para:
                flush()
            table.append(line)
            continue
        if table:
            flush()
        if not line.strip():
            flush()
        elif line.startswith("#"):
            flush()
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{_esc(line.lstrip('#').strip())}</h{level}>")
        else:
            para.append(line.strip())
    flush()
    return "\n".join(out)


# --- sections --------------------------------------------------------------------------------------------
def _config_section(run: Run) -> str:
    model = run.model
    rows = [[info.name, info.channels, "x".join(map(str, info.spatial)) if info.spatial else "-", info.stride,
             "x".join(map(str, info.receptive_field)), f"{info.n_features:,}", f"{info.params:,}"] for info in model.feature_info]
    counts = model.parameter_counts()
    rows.append(["decoder", "", "", "", "", "", f"{sum(v for k, v in counts.items() if k.startswith('decoder')):,}"])
    rows.append(["total", "", "", "", "", "", f"{counts['total']:,}"])
    config = json.dumps(run.config.to_dict(), indent=2)
    return (table_html(["layer", "channels", "map", "stride", "receptive field", "features", "parameters"], rows)
            + f"<details><summary>full configuration (config.json)</summary><pre>{_esc(config)}</pre></details>")


def plot_training(runs: dict[str, Run]) -> Figure:
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for name, run in runs.items():
        m = run.metrics
        epochs = [r["epoch"] for r in m]
        axes[0].plot(epochs, [r["train_loss"] for r in m], "o-", markersize=3, label=f"{name} train loss")
        if m and "val_mse" in m[0]:
            axes[0].plot(epochs, [r["val_mse"] for r in m], "s--", markersize=3, label=f"{name} validation MSE")
            axes[1].plot(epochs, [r["val_psnr"] for r in m], "o-", markersize=3, label=name)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_title("loss", fontsize=9)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("dB")
    axes[1].set_title("validation PSNR", fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
    return fig


def _probe_section(run: Run) -> str:
    path = Path(run.path) / "probe.json"
    if not path.is_file():
        return (f"<p class='muted'>No probe results in {_esc(path)}. Run <code>convae probe {_esc(run.path)}</code> "
                "(add <code>--quick</code> for a minute-long version) and write the report again.</p>")
    result = json.loads(path.read_text())
    parts = [markdown_html(format_table(result))]
    fig = plot_probe(result)
    if fig is not None:
        parts.append(figure_html(fig, "Linear-probe accuracy versus depth (left) and versus labelled examples per class (right), "
                                      "from probe.json."))
    return "\n".join(parts)


def _depth(layer: str) -> tuple[int, int]:
    """Sort key of a layer name: stageK / hiddenK by K, the bottleneck last."""
    digits = "".join(ch for ch in layer if ch.isdigit())
    return (1, 0) if layer == "bottleneck" else (0, int(digits) if digits else 0)


def plot_probe(result: dict) -> Figure | None:
    """Accuracy versus depth (scan records) and versus labels per class (label-efficiency records)."""
    meta, records = result["meta"], result["records"]
    scan = meta.get("scan_classifier") or (meta.get("classifiers") or ["logreg"])[0]
    encoders = ("convae", "untrained", "fcae")  # the families with layers; the baselines are drawn as lines and points
    layer_scan = [r for r in records if r["stage"] == "layers" and r["classifier"] == scan and r["family"] in encoders]
    labels = [r for r in records if r["stage"] == "labels"]
    if not layer_scan and not labels:
        return None
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    by_family: dict[str, list] = {}
    for r in layer_scan:
        if "+" not in r["layers"]:  # single layers only: depth is their position
            by_family.setdefault(r["family"], []).append(r)
    for family, rs in by_family.items():
        deepest = max((_depth(r["layers"])[1] for r in rs), default=0)

        def position(layer: str) -> int:  # stageK / hiddenK at K, the bottleneck after the deepest of them
            return deepest + 1 if layer == "bottleneck" else _depth(layer)[1]

        pools = sorted({r["pool"] for r in rs if r["pool"] != "-"}) or ["-"]
        for pool in pools:  # one line per pooling; vector layers (pool "-") join every line
            line = sorted((r for r in rs if r["pool"] in (pool, "-")), key=lambda r: _depth(r["layers"]))
            xs = [position(r["layers"]) for r in line]
            axes[0].plot(xs, [100 * r["accuracy"] for r in line], "o-", label=family + ("" if pool == "-" else f" ({pool})"))
            for x, r in zip(xs, line):
                axes[0].annotate(r["layers"], (x, 100 * r["accuracy"]), fontsize=6, textcoords="offset points", xytext=(0, 4), ha="center")
    axes[0].set_xlabel("depth (stage / hidden layer number; the bottleneck last)")
    axes[0].xaxis.get_major_locator().set_params(integer=True)
    styles = {"raw": ("gray", ":"), "pca": ("tab:olive", ":"), "hog": ("tab:brown", "--"), "scattering": ("tab:purple", "--")}
    for r in records:
        if r["stage"] == "layers" and r["classifier"] == scan and r["family"] in styles:
            colour, line = styles[r["family"]]
            axes[0].axhline(100 * r["accuracy"], color=colour, linestyle=line, label=r["feature_set"] if r["family"] != "raw" else "raw pixels")
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_title(f"accuracy vs depth ({scan}, all labels)", fontsize=9)
    axes[0].legend(fontsize=6)
    by_set: dict[str, list] = {}
    for r in labels:
        by_set.setdefault(r["feature_set"], []).append(r)
    for name, rs in by_set.items():
        rs = sorted(rs, key=lambda r: r["labels_per_class"])
        everything = next((r for r in records if r["feature_set"] == name and r["classifier"] == scan and r["labels_per_class"] is None), None)
        if everything is not None and rs:  # "all labels": the scan's own result, at the training images per class it had
            per_class = everything["n_train"] / max(1, round(rs[-1]["n_train"] / rs[-1]["labels_per_class"]))
            rs = rs + [{**everything, "labels_per_class": max(per_class, rs[-1]["labels_per_class"] * 1.5)}]
        axes[1].errorbar([r["labels_per_class"] for r in rs], [100 * r["accuracy"] for r in rs],
                         yerr=[100 * (r["accuracy_std"] or 0) for r in rs], marker="o", capsize=2, label=name)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("labelled examples per class (the last point: all labels)")
    axes[1].set_title("accuracy vs labels (mean ± std over seeds)", fontsize=9)
    if by_set:
        axes[1].legend(fontsize=6)
    return fig


def _viz_section(run: Run, dataset, fcae: Run | None, seed: int) -> str:
    model = run.model
    images, _ = viz.sample_images(dataset, 8, seed)
    models = {TITLES[run.config.model.kind]: model} | ({"FCAE": fcae.model} if fcae is not None else {})
    # the split viz.images_of_run drew (test where the data has one, else train) or that of the dataset given
    shown = {"test": "test images", "train": "train-split images"}.get(dataset.split, "images")
    parts = ["<h3>Reconstructions</h3>", figure_html(viz.plot_reconstructions(models, images), f"{shown.capitalize()} (top) and their reconstructions.")]
    parts += ["<h3>First-layer filters</h3>", figure_html(viz.plot_filters(model), "Each filter scaled to its own min..max.")]
    parts += ["<h3>Feature maps</h3>", figure_html(viz.plot_feature_maps(model, images[:3]), f"The most active channels of three {shown} at every depth.")]
    spatial = [info.name for info in model.feature_info if info.spatial is not None]
    if spatial:
        parts.append("<h3>Top patches</h3>")
        for name in spatial:
            info = model.layer_info(name)
            rf = "x".join(map(str, info.receptive_field))
            parts.append(figure_html(viz.plot_top_patches(model, dataset, name, k=8, max_channels=12, limit=2000, seed=seed),
                                     f"{name}: per channel, the 8 {shown} that excite it most, cropped to its {rf} receptive field."))
    parts += ["<h3>Activation maximization</h3>", figure_html(viz.plot_maximized(model, seed=seed, steps=REPORT_ASCENT_STEPS, starts=viz.sample_images(dataset, 256, seed)[0]),
                                                                f"Inputs found by gradient ascent from random and from the most exciting {shown} "
                                                                "(jitter, L2 and total-variation regularization).")]
    parts += ["<h3>Latent traversal</h3>", figure_html(viz.plot_traversal(model, images[0], dataset),
                                                       f"One of the {shown} decoded while the bottleneck units of largest variance over the "
                                                       "data are moved by -3..+3 standard deviations (a conv bottleneck: each channel at "
                                                       "its position of largest variance).")]
    parts += ["<h3>Embedding</h3>", figure_html(viz.plot_embedding(model, dataset, layer="bottleneck", method="pca", limit=2000, seed=seed),
                                                    f"Bottleneck features of up to 2,000 {shown}, first two principal components.")]
    return "\n".join(parts)


def _stem_section(run: Run) -> str:
    """The fixed stem's wavelets: the filters that see the pixels of a ConvAE with ``model.stem``."""
    stem = run.model.stem
    return figure_html(viz.plot_filters(run.model),
                       f"The fixed first stage (model.stem = scattering, J={stem.J}, L={stem.L}): Kymatio's Morlet wavelets at "
                       f"{stem.J} scale(s) and {stem.L} angles, real parts then imaginary. Their moduli, low-passed and "
                       f"subsampled by {stem.stride}, are the {stem.out_channels} maps the learned stages see and "
                       "reconstruct; nothing here was trained, so there is no trained-versus-untrained comparison of "
                       "first-layer filters (train with model.stem=none for one).")


def _filters_section(run: Run) -> str:
    """Trained vs untrained first-layer kernels with their edge scores (:mod:`convae.analysis.filters`); ConvAE runs only."""
    study = filter_study(run, seed=run.config.train.seed)
    scores = {name: values["score"] for name, values in study["scores"].items()}
    fig = plot_filter_comparison(study["weights"], scores, chance=study["chance"]["mean"])
    k = study["kernel_size"]
    note = ("Edge score: the share of each filter's luminance energy (channels summed, mean removed) captured by its best-fitting "
            f"Gabor of a {study['dictionary_size']}-atom dictionary (16 orientations x 8 phases x 5 frequencies x 3 envelopes), "
            "i.e. the largest cos² between the filter and a unit-norm Gabor; it is read against random Gaussian filters of the "
            "same shape (chance) and the untrained twin built from the run's seed. Excess over chance = (score - chance) / (1 - chance).")
    if k <= 3:
        note += (f" At {k}x{k} a kernel has only {k * k - 1} dimensions after its mean, so even random filters fit some Gabor "
                 "well: expect little difference; train with model.kernel_size=5 or 7 to see edges.")
    return (figure_html(fig, "Trained (left) and untrained (middle) first-layer filters, sorted by edge score (RGB input: below them "
                             "each filter's channels summed, the luminance filter that is scored); right: the score "
                             "distributions, the dotted line at the mean of random filters.")
            + markdown_html(format_filter_table(study)) + f"<p class='muted'>{_esc(note)}</p>")


def _recon_metrics(runs: dict[str, Run], dataset, limit: int = 2000) -> str:
    idx = np.arange(min(len(dataset), limit))
    rows = []
    for name, run in runs.items():
        last = run.metrics[-1] if run.metrics else {}
        test = evaluate(run.model, dataset, idx, precision="fp32", device=torch.device("cpu"))
        if getattr(run.model, "stem", None) is not None:
            name += " (of its stem's maps, not pixels)"
        rows.append([name, f"{run.model.parameter_counts()['total']:,}", last.get("epoch", ""),
                     f"{last['val_mse']:.5f}" if "val_mse" in last else "", f"{test['mse']:.5f}", f"{test['psnr']:.2f}", f"{test['ssim']:.4f}"])
    where = f"{len(idx):,} {dataset.split}-split images"
    return table_html(["model", "parameters", "epochs", "validation MSE", f"MSE ({where})", f"PSNR, dB ({where})", f"SSIM ({where})"], rows)


def _compare_section(directory) -> str:
    result = load_compare(directory)
    parts = [markdown_html(format_compare(result))]
    captions = {"parameters": "Parameters per layer (log scale) at the dataset's size and at 3x100x100.",
                "hierarchy": "Per-layer probe accuracy with receptive field and map size.",
                "permutation": "Training on pixels shuffled by one fixed permutation.",
                "translation": "Equivariance of conv maps, invariance of pooled features, and probe accuracy versus shift.",
                "hunger": "Reconstruction (train vs test) and probe accuracy versus the number of unlabelled training images."}
    for name, fig in compare_figures(result).items():
        parts.append(figure_html(fig, captions.get(name, name)))
    return "\n".join(parts)


# --- the page --------------------------------------------------------------------------------------------
REPORT_ASCENT_STEPS = 64  # half of maximize_activation's default: most of the report's time went to the ascent


def build_report(run, *, compare=None, fcae=None, data=None, seed: int = 0) -> str:
    """The report's HTML text for ``run`` (path or Run); ``compare``: a compare directory; ``fcae``: an FCAE run."""
    run = as_run(run)
    fcae = None if fcae is None else as_run(fcae)
    run.model.to("cpu").eval()
    dataset = viz.images_of_run(run, data)
    name = TITLES[run.config.model.kind]
    runs = {name: run} | ({"FCAE": fcae} if fcae is not None else {})
    c, h, w = run.in_shape
    sections = [
        ("config", "Configuration", _config_section(run)),
        ("training", "Training", figure_html(plot_training(runs), "Training loss and validation metrics per epoch.")
         + _recon_metrics(runs, dataset)),
        ("probe", "Linear probes", _probe_section(run)),
        ("viz", "What each depth responds to", _viz_section(run, dataset, fcae, seed)),
    ]
    if getattr(run.model, "stem", None) is not None:  # its first filters are fixed: shown, not scored
        sections.append(("filters", "First-layer filters: the fixed scattering stem", _stem_section(run)))
    elif run.config.model.kind == "conv":  # every ConvAE run, gray or RGB (the score is on luminance); an FCAE has no kernels
        sections.append(("filters", "First-layer filters: trained vs untrained", _filters_section(run)))
    if compare is not None:
        sections.append(("compare", "ConvAE versus FCAE", _compare_section(compare)))
    nav = "".join(f'<a href="#{key}">{_esc(title)}</a>' for key, title, _ in sections)
    body = "\n".join(f'<h2 id="{key}">{_esc(title)}</h2>\n{content}' for key, title, content in sections)
    title = f"convae report: {Path(run.path).name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title><link rel="icon" href="data:,"><style>{STYLE}</style></head>
<body><h1>{_esc(title)}</h1>
<p class="muted">{_esc(name)} on <b>{_esc(run.config.data.spec)}</b> ({c}x{h}x{w}); run directory {_esc(run.path)};
images shown from {_esc(dataset.spec)} ({_esc(dataset.split)} split, {len(dataset):,} images); weights SHA-256 {_esc(run.weights_sha256[:16])}…;
written by convae {_esc(__version__)} on {time.strftime('%Y-%m-%d %H:%M')}.</p>
<nav>{nav}</nav>
{body}
</body></html>
"""


def write_report(run, *, compare=None, fcae=None, out=None, data=None, seed: int = 0) -> Path:
    """Write the report of ``run`` to ``out`` (default ``RUN/report.html``) atomically; the path."""
    run = as_run(run)
    path = Path(out) if out is not None else Path(run.path) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    with thread_limit(1):  # many small batches: on a busy CPU one thread is faster than two waiting on each other
        text = build_report(run, compare=compare, fcae=fcae, data=data, seed=seed)
    atomic_write_text(path, text)
    logger.info("wrote %s", path)
    return path


__all__ = ["build_report", "figure_html", "markdown_html", "plot_probe", "plot_training", "table_html", "write_report"]
