"""Markdown and CSV renderings of probe and compare results, drawn from their JSON alone.

So ``convae report`` shows exactly what ``convae probe`` and ``convae compare`` measured, without the models.
"""

from __future__ import annotations

import csv
import io

TITLES = {"conv": "ConvAE", "dense": "FCAE"}
CLASSIFIER_TITLES = {"logreg": "LogReg", "linear_svc": "LinearSVC", "rbf_svc": "RBF SVC", "random_forest": "RandomForest", "mlp": "MLP"}
FAMILY_TITLES = {"convae": "ConvAE", "fcae": "FCAE", "untrained": "untrained", "pca": "PCA", "pca_whitened": "PCA, whitened",
                 "raw": "raw pixels", "hog": "HOG", "scattering": "scattering"}
NO_TRAINING = ("raw", "pca", "hog", "scattering")  # the baselines that learn nothing from labels or images (PCA: unsupervised)


def percent(x: float | None) -> str:
    """0.9125 -> "91.2"; None -> ""."""
    return "" if x is None else f"{100 * x:.1f}"


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """Lines of a Markdown table: the first column left-aligned, the others right-aligned."""
    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def _accuracy(record: dict | None, std: bool = False) -> str:
    """A probe record's accuracy in %, ± its std over seeds, * when the solver did not converge."""
    if record is None:
        return ""
    text = percent(record["accuracy"])
    if std and record.get("accuracy_std") is not None:
        text += f" ± {100 * record['accuracy_std']:.1f}"
    return text + ("" if record.get("converged", True) else "*")


# --- output ------------------------------------------------------------------------------------------------
CSV_FIELDS = ["feature_set", "family", "layers", "pool", "dim", "classifier", "labels_per_class", "n_train", "n_test",
              "protocol", "stage", "accuracy", "accuracy_std", "fit_seconds", "converged", "seeds", "accuracies"]



def records_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({**r, "seeds": ";".join(map(str, r["seeds"])), "accuracies": ";".join(f"{a:.6f}" for a in r["accuracies"]),
                         "labels_per_class": "all" if r["labels_per_class"] is None else r["labels_per_class"]})
    return buf.getvalue()



def format_table(results) -> str:
    """Markdown tables of a :class:`ProbeResult` (or the dict in probe.json): per layer, per classifier, per label count."""
    if hasattr(results, "to_dict"):  # a ProbeResult
        results = results.to_dict()
    meta, records = results["meta"], results["records"]
    run_family = "fcae" if meta.get("model_kind") == "dense" else "convae"
    scan = meta.get("scan_classifier") or (meta["classifiers"][0] if meta.get("classifiers") else "logreg")
    n_test = f", {meta['n_test']:,} test" if meta.get("n_test") else ""
    n_available = meta.get("n_available")  # the training images before train_limit (older probe.json files lack it)
    if n_available is not None:
        limit = f" (a stratified sample of {meta['n_train']:,} of the {n_available:,})" if meta["n_train"] < n_available else ""
    else:
        limit = f" (a stratified sample: train_limit={meta['train_limit']:,})" if meta.get("train_limit") and meta["n_train"] >= meta["train_limit"] else ""
    lines = [f"Probe of {meta['run']} on {meta['data']}: {meta['protocol']}, {meta['n_train']:,} training images{limit}{n_test}; "
             f"accuracy in %, StandardScaler + classifier fitted on the training rows only.", ""]

    # 1. per layer: families side by side, PCA of the same dimension (whitened) beside each row, a comparison only.
    full = [r for r in records if r["labels_per_class"] is None]
    scan_records = [r for r in full if r["classifier"] == scan and r["stage"] == "layers"]
    pca_by_dim = {r["dim"]: r for r in scan_records if r["family"] == "pca_whitened"}
    families = [f for f in (run_family, "untrained", "fcae") if any(r["family"] == f for r in scan_records)]
    rows: dict[tuple[str, str], dict] = {}
    for r in scan_records:
        if r["family"] in families:
            rows.setdefault((r["layers"], r["pool"]), {"dim": r["dim"]})[r["family"]] = r
    header = ["layers", "pool", "dim"] + [FAMILY_TITLES[f] for f in families] + (["PCA same dim, whitened"] if pca_by_dim else [])
    body = [[layers, pool, str(row["dim"])] + [_accuracy(row.get(f)) for f in families]
            + ([_accuracy(pca_by_dim.get(min(row["dim"], max(pca_by_dim))))] if pca_by_dim else []) for (layers, pool), row in rows.items()]
    raw = [r for r in scan_records if r["family"] == "raw"]
    if raw:
        body.append(["raw pixels", "-", str(raw[0]["dim"])] + [""] * len(families) + ([""] if pca_by_dim else []) + [_accuracy(raw[0])])
        header.append("raw")
        body = [b + [""] * (len(header) - len(b)) for b in body]
    lines += [f"Per layer: {CLASSIFIER_TITLES[scan]}, all training labels", ""] + markdown_table(header, body) + [""]

    # 1b. the baselines that need no training, on the same split and classifier.
    fixed = [r for f in NO_TRAINING for r in scan_records if r["family"] == f]
    if fixed:
        params = meta.get("baseline_params") or {}

        def setting(family: str) -> str:
            if family == "pca":
                choice = params.get("pca") or {}
                return f"not whitened, dimension chosen on held-out training images ({choice.get('dim', '?')})" if choice else ""
            return ", ".join(f"{k}={v}" for k, v in (params.get(family) or {}).items())

        body = [[FAMILY_TITLES[r["family"]], str(r["dim"]), setting(r["family"]), _accuracy(r)] for r in fixed]
        lines += [f"Without training (hand-designed or unsupervised): {CLASSIFIER_TITLES[scan]}, all training labels", ""]
        lines += markdown_table(["features", "dim", "settings", "accuracy"], body) + [""]

    # 2. every classifier on the best sets.
    best = meta.get("best", [])
    classifiers = [c for c in CLASSIFIER_TITLES if any(r["classifier"] == c and r["feature_set"] in best for r in full)]
    if best and len(classifiers) > 1:
        cell = {(r["feature_set"], r["classifier"]): r for r in full}
        dims = {r["feature_set"]: r["dim"] for r in records}
        body = [[name, str(dims[name])] + [_accuracy(cell.get((name, c))) for c in classifiers] for name in best]
        lines += ["Every classifier on each family's best layer (by the per-layer scan)", ""]
        lines += markdown_table(["feature set", "dim"] + [CLASSIFIER_TITLES[c] for c in classifiers], body) + [""]
        limited = {c: n for c, n in (meta.get("classifier_limits") or {}).items() if c in classifiers and n < meta["n_train"]}
        if limited:
            lines += ["Fitted on a stratified sample of the training images: "
                      + ", ".join(f"{CLASSIFIER_TITLES[c]} {n:,}" for c, n in limited.items()) + ".", ""]

    # 3. label efficiency.
    counts = meta.get("labels_per_class", [])
    if best and counts:
        cell = {(r["feature_set"], r["labels_per_class"]): r for r in records if r["classifier"] == scan}
        body = [[name] + [_accuracy(cell.get((name, k)), std=True) for k in counts] + [_accuracy(cell.get((name, None)))] for name in best]
        lines += [f"Label efficiency: {CLASSIFIER_TITLES[scan]}, labels per class, mean ± std over seeds {meta['seeds']}", ""]
        lines += markdown_table(["feature set"] + [f"{k}/class" for k in counts] + ["all"], body) + [""]
    if any(not r.get("converged", True) for r in records):
        lines.append("\\* the solver stopped at its iteration limit before converging.")
    if meta.get("skipped"):
        lines.append("Skipped: " + "; ".join(meta["skipped"]))
    lines.append(f"Took {meta['seconds']:.0f} s ({meta['feature_seconds']:.0f} s extracting features), precision {meta['precision']}.")
    return "\n".join(lines).rstrip()


# --- tables ---------------------------------------------------------------------------------------------
def _epochs(value) -> str:
    return "default length" if value is None else str(value)


def format_compare(result: dict) -> str:
    """Markdown tables of every section present in a compare result."""
    meta = result["meta"]
    c, h, w = meta["in_shape"]
    lines = [f"ConvAE vs FCAE on {meta['data']} ({c}x{h}x{w}): {meta['n_train']:,} training images, {meta['n_test']:,} test images "
             f"({meta['test_source']}); epochs {_epochs(meta['epochs']['conv'])} (ConvAE) / {_epochs(meta['epochs']['dense'])} (FCAE); "
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
        lines += markdown_table(["input", "model", "encoder layers", "encoder", "decoder", "total"], rows)
        ref = p["reference"]
        lines += ["", f"Reference: an FCAE's first 500-unit layer on {'x'.join(map(str, ref['shape']))} alone has "
                      f"{ref['hidden1']:,} parameters ({ref['formula']}).", ""]
    if "hierarchy" in result:
        lines += ["### Hierarchy: receptive field and map size beside the per-layer probe", ""]
        rows = []
        for kind, layers in result["hierarchy"].items():
            for r in layers:
                rows.append([TITLES[kind], r["name"], "x".join(map(str, r["receptive_field"])),
                             "x".join(map(str, r["spatial"])) if r["spatial"] else "-", r["stride"], r["channels"], percent(r["accuracy"])])
        lines += markdown_table(["model", "layer", "receptive field", "map", "stride", "channels", "probe acc. (%)"], rows) + [""]
    if "reconstruction" in result:
        rec = result["reconstruction"]
        lines += markdown_table(["", "ConvAE", "FCAE"], [["test MSE", f"{rec['conv']['mse']:.5f}", f"{rec['dense']['mse']:.5f}"],
                                             ["test PSNR (dB)", f"{rec['conv']['psnr']:.2f}", f"{rec['dense']['psnr']:.2f}"],
                                             ["test SSIM", f"{rec['conv']['ssim']:.4f}", f"{rec['dense']['ssim']:.4f}"]]) + [""]
    if "permutation" in result:
        s = result["permutation"]["summary"]
        lines += ["### Fixed pixel permutation", ""]
        rows = []
        for kind in ("conv", "dense"):
            for layer, r in s[kind]["layers"].items():
                rows.append([TITLES[kind], layer, percent(r["original"]), percent(r["permuted"]), f"{100 * r['delta']:+.1f}",
                             f"±{100 * r['noise_2se']:.1f}", "unchanged" if r["within_noise"] else "changed"])
        lines += markdown_table(["model", "layer", "original (%)", "permuted (%)", "change", "2 SE", "verdict"], rows) + [""]
        rows = [[TITLES[k], f"{s[k]['mse_original']:.5f}", f"{s[k]['mse_permuted']:.5f}", f"{s[k]['mse_ratio']:.2f}x"] for k in ("conv", "dense")]
        lines += markdown_table(["model", "test MSE original", "test MSE permuted", "ratio"], rows)
        seed = ", ".join(f"{layer} {100 * d:+.1f}" for layer, d in s["seed_noise"].items())
        lines += ["", f"Seed noise (FCAE trained with another seed on the original images, accuracy change in points): {seed}. "
                      "2 SE: twice the binomial standard error of the difference of two test accuracies.", ""]
        if min(h, w) < 16:  # tiny images: little spatial structure for a shuffle to destroy
            lines += [f"Note: the permutation effect needs larger images. At {h}x{w} there is little spatial structure for a shuffle "
                      "to destroy, so a ConvAE's change can stay within the noise; see it on 28x28 Fashion-MNIST: "
                      "`convae compare --data fashion-mnist --out runs/compare`.", ""]
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
        lines += markdown_table(["layer", "stride"] + [f"{s} px" for s in shifts], rows) + ["", "Change of pooled features under shift (0: invariant, 1: as far as another image):", ""]
        rows = [[TITLES[kind], name] + [f"{e:.2f}" for e in errors] for kind, curves in t["invariance"].items() for name, errors in curves.items()]
        lines += markdown_table(["model", "features"] + [f"{s} px" for s in shifts], rows) + ["", "Linear-probe accuracy (%) versus shift, classifier fitted on unshifted images:", ""]
        rows = [[TITLES[kind], layer] + [percent(a) for a in acc] for kind, layers in t["probe"].items() for layer, acc in layers.items()]
        lines += markdown_table(["model", "layer"] + [f"{s} px" for s in t["probe_shifts"]], rows) + [""]
    if "hunger" in result:
        hs = result["hunger"]
        lines += ["### Data hunger", "", f"Each model trained for the same number of optimizer steps at every size "
                  f"(ConvAE {hs['steps']['conv']:,}, FCAE {hs['steps']['dense']:,}); MSE on its own training images vs the test set.", ""]
        rows = []
        for kind in ("conv", "dense"):
            for r in hs[kind]:
                rows.append([TITLES[kind], f"{r['n_images']:,}", f"{r['train_mse']:.5f}", f"{r['test_mse']:.5f}", f"{r['test_mse'] / max(r['train_mse'], 1e-12):.2f}"]
                            + ["; ".join(f"{layer} {percent(a)}" for layer, a in r["accuracy"].items())])
        lines += markdown_table(["model", "images", "train MSE", "test MSE", "test/train", "probe acc. (%)"], rows) + [""]
    secs = meta.get("seconds", {})
    if secs:
        lines.append("Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) + ".")
    return "\n".join(lines).rstrip()
