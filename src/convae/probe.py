"""The probing harness: are a run's encoder features any good, per layer, against honest baselines?

Feature sets (every one on the same images, splits and classifiers):

- the run's encoder at each requested layer x pooling (``layers`` may join layers with ``+``,
  e.g. ``stage1+stage2+stage3``, concatenated in that order);
- ``untrained``: the same architecture with random weights (built from the run's seed), same
  layers and pooling;
- ``fcae``: an FCAE run's layers, when one is given;
- ``raw``: the pixels, flattened;
- ``pca``: the pixels projected on their leading principal components, as many as the feature
  set it is compared with has values (at most min(n_train, n_pixels)). PCA, like the
  autoencoders, sees the training images without labels.

Protocol: the dataset's own train/test split where it has one (Fashion-MNIST: 60k/10k), else
stratified k-fold cross-validation (accuracies averaged over folds). Every classifier is a
``Pipeline(StandardScaler, classifier)`` fitted on training rows only; classifiers keep fixed,
untuned settings (:data:`CLASSIFIERS`), the same for every feature set.

Three stages, so the cost stays within reach of a small CPU:

1. layer scan: ``scan_classifier`` (logistic regression) on every feature set, all labels;
2. classifiers: every classifier in ``classifiers`` on the best scanned set of each encoder
   family (chosen by its scan accuracy on the evaluation split, as the table shows it), on raw
   pixels and on PCA of the same dimension as the run's best set;
3. label efficiency: ``scan_classifier`` on those sets with 10, 100 and 1000 labels per class,
   each repeated over ``seeds`` (mean and standard deviation); "all labels" comes from stage 1.

``quick=True`` keeps stage 1 on a middle layer and the bottleneck, logistic regression only,
100 labels per class with one seed, 10,000 training images and one thread: on Fashion-MNIST
(ConvAE and FCAE runs, 10,000 test images) 21 s on the project's idle 2-core CPU and 57 s while
other jobs shared it; left with the default threads on the shared CPU it took 18 minutes. The results go to ``probe.json`` (one record per feature set x
classifier x label count), ``probe.csv`` and ``probe.md`` in the run directory.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import ConfigError, DataError
from .features import feature_layout, iter_layer_outputs, parse_pool, pool_outputs, run_precision
from .training import resolve_device

logger = logging.getLogger(__name__)

# Fixed, untuned settings, the same for every feature set. (scikit-learn is imported when used:
# it would double `import convae`'s time.)
def _logreg(seed: int, n_jobs: int | None):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000)


def _linear_svc(seed: int, n_jobs: int | None):
    from sklearn.svm import LinearSVC

    return LinearSVC(C=0.1, dual="auto", max_iter=5000, random_state=seed)


def _rbf_svc(seed: int, n_jobs: int | None):
    from sklearn.svm import SVC

    return SVC(kernel="rbf", C=10.0, gamma="scale", random_state=seed)


def _random_forest(seed: int, n_jobs: int | None):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=200, n_jobs=n_jobs, random_state=seed)


def _mlp(seed: int, n_jobs: int | None):
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(256,), early_stopping=True, max_iter=200, random_state=seed)


CLASSIFIERS: dict[str, Callable[[int, int | None], object]] = {
    "logreg": _logreg, "linear_svc": _linear_svc, "rbf_svc": _rbf_svc, "random_forest": _random_forest, "mlp": _mlp,
}
CLASSIFIER_TITLES = {"logreg": "LogReg", "linear_svc": "LinearSVC", "rbf_svc": "RBF SVC", "random_forest": "RandomForest", "mlp": "MLP"}
BASELINES = ("untrained", "fcae", "raw", "pca")
FAMILY_TITLES = {"convae": "ConvAE", "fcae": "FCAE", "untrained": "untrained", "pca": "PCA", "raw": "raw pixels"}
QUICK_TRAIN_LIMIT = 10_000


@dataclass
class FeatureSet:
    """One set of features for every image: ``matrix(fold)`` -> (n_images, dim) float32."""

    family: str  # convae | fcae | untrained | raw | pca
    layers: str  # "stage2", "stage1+stage2", "pixels", "pca"
    pool: str  # a canonical pooling spec, or "-" where pooling does not apply
    dim: int
    matrix: Callable[[int], np.ndarray]

    @property
    def name(self) -> str:
        if self.family in ("raw", "pca"):
            return f"{self.family}{self.dim if self.family == 'pca' else ''}"
        return f"{self.family}:{self.layers}" + (f"/{self.pool}" if self.pool != "-" else "")


@dataclass
class ProbeResult:
    """``records``: one dict per feature set x classifier x label count; ``meta``: the setting."""

    records: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"meta": self.meta, "records": self.records}


# --- data and folds -----------------------------------------------------------------------------------
def _load_probe_data(run, data, test_data):
    """(train dataset, test dataset or None), converted to the run's (C, H, W) on load or per batch."""
    from .data import has_test_split
    from .features import prepare_data

    data = run.config.data.spec if data is None else data
    if isinstance(data, str) and test_data is None and has_test_split(data):
        return prepare_data(data, run.in_shape, split="train"), prepare_data(data, run.in_shape, split="test")
    train = prepare_data(data, run.in_shape, split="all")
    test = prepare_data(test_data, run.in_shape, split="test") if test_data is not None else None
    return train, test


def _per_class_subsample(labels: np.ndarray, idx: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(idx[labels[idx] == c])[:k] for c in np.unique(labels[idx])]
    return np.sort(np.concatenate(chosen))


def _take(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """X[idx], as a view when idx is a contiguous range (no copy of a 60k-row matrix)."""
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):
        return X[idx[0]:idx[-1] + 1]
    return X[idx]


# --- feature sets ----------------------------------------------------------------------------------------
def _layer_groups(model, layers) -> list[list[str]]:
    """``["stage2", "stage1+stage3", 1, ["stage1", "stage2"]]`` -> resolved groups of names."""
    if layers is None:
        return [[name] for name in model.layer_names]
    if isinstance(layers, (str, int)):
        layers = [layers]
    groups = []
    for item in layers:
        if isinstance(item, str) and "+" in item:
            item = [part.strip() for part in item.split("+")]
        groups.append(model.resolve_layers(item if isinstance(item, list) else [item]))
    return groups


def _middle_layer(model) -> str:
    return model.layer_names[(len(model.layer_names) - 1) // 2]


def _encoder_sets(family: str, model, groups: list[list[str]], pools: list, images: list, *, batch_size: int, precision: str,
                  progress: bool, skipped: list[str]) -> list[FeatureSet]:
    """Feature sets of one encoder: one pass over the images computes every layer and pooling."""
    plan = []  # (group, pooling, label) for each distinct set
    seen = set()
    for group in groups:
        for pooling in pools:
            vector = all(model.layer_info(name).spatial is None for name in group)
            key = (tuple(group), "-" if vector else pooling.spec)
            if key in seen:
                continue
            try:
                feature_layout(model, group, pooling)
            except ConfigError as error:
                skipped.append(f"{family}:{'+'.join(group)}/{pooling.spec}: {error}")
                logger.warning("skipping %s", skipped[-1])
                continue
            seen.add(key)
            plan.append((group, pooling, key[1]))
    if not plan:
        return []
    wanted = sorted({n for group, _, _ in plan for n in group}, key=model.layer_names.index)
    widths = [sum(k for _, k in feature_layout(model, group, pooling)) for group, pooling, _ in plan]
    matrices = [np.empty((sum(len(d) for d in images), w), np.float32) for w in widths]
    row = 0
    for data in images:  # one forward pass per batch serves every layer and pooling
        for out in iter_layer_outputs(model, data, wanted, batch_size=batch_size, precision=precision, convert=True,
                                      progress=progress, desc=family):
            b = next(iter(out.values())).shape[0]
            for matrix, (group, pooling, _) in zip(matrices, plan):
                matrix[row:row + b] = pool_outputs(out, group, pooling).cpu().numpy()
            row += b
    return [FeatureSet(family, "+".join(group), label, w, (lambda fold, m=m: m)) for (group, _, label), w, m in zip(plan, widths, matrices)]


def _pixel_matrix(images: list) -> np.ndarray:
    """Flattened pixels in [0, 1], float32 (n_images, C*H*W), from the already converted datasets."""
    from .features import _batches

    return np.concatenate([(b.float() / 255.0 if b.dtype == torch.uint8 else b.float()).flatten(1).numpy()
                           for data in images for b in _batches(data, 4096)])


def _pca_sets(pixels: np.ndarray, dims: list[int], folds: list[tuple[np.ndarray, np.ndarray]], seed: int) -> list[FeatureSet]:
    """PCA of the pixels to each of ``dims``, fitted per fold on its training rows (labels unused).

    One PCA with the largest dimension per fold serves every smaller one: exact solvers give
    nested components, so the first d columns are the d-component projection.
    """
    from sklearn.decomposition import PCA

    cap = min(min(len(train) for train, _ in folds), pixels.shape[1])
    dims = sorted({min(d, cap) for d in dims})
    if not dims:
        return []
    cache: dict[int, np.ndarray] = {}

    def projected(fold: int) -> np.ndarray:
        if fold not in cache:
            train, _ = folds[fold]
            pca = PCA(n_components=dims[-1], svd_solver="full" if pixels.shape[1] <= 4096 else "auto", random_state=seed)
            pca.fit(_take(pixels, train))
            cache.clear()  # one fold at a time in memory
            cache[fold] = pca.transform(pixels).astype(np.float32)
        return cache[fold]

    return [FeatureSet("pca", "pca", "-", d, (lambda fold, d=d: projected(fold)[:, :d])) for d in dims]


# --- fitting and scoring ----------------------------------------------------------------------------------
def _score(classifier: str, X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int,
           n_jobs: int | None) -> tuple[float, float, bool]:
    """(accuracy, fit seconds, converged) of Pipeline(StandardScaler, classifier) fitted on ``train`` rows."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), CLASSIFIERS[classifier](seed, n_jobs))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        t0 = time.perf_counter()
        model.fit(_take(X, train), y[train])
        seconds = time.perf_counter() - t0
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return float(model.score(_take(X, test), y[test])), seconds, converged


def _stratified_sample(labels: np.ndarray, idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A stratified sample of ``n`` of the rows ``idx`` (all of them when there are no more than ``n``)."""
    if n >= len(idx):
        return idx
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(idx, train_size=n, stratify=labels[idx], random_state=seed)
    return np.sort(keep)


def _evaluate(fs: FeatureSet, classifier: str, labels: np.ndarray, folds, *, labels_per_class: int | None, seeds, n_jobs,
              stage: str, protocol: str, limits: dict[str, int]) -> dict:
    """One record: accuracy averaged over folds, then mean and std over seeds."""
    accuracies, seconds, n_train, converged = [], [], [], True
    for seed in seeds:
        fold_acc = []
        for i, (train, test) in enumerate(folds):
            if labels_per_class is not None:
                rows = _per_class_subsample(labels, train, labels_per_class, seed)
            else:
                rows = _stratified_sample(labels, train, limits.get(classifier, len(train)), seed)
            acc, secs, ok = _score(classifier, fs.matrix(i), labels, rows, test, seed, n_jobs)
            fold_acc.append(acc)
            seconds.append(secs)
            n_train.append(len(rows))
            converged &= ok
        accuracies.append(float(np.mean(fold_acc)))
    return {
        "feature_set": fs.name, "family": fs.family, "layers": fs.layers, "pool": fs.pool, "dim": fs.dim,
        "classifier": classifier, "labels_per_class": labels_per_class, "n_train": int(round(np.mean(n_train))),
        "n_test": int(round(np.mean([len(test) for _, test in folds]))), "protocol": protocol, "stage": stage,
        "seeds": list(seeds), "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)) if len(accuracies) > 1 else None,
        "accuracies": accuracies, "fit_seconds": float(np.mean(seconds)), "converged": converged,
    }


# --- the harness ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _thread_limit(threads: int | None):
    if not threads:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


def probe(run, data=None, *, test_data=None, layers=None, pool="avg2", classifiers=None, scan_classifier: str | None = "logreg",
          baselines=BASELINES, fcae=None, labels_per_class=None, seeds=None, train_limit: int | None = None,
          classifier_limits: dict[str, int] | None = None, cv_folds: int = 5,
          quick: bool = False, batch_size: int = 256, precision: str | None = None, device: str = "auto",
          threads: int | None = None, n_jobs: int | None = None, out_dir=None, write: bool = True,
          progress: bool = False) -> ProbeResult:
    """Probe a run's encoder features with classical classifiers, beside the baselines.

    Parameters
    ----------
    run : str, Path or Run
        The run directory (or a loaded :class:`convae.Run`) whose encoder is probed.
    data : str, ImageDataset or None
        A dataset spec (None: the run's own), converted to the run's (C, H, W) by
        ``convae.data``'s rule. A spec with a test split is probed train -> test; anything else
        by stratified ``cv_folds``-fold cross-validation, unless ``test_data`` is given.
    layers : list, optional
        Layer names, indices or ``+``-joined groups (``"stage1+stage2"``). Default: every layer
        (quick: a middle layer and the bottleneck).
    pool : str or list of str, default "avg2"
        Pooling specs (:mod:`convae.features`); every layer x pooling is a feature set.
        Vector layers pass through once; a grid finer than a layer's map is skipped.
    classifiers : list of str, optional
        From :data:`CLASSIFIERS`; default all five (quick: the scan classifier only).
    scan_classifier : str or None, default "logreg"
        The classifier of the layer scan and label efficiency; None runs every classifier on
        every feature set.
    baselines : iterable, default ("untrained", "fcae", "raw", "pca")
    fcae : str, Path or Run, optional
        An FCAE run whose layers join the comparison.
    labels_per_class : list of int, optional
        Default (10, 100, 1000); quick: (100,). Counts at or above every class's size are left out.
    seeds : list of int, optional
        Label draws and classifier seeds; default (0, 1, 2), quick: (0,).
    train_limit : int, optional
        Use a stratified sample of this many training images (quick: 10,000).
    classifier_limits : dict, optional
        Per classifier, at most this many (stratified) training images, e.g. ``{"rbf_svc": 20000}``
        for the classifiers whose cost grows faster than the data; the records say how many.
    precision : str, optional
        Extraction precision; None: the run's training precision.
    threads : int, optional
        Limit torch and the BLAS/OpenMP pools of numpy and scikit-learn to this many threads
        while probing (restored afterwards). On a CPU shared with other jobs, 1 is often several
        times faster than oversubscribed threads. None leaves them as they are (quick: 1).
    n_jobs : int, optional
        Processes for the random forest.
    out_dir : str or Path, optional
        Where probe.json, probe.csv and probe.md go (default: the run directory); ``write=False``
        writes nothing.

    Returns
    -------
    ProbeResult
        ``records`` (see the module docstring) and ``meta``; :func:`format_table` renders it.
    """
    from sklearn.model_selection import StratifiedKFold

    from .models import build_model
    from .runs import Run, atomic_write_text, load_run

    threads = threads if threads is not None else (1 if quick else None)
    with _thread_limit(threads):
        t_start = time.perf_counter()
        run = run if isinstance(run, Run) else load_run(run)
        dev = resolve_device(device)
        model = run.model.to(dev)
        prec = run_precision(run, precision, dev)
        pools = [parse_pool(p) for p in ([pool] if isinstance(pool, str) else pool)]
        if layers is None and quick:
            layers = [_middle_layer(model), "bottleneck"]
        groups = _layer_groups(model, layers)
        classifiers = list(classifiers) if classifiers is not None else ([scan_classifier or "logreg"] if quick else list(CLASSIFIERS))
        named = classifiers + ([scan_classifier] if scan_classifier else []) + list(classifier_limits or {})
        unknown = [c for c in named if c not in CLASSIFIERS]
        if unknown:
            raise ConfigError(f"unknown classifier(s) {unknown}; choose from {', '.join(CLASSIFIERS)}")
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
        labels_per_class = list(labels_per_class) if labels_per_class is not None else ([100] if quick else [10, 100, 1000])
        seeds = list(seeds) if seeds is not None else ([0] if quick else [0, 1, 2])
        if not seeds:
            raise ConfigError("seeds must hold at least one seed")
        train_limit = train_limit if train_limit is not None else (QUICK_TRAIN_LIMIT if quick else None)

        # Images and folds: rows are the training images, then the test images (if any).
        train_data, test_data = _load_probe_data(run, data, test_data)
        for d in (train_data, test_data):
            if d is not None and d.labels is None:
                raise DataError(f"{d.spec}: the probe needs labels, and this data has none")
        if train_limit is not None and train_limit < len(train_data):
            train_data = train_data.subset(_stratified_sample(train_data.labels, np.arange(len(train_data)), train_limit, seeds[0]))
        images = [train_data] + ([test_data] if test_data is not None else [])
        labels = np.concatenate([np.asarray(d.labels, np.int64) for d in images])
        n_train = len(train_data)
        if test_data is not None:
            folds = [(np.arange(n_train), np.arange(n_train, len(labels)))]
            protocol = "test split"
        else:
            if np.bincount(labels).max(initial=0) < 2:
                raise DataError("cross-validation needs at least 2 images of some class")
            n_splits = max(2, min(cv_folds, int(np.bincount(labels)[np.bincount(labels) > 0].min())))
            splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seeds[0])
            folds = [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros(len(labels)), labels)]
            protocol = f"{n_splits}-fold CV"

        # Feature sets.
        skipped: list[str] = []
        family = "convae" if model.__class__.__name__ == "ConvAutoencoder" else "fcae"
        extract = dict(batch_size=batch_size, precision=prec, progress=progress, skipped=skipped)
        sets = _encoder_sets(family, model, groups, pools, images, **extract)
        if not sets:
            raise ConfigError("no feature set fits this model: " + "; ".join(skipped))
        if "untrained" in baselines:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(run.config.train.seed)
                untrained = build_model(run.config.model.kind, run.in_shape, **run.config.model.model_kwargs()).to(dev)
            sets += _encoder_sets("untrained", untrained, groups, pools, images, **extract)
        fcae_info = None
        if "fcae" in baselines and fcae is not None:
            fcae_run = fcae if isinstance(fcae, Run) else load_run(fcae)
            fcae_model = fcae_run.model.to(dev)
            fcae_groups = _layer_groups(fcae_model, [_middle_layer(fcae_model), "bottleneck"] if quick else None)
            sets += _encoder_sets("fcae", fcae_model, fcae_groups, pools[:1], images,
                                  **{**extract, "precision": run_precision(fcae_run, precision, dev)})
            fcae_info = {"path": str(fcae_run.path), "weights_sha256": fcae_run.weights_sha256}
        pixels = _pixel_matrix(images) if ("raw" in baselines or "pca" in baselines) else None
        if "raw" in baselines:
            sets.append(FeatureSet("raw", "pixels", "-", pixels.shape[1], lambda fold: pixels))
        if "pca" in baselines:
            sets += _pca_sets(pixels, [s.dim for s in sets if s.family in ("convae", "fcae")], folds, seeds[0])
        t_features = time.perf_counter() - t_start

        # Stage 1: the layer scan (every classifier on every set when scan_classifier is None).
        limits = dict(classifier_limits or {})
        common = dict(labels=labels, folds=folds, n_jobs=n_jobs, protocol=protocol, limits=limits)
        records: list[dict] = []
        scan = [scan_classifier] if scan_classifier else classifiers
        by_set: dict[str, dict[str, dict]] = {}
        for fs in sets:
            for clf in scan:
                record = _evaluate(fs, clf, labels_per_class=None, seeds=seeds[:1], stage="layers", **common)
                records.append(record)
                by_set.setdefault(fs.name, {})[clf] = record
                logger.info("%s %s: %.4f", fs.name, clf, record["accuracy"])

        # The best scanned set of each encoder family, and the pixel baselines beside them.
        first = scan[0]
        best: list[FeatureSet] = []
        for fam in (family, "untrained", "fcae"):
            candidates = [fs for fs in sets if fs.family == fam]
            if candidates:
                best.append(max(candidates, key=lambda fs: by_set[fs.name][first]["accuracy"]))
        best += [fs for fs in sets if fs.family == "raw"]
        if best and best[0].family == family:
            pca = [fs for fs in sets if fs.family == "pca"]
            if pca:
                best.append(min(pca, key=lambda fs: abs(fs.dim - best[0].dim)))

        # Stage 2: every classifier on the best sets.
        for fs in best:
            for clf in classifiers:
                if clf not in by_set.get(fs.name, {}):
                    record = _evaluate(fs, clf, labels_per_class=None, seeds=seeds[:1], stage="classifiers", **common)
                    records.append(record)
                    by_set[fs.name][clf] = record
                    logger.info("%s %s: %.4f (%.0f s)", fs.name, clf, record["accuracy"], record["fit_seconds"])

        # Stage 3: label efficiency on the best sets.
        train_counts = [np.bincount(labels[train]) for train, _ in folds]
        counts = [k for k in labels_per_class if any((c > k).any() for c in train_counts)]
        for fs in best:
            for k in counts:
                records.append(_evaluate(fs, first, labels_per_class=k, seeds=seeds, stage="labels", **common))
                logger.info("%s %s, %d labels per class: %.4f", fs.name, first, k, records[-1]["accuracy"])

        meta = {
            "run": str(run.path), "weights_sha256": run.weights_sha256, "model_kind": run.config.model.kind,
            "in_shape": list(run.in_shape), "data": getattr(train_data, "spec", "array"), "protocol": protocol,
            "n_train": n_train, "n_test": len(labels) - n_train if test_data is not None else None, "n_images": len(labels),
            "train_limit": train_limit, "classifier_limits": limits, "classifiers": classifiers, "scan_classifier": scan_classifier,
            "pools": [p.spec for p in pools], "layers": ["+".join(g) for g in groups], "labels_per_class": counts,
            "seeds": seeds, "baselines": list(baselines), "fcae": fcae_info, "best": [fs.name for fs in best],
            "precision": prec, "threads": threads, "quick": quick, "skipped": skipped, "feature_seconds": round(t_features, 2),
            "seconds": round(time.perf_counter() - t_start, 2),
            "classifier_settings": {name: repr(factory(0, n_jobs)) for name, factory in CLASSIFIERS.items() if name in set(classifiers) | set(scan)},
        }
        result = ProbeResult(records, meta)
        if write:
            out = Path(out_dir) if out_dir is not None else Path(run.path)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "probe.json", json.dumps(result.to_dict(), indent=2) + "\n")
            atomic_write_text(out / "probe.csv", records_csv(records))
            atomic_write_text(out / "probe.md", format_table(result) + "\n")
        return result


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


def _pct(record: dict | None, std: bool = False) -> str:
    if record is None:
        return ""
    text = f"{100 * record['accuracy']:.1f}"
    if std and record.get("accuracy_std") is not None:
        text += f" ± {100 * record['accuracy_std']:.1f}"
    return text + ("" if record.get("converged", True) else "*")


def _md(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + ["| " + " | ".join(r) + " |" for r in rows]


def format_table(results) -> str:
    """Markdown tables of a :class:`ProbeResult` (or the dict in probe.json): per layer, per classifier, per label count."""
    if isinstance(results, ProbeResult):
        results = results.to_dict()
    meta, records = results["meta"], results["records"]
    run_family = "fcae" if meta.get("model_kind") == "dense" else "convae"
    scan = meta.get("scan_classifier") or (meta["classifiers"][0] if meta.get("classifiers") else "logreg")
    n_test = f", {meta['n_test']:,} test" if meta.get("n_test") else ""
    limit = f" (a stratified sample: train_limit={meta['train_limit']:,})" if meta.get("train_limit") else ""
    lines = [f"Probe of {meta['run']} on {meta['data']}: {meta['protocol']}, {meta['n_train']:,} training images{limit}{n_test}; "
             f"accuracy in %, StandardScaler + classifier fitted on the training rows only.", ""]

    # 1. per layer: families side by side, PCA of the same dimension beside each row.
    full = [r for r in records if r["labels_per_class"] is None]
    scan_records = [r for r in full if r["classifier"] == scan and r["stage"] == "layers"]
    pca_by_dim = {r["dim"]: r for r in scan_records if r["family"] == "pca"}
    families = [f for f in (run_family, "untrained", "fcae") if any(r["family"] == f for r in scan_records)]
    rows: dict[tuple[str, str], dict] = {}
    for r in scan_records:
        if r["family"] in families:
            rows.setdefault((r["layers"], r["pool"]), {"dim": r["dim"]})[r["family"]] = r
    header = ["layers", "pool", "dim"] + [FAMILY_TITLES[f] for f in families] + (["PCA, same dim"] if pca_by_dim else [])
    body = [[layers, pool, str(row["dim"])] + [_pct(row.get(f)) for f in families]
            + ([_pct(pca_by_dim.get(min(row["dim"], max(pca_by_dim))))] if pca_by_dim else []) for (layers, pool), row in rows.items()]
    raw = [r for r in scan_records if r["family"] == "raw"]
    if raw:
        body.append(["raw pixels", "-", str(raw[0]["dim"])] + [""] * len(families) + ([""] if pca_by_dim else []) + [_pct(raw[0])])
        header.append("raw")
        body = [b + [""] * (len(header) - len(b)) for b in body]
    lines += [f"Per layer: {CLASSIFIER_TITLES[scan]}, all training labels", ""] + _md(header, body) + [""]

    # 2. every classifier on the best sets.
    best = meta.get("best", [])
    classifiers = [c for c in CLASSIFIER_TITLES if any(r["classifier"] == c and r["feature_set"] in best for r in full)]
    if best and len(classifiers) > 1:
        cell = {(r["feature_set"], r["classifier"]): r for r in full}
        dims = {r["feature_set"]: r["dim"] for r in records}
        body = [[name, str(dims[name])] + [_pct(cell.get((name, c))) for c in classifiers] for name in best]
        lines += ["Every classifier on each family's best layer (by the per-layer scan)", ""]
        lines += _md(["feature set", "dim"] + [CLASSIFIER_TITLES[c] for c in classifiers], body) + [""]
        limited = {c: n for c, n in (meta.get("classifier_limits") or {}).items() if c in classifiers and n < meta["n_train"]}
        if limited:
            lines += ["Fitted on a stratified sample of the training images: "
                      + ", ".join(f"{CLASSIFIER_TITLES[c]} {n:,}" for c, n in limited.items()) + ".", ""]

    # 3. label efficiency.
    counts = meta.get("labels_per_class", [])
    if best and counts:
        cell = {(r["feature_set"], r["labels_per_class"]): r for r in records if r["classifier"] == scan}
        body = [[name] + [_pct(cell.get((name, k)), std=True) for k in counts] + [_pct(cell.get((name, None)))] for name in best]
        lines += [f"Label efficiency: {CLASSIFIER_TITLES[scan]}, labels per class, mean ± std over seeds {meta['seeds']}", ""]
        lines += _md(["feature set"] + [f"{k}/class" for k in counts] + ["all"], body) + [""]
    if any(not r.get("converged", True) for r in records):
        lines.append("\\* the solver stopped at its iteration limit before converging.")
    if meta.get("skipped"):
        lines.append("Skipped: " + "; ".join(meta["skipped"]))
    lines.append(f"Took {meta['seconds']:.0f} s ({meta['feature_seconds']:.0f} s extracting features), precision {meta['precision']}.")
    return "\n".join(lines).rstrip()


__all__ = ["CLASSIFIERS", "BASELINES", "FeatureSet", "ProbeResult", "probe", "format_table", "records_csv"]
