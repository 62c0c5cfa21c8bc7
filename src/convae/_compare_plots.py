"""Plots and Markdown tables of a compare result (the dict in ``compare.json``).

Both are drawn from the JSON alone, so ``convae report --compare DIR`` shows exactly what
``convae compare`` measured, without the models.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

TITLES = {"conv": "ConvAE", "dense": "FCAE"}
COLOURS = {"conv": "tab:blue", "dense": "tab:orange"}


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _md(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


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
    return {name: make(result[name]) for name, make in makers.items() if name in result}


# --- tables ---------------------------------------------------------------------------------------------
def format_compare(result: dict) -> str:
    """Markdown tables of every section present in a compare result."""
    meta = result["meta"]
    c, h, w = meta["in_shape"]
    lines = [f"ConvAE vs FCAE on {meta['data']} ({c}x{h}x{w}): {meta['n_train']:,} training images, {meta['n_test']:,} test images "
             f"({meta['test_source']}); epochs {meta['epochs']['conv']} (ConvAE) / {meta['epochs']['dense']} (FCAE); "
             f"linear probe: {meta['probe']}, {meta['probe_train_limit'] or 'all'} labelled training images, pooling {meta['pool']}.", ""]
    if "parameters" in result:
        p = result["parameters"]
        lines += ["### Parameters", ""]
        rows = []
        for label in ("dataset", "large"):
            entry = p[label]
            shape = "x".join(map(str, entry["shape"]))
            for kind in ("conv", "dense"):
                counts = entry[kind]
                if "error" in counts:
                    rows.append([shape, TITLES[kind], counts["error"], "", "", ""])
                    continue
                layers = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k not in ("encoder", "decoder", "total"))
                rows.append([shape, TITLES[kind], layers, f"{counts['encoder']:,}", f"{counts['decoder']:,}", f"{counts['total']:,}"])
        lines += _md(["input", "model", "encoder layers", "encoder", "decoder", "total"], rows)
        ref = p["reference"]
        lines += ["", f"Reference: an FCAE's first 500-unit layer on {'x'.join(map(str, ref['shape']))} alone has "
                      f"{ref['hidden1']:,} parameters ({ref['formula']}).", ""]
    if "hierarchy" in result:
        lines += ["### Hierarchy: receptive field and map size beside the per-layer probe", ""]
        rows = []
        for kind, layers in result["hierarchy"].items():
            for r in layers:
                rows.append([TITLES[kind], r["name"], "x".join(map(str, r["receptive_field"])),
                             "x".join(map(str, r["spatial"])) if r["spatial"] else "-", r["stride"], r["channels"], _pct(r["accuracy"])])
        lines += _md(["model", "layer", "receptive field", "map", "stride", "channels", "probe acc. (%)"], rows) + [""]
    if "reconstruction" in result:
        rec = result["reconstruction"]
        lines += _md(["", "ConvAE", "FCAE"], [["test MSE", f"{rec['conv']['mse']:.5f}", f"{rec['dense']['mse']:.5f}"],
                                             ["test PSNR (dB)", f"{rec['conv']['psnr']:.2f}", f"{rec['dense']['psnr']:.2f}"],
                                             ["test SSIM", f"{rec['conv']['ssim']:.4f}", f"{rec['dense']['ssim']:.4f}"]]) + [""]
    if "permutation" in result:
        s = result["permutation"]["summary"]
        lines += ["### Fixed pixel permutation", ""]
        rows = []
        for kind in ("conv", "dense"):
            for layer, r in s[kind]["layers"].items():
                rows.append([TITLES[kind], layer, _pct(r["original"]), _pct(r["permuted"]), f"{100 * r['delta']:+.1f}",
                             f"±{100 * r['noise_2se']:.1f}", "unchanged" if r["within_noise"] else "changed"])
        lines += _md(["model", "layer", "original (%)", "permuted (%)", "change", "2 SE", "verdict"], rows) + [""]
        rows = [[TITLES[k], f"{s[k]['mse_original']:.5f}", f"{s[k]['mse_permuted']:.5f}", f"{s[k]['mse_ratio']:.2f}x"] for k in ("conv", "dense")]
        lines += _md(["model", "test MSE original", "test MSE permuted", "ratio"], rows)
        seed = ", ".join(f"{layer} {100 * d:+.1f}" for layer, d in s["seed_noise"].items())
        lines += ["", f"Seed noise (FCAE trained with another seed on the original images, accuracy change in points): {seed}. "
                      "2 SE: twice the binomial standard error of the difference of two test accuracies.", ""]
    if "translation" in result:
        t = result["translation"]
        shifts = t["shifts"]
        lines += ["### Translation", "", f"Equivariance of ConvAE maps ({t['n_images']} test images, {t['directions']}): relative error "
                  "of f(shift x) against f(x) shifted by round(s / stride) cells; in brackets, against the unshifted map; "
                  "* marks shifts the stride divides (an exact test).", ""]
        rows = []
        for layer, items in t["equivariance"].get("conv", {}).items():
            rows.append([layer, items[0]["stride"]] + [f"{r['equivariance_error']:.2f} ({r['unshifted_error']:.2f}){'*' if r['exact'] else ''}"
                                                        for r in items])
        lines += _md(["layer", "stride"] + [f"{s} px" for s in shifts], rows) + ["", "Change of pooled features under shift (0: invariant, 1: as far as another image):", ""]
        rows = [[TITLES[kind], name] + [f"{e:.2f}" for e in errors] for kind, curves in t["invariance"].items() for name, errors in curves.items()]
        lines += _md(["model", "features"] + [f"{s} px" for s in shifts], rows) + ["", "Linear-probe accuracy (%) versus shift, classifier fitted on unshifted images:", ""]
        rows = [[TITLES[kind], layer] + [_pct(a) for a in acc] for kind, layers in t["probe"].items() for layer, acc in layers.items()]
        lines += _md(["model", "layer"] + [f"{s} px" for s in t["probe_shifts"]], rows) + [""]
    if "hunger" in result:
        hs = result["hunger"]
        lines += ["### Data hunger", "", f"Each model trained for the same number of optimizer steps at every size "
                  f"(ConvAE {hs['steps']['conv']:,}, FCAE {hs['steps']['dense']:,}); MSE on its own training images vs the test set.", ""]
        rows = []
        for kind in ("conv", "dense"):
            for r in hs[kind]:
                rows.append([TITLES[kind], f"{r['n_images']:,}", f"{r['train_mse']:.5f}", f"{r['test_mse']:.5f}", f"{r['test_mse'] / max(r['train_mse'], 1e-12):.2f}"]
                            + ["; ".join(f"{layer} {_pct(a)}" for layer, a in r["accuracy"].items())])
        lines += _md(["model", "images", "train MSE", "test MSE", "test/train", "probe acc. (%)"], rows) + [""]
    secs = meta.get("seconds", {})
    if secs:
        lines.append("Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) + ".")
    return "\n".join(lines).rstrip()
