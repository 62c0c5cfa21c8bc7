"""The probing harness: are a run's encoder features any good, per layer, against honest baselines?

Feature sets (every one on the same images, splits and classifiers):

- the run's encoder at each requested layer x pooling (``layers`` may join layers with ``+``,
  e.g. ``stage1+stage2+stage3``, concatenated in that order);
- ``untrained``: the same architecture with random weights (built from the run's seed), same
  layers and pooling;
- ``fcae``: an FCAE run's layers, when one is given;
- ``raw``: the pixels, flattened;
- ``pca``: PCA of the pixels in its best honest form: not whitened (the components keep their
  variances) and its dimension chosen on held-out training images (never the test labels); beside
  each encoder row the table also shows ``pca_whitened``, PCA to the same dimension as that row and
  then standardized, a labelled comparison only (its trailing components are noise blown up to unit
  variance, which sinks it with few labels). PCA, like the autoencoders, sees the training images
  without labels;
- ``hog`` and ``scattering``: hand-designed features with no training at all (HOG from
  scikit-image, the wavelet scattering transform from Kymatio; :mod:`convae.analysis.baselines`),
  with parameters chosen for the image size and recorded in ``probe.json``; skipped, with the reason
  in the table, when their library is missing (``pip install 'convae[baselines]'``).

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
100 labels per class with one seed, 10,000 training images and one thread for the classifiers (two were
slower even on the idle 2-core EPYC of issue 15's session), while the encoders' forward passes keep the
process's threads (the demo's quick probe in fp32 there: 137 s with everything on one thread, 100 s so): on Fashion-MNIST
(ConvAE and FCAE runs, 10,000 test images) 21 s on the project's idle 2-core CPU and 57 s while
other jobs shared it; left with the default threads on the shared CPU it took 18 minutes. The results go to ``probe.json`` (one record per feature set x
classifier x label count), ``probe.csv`` and ``probe.md`` in the run directory.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_json, atomic_write_text
from ..data import convert_images, has_test_split, load_dataset, parse_image_size
from ..data.folders import list_image_files, probe_image
from ..data.specs import parse_spec
from ..errors import ConfigError, DataError
from ..features import parse_pool, prepare_data, resolve_groups, run_precision
from ..models import build_from_config
from ..progress import Progress
from ..runs import Run, as_run
from ..runtime import resolve_device, thread_limit
from .classifiers import CLASSIFIERS, evaluate_set, stratified_sample
from .baselines import HAND_DESIGNED, available, hand_designed_features, resolve_params
from .classifiers import score
from .feature_sets import FeatureSet, encoder_sets, honest_pca_set, middle_layer, pca_sets, pixel_matrix
from .tables import format_table, records_csv

logger = logging.getLogger(__name__)

BASELINES = ("untrained", "fcae", "raw", "pca", "hog", "scattering")
QUICK_BASELINES = ("untrained", "fcae", "raw", "pca", "hog")  # scattering costs minutes on a large dataset
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
    baseline_params: dict = field(default_factory=dict)

    @property
    def scan(self) -> list[str]:
        """The classifiers of the layer scan (every classifier when ``scan_classifier`` is None)."""
        return [self.scan_classifier] if self.scan_classifier else self.classifiers

    @classmethod
    def resolve(cls, *, pool, classifiers, scan_classifier, baselines, labels_per_class, seeds, train_limit,
                classifier_limits, threads, quick, hog=None, scattering=None) -> ProbeSettings:
        pools = [parse_pool(p) for p in ([pool] if isinstance(pool, str) else pool)]
        classifiers = list(classifiers) if classifiers is not None else ([scan_classifier or "logreg"] if quick else list(CLASSIFIERS))
        named = classifiers + ([scan_classifier] if scan_classifier else []) + list(classifier_limits or {})
        unknown = [c for c in named if c not in CLASSIFIERS]
        if unknown:
            raise ConfigError(f"unknown classifier(s) {unknown}; choose from {', '.join(CLASSIFIERS)}")
        baselines = list(baselines) if baselines is not None else list(QUICK_BASELINES if quick else BASELINES)
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
        given = {name: dict(value) for name, value in (("hog", hog), ("scattering", scattering)) if value}
        for name, value in given.items():
            resolve_params(name, (1, 4096, 4096), value)  # unknown keys and bad values fail before any work
        return cls(pools, classifiers, scan_classifier, list(baselines), [int(k) for k in counts], seeds, train_limit,
                   dict(classifier_limits or {}), threads, quick, given)


# --- data and folds ---------------------------------------------------------------------------------------
def load_probe_data(run: Run, data, test_data, image_size=None):
    """(train dataset, test dataset or None), converted to the run's (C, H, W) on load or per batch.

    ``image_size`` ((H, W) or "HxW") resizes a spec's images when loading them, before they are
    converted to the run's input (as ``convae extract --image-size`` does). A conversion that was
    not asked for (a dataset of another size or channel count than the run's) is logged as a
    warning naming the dataset's size, the run's and the conversion, once per probe.
    """
    data = run.config.data.spec if data is None else data
    size = parse_image_size(image_size)
    said: set[str] = set()

    in_shape = tuple(int(v) for v in run.in_shape)

    def load(d, split):
        if isinstance(d, (str, os.PathLike)):
            return _load_spec(str(d), split, size, in_shape, said)
        dataset = prepare_data(d, run.in_shape, split=split)
        if dataset.images is not None and tuple(dataset.shape) != in_shape:  # in memory: convert once, so the pixel
            message = _conversion_note(f"{dataset.spec} images", tuple(dataset.shape), None, in_shape)  # baselines see
            if message not in said:  # the images the encoder sees
                said.add(message)
                logger.warning("%s", message)
            dataset = replace(dataset, images=convert_images(dataset.images, image_size=in_shape[1:], channels=in_shape[0]))
        return dataset  # a streaming dataset is converted batch by batch

    if isinstance(data, str) and test_data is None and has_test_split(data):
        return load(data, "train"), load(data, "test")
    return load(data, "all"), (load(test_data, "test") if test_data is not None else None)


def _load_spec(spec: str, split: str, size, in_shape: tuple[int, int, int], said: set[str]):
    """One split of a spec at the run's ``in_shape`` (resized to ``size`` first, if given), warning of what converts it."""
    c, h, w = in_shape
    kind, path = parse_spec(spec)
    if kind == "folder":  # a folder may mix sizes, and a large one streams: decode it at the size wanted
        if size is None or size == (h, w):
            dataset = load_dataset(spec, split, image_size=(h, w), channels=c)
        else:
            loaded = load_dataset(spec, split, image_size=size, in_memory=True)
            dataset = replace(loaded, images=convert_images(loaded.images, image_size=(h, w), channels=c))
        info = probe_image(list_image_files(path)[0][0])
        source, what = (1 if info.gray else 3, info.size[1], info.size[0]), f"{spec} images (the first file's size)"
    else:  # loaded as they come, then converted: the same pixels as loading them at the run's size
        loaded = load_dataset(spec, split)
        source, what = tuple(loaded.shape), f"{spec} images"
        images = loaded.images if size is None or size == (h, w) else convert_images(loaded.images, image_size=size)
        dataset = replace(loaded, images=convert_images(images, image_size=(h, w), channels=c))
    message = _conversion_note(what, source, size, in_shape)
    if message and message not in said:
        said.add(message)
        logger.warning("%s", message)
    return dataset


def _conversion_note(what: str, source: tuple[int, int, int], size, in_shape: tuple[int, int, int]) -> str | None:
    """What converting images of (C, H, W) ``source`` (resized to ``size`` first, if given) to ``in_shape`` does
    beyond what ``size`` asked for; None when nothing."""
    c, h, w = in_shape
    start = (source[1], source[2]) if size is None else size
    steps = []
    if source[0] != c:
        steps.append("3 channels -> 1 (luma)" if c == 1 else "1 channel -> 3 (repeated)")
    if start != (h, w):
        steps.append(f"resizing {start[0]}x{start[1]} -> {h}x{w}, bilinear with antialiasing")
    if not steps:
        return None
    after = f", {source[0]}x{size[0]}x{size[1]} after --image-size," if size and size != source[1:] else ""
    return (f"{what} are {'x'.join(map(str, source))} (CxHxW){after} but the run takes {c}x{h}x{w}: converting them "
            f"({'; '.join(steps)}), so the probe measures the run on converted images")


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
def build_feature_sets(run: Run, model, groups, st: ProbeSettings, images: list, labels: np.ndarray, folds, *, fcae, dev, precision,
                       extract: dict, skipped: list[str]) -> tuple[list[FeatureSet], str, dict | None, dict]:
    """Every feature set of the probe: the run's encoder, then the baselines asked for.

    Returns (sets, the run's family, FCAE info, the baselines' parameters and choices for probe.json).
    """
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
    choices: dict = {}
    if "pca" in st.baselines:
        sets += pca_sets(pixels, [s.dim for s in sets if s.family in ("convae", "fcae")], folds, st.seeds[0])
        first = st.scan[0]
        honest, choices["pca"] = honest_pca_set(
            pixels, labels, folds, st.seeds[0],
            lambda X, train, test: score(first, X, labels, train, test, st.seeds[0], None, standardize=False)[0])
        if honest is not None:
            sets.append(honest)
            logger.info("PCA dimension chosen on held-out training images: %d", honest.dim)
    for method in HAND_DESIGNED:
        if method not in st.baselines:
            continue
        reason = available(method)
        if reason is not None:
            skipped.append(f"{method}: {reason}")
            logger.warning("skipping the %s baseline: %s", method, reason)
            continue
        params = resolve_params(method, run.in_shape, st.baseline_params.get(method))
        X = np.concatenate([hand_designed_features(method, d, params, progress=extract["progress"]) for d in images])
        sets.append(FeatureSet(method, method, "-", X.shape[1], lambda fold, X=X: X))
        choices[method] = params
    return sets, family, fcae_info, choices


# --- the three stages -------------------------------------------------------------------------------------
# Each stage takes the probe's Progress (``bar``, disabled when the probe shows none): the feature set and
# classifier before each evaluate_set, one "fit" after it, and the heartbeat's lines while a single fit runs for minutes.
def scan_layers(sets: list[FeatureSet], st: ProbeSettings, common: dict, records: list[dict], by_set: dict,
                bar: Progress) -> None:
    """Stage 1: the scan classifier on every feature set, all labels (every classifier when there is no scan classifier)."""
    for fs in sets:
        for clf in st.scan:
            bar.set_postfix(stage="layers", set=fs.name, clf=clf)
            record = evaluate_set(fs, clf, labels_per_class=None, seeds=st.seeds[:1], stage="layers", **common)
            bar.update(1)
            records.append(record)
            by_set.setdefault(fs.name, {})[clf] = record
            logger.info("%s %s: %.4f", fs.name, clf, record["accuracy"])


def _best_candidates(sets: list[FeatureSet], family: str) -> list[list[FeatureSet]]:
    """The sets :func:`best_sets` picks one from, per pick: each encoder family's sets, then each baseline set alone."""
    groups = [[fs for fs in sets if fs.family == fam] for fam in (family, "untrained", "fcae")]
    return [g for g in groups if g] + [[fs] for fs in sets if fs.family in ("raw", "pca", *HAND_DESIGNED)]  # one set each


def best_sets(sets: list[FeatureSet], family: str, first: str, by_set: dict) -> list[FeatureSet]:
    """The best scanned set of each encoder family, then raw pixels, the honest PCA and the hand-designed baselines."""
    return [max(candidates, key=lambda fs: by_set[fs.name][first]["accuracy"]) for candidates in _best_candidates(sets, family)]


def planned_fits(sets: list[FeatureSet], family: str, st: ProbeSettings, counts: list[int]) -> int:
    """How many evaluate_set calls the three stages make (known before stage 1: the number of best sets is)."""
    n_best = len(_best_candidates(sets, family))
    extra = len(dict.fromkeys(c for c in st.classifiers if c not in st.scan))  # stage 2 skips what stage 1 scored
    return len(sets) * len(st.scan) + n_best * (extra + len(counts))


def every_classifier(best: list[FeatureSet], st: ProbeSettings, common: dict, records: list[dict], by_set: dict,
                     bar: Progress) -> None:
    """Stage 2: every classifier on the best sets."""
    for fs in best:
        for clf in st.classifiers:
            if clf not in by_set.get(fs.name, {}):
                bar.set_postfix(stage="classifiers", set=fs.name, clf=clf)
                record = evaluate_set(fs, clf, labels_per_class=None, seeds=st.seeds[:1], stage="classifiers", **common)
                bar.update(1)
                records.append(record)
                by_set[fs.name][clf] = record
                logger.info("%s %s: %.4f (%.0f s)", fs.name, clf, record["accuracy"], record["fit_seconds"])


def label_efficiency(best: list[FeatureSet], counts: list[int], first: str, st: ProbeSettings, common: dict,
                     records: list[dict], bar: Progress) -> None:
    """Stage 3: the scan classifier on the best sets with ``counts`` labels per class, over every seed."""
    for fs in best:
        for k in counts:
            bar.set_postfix(stage="labels", set=fs.name, clf=first, labels=f"{k}/class")
            records.append(evaluate_set(fs, first, labels_per_class=k, seeds=st.seeds, stage="labels", **common))
            bar.update(1)
            logger.info("%s %s, %d labels per class: %.4f", fs.name, first, k, records[-1]["accuracy"])


def write_probe(result: ProbeResult, out: Path) -> None:
    """probe.json, probe.csv and probe.md in ``out`` (each atomic)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "probe.json", result.to_dict())
    atomic_write_text(out / "probe.csv", records_csv(result.records))
    atomic_write_text(out / "probe.md", format_table(result) + "\n")


# --- the harness ------------------------------------------------------------------------------------------
def probe(run, data=None, *, test_data=None, layers=None, pool="avg2", classifiers=None, scan_classifier: str | None = "logreg",
          baselines=None, fcae=None, labels_per_class=None, seeds=None, train_limit: int | None = None,
          classifier_limits: dict[str, int] | None = None, cv_folds: int = 5, image_size=None,
          quick: bool = False, batch_size: int = 256, precision: str | None = None, device: str = "auto",
          threads: int | None = None, n_jobs: int | None = None, out_dir=None, write: bool = True,
          progress: bool = False, hog: dict | None = None, scattering: dict | None = None) -> ProbeResult:
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
    baselines : iterable, optional
        From :data:`BASELINES`; default all of them (quick: all but ``scattering``, which costs
        minutes on a large dataset the first time; its features are cached).
    hog, scattering : dict, optional
        Parameters of the hand-designed baselines (``{"cell": 4, "block": 2, "orientations": 9}``,
        ``{"J": 2, "L": 8}``); defaults are chosen for the image size (:mod:`convae.analysis.baselines`).
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
    image_size : str or (int, int), optional
        Resize a spec's images to HxW when loading them (``"16x16"``; CLI ``--image-size``), before
        they are converted to the run's input shape. Converting images of another size or channel
        count than the run's, beyond what ``image_size`` asks, is logged as a warning.
    threads : int, optional
        Limit torch and the BLAS/OpenMP pools of numpy and scikit-learn to this many threads
        while probing (restored afterwards). On a CPU shared with other jobs, 1 is often several
        times faster than oversubscribed threads. None leaves them as they are (quick: 1).
    n_jobs : int, optional
        Processes for the random forest.
    out_dir : str or Path, optional
        Where probe.json, probe.csv and probe.md go (default: the run directory); ``write=False``
        writes nothing.
    progress : bool, default False
        Show progress (:class:`convae.progress.Progress`): of each feature extraction, and of the
        classifier fits of the three stages as one count (``probe: 3/12 fit ... set=... clf=...``),
        where stderr is no terminal a line at least every interval even while one fit runs.

    Returns
    -------
    ProbeResult
        ``records`` (see the module docstring) and ``meta``; :func:`convae.analysis.tables.format_table` renders it.
    """
    st = ProbeSettings.resolve(pool=pool, classifiers=classifiers, scan_classifier=scan_classifier, baselines=baselines,
                               labels_per_class=labels_per_class, seeds=seeds, train_limit=train_limit,
                               classifier_limits=classifier_limits, threads=threads, quick=quick, hog=hog, scattering=scattering)
    image_size = parse_image_size(image_size)  # a bad size fails here, before any work
    # The encoders' forward passes run on the threads asked for, else on those the process has: big batched
    # convolutions gain from every core, where quick mode's many small fits run faster on one (st.threads)
    extract_threads = threads or torch.get_num_threads()
    with thread_limit(st.threads):
        t_start = time.perf_counter()
        run = as_run(run)
        dev = resolve_device(device)
        model = run.model.to(dev)
        prec = run_precision(run, precision, dev)
        groups = resolve_groups(model, [middle_layer(model), "bottleneck"] if layers is None and quick else layers)

        # Images and folds: rows are the training images, then the test images (if any).
        train_data, test_data = load_probe_data(run, data, test_data, image_size)
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
        extract = dict(batch_size=batch_size, precision=prec, progress=progress, skipped=skipped, threads=extract_threads)
        sets, family, fcae_info, baseline_params = build_feature_sets(run, model, groups, st, images, labels, folds, fcae=fcae,
                                                                      dev=dev, precision=precision, extract=extract, skipped=skipped)
        t_features = time.perf_counter() - t_start

        common = dict(labels=labels, folds=folds, n_jobs=n_jobs, protocol=protocol, limits=st.classifier_limits)
        records: list[dict] = []
        by_set: dict[str, dict[str, dict]] = {}
        train_counts = [np.bincount(labels[train]) for train, _ in folds]
        counts = [k for k in st.labels_per_class if any((c > k).any() for c in train_counts)]
        first = st.scan[0]
        # one display for the three stages: a single fit (an SVM on 60,000 images) can take minutes, so where
        # stderr is no terminal the heartbeat logs a line every interval even while no fit ends
        with Progress(planned_fits(sets, family, st, counts), desc="probe", unit="fit", enabled=progress,
                      heartbeat=True) as bar:
            scan_layers(sets, st, common, records, by_set, bar)
            best = best_sets(sets, family, first, by_set)
            every_classifier(best, st, common, records, by_set, bar)
            label_efficiency(best, counts, first, st, common, records, bar)

        meta = {
            "run": str(run.path), "weights_sha256": run.weights_sha256, "model_kind": run.config.model.kind,
            "in_shape": list(run.in_shape), "data": getattr(train_data, "spec", "array"), "protocol": protocol,
            "n_train": n_train, "n_test": len(labels) - n_train if test_data is not None else None, "n_images": len(labels),
            "n_available": n_available, "image_size": list(image_size) if image_size else None, "train_limit": st.train_limit, "classifier_limits": st.classifier_limits,
            "classifiers": st.classifiers, "scan_classifier": st.scan_classifier,
            "pools": [p.spec for p in st.pools], "layers": ["+".join(g) for g in groups], "labels_per_class": counts,
            "seeds": st.seeds, "baselines": st.baselines, "baseline_params": baseline_params, "fcae": fcae_info, "best": [fs.name for fs in best],
            "precision": prec, "threads": st.threads, "quick": st.quick, "skipped": skipped, "feature_seconds": round(t_features, 2),
            "seconds": round(time.perf_counter() - t_start, 2),
            "classifier_settings": {name: repr(factory(0, n_jobs)) for name, factory in CLASSIFIERS.items()
                                    if name in set(st.classifiers) | set(st.scan)},
        }
        result = ProbeResult(records, meta)
        if write:
            write_probe(result, Path(out_dir) if out_dir is not None else Path(run.path))
        return result


__all__ = ["BASELINES", "QUICK_BASELINES", "ProbeResult", "ProbeSettings", "probe"]
