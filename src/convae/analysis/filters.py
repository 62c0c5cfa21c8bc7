"""How edge-like is the first layer? A Gabor-dictionary score for conv kernels, trained against untrained and random.

The **edge score** of a first-layer filter ``w`` (``C_in x k x k``) is the share of its spatial energy,
after removing its mean, that the best-fitting oriented Gabor of a fixed dictionary captures::

    L = sum_c w[c]                       # the luminance filter: what the filter does to a gray image
    L0 = L - mean(L)
    score = max_g <L0, g>^2 / |L0|^2     # g: zero-mean, unit-norm Gabors; = max cos^2(L, g)

It lies in [0, 1], is 1 exactly when the filter is (a scaled, sign-flipped or shifted-by-a-constant
copy of) a dictionary Gabor, and is the same for ``w``, ``-w``, ``3.7 w`` and ``w + constant``. The
**preferred orientation** is the orientation of that best Gabor: the direction of its wave vector
(across the stripes, i.e. perpendicular to the edge), in degrees in [0, 180), counter-clockwise from
the column axis as the filter is drawn (x to the right, y up). A vertical edge, dark left and bright
right, prefers 0°; a horizontal one, 90°.

The dictionary (:func:`gabor_dictionary`) is sized for ``k``: 16 orientations (11.25° apart),
8 phases in [0°, 180°) (the sign supplies the other half), 5 spatial frequencies from
``1 / (2k)`` cycles per pixel (half a cycle across the kernel: a smooth oriented edge) up to 0.5
(the Nyquist limit), and Gaussian envelopes of σ = k/4, k/2 and k (the last nearly flat: an
oriented grating or ramp filling the kernel). Atoms that are almost constant (nearly all their
energy in the mean) are dropped.

**What the number means at 3x3.** The score is a best fit over a dictionary, so even white noise
scores well above 0: with ``k^2 - 1`` dimensions left after the mean, a few hundred Gabors cover a
3x3 kernel's 8-dimensional space so densely that a random Gaussian filter's best fit is large
(mean 0.70), against 0.33 at 5x5 and 0.18 at 7x7 (48 dimensions). The score is therefore only ever read against the **random
baseline** (Gaussian filters of the layer's shape, through the same dictionary) and the
**untrained twin** (the run's architecture built with its seed, as the probe builds it);
:func:`filter_study` reports both, the excess over chance ``(score - random) / (1 - random)``,
and the share of filters above the random filters' 95th percentile (5 % by chance). At 3x3 a
real difference is small at best: use ``model.kernel_size=5`` or ``7`` to see edges.

**Colour.** For RGB input the filter is also split into colour-opponent parts, an orthonormal
change of basis: luminance ``(R+G+B)/√3``, red-green ``(R-G)/√2`` and blue-yellow
``(R+G-2B)/√6``. ``luminance_share`` is the share of the filter's mean-removed energy in the
luminance part (1/3 for random filters), each part gets its own edge score, and
``score_colour`` is the share of the whole filter's mean-removed energy captured by the best
single Gabor in any colour direction (``max_g sum_c <w_c, g>^2 / sum_c |w_c - mean|^2``), so a
red-green edge counts too. ``dc_share`` is the share of the luminance filter's energy in its mean
(a blob or a flat colour detector has a large one; it is not part of the score).
``orientation_selectivity`` is ``|sum_t r(t) e^{2it}| / sum_t r(t)``, with ``r(t)`` the best cos^2
at orientation ``t``: 0 for a filter that fits every orientation alike, larger for a sharply tuned one.

Everything here is numpy on weights; :func:`filter_study` takes a run (or its path) and returns
plain Python (JSON-ready) with the weights kept as arrays for drawing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from ..errors import ArchitectureError
from ..models import build_from_config
from ..runs import Run, as_run

N_ORIENTATIONS = 16
N_PHASES = 8
N_FREQUENCIES = 5
OPPONENT_NAMES = ("luminance", "red-green", "blue-yellow")
OPPONENT = np.array([[1, 1, 1], [1, -1, 0], [1, 1, -2]], dtype=np.float64) / np.sqrt([[3.0], [2.0], [6.0]])
_FLAT = 1e-10  # a filter whose mean-removed energy is below this share of its energy counts as flat (score 0)


@dataclass(frozen=True)
class GaborDictionary:
    """Zero-mean, unit-norm Gabors for ``k x k`` kernels: ``atoms`` (D, k*k) with each atom's parameters."""

    k: int
    atoms: np.ndarray  # (D, k*k) float64
    orientation: np.ndarray  # (D,) radians in [0, pi): the wave vector's direction
    frequency: np.ndarray  # (D,) cycles per pixel
    phase: np.ndarray  # (D,) radians in [0, pi)
    sigma: np.ndarray  # (D,) pixels

    def __len__(self) -> int:
        return len(self.atoms)

    def atom(self, index: int) -> np.ndarray:
        """Atom ``index`` as a (k, k) image."""
        return self.atoms[index].reshape(self.k, self.k)


def gabor(k: int, orientation: float, frequency: float, phase: float, sigma: float) -> np.ndarray:
    """One (k, k) Gabor (not normalized): ``exp(-r^2 / 2σ^2) cos(2π f (x cos θ + y sin θ) + φ)``, x right, y up, centred."""
    c = (k - 1) / 2
    rows, cols = np.mgrid[0:k, 0:k].astype(np.float64)
    x, y = cols - c, c - rows
    along = x * math.cos(orientation) + y * math.sin(orientation)
    return np.exp(-(x * x + y * y) / (2 * sigma * sigma)) * np.cos(2 * math.pi * frequency * along + phase)


@lru_cache(maxsize=16)
def gabor_dictionary(k: int) -> GaborDictionary:
    """The dictionary for ``k x k`` kernels (see the module docstring); cached per ``k``."""
    if k < 2:
        raise ArchitectureError(f"an edge score needs kernels of at least 2x2, got {k}x{k}")
    orientations = np.arange(N_ORIENTATIONS) * math.pi / N_ORIENTATIONS
    phases = np.arange(N_PHASES) * math.pi / N_PHASES
    frequencies = np.geomspace(1 / (2 * k), 0.5, N_FREQUENCIES)
    sigmas = (k / 4, k / 2, float(k))
    atoms, params = [], []
    for theta in orientations:
        for f in frequencies:
            for phi in phases:
                for s in sigmas:
                    g = gabor(k, theta, f, phi, s).ravel()
                    total = float(g @ g)
                    g = g - g.mean()
                    norm = float(np.sqrt(g @ g))
                    if total == 0 or norm * norm < 1e-3 * total:  # (almost) only a mean: no orientation to speak of
                        continue
                    atoms.append(g / norm)
                    params.append((theta, f, phi, s))
    p = np.array(params)
    return GaborDictionary(k, np.array(atoms), p[:, 0], p[:, 1], p[:, 2], p[:, 3])


def _as_weights(weights) -> np.ndarray:
    w = weights.detach().float().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
    w = w.astype(np.float64)
    if w.ndim == 2:
        w = w[None, None]
    elif w.ndim == 3:
        w = w[:, None]
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise ArchitectureError(f"expected conv weights (out, in, k, k), got shape {tuple(w.shape)}")
    return w


def _fit(flat: np.ndarray, dictionary: GaborDictionary) -> dict[str, np.ndarray]:
    """Best-Gabor fit of (N, k*k) filters: score, best atom, orientation selectivity."""
    centred = flat - flat.mean(1, keepdims=True)
    energy = (centred * centred).sum(1)
    total = (flat * flat).sum(1)
    flat_filter = energy <= _FLAT * np.maximum(total, 1e-300)
    cos2 = (centred @ dictionary.atoms.T) ** 2 / np.where(flat_filter, 1.0, energy)[:, None]  # (N, D)
    best = cos2.argmax(1)
    score = np.where(flat_filter, 0.0, cos2[np.arange(len(flat)), best])
    per_orientation = np.zeros((len(flat), N_ORIENTATIONS))
    index = np.rint(dictionary.orientation / (math.pi / N_ORIENTATIONS)).astype(int) % N_ORIENTATIONS
    for o in range(N_ORIENTATIONS):
        if (index == o).any():
            per_orientation[:, o] = cos2[:, index == o].max(1)
    angles = np.arange(N_ORIENTATIONS) * math.pi / N_ORIENTATIONS
    vector = np.abs(per_orientation @ np.exp(2j * angles))
    osi = np.where(flat_filter, 0.0, vector / np.maximum(per_orientation.sum(1), 1e-300))
    dc = np.where(total > 0, 1.0 - energy / np.maximum(total, 1e-300), 0.0)
    return {"score": score, "best": best, "orientation_selectivity": osi, "dc_share": dc, "flat": flat_filter}


def edge_scores(weights, dictionary: GaborDictionary | None = None) -> dict[str, np.ndarray]:
    """Per-filter edge measures of conv weights (out, in, k, k) (also (out, k, k) or one (k, k)).

    Returns arrays of length ``out``: ``score`` (the luminance filter's best-Gabor energy share),
    ``orientation`` (degrees in [0, 180), of that Gabor's wave vector), ``frequency`` (cycles per
    pixel), ``sigma``, ``phase`` (degrees), ``orientation_selectivity``, ``dc_share``, ``flat`` (a
    filter with no mean-removed energy: score 0), ``score_colour``; for 3 input channels also
    ``luminance_share`` and ``score_<part>`` for each colour-opponent part (see the module docstring).
    """
    w = _as_weights(weights)
    out, channels, k, _ = w.shape
    d = gabor_dictionary(k) if dictionary is None else dictionary
    if d.k != k:
        raise ArchitectureError(f"the dictionary is for {d.k}x{d.k} kernels, the filters are {k}x{k}")
    fit = _fit(w.sum(1).reshape(out, k * k), d)
    best = fit.pop("best")
    result = {"score": fit["score"], "orientation": np.degrees(d.orientation[best]), "frequency": d.frequency[best],
              "sigma": d.sigma[best], "phase": np.degrees(d.phase[best]), **{key: fit[key] for key in ("orientation_selectivity", "dc_share", "flat")}}
    per_channel = w.reshape(out, channels, k * k)
    centred = per_channel - per_channel.mean(2, keepdims=True)
    energy = (centred * centred).sum((1, 2))
    projections = np.einsum("ncp,dp->ndc", centred, d.atoms)  # (out, D, C)
    colour = (projections * projections).sum(2).max(1) / np.maximum(energy, 1e-300)
    result["score_colour"] = np.where(energy > 0, colour, 0.0)
    if channels == 3:
        parts = np.einsum("oc,ncp->nop", OPPONENT, centred)  # (out, 3, k*k), each part mean-removed already
        part_energy = (parts * parts).sum(2)
        result["luminance_share"] = part_energy[:, 0] / np.maximum(energy, 1e-300)
        for i, name in enumerate(OPPONENT_NAMES):
            result[f"score_{name}"] = _fit(parts[:, i], d)["score"]
    return result


def random_baseline_scores(shape, *, draws: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`edge_scores` of Gaussian white-noise filters: ``draws`` layers of ``shape`` (out, in, k, k), pooled."""
    rng = np.random.default_rng(seed)
    out, channels, k, _ = shape
    return edge_scores(rng.standard_normal((draws * out, channels, k, k)))


def first_conv_weights(model: nn.Module) -> torch.Tensor:
    """The first conv layer's weights (out, in, k, k) of a ConvAE (float32, CPU)."""
    if not hasattr(model, "stages"):
        raise ArchitectureError(f"{type(model).__name__} has no conv stages: edge scores are for ConvAE kernels")
    if getattr(model, "stem", None) is not None:
        raise ArchitectureError("this ConvAE starts with the fixed scattering stem (model.stem): its first learned conv "
                                "sees the stem's maps, not pixels, so its kernels are not image filters to score; "
                                "train with model.stem=none to study learned first-layer filters")
    conv = next(m for m in model.stages[0].modules() if isinstance(m, nn.Conv2d))
    return conv.weight.detach().float().cpu()


def untrained_twin(run: Run) -> nn.Module:
    """The run's architecture with fresh weights from its seed (as the probe's ``untrained`` baseline builds it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.config.train.seed)
        return build_from_config(run.config, run.in_shape)


def summarize(scores: dict[str, np.ndarray], chance95: float | None = None) -> dict:
    """Means and medians of one set's per-filter measures (plain floats)."""
    s = scores["score"]
    summary = {"filters": int(len(s)), "mean": float(s.mean()), "median": float(np.median(s)),
               "mean_colour": float(scores["score_colour"].mean()),
               "orientation_selectivity": float(scores["orientation_selectivity"].mean()),
               "dc_share": float(scores["dc_share"].mean()), "flat": int(scores["flat"].sum())}
    if "luminance_share" in scores:
        summary["luminance_share"] = float(scores["luminance_share"].mean())
        for name in OPPONENT_NAMES[1:]:
            summary[f"mean_{name}"] = float(scores[f"score_{name}"].mean())
    if chance95 is not None:
        summary["above_random_p95"] = float((s > chance95).mean())
    return summary


def filter_study(run, *, random_draws: int = 8, seed: int = 0) -> dict:
    """Edge scores of a ConvAE run's first layer, of its untrained twin, and of random Gaussian filters of the same shape.

    Returns ``{"kernel_size", "in_channels", "filters", "dictionary_size", "sets": {"trained",
    "untrained", "random"}: summary}, "chance": {...}, "scores": {name: per-filter arrays},
    "weights": {"trained", "untrained"}: (out, in, k, k) arrays}``. ``summary["excess"]`` is
    ``(mean - random mean) / (1 - random mean)``: 0 at chance, 1 for perfect Gabors.
    """
    run = as_run(run)
    trained = first_conv_weights(run.model).numpy()
    untrained = first_conv_weights(untrained_twin(run)).numpy()
    scores = {"trained": edge_scores(trained), "untrained": edge_scores(untrained),
              "random": random_baseline_scores(trained.shape, draws=random_draws, seed=seed)}
    chance = scores["random"]["score"]
    chance_mean, chance95 = float(chance.mean()), float(np.quantile(chance, 0.95))
    sets = {}
    for name, values in scores.items():
        summary = summarize(values, chance95)
        summary["excess"] = (summary["mean"] - chance_mean) / max(1.0 - chance_mean, 1e-12)
        sets[name] = summary
    out, channels, k, _ = trained.shape
    return {"kernel_size": int(k), "in_channels": int(channels), "filters": int(out), "dictionary_size": len(gabor_dictionary(k)),
            "random_draws": int(random_draws), "seed": int(seed), "chance": {"mean": chance_mean, "p95": chance95},
            "sets": sets, "scores": scores, "weights": {"trained": trained, "untrained": untrained}}


def format_filter_table(study: dict) -> str:
    """The study's summaries as a Markdown table (one row per set)."""
    colour = study["in_channels"] == 3
    header = ["filters", "n", "edge score mean", "median", "excess over chance", "above random p95", "any-colour edge score",
              "orientation selectivity", "DC share"] + (["luminance share", "red-green score", "blue-yellow score"] if colour else [])
    rows = []
    names = {"trained": "trained", "untrained": "untrained (seed twin)", "random": f"random Gaussian ({study['random_draws']} draws)"}
    for key, label in names.items():
        s = study["sets"][key]
        row = [label, s["filters"], f"{s['mean']:.3f}", f"{s['median']:.3f}", f"{s['excess']:+.3f}", f"{100 * s['above_random_p95']:.0f}%",
               f"{s['mean_colour']:.3f}", f"{s['orientation_selectivity']:.3f}", f"{s['dc_share']:.3f}"]
        if colour:
            row += [f"{s['luminance_share']:.3f}", f"{s['mean_red-green']:.3f}", f"{s['mean_blue-yellow']:.3f}"]
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    k = study["kernel_size"]
    return "\n".join(lines) + (f"\n\n{k}x{k} kernels, {study['in_channels']} input channel(s); dictionary of {study['dictionary_size']} "
                               f"Gabors; chance (random filters): mean {study['chance']['mean']:.3f}, 95th percentile "
                               f"{study['chance']['p95']:.3f}.")


__all__ = ["GaborDictionary", "edge_scores", "filter_study", "first_conv_weights", "format_filter_table", "gabor", "gabor_dictionary",
           "random_baseline_scores", "summarize", "untrained_twin"]
