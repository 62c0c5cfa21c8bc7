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
untuned settings (:data:`convae.analysis.classifiers.CLASSIFIERS`), the same for every feature set.

Three stages, so the cost stays within reach of a small CPU:

1. layer scan: ``scan_classifier`` (logistic regression) on every feature set, all labels;
2. classifiers: every classifier in ``classifiers`` on the best scanned set of each encoder
   family (chosen by its scan accuracy on the evaluation split, as the table shows it), on raw
   pixels and on PCA of the same dimension as the run's best set;
3. label efficiency: ``scan_classifier`` on those sets with 10, 100 and 1000 labels per class,
   each repeated over ``seeds`` (mean and standard deviation); "all labels" comes from stage 1.

The work reads top to bottom: :class:`ProbeSettings` resolves and checks every option before any
work (so a long probe never fails at its end on a bad option); then the data and folds, the
feature sets (:mod:`convae.analysis.feature_sets`), the three stages (scored by
:mod:`convae.analysis.classifiers`), and the files (tables by :mod:`convae.analysis.tables`).

``quick=True`` keeps stage 1 on a middle layer and the bottleneck, logistic regression only,
100 labels per class with one seed, 10,000 training images and one thread: on Fashion-MNIST
(ConvAE and FCAE runs, 10,000 test images) 21 s on the project's idle 2-core CPU and 57 s while
other jobs shared it; left with the default threads on the shared CPU it took 18 minutes. The results go to ``probe.json`` (one record per feature set x
classifier x label count), ``probe.csv`` and ``probe.md`` in the run directory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_json, atomic_write_text
from ..data import has_test_split
from ..errors import ConfigError, DataError
from ..features import parse_pool, prepare_data, resolve_groups, run_precision
from ..models import build_from_config
from ..runs import Run, as_run
from ..runtime import resolve_device, thread_limit
from .classifiers import CLASSIFIERS, evaluate_set, stratified_sample
from .feature_sets import FeatureSet, encoder_sets, middle_layer, pca_sets, pixel_matrix
from .tables import format_table, records_csv

logger = logging.getLogger(__name__)

BASELINES = ("untrained", "fcae", "raw", "pca")
QUICK_TRAIN_LIMIT = 10_000


@dataclass
class ProbeResult:
    """``records``: one dict per feature set x classifier x label count; ``meta``: the setting."""

    records: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"meta": self.meta, "records": self.records}


# --- settings, resolved once -----------------------------------------------------------------------------
@dataclass
class ProbeSettings:
    """Every option of :func:`probe` with the quick/default ladder applied and checked, before any work."""

    pools: list
    classifiers: list[str]
    scan_classifier: str | None
    baselines: list[str]
    labels_per_class: list[int]
    seeds: list[int]
    train_limit: int | None
    classifier_limits: dict[str, int]
    threads: int | None
    quick: bool

    @property
    def scan(self) -> list[str]:
        """The classifiers of the layer scan (every classifier when ``scan_classifier`` is None)."""
        return [self.scan_classifier] if self.scan_classifier else self.classifiers

    @classmethod
    def resolve(cls, *, pool, classifiers, scan_classifier, baselines, labels_per_class, seeds, train_limit,
                classifier_limits, threads, quick) -> ProbeSettings:
        pools = [parse_pool(p) for p in ([pool] if isinstance(pool, str) else pool)]
        classifiers = list(classifiers) if classifiers is not None else ([scan_classifier or "logreg"] if quick else list(CLASSIFIERS))
        named = classifiers + ([scan_classifier] if scan_classifier else []) + list(classifier_limits or {})
        unknown = [c for c in named if c not in CLASSIFIERS]
        if unknown:
            raise ConfigError(f"unknown classifier(s) {unknown}; choose from {', '.join(CLASSIFIERS)}")
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
        counts = list(labels_per_class) if labels_per_class is not None else ([100] if quick else [10, 100, 1000])
        # "all labels" is stage 1's own result: an "all" (None) in the list adds nothing to compute
        counts = [k for k in counts if k is not None]
        bad = [k for k in counts if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
        if bad:
            raise ConfigError(f"labels_per_class must hold counts of at least 1 (or 'all'), got {bad}")
        seeds = list(seeds) if seeds is not None else ([0] if quick else [0, 1, 2])
        if not seeds:
            raise ConfigError("seeds must hold at least one seed")
        train_limit = train_limit if train_limit is not None else (QUICK_TRAIN_LIMIT if quick else None)
        if train_limit is not None and train_limit < 2:
            raise ConfigError(f"train_limit must be at least 2 images, got {train_limit}")
        threads = threads if threads is not None else (1 if quick else None)
        return cls(pools, classifiers, scan_classifier, list(baselines), [int(k) for k in counts], seeds, train_limit,
                   dict(classifier_limits or {}), threads, quick)


# --- data and folds ---------------------------------------------------------------------------------------
def load_probe_data(run: Run, data, test_data):
    """(train dataset, test dataset or None), converted to the run's (C, H, W) on load or per batch."""
    data = run.config.data.spec if data is None else data
    if isinstance(data, str) and test_data is None and has_test_split(data):
        return prepare_data(data, run.in_shape, split="train"), prepare_data(data, run.in_shape, split="test")
    train = prepare_data(data, run.in_shape, split="all")
    test = prepare_data(test_data, run.in_shape, split="test") if test_data is not None else None
    return train, test


def make_folds(labels: np.ndarray, n_train: int, has_test: bool, cv_folds: int, seed: int) -> tuple[list, str]:
    """(folds as (train rows, test rows), protocol): the test split where there is one, else stratified k-fold CV."""
    if has_test:
        return [(np.arange(n_train), np.arange(n_train, len(labels)))], "test split"
    from sklearn.model_selection import StratifiedKFold

    if np.bincount(labels).max(initial=0) < 2:
        raise DataError("cross-validation needs at least 2 images of some class")
    n_splits = max(2, min(cv_folds, int(np.bincount(labels)[np.bincount(labels) > 0].min())))
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros(len(labels)), labels)], f"{n_splits}-fold CV"


# --- feature sets -----------------------------------------------------------------------------------------
def build_feature_sets(run: Run, model, groups, st: ProbeSettings, images: list, folds, *, fcae, dev, precision, extract: dict,
                       skipped: list[str]) -> tuple[list[FeatureSet], str, dict | None]:
    """Every feature set of the probe: the run's encoder, then the baselines asked for. Returns (sets, family, FCAE info)."""
    family = "convae" if model.__class__.__name__ == "ConvAutoencoder" else "fcae"
    sets = encoder_sets(family, model, groups, st.pools, images, **extract)
    if not sets:
        raise ConfigError("no feature set fits this model: " + "; ".join(skipped))
    if "untrained" in st.baselines:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.config.train.seed)
            untrained = build_from_config(run.config, run.in_shape).to(dev)
        sets += encoder_sets("untrained", untrained, groups, st.pools, images, **extract)
    fcae_info = None
    if "fcae" in st.baselines and fcae is not None:
        fcae_run = as_run(fcae)
        fcae_model = fcae_run.model.to(dev)
        fcae_groups = resolve_groups(fcae_model, [middle_layer(fcae_model), "bottleneck"] if st.quick else None)
        sets += encoder_sets("fcae", fcae_model, fcae_groups, st.pools[:1], images,
                             **{**extract, "precision": run_precision(fcae_run, precision, dev)})
        fcae_info = {"path": str(fcae_run.path), "weights_sha256": fcae_run.weights_sha256}
    pixels = pixel_matrix(images) if ("raw" in st.baselines or "pca" in st.baselines) else None
    if "raw" in st.baselines:
        sets.append(FeatureSet("raw", "pixels", "-", pixels.shape[1], lambda fold: pixels))
    if "pca" in st.baselines:
        sets += pca_sets(pixels, [s.dim for s in sets if s.family in ("convae", "fcae")], folds, st.seeds[0])
    return sets, family, fcae_info


# --- the three stages -------------------------------------------------------------------------------------
def scan_layers(sets: list[FeatureSet], st: ProbeSettings, common: dict, records: list[dict], by_set: dict) -> None:
    """Stage 1: the scan classifier on every feature set, all labels (every classifier when there is no scan classifier)."""
    for fs in sets:
        for clf in st.scan:
            record = evaluate_set(fs, clf, labels_per_class=None, seeds=st.seeds[:1], stage="layers", **common)
            records.append(record)
            by_set.setdefault(fs.name, {})[clf] = record
            logger.info("%s %s: %.4f", fs.name, clf, record["accuracy"])


def best_sets(sets: list[FeatureSet], family: str, first: str, by_set: dict) -> list[FeatureSet]:
    """The best scanned set of each encoder family, raw pixels, and PCA of the dimension nearest the run's best."""
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
    return best


def every_classifier(best: list[FeatureSet], st: ProbeSettings, common: dict, records: list[dict], by_set: dict) -> None:
    """Stage 2: every classifier on the best sets."""
    for fs in best:
        for clf in st.classifiers:
            if clf not in by_set.get(fs.name, {}):
                record = evaluate_set(fs, clf, labels_per_class=None, seeds=st.seeds[:1], stage="classifiers", **common)
                records.append(record)
                by_set[fs.name][clf] = record
                logger.info("%s %s: %.4f (%.0f s)", fs.name, clf, record["accuracy"], record["fit_seconds"])


def label_efficiency(best: list[FeatureSet], counts: list[int], first: str, st: ProbeSettings, common: dict,
                     records: list[dict]) -> None:
    """Stage 3: the scan classifier on the best sets with ``counts`` labels per class, over every seed."""
    for fs in best:
        for k in counts:
            records.append(evaluate_set(fs, first, labels_per_class=k, seeds=st.seeds, stage="labels", **common))
            logger.info("%s %s, %d labels per class: %.4f", fs.name, first, k, records[-1]["accuracy"])


def write_probe(result: ProbeResult, out: Path) -> None:
    """probe.json, probe.csv and probe.md in ``out`` (each atomic)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "probe.json", result.to_dict())
    atomic_write_text(out / "probe.csv", records_csv(result.records))
    atomic_write_text(out / "probe.md", format_table(result) + "\n")


# --- the harness ------------------------------------------------------------------------------------------
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
    layers : str or list, optional
        A layer spec (:mod:`convae.features.layers`): feature sets separated by ``,``, layers
        joined into one set by ``+`` (``"stage1+stage2,bottleneck"``), or a list of them. Default:
        every layer (quick: a middle layer and the bottleneck).
    pool : str or list of str, default "avg2"
        Pooling specs (:mod:`convae.features.pooling`); every layer x pooling is a feature set.
        Vector layers pass through once; a grid finer than a layer's map is skipped.
    classifiers : list of str, optional
        From :data:`convae.analysis.classifiers.CLASSIFIERS`; default all five (quick: the scan classifier only).
    scan_classifier : str or None, default "logreg"
        The classifier of the layer scan and label efficiency; None runs every classifier on
        every feature set.
    baselines : iterable, default ("untrained", "fcae", "raw", "pca")
    fcae : str, Path or Run, optional
        An FCAE run whose layers join the comparison.
    labels_per_class : list of int, optional
        Default (10, 100, 1000); quick: (100,). Counts at or above every class's size are left out;
        ``None`` ("all") is stage 1's own result.
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
        ``records`` (see the module docstring) and ``meta``; :func:`convae.analysis.tables.format_table` renders it.
    """
    st = ProbeSettings.resolve(pool=pool, classifiers=classifiers, scan_classifier=scan_classifier, baselines=baselines,
                               labels_per_class=labels_per_class, seeds=seeds, train_limit=train_limit,
                               classifier_limits=classifier_limits, threads=threads, quick=quick)
    with thread_limit(st.threads):
        t_start = time.perf_counter()
        run = as_run(run)
        dev = resolve_device(device)
        model = run.model.to(dev)
        prec = run_precision(run, precision, dev)
        groups = resolve_groups(model, [middle_layer(model), "bottleneck"] if layers is None and quick else layers)

        # Images and folds: rows are the training images, then the test images (if any).
        train_data, test_data = load_probe_data(run, data, test_data)
        for d in (train_data, test_data):
            if d is not None and d.labels is None:
                raise DataError(f"{d.spec}: the probe needs labels, and this data has none")
        n_available = len(train_data)
        if st.train_limit is not None and st.train_limit < len(train_data):
            train_data = train_data.subset(stratified_sample(train_data.labels, np.arange(len(train_data)), st.train_limit, st.seeds[0]))
        images = [train_data] + ([test_data] if test_data is not None else [])
        labels = np.concatenate([np.asarray(d.labels, np.int64) for d in images])
        n_train = len(train_data)
        folds, protocol = make_folds(labels, n_train, test_data is not None, cv_folds, st.seeds[0])

        skipped: list[str] = []
        extract = dict(batch_size=batch_size, precision=prec, progress=progress, skipped=skipped)
        sets, family, fcae_info = build_feature_sets(run, model, groups, st, images, folds, fcae=fcae, dev=dev, precision=precision,
                                                     extract=extract, skipped=skipped)
        t_features = time.perf_counter() - t_start

        common = dict(labels=labels, folds=folds, n_jobs=n_jobs, protocol=protocol, limits=st.classifier_limits)
        records: list[dict] = []
        by_set: dict[str, dict[str, dict]] = {}
        scan_layers(sets, st, common, records, by_set)
        first = st.scan[0]
        best = best_sets(sets, family, first, by_set)
        every_classifier(best, st, common, records, by_set)
        train_counts = [np.bincount(labels[train]) for train, _ in folds]
        counts = [k for k in st.labels_per_class if any((c > k).any() for c in train_counts)]
        label_efficiency(best, counts, first, st, common, records)

        meta = {
            "run": str(run.path), "weights_sha256": run.weights_sha256, "model_kind": run.config.model.kind,
            "in_shape": list(run.in_shape), "data": getattr(train_data, "spec", "array"), "protocol": protocol,
            "n_train": n_train, "n_test": len(labels) - n_train if test_data is not None else None, "n_images": len(labels),
            "n_available": n_available, "train_limit": st.train_limit, "classifier_limits": st.classifier_limits,
            "classifiers": st.classifiers, "scan_classifier": st.scan_classifier,
            "pools": [p.spec for p in st.pools], "layers": ["+".join(g) for g in groups], "labels_per_class": counts,
            "seeds": st.seeds, "baselines": st.baselines, "fcae": fcae_info, "best": [fs.name for fs in best],
            "precision": prec, "threads": st.threads, "quick": st.quick, "skipped": skipped, "feature_seconds": round(t_features, 2),
            "seconds": round(time.perf_counter() - t_start, 2),
            "classifier_settings": {name: repr(factory(0, n_jobs)) for name, factory in CLASSIFIERS.items()
                                    if name in set(st.classifiers) | set(st.scan)},
        }
        result = ProbeResult(records, meta)
        if write:
            write_probe(result, Path(out_dir) if out_dir is not None else Path(run.path))
        return result


__all__ = ["BASELINES", "ProbeResult", "ProbeSettings", "probe"]
