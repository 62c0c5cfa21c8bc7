"""The classifiers of the probe, fixed and untuned, and how one feature set is scored with them.

Every classifier is a ``Pipeline(StandardScaler, classifier)`` fitted on training rows only, with the same
settings for every feature set. (scikit-learn is imported when used: it would double ``import convae``'s time.)
"""

from __future__ import annotations

import time
from typing import Callable
import warnings

import numpy as np

from .feature_sets import FeatureSet, take


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



def per_class_subsample(labels: np.ndarray, idx: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(idx[labels[idx] == c])[:k] for c in np.unique(labels[idx])]
    return np.sort(np.concatenate(chosen))



# --- fitting and scoring ----------------------------------------------------------------------------------
def score(classifier: str, X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int,
          n_jobs: int | None, standardize: bool = True) -> tuple[float, float, bool]:
    """(accuracy, fit seconds, converged) of Pipeline(StandardScaler, classifier) fitted on ``train`` rows.

    ``standardize=False`` leaves out the scaler, for sets that carry their own scale (the honest PCA).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [StandardScaler()] if standardize else []
    model = make_pipeline(*steps, CLASSIFIERS[classifier](seed, n_jobs))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        t0 = time.perf_counter()
        model.fit(take(X, train), y[train])
        seconds = time.perf_counter() - t0
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return float(model.score(take(X, test), y[test])), seconds, converged



def stratified_sample(labels: np.ndarray, idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A stratified sample of ``n`` of the rows ``idx`` (all of them when there are no more than ``n``)."""
    if n >= len(idx):
        return idx
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(idx, train_size=n, stratify=labels[idx], random_state=seed)
    return np.sort(keep)



def evaluate_set(fs: FeatureSet, classifier: str, labels: np.ndarray, folds, *, labels_per_class: int | None, seeds, n_jobs,
              stage: str, protocol: str, limits: dict[str, int]) -> dict:
    """One record: accuracy averaged over folds, then mean and std over seeds."""
    accuracies, seconds, n_train, converged = [], [], [], True
    for seed in seeds:
        fold_acc = []
        for i, (train, test) in enumerate(folds):
            if labels_per_class is not None:
                rows = per_class_subsample(labels, train, labels_per_class, seed)
            else:
                rows = stratified_sample(labels, train, limits.get(classifier, len(train)), seed)
            acc, secs, ok = score(classifier, fs.matrix(i), labels, rows, test, seed, n_jobs, fs.standardize)
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
