"""Training recipes (issue 7): train a recipe, probe its frozen features beside the untrained encoder.

    python bench/recipes.py configs/NAME.toml [...]   # train (or reuse) and probe; update the results
    python bench/recipes.py configs/NAME.toml --train-limit 15000 --probe-limit 10000 --tag screen
    python bench/recipes.py --table                   # regenerate the section of docs/RESULTS.md

A recipe is a RunConfig TOML plus a ``[probe]`` table::

    [probe]
    features = ["stage2:avg3", "stage1+stage2+stage3:max2"]   # layers joined by +, then a pooling spec
    post = ["none", "ssqrt"]                                   # none | ssqrt | pca-whiten (fit on train)
    tune_C = [0.01, 0.03, 0.1, 0.3, 1.0]   # optional: pick C on 10,000 held-out training images instead of C=1

Protocol: the autoencoder trains on Fashion-MNIST's training images without labels; every feature
set x post-processing is standardized on the training split, fit with multinomial logistic regression
(L2, C=1: scikit-learn's LogisticRegression objective, solved with L-BFGS in torch for speed; or with
``tune_C``, the C that scores best on 10,000 held-out training images, refit on all of them) and
scored on the 10,000 test images; the same is done for the same architecture with its seed-built
untrained weights. Results go to bench/results/recipes.json keyed by (recipe, tag).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "recipes.json"
RUNS = ROOT / "bench" / "results" / "runs"
DOC = ROOT / "docs" / "RESULTS.md"
DEFAULT_RECIPE = "scat1-mask"  # convae's defaults (ModelConfig, TrainConfig, ConvAEFeatures) follow this config
SOLVER = 3  # 3: as 2, with the gradient's matmul as (g.T @ X).T (18x faster at 60,000 x 8,320); 2: the gradient written
# out with denormals flushed (5x faster than 1); 1: backpropagated. All three minimise the same objective.
BEGIN, END = "<!-- recipes:begin (python bench/recipes.py --table) -->", "<!-- recipes:end -->"
FRONTIER_BEGIN = "<!-- frontier:begin (python bench/recipes.py --frontier) -->"
FRONTIER_END = "<!-- frontier:end -->"
FRONTIER_PLOT = ROOT / "docs" / "frontier.png"
YARDSTICK = ROOT / "bench" / "results" / "yardstick.json"


# --- post-processing and the linear probe --------------------------------------------------------------
def postprocess(kind: str, train: np.ndarray, test: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``kind`` to both splits, fitting anything fitted on ``train`` only."""
    if kind == "none":
        return train, test
    if kind == "ssqrt":  # signed square root (power normalization, alpha=1/2)
        return np.sign(train) * np.sqrt(np.abs(train)), np.sign(test) * np.sqrt(np.abs(test))
    if kind == "pca-whiten":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=min(512, train.shape[1]), whiten=True, random_state=seed, svd_solver="randomized").fit(train)
        return pca.transform(train).astype(np.float32), pca.transform(test).astype(np.float32)
    raise SystemExit(f"unknown post-processing {kind!r}; use none, ssqrt or pca-whiten")


def _standardized(train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    """``train`` and ``others`` scaled by the mean and standard deviation of ``train``."""
    mean, std = train.mean(0), train.std(0)
    std[std == 0] = 1.0
    return [torch.from_numpy((a - mean) / std).float() for a in (train, *others)]


def fit_logreg(X: torch.Tensor, y: torch.Tensor, C: float = 1.0, max_iter: int = 150,
               init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 multinomial logistic regression: minimises ``C * sum(cross-entropy) + ||W||^2 / 2``
    (scikit-learn's objective) with L-BFGS; ``init`` warm-starts it from another fit's (W, b)."""
    n, d = X.shape
    n_classes = int(y.max()) + 1
    W = (init[0].clone() if init else torch.zeros(d, n_classes)).requires_grad_(True)
    b = (init[1].clone() if init else torch.zeros(n_classes)).requires_grad_(True)  # grads are set by hand below
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        # The gradient is written out, not backpropagated through X @ W: once the fit is confident, softmax
        # puts values below float32's normal range (1e-38) into the logits' gradient, and a matmul over
        # such denormals runs about 4x slower on CPU. They are flushed to 0 first; beside the other
        # entries (about 1e-5 / n) they are far below float32's resolution, so the fit does not change.
        with torch.no_grad():
            logits = X @ W + b
        logits.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(logits, y)
        (g,) = torch.autograd.grad(loss, logits)
        with torch.no_grad():
            g = torch.where(g.abs() < 1e-30, 0.0, g)
            W.grad = (g.T @ X).T.contiguous() + W / (C * n)  # not X.T @ g: a transposed 60,000 x 8,320 operand runs ~18x slower on CPU
            b.grad = g.sum(0)
            return loss + (W * W).sum() / (2 * C * n)

    opt.step(closure)
    return W.detach(), b.detach()


def _accuracy(X: torch.Tensor, y: np.ndarray, Wb: tuple[torch.Tensor, torch.Tensor]) -> float:
    with torch.no_grad():
        return float(((X @ Wb[0] + Wb[1]).argmax(1).numpy() == y).mean())


def logreg_accuracy(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray, C: float = 1.0,
                    max_iter: int = 150) -> float:
    """Test accuracy of L2 multinomial logistic regression (``fit_logreg``) on standardized features."""
    X, Xt = _standardized(train, test)
    return _accuracy(Xt, y_test, fit_logreg(X, torch.from_numpy(y_train.astype(np.int64)), C, max_iter))


def tuned_logreg_accuracy(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray,
                          grid: list[float], seed: int = 0, val_size: int = 10_000) -> tuple[float, float, dict[str, float]]:
    """Pick C from ``grid`` on a held-out part of the training split, refit on all of it, score on test.

    The test images play no part in the choice. Returns (test accuracy, chosen C, validation
    accuracy per C). Fits run from the smallest C up, each warm-started from the one before.
    """
    perm = np.random.default_rng(seed).permutation(len(train))
    fit_idx, val_idx = perm[val_size:], perm[:val_size]
    X, Xv = _standardized(train[fit_idx], train[val_idx])
    y = torch.from_numpy(y_train[fit_idx].astype(np.int64))
    val_acc, Wb = {}, None
    for C in sorted(grid):
        Wb = fit_logreg(X, y, C, init=Wb)
        val_acc[f"{C:g}"] = _accuracy(Xv, y_train[val_idx], Wb)
    del X, Xv
    best_C = max(sorted(grid), key=lambda C: val_acc[f"{C:g}"])  # ties go to the smaller C
    return logreg_accuracy(train, y_train, test, y_test, best_C), best_C, val_acc


# --- one recipe ----------------------------------------------------------------------------------------
def read_recipe(path: Path):
    """The recipe's RunConfig (``load_config`` skips the ``[probe]`` table) and its ``[probe]`` table."""
    from convae.config import load_config

    class ProbeTableRead(logging.Filter):  # this bench is the [probe] table's reader: load_config's warning is noise here
        def filter(self, record):
            return "[probe] table" not in record.getMessage()

    log, quiet = logging.getLogger("convae.config"), ProbeTableRead()
    log.addFilter(quiet)
    try:
        return load_config(path), tomllib.loads(path.read_text()).get("probe", {})
    finally:
        log.removeFilter(quiet)


def all_features(model, data, specs: list[str], batch_size: int = 500) -> dict[str, np.ndarray]:
    """Every feature set in ``specs`` from one pass of the encoder over ``data``.

    A spec is ``"stage1+stage2:max2"`` (one pooling for every layer) or ``"stage1/avg4+stage2/flatten"``
    (a pooling per layer, concatenated in that order).
    """
    from convae.features import parse_pool
    from convae.progress import Progress
    from convae.runtime import to_input

    parsed: dict[str, list] = {}
    for spec in specs:
        if "/" in spec:
            parts = [part.split("/", 1) if "/" in part else (part, "avg") for part in spec.split("+")]
        else:
            layers, pool = spec.split(":", 1) if ":" in spec else (spec, "avg")
            parts = [(name, pool) for name in layers.split("+")]
        parsed[spec] = [(name, parse_pool(pool)) for name, pool in parts]
    wanted = sorted({name for parts in parsed.values() for name, _ in parts}, key=model.layer_names.index)
    chunks: dict[str, list[np.ndarray]] = {spec: [] for spec in specs}
    model.eval()
    with torch.inference_mode(), Progress(len(data), unit="img", desc=f"features ({data.split})") as bar:
        for batch in data.batches(np.arange(len(data)), batch_size):
            maps = model.forward_intermediates(to_input(batch, torch.device("cpu"), False), wanted)
            for spec, parts in parsed.items():
                chunks[spec].append(torch.cat([pooling(maps[name]) for name, pooling in parts], dim=1).numpy())
            bar.update(batch.shape[0])
    return {spec: np.concatenate(c) for spec, c in chunks.items()}


def run_recipe(path: Path, args) -> dict:
    from convae.config import apply_overrides
    from convae.data import load_dataset
    from convae.models import build_model
    from convae.runs import load_run
    from convae.training import evaluate, train
    from convae.training.cost import train_flops_per_image

    config, probe_cfg = read_recipe(path)
    apply_overrides(config, args.set)
    config.train.threads = args.threads
    name = path.stem
    tag = args.tag
    train_data = load_dataset("fashion-mnist", "train")
    test_data = load_dataset("fashion-mnist", "test")
    if args.train_limit:
        train_data = train_data.subset(np.arange(args.train_limit))
    torch.manual_seed(config.train.seed)
    flops_per_image = train_flops_per_image(build_model(config.model.kind, train_data.shape, **config.model.model_kwargs()),
                                            train_data.shape, config.train)
    if args.tflop:
        plan_to_tflop(config.train, args.tflop, flops_per_image, len(train_data))
    run_dir = RUNS / f"{name}-{tag}"
    load1 = os.getloadavg()[0]
    if args.untrained_only:  # the seed-built encoder alone: nothing trains
        model, history = None, []
        print(f"{name}[{tag}]: untrained encoder only (seed {config.train.seed})", flush=True)
    elif (run_dir / "model.safetensors").exists():
        run = load_run(run_dir)
        model, history = run.model, run.metrics or []
        print(f"{name}: reusing {run_dir}", flush=True)
    else:
        if run_dir.exists():  # an interrupted run: start over
            import shutil

            shutil.rmtree(run_dir)
        result = train(config, run_dir, dataset=train_data, progress=True)  # a bar, or a log line every 30 s
        model, history = result.model, result.history
    train_seconds = float(sum(h.get("seconds", 0.0) for h in history))
    images = images_seen(history, len(train_data), config.train)
    test_mse = None if model is None else evaluate(model.eval(), test_data)["mse"]
    sparse_mse = None
    if getattr(model, "wta_spatial", False) or getattr(model, "wta_lifetime", 0):
        # the reconstruction as trained: the decoder only ever saw winner-take-all codes
        with torch.inference_mode():
            errs = [torch.nn.functional.mse_loss(torch.sigmoid(model.decode_logits(model.sparsify(model.encode(x)))), x).item() * len(x)
                    for x in (b.float() / 255 for b in test_data.batches(np.arange(len(test_data)), config.train.batch_size))]
        sparse_mse = sum(errs) / len(test_data)

    torch.manual_seed(config.train.seed)  # the seed-built initial weights of training
    untrained = build_model(config.model.kind, train_data.shape, **config.model.model_kwargs()).eval()

    probe_train = load_dataset("fashion-mnist", "train")
    probe_test = test_data
    if args.probe_limit:
        probe_train = probe_train.subset(np.arange(args.probe_limit))
        probe_test = probe_test.subset(np.arange(min(args.probe_limit, len(probe_test))))
    y_train, y_test = probe_train.labels, probe_test.labels
    rows = []
    specs = args.features or probe_cfg.get("features", ["bottleneck"])
    posts = args.post or probe_cfg.get("post", ["none"])
    grid = args.tune_C or probe_cfg.get("tune_C")
    head = head_name(grid, args.C)
    model_key = {"model": config.to_dict()["model"], "solver": SOLVER,
                 "seed": config.train.seed, "probe_train": len(probe_train), "probe_test": len(probe_test)}
    cached = cached_untrained(model_key)
    if args.untrained_only:
        families = (("untrained", untrained),)
    elif args.no_untrained:
        families = (("trained", model),)
    else:
        families = (("trained", model), ("untrained", untrained))
    for family, net in families:
        t0 = time.perf_counter()
        todo = specs
        if family == "untrained":  # the same seed-built encoder was probed for an earlier recipe: reuse its rows
            rows += [dict(cached[(spec, post, head)]) for spec in specs for post in posts if (spec, post, head) in cached]
            todo = [spec for spec in specs if any((spec, post, head) not in cached for post in posts)]
            if len(todo) < len(specs):
                print(f"{name}[{tag}] untrained rows reused for {len(specs) - len(todo)} feature set(s)", flush=True)
        if not todo:
            continue
        feats_train, feats_test = all_features(net, probe_train, todo), all_features(net, probe_test, todo)
        for spec in todo:
            f_train, f_test = feats_train[spec], feats_test[spec]
            for post in posts:
                if family == "untrained" and (spec, post, head) in cached:
                    continue
                a, b = postprocess(post, f_train, f_test, config.train.seed)
                row = {"features": spec, "post": post, "family": family, "dim": int(a.shape[1]),
                       **probe_scores(a, y_train, b, y_test, grid, args.C, config.train.seed)}
                rows.append(row)
                print(f"{name}[{tag}] {family:9s} {spec:28s} {post:10s} {head:8s} d={a.shape[1]:5d} acc={row['accuracy']:.4f} "
                      + (f"C={row['C']:g} " if grid else "") + f"({time.perf_counter() - t0:.0f}s)", flush=True)
    record = {
        "recipe": name, "tag": tag, "config": str(path.relative_to(ROOT)) if path.is_absolute() else str(path),
        "train_images": len(train_data), "probe_train": len(probe_train), "probe_test": len(probe_test),
        "epochs": len(history), "train_seconds": round(train_seconds, 1),
        "images_per_s": round(images / max(train_seconds, 1e-9), 1), "load_avg_1m": round(load1, 2),
        "test_mse": test_mse, "test_mse_wta": sparse_mse, "rows": rows, "kind": config.model.kind, **model_key,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "flops_per_image": flops_per_image,
        "train_tflop": round(images * flops_per_image / 1e12, 2), "machine": machine(config.train.precision),
        "overrides": list(args.set) + ([f"tflop={args.tflop:g}"] if args.tflop else []),
    }
    return record


def plan_to_tflop(cfg, tflop: float, flops_per_image: float, n_images: int) -> None:
    """Set ``cfg.max_steps`` (and the epochs that hold them) to the steps that see ``tflop`` / ``flops_per_image`` images."""
    from convae.training.plan import epochs_for_steps, n_train_images

    cfg.max_steps = max(1, int(tflop * 1e12 / (flops_per_image * cfg.batch_size)))
    cfg.epochs = epochs_for_steps(cfg.max_steps, n_train_images(n_images, cfg), cfg.batch_size)


def probe_scores(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray, grid: list[float] | None,
                 C: float, seed: int) -> dict:
    """A row's classifier fields: ``accuracy`` with C picked from ``grid`` on held-out training images (and ``C``,
    ``val_accuracy``, ``head``), else at the fixed ``C`` (``head`` and ``C`` only when C is not 1)."""
    if grid:
        accuracy, best_C, val = tuned_logreg_accuracy(train, y_train, test, y_test, grid, seed)
        return {"accuracy": accuracy, "C": best_C, "val_accuracy": val, "head": head_name(grid)}
    out = {"accuracy": logreg_accuracy(train, y_train, test, y_test, C=C)}
    if C != 1.0:
        out.update(head=head_name(None, C), C=C)
    return out


def images_seen(history: list[dict], n_images: int, cfg) -> int:
    """Training images the optimizer saw: every step's batch, the last epoch's possibly cut by ``max_steps``."""
    from convae.training.plan import n_train_images, steps_per_epoch

    n_train = n_train_images(n_images, cfg)
    steps = history[-1].get("step") if history else None
    if steps is None:  # records from before the step count was logged: whole epochs
        return n_train * len(history)
    full, rest = divmod(int(steps), steps_per_epoch(n_train, cfg.batch_size))
    return full * n_train + min(rest * cfg.batch_size, n_train)


def machine(precision: str) -> dict:
    """``_common.machine_info()`` (CPU model, ISA flags, threads, load) and the precision that ran."""
    from _common import machine_info
    from convae.runtime import resolve_precision

    return {**machine_info(), "precision": resolve_precision(precision, torch.device("cpu")), "threads": torch.get_num_threads()}


def record_model(record: dict) -> dict | None:
    """The model config of a record; records written before it was stored read it from their config file, and a
    stored one lacking a key added since (``convae.config.ADDED_KEYS``: the stem) ran without it."""
    if "model" in record:
        from convae.config import ADDED_KEYS

        added = {key.split(".", 1)[1]: value for key, value in ADDED_KEYS.items() if key.startswith("model.")}
        return {**added, **record["model"]}
    path = ROOT / record["config"]
    return read_recipe(path)[0].to_dict()["model"] if path.exists() else None


def head_name(grid: list[float] | None, C: float = 1.0) -> str:
    """How a row's classifier was set: ``C=1`` (or another fixed C), or ``C=val`` when C was picked on held-out
    training images."""
    return "C=val" if grid else f"C={C:g}"


def row_key(row: dict) -> tuple[str, str, str]:
    return row["features"], row["post"], row.get("head", "C=1")


def load_records() -> list[dict]:
    """Every record in bench/results/recipes.json (none before the first run)."""
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else []


def encoder_key(record: dict) -> tuple:
    """The seed-built encoder and probe split that a record's untrained rows belong to; also takes run_recipe's
    ``model_key``, whose fields every record carries."""
    return record_model(record), record.get("seed", 0), record["probe_train"], record["probe_test"], record.get("solver", 1)


def cached_untrained(key: dict, records: list[dict] | None = None) -> dict:
    """``{(features, post, head): row}`` of untrained rows already measured for this encoder and probe split, in
    ``records`` (default: all of recipes.json)."""
    want = encoder_key(key)
    return {row_key(row): row for record in (load_records() if records is None else records) if encoder_key(record) == want
            for row in record["rows"] if row["family"] == "untrained"}


def save_record(record: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    key = (record["recipe"], record["tag"])
    for old in records:  # a re-probe of the same run keeps the feature sets it did not measure again
        if (old["recipe"], old["tag"]) == key and old.get("train_seconds") == record["train_seconds"] \
                and old.get("solver", 1) == record.get("solver", 1):
            measured = {(*row_key(r), r["family"]) for r in record["rows"]}
            record["rows"] = [r for r in old["rows"] if (*row_key(r), r["family"]) not in measured] + record["rows"]
    records = [r for r in records if (r["recipe"], r["tag"]) != key] + [record]
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    os.replace(tmp, RESULTS)


# --- the table ------------------------------------------------------------------------------------------
def best(record: dict, family: str) -> dict | None:
    rows = [r for r in record["rows"] if r["family"] == family]
    return max(rows, key=lambda r: r["accuracy"]) if rows else None


def matched(record: dict, row: dict, family: str) -> dict | None:
    for r in record["rows"]:
        if r["family"] == family and row_key(r) == row_key(row):
            return r
    return None


def head_label(row: dict) -> str:
    """The row's post-processing, and its C when C was picked on held-out training images."""
    if row.get("head") == "C=val":
        return f"{row['post']}, C={row['C']:g} (val)"
    return f"{row['post']}, {row['head']}" if row.get("head", "C=1") != "C=1" else row["post"]


def mse_note(record: dict) -> str:
    return f" ({record['test_mse_wta']:.4f} with WTA code)" if record.get("test_mse_wta") is not None else ""


def table() -> str:
    from scipy.stats import pearsonr, spearmanr

    records = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    lines = [
        "## Recipes (issue 7)", "",
        "Fashion-MNIST; the autoencoder trains on the training images without labels (90% of them; 10% are its "
        "validation split); logistic regression (L2, standardized features; C=1, or where the post column says "
        "*C=x (val)* the C that scored best on 10,000 held-out training images, refit on all of them) is fit on frozen "
        "features of the probe's training images and scored on the test images. *untrained* is the same architecture with its "
        "seed-built weights, same features and post-processing, the one matched to the trained row shown. "
        "Train time is wall time on the 2-core machine (load average at its start shown: rows measured at load 8-12 "
        "shared the machine with other jobs and are several times slower than the same recipe on an idle machine); "
        "*full* rows use all 60,000/10,000 images, *screen* rows fewer (columns *AE imgs* and *probe*).",
        "", "Regenerate: `python bench/recipes.py --table`; rows come from `python bench/recipes.py configs/NAME.toml "
        "[--tag screen --train-limit N --probe-limit N]`. Test MSE is the eval-mode reconstruction; for winner-take-all "
        "recipes trained before `test_mse_wta` was recorded that is the dense code, which their decoder never saw, so "
        "their MSE says little (it is still in the correlation below).", "",
        "| recipe | tag | AE imgs | epochs | train s | img/s | load | probe train/test | test MSE | best features | post | "
        "trained acc | untrained acc | gain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in sorted(records, key=lambda r: (r["tag"], r["recipe"])):
        top = best(rec, "trained")
        if top is None:
            continue
        base = matched(rec, top, "untrained")
        ub = base["accuracy"] if base else float("nan")
        lines.append(f"| {rec['recipe']} | {rec['tag']} | {rec['train_images']} | {rec['epochs']} | {rec['train_seconds']:.0f} | "
                     f"{rec['images_per_s']:.0f} | {rec['load_avg_1m']:.1f} | {rec['probe_train']}/{rec['probe_test']} | "
                     f"{rec['test_mse']:.4f}{mse_note(rec)} | {top['features']} | {head_label(top)} | {100 * top['accuracy']:.2f} | "
                     f"{100 * ub:.2f} | {100 * (top['accuracy'] - ub):+.2f} |")
    old = sorted(f"{r['recipe']} ({r['tag']})" for r in records if r.get("solver", 1) == 1)
    if old:
        lines += ["", f"Solver: {', '.join(old)} were fit by backpropagating through the logits (solver 1, about 5x slower); "
                  "the other rows write the gradient out with its denormals flushed (solver 2). The two stop at slightly "
                  "different points of the same objective within the 150 L-BFGS iterations: wide-bn-mask-aug shares "
                  "wide-bn-mask's untrained encoder, and its untrained rows (solver 2) differ from those (solver 1) by up to "
                  "0.12 points. Trained and untrained rows of one recipe always share a solver."]
    lines += ["", "Every feature set probed (trained / untrained accuracy, %):", ""]
    for rec in sorted(records, key=lambda r: (r["tag"], r["recipe"])):
        cells = []
        for r in rec["rows"]:
            if r["family"] != "trained":
                continue
            u = matched(rec, r, "untrained")
            untrained_C = f" (C={u['C']:g})" if u and u.get("head") == "C=val" else ""
            cells.append(f"{r['features']} {head_label(r)}: {100 * r['accuracy']:.2f} / {100 * u['accuracy']:.2f}{untrained_C}" if u else
                         f"{r['features']} {head_label(r)}: {100 * r['accuracy']:.2f}")
        lines.append(f"- **{rec['recipe']}** ({rec['tag']}): " + "; ".join(cells))
    lines.append("")
    for tag in sorted({r["tag"] for r in records}):
        group = [r for r in records if r["tag"] == tag and best(r, "trained")]
        if len(group) >= 3:
            mse = [r["test_mse"] for r in group]
            acc = [best(r, "trained")["accuracy"] for r in group]
            p, s = pearsonr(mse, acc), spearmanr(mse, acc)
            lines.append(f"Reconstruction vs features ({tag}, {len(group)} recipes): Pearson r(test MSE, best accuracy) = "
                         f"{p.statistic:+.2f} (p={p.pvalue:.2f}), Spearman rho = {s.statistic:+.2f} (p={s.pvalue:.2f}); "
                         "a negative value means lower reconstruction error went with better features.")
    full = [r for r in records if r["tag"] == "full" and best(r, "trained")]
    conv = [r for r in full if r.get("kind", "conv") == "conv"]
    dense = [r for r in full if r.get("kind") == "dense"]
    if conv:
        top = max(conv, key=lambda r: best(r, "trained")["accuracy"])
        row = best(top, "trained")
        base = matched(top, row, "untrained")
        acc, ub = 100 * row["accuracy"], 100 * base["accuracy"] if base else float("nan")
        budget = "within" if top["train_seconds"] <= 900 else "over"
        lines.append(f"Targets (full rows): best ConvAE {acc:.2f}% ({top['recipe']}, {row['features']}, {head_label(row)}; trained "
                     f"{top['train_seconds']:.0f} s, {budget} the 15-minute budget) against {ub:.2f}% untrained: 91.0% target "
                     f"{'met' if acc >= 91 else 'missed'} ({acc - 91:+.2f}), +1.5 over untrained "
                     f"{'met' if acc - ub >= 1.5 else 'missed'} ({acc - ub:+.2f}).")
        gains = [(100 * (r["accuracy"] - u["accuracy"]), 100 * r["accuracy"], rec["recipe"], r["features"], head_label(r))
                 for rec in conv for r in rec["rows"] if r["family"] == "trained" and (u := matched(rec, r, "untrained"))]
        if gains:
            g, a, name, feats, post = max(gains)
            lines.append(f"Largest gain over the untrained encoder (full rows): {g:+.2f} points ({name}, {feats}, {post}: {a:.2f}%).")
        if dense:  # with the same classifier on both sides: C=1 (the FCAE was not probed with a tuned C)
            def best_c1(records):
                return max(100 * r["accuracy"] for rec in records for r in rec["rows"]
                           if r["family"] == "trained" and row_key(r)[2] == "C=1")
            cv, fc = best_c1(conv), best_c1(dense)
            lines.append(f"ConvAE vs FCAE at each one's best layer, both with C=1: {cv:.2f}% vs {fc:.2f}% ({cv - fc:+.2f} points; "
                         f"target +3.0 {'met' if cv - fc >= 3 else 'missed'}).")
        from convae.config import DEFAULT_STEPS

        lines.append(f"Default: `convae train`, `convae demo` and `ConvAEFeatures()` use the **{DEFAULT_RECIPE}** architecture and "
                     f"objective (configs/{DEFAULT_RECIPE}.toml), the best accuracy per compute measured, for {DEFAULT_STEPS:,} steps "
                     "(50 TFLOP; the *s50* row of the accuracy-per-compute section below); `ConvAEFeatures()` "
                     "returns its two deepest stages flattened.")
    lines.append("")
    return "\n".join(lines)


def write_section(begin: str, end: str, body: str) -> None:
    """Replace the marked section of docs/RESULTS.md with ``body`` (appended when the markers are missing)."""
    section = f"{begin}\n{body}{end}\n"
    text = DOC.read_text() if DOC.exists() else "# Results\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC}")


def write_table() -> None:
    write_section(BEGIN, END, table())


# --- accuracy per compute (issue 15) --------------------------------------------------------------------
def record_tflop(record: dict) -> float:
    """Training TFLOP of a record: stored, or FLOPs per image (counted now from its model config) x images seen."""
    if record.get("train_tflop") is not None:
        return float(record["train_tflop"])
    from convae.config import RunConfig
    from convae.models import build_model
    from convae.training.cost import train_flops_per_image

    config = RunConfig.from_dict({"model": record_model(record)})
    model = build_model(config.model.kind, (1, 28, 28), **config.model.model_kwargs())
    images = round(record["images_per_s"] * record["train_seconds"])  # what the record's img/s column was computed from
    return images * train_flops_per_image(model, (1, 28, 28), config.train) / 1e12


def full_size_records() -> list[dict]:
    """The records whose autoencoder trained on, and whose probe fit, all 60,000 training images."""
    return [r for r in load_records() if r["train_images"] == 60000 and r["probe_train"] == 60000]


def frontier_points() -> list[dict]:
    """One point per full-size record with a C-chosen-on-held-out row: its best such row and the matched untrained one."""
    points, records = [], load_records()
    for rec in full_size_records():
        rows = [r for r in rec["rows"] if r["family"] == "trained" and r.get("head") == "C=val"]
        if not rows:
            continue
        top = max(rows, key=lambda r: r["accuracy"])
        # the untrained row of the record, else one of the same seed-built encoder measured apart (--untrained-only)
        base = matched(rec, top, "untrained") or cached_untrained(rec, records).get(row_key(top))
        m = rec.get("machine", {})
        points.append({"recipe": rec["recipe"], "tag": rec["tag"], "tflop": record_tflop(rec),
                       "minutes": rec["train_seconds"] / 60, "features": top["features"], "C": top["C"],
                       "trained": 100 * top["accuracy"], "untrained": 100 * base["accuracy"] if base else None,
                       "cpu": m.get("cpu", "the AMX machine of issue 7" if "machine" not in rec else "?"),
                       "precision": m.get("precision", "bf16"), "threads": m.get("threads", 2),
                       "load": rec.get("load_avg_1m")})
    points.sort(key=lambda p: (p["tflop"], -p["trained"]))
    best_so_far = -1.0
    for p in points:  # Pareto: no cheaper-or-equal point is at least as accurate
        p["pareto"] = p["trained"] > best_so_far
        best_so_far = max(best_so_far, p["trained"])
    return points


def screen_points() -> list[dict]:
    """Full-size records probed at a fixed C=0.01 on the trained encoder (``--C 0.01``), cheapest first."""
    out = []
    for rec in full_size_records():
        rows = [r for r in rec["rows"] if r["family"] == "trained" and r.get("head") == "C=0.01"]
        if not rows or rec.get("train_tflop") is None:
            continue
        top = max(rows, key=lambda r: r["accuracy"])
        m = rec.get("machine", {})
        out.append({"recipe": rec["recipe"], "tag": rec["tag"], "mflop": rec["flops_per_image"] / 1e6, "tflop": rec["train_tflop"],
                    "minutes": rec["train_seconds"] / 60, "overrides": ", ".join(rec.get("overrides", [])) or "-",
                    "features": top["features"] + ("" if top.get("post", "none") == "none" else f", {top['post']}"),
                    "trained": 100 * top["accuracy"], "cpu": m.get("cpu", "?"),
                    "precision": m.get("precision", "?"), "threads": m.get("threads", "?")})
    return sorted(out, key=lambda p: (p["tflop"], -p["trained"]))


def yardstick_rows() -> dict[str, float]:
    """Tuned-C test accuracy (%) of the hand-designed baselines, from bench/yardstick.py's results."""
    if not YARDSTICK.exists():
        return {}
    return {r["features"]: 100 * r["accuracy_tuned"] for r in json.loads(YARDSTICK.read_text())}


def frontier_plot(points: list[dict], baselines: dict[str, float], screens: list[dict] = (), path: Path = FRONTIER_PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for p in points:
        ax.plot([p["tflop"]], [p["trained"]], "o", color="C0" if p["pareto"] else "C7", zorder=3)
        if p["untrained"] is not None:
            ax.plot([p["tflop"], p["tflop"]], [p["untrained"], p["trained"]], "-", color="0.8", zorder=1)
            ax.plot([p["tflop"]], [p["untrained"]], "o", mfc="none", color="C1", zorder=2)
        ax.annotate(f"{p['recipe']} ({p['tag']})", (p["tflop"], p["trained"]), textcoords="offset points", xytext=(5, 3), fontsize=7)
    for q in screens:
        ax.plot([q["tflop"]], [q["trained"]], "x", color="C7", zorder=2)
        ax.annotate(f"{q['recipe']} ({q['tag']})", (q["tflop"], q["trained"]), textcoords="offset points", xytext=(5, -9),
                    fontsize=6, color="0.4")
    if screens:
        ax.plot([], [], "x", color="C7", label="screen: trained only, C=0.01")
    front = [p for p in points if p["pareto"]]
    if front:
        xs = [q["tflop"] for q in front]
        ys = [q["trained"] for q in front]
        ax.step(xs + [max(p["tflop"] for p in points) * 1.3], ys + [ys[-1]], where="post", color="C0", lw=1, label="Pareto front (trained)")
    for (name, acc), color in zip(sorted(baselines.items()), ("C2", "C3", "C4")):
        ax.axhline(acc, ls="--", lw=1, color=color, label=f"{name}, no training: {acc:.2f}%")
    ax.plot([], [], "o", mfc="none", color="C1", label="same encoder, untrained")
    ax.set_xscale("log")
    ax.set_xlabel("autoencoder training compute (TFLOP, forward + backward)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title("Frozen features + logistic regression (C chosen on held-out images)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    plt.close(fig)


def frontier() -> str:
    points = frontier_points()
    base = yardstick_rows()
    scat = base.get("scattering")
    lines = ["## Accuracy per compute (issue 15)", "",
             "Every full-size recipe run probed with C chosen on 10,000 held-out training images (the recipes' protocol "
             "above), against the compute its autoencoder training took: FLOPs per training image counted by "
             "`torch.utils.flop_counter.FlopCounterMode` over the forward and backward pass, times the images the optimizer "
             "saw. Minutes are wall time of the training on the machine in the last columns. *Pareto*: no run with as "
             "little or less compute scored as high. The hand-designed baselines need no training "
             "(`python bench/yardstick.py`).", "",
             "Regenerate: `python bench/recipes.py --frontier` (this table and docs/frontier.png); a point comes from "
             "`python bench/recipes.py configs/NAME.toml --tag tN --tflop N --features stage2+stage3:flatten --tune-C "
             "0.003 0.01 0.03` (the grid of the rows measured in issue 15; the *full* row's was 0.01-1).", "",
             "| recipe | tag | train TFLOP | train min | features | C | trained | untrained | gain | vs scattering | Pareto | "
             "CPU, precision, threads, load |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|:---:|---|"]
    for p in points:
        un = f"{p['untrained']:.2f}" if p["untrained"] is not None else ""
        gain = f"{p['trained'] - p['untrained']:+.2f}" if p["untrained"] is not None else ""
        vs = f"{p['trained'] - scat:+.2f}" if scat else ""
        load = f", load {p['load']:.1f}" if p.get("load") is not None else ""
        lines.append(f"| {p['recipe']} | {p['tag']} | {p['tflop']:.1f} | {p['minutes']:.1f} | {p['features']} | {p['C']:g} | "
                     f"{p['trained']:.2f} | {un} | {gain} | {vs} | {'yes' if p['pareto'] else ''} | "
                     f"{p['cpu']}, {p['precision']}, {p['threads']}{load} |")
    if base:
        lines += ["", "No training: " + "; ".join(f"{k} {v:.2f}%" for k, v in sorted(base.items())) + "."]
    screens = screen_points()
    if screens:
        lines += ["", "Screens: the trained encoder only, at a fixed C=0.01 (the C that every trained encoder's full probe chose), all 60,000 "
                  "training images (`--C 0.01 --no-untrained`); they choose which recipe gets the full protocol above.", "",
                  "| recipe | tag | MFLOP/img | train TFLOP | train min | overrides | features | trained (C=0.01) | CPU, precision, threads |",
                  "|---|---|---:|---:|---:|---|---|---:|---|"]
        for p in screens:
            lines.append(f"| {p['recipe']} | {p['tag']} | {p['mflop']:.0f} | {p['tflop']:.1f} | {p['minutes']:.1f} | {p['overrides']} | "
                         f"{p['features']} | {p['trained']:.2f} | {p['cpu']}, {p['precision']}, {p['threads']} |")
    if points:
        frontier_plot(points, {k: v for k, v in base.items() if k in ("scattering", "hog")},
                      [q for q in screens if (q["recipe"], q["tag"]) not in {(p["recipe"], p["tag"]) for p in points}])
        lines += ["", "![accuracy against training compute](frontier.png)"]
    lines.append("")
    return "\n".join(lines)


def write_frontier() -> None:
    write_section(FRONTIER_BEGIN, FRONTIER_END, frontier())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipes", nargs="*", type=Path)
    p.add_argument("--table", action="store_true", help="regenerate the Recipes section of docs/RESULTS.md")
    p.add_argument("--frontier", action="store_true", help="regenerate the accuracy-per-compute section and docs/frontier.png")
    p.add_argument("--tag", default="full")
    p.add_argument("--train-limit", type=int, default=None, help="train the AE on the first N training images")
    p.add_argument("--probe-limit", type=int, default=None, help="probe on the first N train and test images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--features", nargs="+", help="feature sets to probe instead of the recipe's [probe] features")
    p.add_argument("--post", nargs="+", help="post-processing instead of the recipe's [probe] post")
    p.add_argument("--untrained-only", action="store_true",
                   help="probe the seed-built encoder only, training nothing (its rows then serve every later record of that seed)")
    p.add_argument("--no-untrained", action="store_true", help="probe the trained encoder only (a screen)")
    p.add_argument("--C", type=float, default=1.0, help="the fixed C when --tune-C is not given (a quick screen: "
                   "--C 0.01)")
    p.add_argument("--tune-C", type=float, nargs="+", help="pick C from these on held-out training images (default: the "
                   "recipe's [probe] tune_C, else C=1)")
    p.add_argument("--set", action="append", default=[], help="key=value config override, e.g. train.epochs=1")
    p.add_argument("--tflop", type=float, help="train for this many TFLOP (forward + backward, FlopCounterMode) instead "
                   "of the recipe's epochs; the schedule is planned to end there")
    args = p.parse_args(argv)
    # Progress of the training and the feature passes: a bar on a terminal, else a line every 30 s (convae.progress)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("convae.progress").setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "src"))
    for path in args.recipes:
        save_record(run_recipe(path.resolve(), args))
    if args.table:
        write_table()
    if args.frontier:
        write_frontier()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
