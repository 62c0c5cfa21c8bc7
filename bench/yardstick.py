"""The yardstick (issue 14): hand-designed features under the recipes' protocol, beside the default recipe's rows.

    python bench/yardstick.py            # compute HOG, scattering and raw pixels on Fashion-MNIST; update the results
    python bench/yardstick.py --table    # regenerate its section of docs/RESULTS.md from bench/results/yardstick.json

Protocol (the same as bench/recipes.py, so the rows compare): features of all 60,000 Fashion-MNIST training
images and the 10,000 test images; StandardScaler + L2 multinomial logistic regression (the recipes' L-BFGS
solver, scikit-learn's objective), at C=1 and with C chosen from a grid on 10,000 held-out training images
(the test split plays no part in the choice). HOG and scattering come from convae.analysis.baselines with
the parameters convae picks for 28x28 images (HOG: 4x4-pixel cells, 2x2 blocks, 9 orientations; scattering:
J=2, L=8), cached there. The convae rows (``CONVAE_ROWS``: the default recipe first, then earlier defaults) are
read from bench/results/recipes.json, as recorded by ``python bench/recipes.py configs/NAME.toml``. Every record keeps the CPU model, its flags, the
threads, and the seconds each step took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results" / "yardstick.json"
DOCS = ROOT / "docs" / "RESULTS.md"
BEGIN, END = "<!-- yardstick:begin (python bench/yardstick.py --table) -->", "<!-- yardstick:end -->"
GRID = [0.003, 0.01, 0.03]  # the grid of issue 15's recipe rows, so the rows compare


def features(method: str, train, test) -> tuple[np.ndarray, np.ndarray, dict, float]:
    from convae.analysis.baselines import hand_designed_features, resolve_params

    if method == "raw":
        t0 = time.perf_counter()
        flat = [d.images.flatten(1).float().div_(255).numpy() for d in (train, test)]
        return flat[0], flat[1], {}, time.perf_counter() - t0
    params = resolve_params(method, train.shape, None)
    t0 = time.perf_counter()
    out = [hand_designed_features(method, d, params) for d in (train, test)]
    return out[0], out[1], params, time.perf_counter() - t0


def measure(methods: list[str], grid: list[float]) -> list[dict]:
    from _common import machine_info  # CPU model, ISA flags, threads, load
    from recipes import SOLVER, logreg_accuracy, tuned_logreg_accuracy

    from convae.data import load_dataset

    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    rows = []
    for method in methods:
        X, Xt, params, seconds = features(method, train, test)
        t0 = time.perf_counter()
        at_1 = logreg_accuracy(X, train.labels, Xt, test.labels, C=1.0)
        tuned, best_C, val = tuned_logreg_accuracy(X, train.labels, Xt, test.labels, grid)
        rows.append({"features": method, "params": params, "dim": int(X.shape[1]), "accuracy_C1": at_1, "accuracy_tuned": tuned,
                     "C": best_C, "grid": grid, "solver": SOLVER, "val_accuracy": val, "feature_seconds": round(seconds, 1),
                     "fit_seconds": round(time.perf_counter() - t0, 1),
                     "machine": {**machine_info(), "threads": torch.get_num_threads()},
                     "when": time.strftime("%Y-%m-%d %H:%M:%S")})
        print(f"{method}: {X.shape[1]} values, C=1 {at_1:.4f}, C={best_C:g} (held-out) {tuned:.4f}", flush=True)
    return rows


# The convae rows beside the hand-designed ones: (recipe, tag, the tag of its untrained rows, features, label).
# The first is the default recipe (recipes.DEFAULT_RECIPE) with the features its [probe] table names.
CONVAE_ROWS = (
    ("scat1-mask", "s50", "s50u", "stage1+stage2:flatten", "convae default"),
    ("deep2-mask", "t50", "t50", "stage2+stage3:flatten", "the default before the stem"),
    ("deep2-mask", "full", "full", "stage2+stage3:flatten", "the 10-epoch recipe before issue 15"),
)


def recipe_rows(recipe: str, tag: str, features: str, untrained_tag: str | None = None) -> dict | None:
    """The rows of one feature set (trained, from ``tag``; untrained, from ``untrained_tag``, default ``tag``) of
    ``recipe`` in bench/results/recipes.json, keyed (family, "C=1" or "tuned")."""
    from recipes import record_tflop

    records = json.loads((ROOT / "bench" / "results" / "recipes.json").read_text())

    def find(t):
        return next((r for r in records if r["recipe"] == recipe and r["tag"] == t), None)

    record = find(tag)
    if record is None:
        return None
    pick = {}
    for source, family in ((record, "trained"), (find(untrained_tag or tag), "untrained")):
        for row in (source or {}).get("rows", []):
            if row["features"] == features and row["post"] == "none" and row["family"] == family:
                pick[(family, "tuned" if row.get("head") == "C=val" else row.get("head", "C=1"))] = row
    m = record.get("machine")
    where = f"{m['cpu']}, {m['precision']}" if m else "an AMX machine, bf16"
    return {"recipe": recipe, "tag": tag, "train_seconds": record["train_seconds"], "epochs": record["epochs"],
            "tflop": record_tflop(record), "rows": pick, "when": record.get("when"), "where": where}


def table() -> str:
    from _common import machine_line

    rows = json.loads(RESULTS.read_text())
    titles = {"raw": "raw pixels", "hog": "HOG", "scattering": "scattering"}
    lines = ["| features | training | dim | C=1 | C chosen on held-out images |", "|---|---|---:|---:|---:|"]
    notes = []
    for recipe_name, tag, untrained_tag, features, label in CONVAE_ROWS:
        recipe = recipe_rows(recipe_name, tag, features, untrained_tag)
        if recipe is None:
            continue
        r = recipe["rows"]
        if not r:  # the record holds no row of these features: nothing to show
            continue

        def cell(key):
            return f"{100 * r[key]['accuracy']:.2f}%" + (f" (C={r[key]['C']:g})" if key[1] == "tuned" else "") if key in r else "-"

        dim = next(iter(r.values()))["dim"]
        layers, pool = features.split(":")
        lines += [f"| {label} ({recipe_name}), {layers.replace('+', ' + ')} {'flattened' if pool == 'flatten' else pool} | "
                  f"{recipe['tflop']:.0f} TFLOP | {dim:,} | {cell(('trained', 'C=1'))} | {cell(('trained', 'tuned'))} |",
                  f"| the same encoder, untrained | none | {dim:,} | {cell(('untrained', 'C=1'))} | {cell(('untrained', 'tuned'))} |"]
        has_untrained = any(family == "untrained" for family, _ in r)
        also = (f", its untrained rows by `--tag {untrained_tag} --untrained-only`"
                if untrained_tag != tag and has_untrained else "")
        notes.append(f"{label} rows by `python bench/recipes.py configs/{recipe_name}.toml --tag {tag} ...` on "
                     f"{recipe['when']} ({recipe['train_seconds']:.0f} s of training on {recipe['where']}){also}")
    for row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in row["params"].items())
        name = titles[row["features"]] + (f" ({settings})" if settings else "")
        lines.append(f"| {name} | none | {row['dim']:,} | {100 * row['accuracy_C1']:.2f}% | "
                     f"{100 * row['accuracy_tuned']:.2f}% (C={row['C']:g}) |")
    m = rows[0]["machine"]
    timings = ", ".join(f"{x['features']} {x['feature_seconds']:.0f} s" for x in rows)
    grids = sorted({", ".join(f"{c:g}" for c in x.get("grid", GRID)) for x in rows})
    lines += ["", f"Hand-designed rows measured {', '.join(sorted({x['when'][:10] for x in rows}))} on {machine_line(m)}, "
              f"{m.get('threads')} threads, load {m.get('load_average_start', ['?'])[0]} at the "
              f"start, fp32 (features: {timings}; C grid {' / '.join(grids)}); " + "; ".join(notes) + "."]
    return "\n".join(lines)


def write_table() -> None:
    text = DOCS.read_text()
    if BEGIN not in text:
        raise SystemExit(f"{DOCS} has no {BEGIN} marker")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(head + BEGIN + "\n" + table() + "\n" + END + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="only regenerate the docs table")
    parser.add_argument("--methods", default="raw,hog,scattering")
    parser.add_argument("--grid", type=float, nargs="+", default=GRID, help="the C values tried on held-out images")
    args = parser.parse_args()
    if not args.table:
        fresh = measure(args.methods.split(","), args.grid)
        old = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
        done = {r["features"] for r in fresh}
        order = ["raw", "hog", "scattering"]
        rows = sorted([r for r in old if r["features"] not in done] + fresh, key=lambda r: order.index(r["features"]))
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    write_table()
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
