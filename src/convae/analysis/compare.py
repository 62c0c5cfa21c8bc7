"""ConvAE versus FCAE on the same images: the claims that make ConvAEs the right tool, measured.

:func:`compare` trains (or takes) a ConvAE and an FCAE on the same training images and measures,
side by side, on one held-out test set (the dataset's test split, else a stratified 20% hold-out
that the autoencoders never see):

- ``parameters``: per layer and in total, at the dataset's image size and at 3x100x100, plus the
  reference FCAE whose first 500-unit layer alone has 3*100*100*500 + 500 = 15,000,500;
- ``permutation``: both models trained again, with the same recipe and seed, on images whose
  pixels are shuffled by one fixed permutation; reconstruction MSE and linear-probe accuracy,
  original versus permuted. A dense layer is blind to a fixed permutation (it is a relabelling
  of its inputs, so only the random draw of the initial weights differs); a convolution is not.
  The noise floor is an FCAE trained with another seed on the original images;
- ``translation``: test images shifted by 1..4 px (zero fill; right, left, down and up averaged).
  Per conv layer the equivariance error ``f(shift(x))`` versus ``shift(f(x))`` by ``s / stride``
  map cells (exact only when the stride divides ``s``; otherwise the map is shifted by the
  nearest whole number of cells and the row is marked inexact), beside the error without
  shifting the map; the invariance of pooled features; linear-probe accuracy versus shift with
  the classifier trained on unshifted images. Errors are relative:
  ``sqrt(sum |a - b|^2 / sum |f(x) - f(x')|^2)``, x' another image, so 0 is exact and 1 is as far
  as a different image;
- ``hunger``: each model trained on 1,000, 10,000 and all training images (no labels) for the
  same number of optimizer steps as the full run: reconstruction MSE on its own training images
  versus the test set, and linear-probe accuracy;
- ``hierarchy``: receptive field and map size per layer beside the per-layer probe accuracy.

Every linear-probe number comes from :func:`convae.analysis.probe.probe` (logistic regression on
standardized features, the same stratified sample of ``probe_train_limit`` labelled training
images, scored on the test set). Being deterministic, the classifier fitted on unshifted
features is the same for every shift. Results go to ``compare.json`` and PNG plots in ``out_dir``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import runs
from ..atomic import atomic_write_json, atomic_write_text
from ..config import DEMO_EPOCHS, RunConfig, apply_overrides, demo_configs, resolve_stem
from ..data import ImageDataset, has_test_split, load_dataset
from ..errors import ConfigError, DataError, RunError
from ..runs import Run, load_run, read_metrics
from ..training import evaluate, load_training_data, split_indices, train
from ..training.plan import epochs_for_steps, n_train_images, total_steps
from ..viz.compare_plots import compare_figures
from ..viz.plots import save_figure
from .measures import (all_images, equivariance, invariance, parameter_table, permute_images, pixel_permutation, shift_images,
                       shifted_dataset, with_images)
from .probe import probe
from .tables import format_compare, markdown_table, percent

logger = logging.getLogger(__name__)

COMPARE_FORMAT = 1
QUICK = dict(epochs=10, shifts=(1, 2), hunger_sizes=(300, None), probe_train_limit=2000, analysis_limit=500)


# --- training -----------------------------------------------------------------------------------------
def _finished(run_dir: Path, cfg: RunConfig) -> bool:
    metrics = read_metrics(run_dir)
    if not metrics:
        return False
    last = metrics[-1]
    cap = cfg.train.step_cap
    return last.get("epoch", 0) >= cfg.train.n_epochs or (cap is not None and last.get("step", 0) >= cap)


def train_or_reuse(cfg: RunConfig, run_dir: Path, dataset: ImageDataset, progress: bool = False) -> Run:
    """Train ``cfg`` on ``dataset`` into ``run_dir``; a finished run there with the same config is reused,
    an unfinished one is resumed (so a killed compare picks up where it stopped)."""
    resolve_stem(cfg, dataset.shape)  # model.stem="auto" as config.json records it
    if (run_dir / runs.WEIGHTS).exists():
        saved = runs.read_config(run_dir)[0]
        if saved.to_dict() != cfg.to_dict():
            raise RunError(f"{run_dir} holds a run with other settings; use another output directory or remove it")
        if _finished(run_dir, cfg):
            logger.info("reusing %s", run_dir)
            return load_run(run_dir)
        train(cfg, run_dir, resume=True, progress=progress, dataset=dataset)
    else:
        train(cfg, run_dir, progress=progress, dataset=dataset)
    return load_run(run_dir)


def _steps(cfg: RunConfig, n_images: int) -> int:
    return total_steps(cfg.train, n_train_images(n_images, cfg.train))


def _with_steps(cfg: RunConfig, n_images: int, steps: int) -> RunConfig:
    """``cfg`` trained for exactly ``steps`` optimizer steps on ``n_images`` images."""
    epochs = epochs_for_steps(steps, n_train_images(n_images, cfg.train), cfg.train.batch_size)
    return apply_overrides(RunConfig.from_dict(cfg.to_dict()), [f"train.epochs={epochs}", f"train.max_steps={steps}"])


# --- probes -----------------------------------------------------------------------------------------
def probe_layers(run: Run, train_data: ImageDataset, test_data: ImageDataset, layers, *, pool: str, seed: int,
                 train_limit: int | None, precision: str) -> dict[str, float]:
    """Linear-probe test accuracy per layer, by :func:`convae.analysis.probe.probe` (logistic regression, all labels)."""
    result = probe(run, data=train_data, test_data=test_data, layers=None if layers is None else list(layers), pool=pool, classifiers=["logreg"],
                   scan_classifier="logreg", baselines=(), labels_per_class=[], seeds=[seed], train_limit=train_limit,
                   precision=precision, device="cpu", write=False)
    return {r["layers"]: r["accuracy"] for r in result.records if r["stage"] == "layers"}


def accuracy_noise(accuracy: float, n_test: int) -> float:
    """Binomial standard error of a test accuracy: sqrt(p (1 - p) / n)."""
    return math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / max(n_test, 1))


# --- the comparison -------------------------------------------------------------------------------------
def _split(data: ImageDataset, spec: str, seed: int, test_limit: int | None) -> tuple[ImageDataset, ImageDataset, str]:
    """(train, test, how the test set was made): the dataset's test split, else a stratified 20% hold-out."""
    from sklearn.model_selection import train_test_split

    if has_test_split(spec):
        test = load_dataset(spec, "test", image_size=data.shape[1:], channels=data.shape[0])
        train, source = data, "test split"
    else:
        idx = np.arange(len(data))
        tr, te = train_test_split(idx, test_size=0.2, random_state=seed, stratify=data.labels)
        train, test, source = data.subset(np.sort(tr)), data.subset(np.sort(te)), "stratified 20% hold-out"
    if test_limit is not None and test_limit < len(test):
        keep, _ = train_test_split(np.arange(len(test)), train_size=test_limit, random_state=seed, stratify=test.labels)
        test = test.subset(np.sort(keep))
    return train, test, source


def _configs(data: str, epochs: int, limit, in_shape, overrides, conv_overrides, dense_overrides) -> dict[str, RunConfig]:
    base = demo_configs(data, epochs, limit, in_shape=in_shape)
    extra = {"conv": conv_overrides, "dense": dense_overrides}
    return {k: apply_overrides(cfg, ["train.precision=fp32"] + list(overrides) + list(extra[k])) for k, cfg in base.items()}


def _best_layer(accuracies: dict[str, float]) -> str:
    return max(accuracies, key=accuracies.get)


SECTIONS = ("parameters", "hierarchy", "permutation", "translation", "hunger")


@dataclass
class _Setting:
    """What every section shares: the data, the two runs and their recipes, the probe settings."""

    train_data: ImageDataset
    test_data: ImageDataset
    models: dict[str, Run]
    configs: dict[str, RunConfig]
    runs_dir: Path
    probe_kw: dict
    progress: bool
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # per model, per layer: the probe on the originals
    recon: dict[str, dict[str, float]] = field(default_factory=dict)  # per model: test MSE, PSNR, SSIM

    def key_layers(self, kind: str) -> list[str]:
        """The layers followed through permutation, translation and hunger: the best one and the bottleneck."""
        return list(dict.fromkeys([_best_layer(self.accuracy[kind]), "bottleneck"]))

    def probe(self, run: Run, train_data=None, test_data=None, layers=None) -> dict[str, float]:
        return probe_layers(run, train_data or self.train_data, test_data or self.test_data, layers, **self.probe_kw)

    def test_metrics(self, run: Run, data=None, indices=None) -> dict[str, float]:
        return evaluate(run.model, data or self.test_data, indices, precision="fp32", device=torch.device("cpu"))

    def train(self, cfg: RunConfig, name: str, data: ImageDataset) -> Run:
        return train_or_reuse(cfg, self.runs_dir / name, data, self.progress)


def _permutation(st: _Setting, seed: int) -> dict:
    perm = pixel_permutation(st.train_data.shape, seed)
    data = {split: with_images(d, permute_images(all_images(d), perm), f"{d.spec}+permuted")
            for split, d in (("train", st.train_data), ("test", st.test_data))}
    section = {"permutation_seed": seed, "n_test": len(st.test_data)}
    for kind in st.models:
        run = st.train(st.configs[kind], f"{kind}-permuted", data["train"])
        section[kind] = {"run": str(run.path), "original": {"test_mse": st.recon[kind]["mse"], "accuracy": st.accuracy[kind]},
                         "permuted": {"test_mse": st.test_metrics(run, data["test"])["mse"],
                                      "accuracy": st.probe(run, data["train"], data["test"])}}
    # The noise floor: the FCAE again with another seed, on the original images.
    cfg = apply_overrides(RunConfig.from_dict(st.configs["dense"].to_dict()), [f"train.seed={st.configs['dense'].train.seed + 1}"])
    run = st.train(cfg, "dense-seed2", st.train_data)
    section["noise"] = {"run": str(run.path), "what": "FCAE, original images, seed + 1", "test_mse": st.test_metrics(run)["mse"],
                        "accuracy": st.probe(run)}
    section["summary"] = _permutation_summary(section, {k: st.key_layers(k) for k in st.models}, len(st.test_data))
    return section


def _translation(st: _Setting, shifts, analysis_limit: int, pool: str, seed: int) -> dict:
    sample = all_images(st.test_data)[:analysis_limit]
    models = st.models
    section = {"shifts": list(shifts), "directions": "right, left, down, up (averaged); zero fill", "n_images": len(sample),
               "equivariance": {k: equivariance(run.model, sample, shifts) for k, run in models.items()},
               "invariance": {k: invariance(run.model, sample, shifts, pools=tuple(dict.fromkeys(("avg", pool)))) for k, run in models.items()},
               "probe_shifts": [0] + list(shifts), "probe": {k: {layer: [st.accuracy[k][layer]] for layer in st.key_layers(k)} for k in models}}
    for s in shifts:
        shifted = shifted_dataset(st.test_data, s, seed)
        for kind, run in models.items():
            acc = st.probe(run, test_data=shifted, layers=st.key_layers(kind))
            for layer in st.key_layers(kind):
                section["probe"][kind][layer].append(acc[layer])
    return section


def _hunger(st: _Setting, hunger_sizes, seed: int) -> dict:
    n_all = len(st.train_data)
    sizes = sorted({int(s) for s in hunger_sizes if s is not None and int(s) < n_all})
    order = np.random.default_rng(seed).permutation(n_all)
    section = {"sizes": sizes + [n_all], "steps": {}, "key_layers": {k: st.key_layers(k) for k in st.models}}
    for kind, full_run in st.models.items():
        cfg = st.configs[kind]
        steps = section["steps"][kind] = _steps(cfg, n_all)
        rows = []
        for n in sizes + [n_all]:
            subset = st.train_data if n == n_all else st.train_data.subset(np.sort(order[:n]))
            run = full_run if n == n_all else st.train(_with_steps(cfg, n, steps), f"{kind}-n{n}", subset)
            trained = split_indices(n, cfg.train.val_fraction, cfg.train.seed)[0]  # the images the trainer fitted
            acc = st.accuracy[kind] if run is full_run else st.probe(run, layers=st.key_layers(kind))
            rows.append({"n_images": n, "run": str(run.path), "train_mse": st.test_metrics(run, subset, trained)["mse"],
                         "test_mse": st.recon[kind]["mse"] if run is full_run else st.test_metrics(run)["mse"],
                         "accuracy": {layer: acc[layer] for layer in st.key_layers(kind)}})
        section[kind] = rows
    return section


def compare(data: str = "fashion-mnist", out_dir: str | Path = "runs/compare", *, conv_run=None, dense_run=None,
            epochs: int | None = None, limit: int | None = None, overrides=(), conv_overrides=(), dense_overrides=(),
            shifts=(1, 2, 3, 4), hunger_sizes=(1000, 10000, None), pool: str = "avg2", probe_train_limit: int | None = 10000,
            test_limit: int | None = None, analysis_limit: int = 2000, sections=SECTIONS, seed: int = 0, quick: bool = False,
            progress: bool = False) -> dict:
    """Train (or take) a ConvAE and an FCAE on ``data`` and measure them side by side (see the module docstring).

    Parameters
    ----------
    data : str
        A dataset spec with labels (the probes need them).
    out_dir : str or Path
        Where ``compare.json``, ``compare.md``, the plots and the trained runs (``runs/``) go.
        Finished runs found there with the same settings are reused; unfinished ones resumed.
    conv_run, dense_run : path or Run, optional
        Trained runs to take instead of training them (their recipes train the other models).
    epochs, limit : int, optional
        Epochs of the full-data runs (default: the demo's); use only the first ``limit`` images.
    overrides, conv_overrides, dense_overrides : list of "key=value"
        Config overrides for both models / one model. Training runs in fp32 unless overridden.
    shifts : ints, default (1, 2, 3, 4)
        Translations in pixels.
    hunger_sizes : ints or None, default (1000, 10000, None)
        Training-set sizes for data hunger; None is all; sizes at or above all are left out.
    pool : str, default "avg2"
        Pooling of conv maps for the probes and, with ``avg``, for the invariance measurement.
    probe_train_limit, test_limit : int, optional
        Labelled training images for the probes (a stratified sample); test images used.
    analysis_limit : int, default 2000
        Test images for the equivariance and invariance measurements.
    sections : names, default all of :data:`SECTIONS`
    seed : int
        Seed of the hold-out split, the permutation (seed + 1), the shift directions and subsets.
    quick : bool
        Small settings for tests and smoke runs (:data:`QUICK` fills what is not given).

    Returns
    -------
    dict
        What ``compare.json`` holds: ``meta`` and one entry per section (and ``reconstruction``).
    """
    t_start = time.perf_counter()
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown compare section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if quick:
        epochs = epochs or QUICK["epochs"]
        shifts = shifts if tuple(shifts) != (1, 2, 3, 4) else QUICK["shifts"]
        hunger_sizes = hunger_sizes if tuple(hunger_sizes) != (1000, 10000, None) else QUICK["hunger_sizes"]
        probe_train_limit = min(probe_train_limit or QUICK["probe_train_limit"], QUICK["probe_train_limit"])
        analysis_limit = min(analysis_limit, QUICK["analysis_limit"])
    epochs = epochs or DEMO_EPOCHS.get(data, 5)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # One training set and one test set for everything.
    full = load_training_data(apply_overrides(RunConfig(), [f"data.spec={data}"] + ([f"data.limit={limit}"] if limit else []) + list(overrides)))
    if full.labels is None:
        raise DataError(f"{data}: compare needs labels for its linear probes, and this data has none")
    train_data, test_data, test_source = _split(full, data, seed, test_limit)
    configs = _configs(data, epochs, limit, train_data.shape, overrides, conv_overrides, dense_overrides)
    given = {"conv": conv_run, "dense": dense_run}
    models: dict[str, Run] = {}
    for kind in ("conv", "dense"):
        if given[kind] is None:
            models[kind] = train_or_reuse(configs[kind], out / "runs" / kind, train_data, progress)
            continue
        run = given[kind] if isinstance(given[kind], Run) else load_run(given[kind])
        if tuple(run.in_shape) != tuple(train_data.shape) or run.config.model.kind != kind:
            raise ConfigError(f"{run.path}: expected a {kind} run on images of shape {train_data.shape}, got a "
                              f"{run.config.model.kind} run on {run.in_shape}")
        configs[kind], models[kind] = run.config, run
    st = _Setting(train_data, test_data, models, configs, out / "runs",
                  dict(pool=pool, seed=seed, train_limit=probe_train_limit, precision="fp32"), progress)
    timings = {"train": time.perf_counter() - t_start}
    result: dict = {"format": COMPARE_FORMAT, "meta": {
        "data": data, "in_shape": list(train_data.shape), "n_train": len(train_data), "n_test": len(test_data), "test_source": test_source,
        "epochs": {k: cfg.train.epochs for k, cfg in configs.items()}, "pool": pool, "probe_train_limit": probe_train_limit,
        "probe": "convae.probe.probe: logistic regression on standardized features, all labels", "analysis_limit": analysis_limit,
        "seed": seed, "quick": quick, "precision": "fp32", "shifts": list(shifts), "sections": list(sections),
        "configs": {k: cfg.to_dict() for k, cfg in configs.items()}, "runs": {k: str(r.path) for k, r in models.items()},
        "given_runs": [k for k, v in given.items() if v is not None]}}

    if "parameters" in sections:
        result["parameters"] = parameter_table(configs, train_data.shape)
    t0 = time.perf_counter()
    st.recon = {k: st.test_metrics(run) for k, run in models.items()}
    result["reconstruction"] = st.recon
    if set(sections) - {"parameters"}:  # every other section starts from the per-layer probe of both models
        st.accuracy = {k: st.probe(run) for k, run in models.items()}
    if "hierarchy" in sections:
        result["hierarchy"] = {k: [{**info.to_dict(), "accuracy": st.accuracy[k].get(info.name)} for info in run.model.feature_info]
                               for k, run in models.items()}
    timings["hierarchy"] = time.perf_counter() - t0
    for name, measure in (("permutation", lambda: _permutation(st, seed + 1)),
                          ("translation", lambda: _translation(st, shifts, analysis_limit, pool, seed)),
                          ("hunger", lambda: _hunger(st, hunger_sizes, seed))):
        if name in sections:
            t0 = time.perf_counter()
            result[name] = measure()
            timings[name] = time.perf_counter() - t0
            logger.info("compare: %s done in %.0f s", name, timings[name])

    result["meta"]["seconds"] = {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.perf_counter() - t_start, 1)}
    write_compare(result, out)
    return result


def write_compare(result: dict, out_dir: str | Path) -> None:
    """Write ``compare.json``, ``compare.md`` and one PNG per section into ``out_dir``."""
    out = Path(out_dir)
    atomic_write_json(out / "compare.json", result)
    atomic_write_text(out / "compare.md", format_compare(result) + "\n")
    for name, fig in compare_figures(result).items():
        save_figure(fig, out / f"{name}.png")


def _permutation_summary(section: dict, key_layers: dict, n_test: int) -> dict:
    """Per model and key layer: accuracy change permuted - original, its binomial noise, and the verdict."""
    summary = {}
    for kind in ("conv", "dense"):
        rows = {}
        for layer in key_layers[kind]:
            a, b = section[kind]["original"]["accuracy"][layer], section[kind]["permuted"]["accuracy"][layer]
            noise = math.hypot(accuracy_noise(a, n_test), accuracy_noise(b, n_test))
            rows[layer] = {"original": a, "permuted": b, "delta": b - a, "noise_2se": 2 * noise, "within_noise": abs(b - a) <= 2 * noise}
        mse = section[kind]
        summary[kind] = {"layers": rows, "mse_original": mse["original"]["test_mse"], "mse_permuted": mse["permuted"]["test_mse"],
                         "mse_ratio": mse["permuted"]["test_mse"] / max(mse["original"]["test_mse"], 1e-12)}
    noise = section["noise"]
    summary["seed_noise"] = {layer: noise["accuracy"][layer] - section["dense"]["original"]["accuracy"][layer] for layer in key_layers["dense"]}
    return summary


def load_compare(path: str | Path) -> dict:
    """Read ``compare.json`` from a compare directory (or the file itself)."""
    path = Path(path)
    path = path / "compare.json" if path.is_dir() else path
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: no compare results here; run `convae compare --data SPEC --out DIR` first") from None
    except json.JSONDecodeError as error:
        raise RunError(f"{path}: not valid JSON ({error})") from None


# --- reconstruction against probe accuracy, across runs ----------------------------------------------------
RECON_VS_PROBE = "recon_vs_probe.json"


def _best_own_probe(run_dir: Path) -> tuple[dict, dict]:
    """(the best all-labels record of the run's own encoder features, the probe's meta) from ``run_dir/probe.json``."""
    path = run_dir / "probe.json"
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: no probe results here; run `convae probe {run_dir}` first") from None
    except json.JSONDecodeError as error:
        raise RunError(f"{path}: not valid JSON ({error})") from None
    meta = result.get("meta", {})
    family = "fcae" if meta.get("model_kind") == "dense" else "convae"
    own = [r for r in result.get("records", []) if r.get("family") == family and r.get("labels_per_class") is None]
    if not own:
        raise RunError(f"{path}: no all-labels probe of the run's own ({family}) features")
    return max(own, key=lambda r: r["accuracy"]), meta


def recon_vs_probe(run_dirs, out=None) -> dict:
    """Reconstruction quality against probe accuracy across runs: does a lower validation MSE go with better features?

    Per run directory: the validation MSE of its last epoch (``val_mse`` in metrics.jsonl) and its best probe
    accuracy (probe.json: the highest all-labels accuracy of the run's own encoder features over layers, pooling
    and classifiers; baselines and label budgets left out). Across runs: Pearson's r and Spearman's rho of
    (val MSE, accuracy) with their p-values, from 3 runs on (None with fewer, or when either is constant).
    ``out``: a path to write the result to as JSON. CLI: ``convae compare --runs RUN RUN RUN ...``.
    """
    from scipy.stats import pearsonr, spearmanr

    rows = []
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise RunError(f"{run_dir}: no such run directory")
        epochs = [m for m in read_metrics(run_dir) if m.get("val_mse") is not None]
        if not epochs:
            raise RunError(f"{run_dir}: no val_mse in {runs.METRICS_JSONL} (the run needs a validation split and one finished epoch)")
        best, meta = _best_own_probe(run_dir)
        rows.append({"run": str(run_dir), "epoch": epochs[-1].get("epoch"), "val_mse": epochs[-1]["val_mse"], "accuracy": best["accuracy"],
                     "feature_set": best["feature_set"], "classifier": best["classifier"], "data": meta.get("data"),
                     "protocol": meta.get("protocol")})
    settings = sorted({f"{r['data']} ({r['protocol']})" for r in rows})
    if len(settings) > 1:
        logger.warning("the probes were made on different data or protocols (%s): their accuracies may not compare", ", ".join(settings))
    mse, acc = [r["val_mse"] for r in rows], [r["accuracy"] for r in rows]
    correlation: dict = {"n": len(rows), "pearson": None, "spearman": None}
    if len(rows) >= 3 and len(set(mse)) > 1 and len(set(acc)) > 1:
        p, s = pearsonr(mse, acc), spearmanr(mse, acc)
        correlation["pearson"] = {"r": float(p.statistic), "p": float(p.pvalue)}
        correlation["spearman"] = {"rho": float(s.statistic), "p": float(s.pvalue)}
    result = {"what": "validation MSE of each run's last epoch against its best all-labels probe accuracy", "runs": rows,
              "correlation": correlation}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, result)
    return result


def format_recon_vs_probe(result: dict) -> str:
    """A Markdown table of :func:`recon_vs_probe`'s runs and a line with the correlations."""
    rows = [[r["run"], r["epoch"], f"{r['val_mse']:.5f}", percent(r["accuracy"]), r["feature_set"], r["classifier"]] for r in result["runs"]]
    corr = result["correlation"]
    lines = [f"Reconstruction vs probe accuracy over {corr['n']} runs: validation MSE of the last epoch (metrics.jsonl) and "
             "the best all-labels probe accuracy of each run's own features (probe.json).", ""]
    lines += markdown_table(["run", "epoch", "val MSE", "best probe acc. (%)", "feature set", "classifier"], rows) + [""]
    if corr["pearson"] is None:
        lines.append(f"No correlation: it needs at least 3 runs whose MSE and accuracy both vary (n = {corr['n']}).")
    else:
        p, s = corr["pearson"], corr["spearman"]
        lines.append(f"Pearson r = {p['r']:+.2f} (p={p['p']:.2f}), Spearman rho = {s['rho']:+.2f} (p={s['p']:.2f}), n = {corr['n']}; "
                     "a negative value means lower reconstruction error went with better features.")
    return "\n".join(lines)


__all__ = ["RECON_VS_PROBE", "SECTIONS", "compare", "format_recon_vs_probe", "load_compare", "recon_vs_probe", "write_compare", "equivariance",
           "invariance", "parameter_table", "permute_images", "pixel_permutation", "probe_layers", "shift_images", "shifted_dataset",
           "train_or_reuse"]
