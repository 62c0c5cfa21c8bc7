"""Plots and Markdown tables of a compare result (the dict in ``compare.json``).

Both are drawn from the JSON alone, so ``convae report --compare DIR`` shows exactly what
``convae compare`` measured, without the models.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

TITLES = {"conv": "ConvAE", "dense": "FCAE"}
COLOURS = {"conv": "tab:blue", "dense": "tab:orange"}


def _figure(n: int, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * n, height), layout="constrained")
    return fig, list(np.atleast_1d(fig.subplots(1, n)))


# --- figures --------------------------------------------------------------------------------------------
def plot_parameters(params: dict) -> Figure:
    """Horizontal bars (log scale): each model's encoder layers, decoder and total, at both input sizes."""
    fig, axes = _figure(2, 5.2, 4.0)
    for ax, label in zip(axes, ("dataset", "large")):
        entry = params[label]
        names, values, colours = [], [], []
        for kind in ("conv", "dense"):
            counts = entry.get(kind, {})
            if "error" in counts:
                continue
            for k in [k for k in counts if k not in ("encoder", "decoder", "total")] + ["decoder", "total"]:
                names.append(f"{TITLES[kind]} {k}")
                values.append(max(counts[k], 1))
                colours.append(COLOURS[kind])
        y = np.arange(len(names))
        ax.barh(y, values, color=colours)
        for i, v in enumerate(values):
            ax.text(v * 1.15, i, f"{v:,}", va="center", fontsize=6)
        ax.set_yticks(y, names, fontsize=7)
        ax.set_xscale("log")
        ax.set_xlim(right=max(values) * 20)
        ax.invert_yaxis()
        ax.set_title(f"parameters at {'x'.join(map(str, entry['shape']))}", fontsize=9)
    ref = params.get("reference")
    if ref:
        fig.suptitle(f"reference: an FCAE's first 500-unit layer on {'x'.join(map(str, ref['shape']))} has {ref['hidden1']:,} "
                     f"parameters ({ref['formula']})", fontsize=9)
    return fig


def plot_hierarchy(hierarchy: dict) -> Figure:
    """Per model: probe accuracy at each depth, the layer's receptive field and map size under it."""
    fig = Figure(figsize=(9.5, 3.6), layout="constrained")
    axes = fig.subplots(1, len(hierarchy), sharey=True, squeeze=False)[0]
    for ax, (kind, rows) in zip(axes, hierarchy.items()):
        x = np.arange(len(rows))
        ax.plot(x, [100 * r["accuracy"] if r["accuracy"] is not None else np.nan for r in rows], "o-", color=COLOURS[kind])
        ticks = [f"{r['name']}\nRF {'x'.join(map(str, r['receptive_field']))}\n"
                 + ("map " + "x".join(map(str, r["spatial"])) if r["spatial"] else f"{r['channels']} units") for r in rows]
        ax.set_xticks(x, ticks, fontsize=7)
        ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.set_title(TITLES[kind], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("linear-probe accuracy (%)")
    fig.suptitle("hierarchy: receptive field (RF) and map size per layer, beside the probe", fontsize=9)
    return fig


def plot_permutation(section: dict) -> Figure:
    fig, axes = _figure(2, 4.6)
    summary = section["summary"]
    labels, orig, perm, colours = [], [], [], []
    for kind in ("conv", "dense"):
        for layer, row in summary[kind]["layers"].items():
            labels.append(f"{TITLES[kind]}\n{layer}")
            orig.append(100 * row["original"])
            perm.append(100 * row["permuted"])
            colours.append(COLOURS[kind])
    x = np.arange(len(labels))
    axes[0].bar(x - 0.2, orig, 0.4, color=colours, label="original")
    axes[0].bar(x + 0.2, perm, 0.4, color=colours, alpha=0.45, hatch="//", label="permuted pixels")
    axes[0].set_xticks(x, labels, fontsize=7)
    axes[0].set_ylabel("linear-probe accuracy (%)")
    axes[0].set_ylim(max(0, min(orig + perm) - 15), 100)
    axes[0].legend(fontsize=7)
    axes[0].set_title("probe accuracy, original vs permuted", fontsize=9)
    kinds = ["conv", "dense"]
    axes[1].bar(np.arange(2) - 0.2, [summary[k]["mse_original"] for k in kinds], 0.4, color=[COLOURS[k] for k in kinds], label="original")
    axes[1].bar(np.arange(2) + 0.2, [summary[k]["mse_permuted"] for k in kinds], 0.4, color=[COLOURS[k] for k in kinds], alpha=0.45,
                hatch="//", label="permuted pixels")
    axes[1].set_xticks(np.arange(2), [TITLES[k] for k in kinds])
    axes[1].set_ylabel("test reconstruction MSE")
    axes[1].set_title("reconstruction error", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.suptitle("both models trained again on images whose pixels are shuffled by one fixed permutation", fontsize=9)
    return fig


def plot_translation(section: dict) -> Figure:
    fig, axes = _figure(3, 4.4)
    shifts = section["shifts"]
    ax = axes[0]
    for i, (layer, rows) in enumerate(section["equivariance"].get("conv", {}).items()):
        colour = f"C{i}"
        ax.plot(shifts, [r["equivariance_error"] for r in rows], "-", color=colour, label=f"{layer} (stride {rows[0]['stride']})")
        ax.plot(shifts, [r["unshifted_error"] for r in rows], ":", color=colour)
        for r in rows:  # filled: the stride divides the shift (an exact test); hollow: shifted by the nearest whole cell
            ax.plot(r["shift"], r["equivariance_error"], "o", color=colour, markersize=5, markerfacecolor=colour if r["exact"] else "white")
    ax.set_xlabel("shift (px)")
    ax.set_ylabel("relative error")
    ax.set_title("ConvAE maps: f(shift x) vs shift f(x)\n(dotted: map left in place; filled dot: the stride divides the shift)", fontsize=8)
    ax.legend(fontsize=6)
    ax = axes[1]
    for kind, curves in section["invariance"].items():
        for j, (name, errors) in enumerate(curves.items()):
            ax.plot(shifts, errors, "o-" if kind == "conv" else "s--", color=COLOURS[kind], alpha=0.35 + 0.65 * (j + 1) / len(curves),
                    markersize=3, label=f"{TITLES[kind]} {name}")
    ax.set_xlabel("shift (px)")
    ax.set_ylabel("relative change of features")
    ax.set_title("pooled features: change under shift\n(0: invariant, 1: as far as another image)", fontsize=8)
    ax.legend(fontsize=5, ncol=2)
    ax = axes[2]
    for kind, layers in section["probe"].items():
        for j, (layer, acc) in enumerate(layers.items()):
            ax.plot(section["probe_shifts"], [100 * a for a in acc], "o-" if j == 0 else "s--", color=COLOURS[kind], label=f"{TITLES[kind]} {layer}")
    ax.set_xlabel("shift (px)")
    ax.set_ylabel("linear-probe accuracy (%)")
    ax.set_title("probe trained on unshifted images,\ntested on shifted ones", fontsize=8)
    ax.legend(fontsize=6)
    return fig


def plot_hunger(section: dict) -> Figure:
    fig, axes = _figure(2, 4.6)
    for kind in ("conv", "dense"):
        rows = section[kind]
        n = [r["n_images"] for r in rows]
        axes[0].plot(n, [r["train_mse"] for r in rows], "o--", color=COLOURS[kind], label=f"{TITLES[kind]} train")
        axes[0].plot(n, [r["test_mse"] for r in rows], "o-", color=COLOURS[kind], label=f"{TITLES[kind]} test")
        for j, layer in enumerate(rows[0]["accuracy"]):
            axes[1].plot(n, [100 * r["accuracy"][layer] for r in rows], "o-" if j == 0 else "s--", color=COLOURS[kind],
                         label=f"{TITLES[kind]} {layer}")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("unlabelled training images")
        ax.legend(fontsize=6)
    axes[0].set_ylabel("reconstruction MSE")
    axes[0].set_title("train vs test reconstruction (same number of steps)", fontsize=8)
    axes[1].set_ylabel("linear-probe accuracy (%)")
    axes[1].set_title("probe accuracy vs unlabelled data", fontsize=8)
    return fig


def compare_figures(result: dict) -> dict[str, Figure]:
    """``{name: Figure}`` for every section present in a compare result."""
    makers = {"parameters": plot_parameters, "hierarchy": plot_hierarchy, "permutation": plot_permutation,
              "translation": plot_translation, "hunger": plot_hunger}
    figures = {name: make(result[name]) for name, make in makers.items() if name in result}
    conv_model = result.get("meta", {}).get("configs", {}).get("conv", {}).get("model", {})
    if conv_model.get("stem") == "scattering":  # its reconstruction error is over the stem's maps, the FCAE's over pixels
        for name, axis in (("permutation", 1), ("hunger", 0)):
            if name in figures:
                ax = figures[name].axes[axis]
                ax.set_ylabel(ax.get_ylabel() + "\n(ConvAE: of its stem's maps, not pixels)", fontsize=8)
    return figures


