"""Probe one run as bench/recipes.py does, at a fixed C: stage2+stage3 flattened, StandardScaler + logistic regression
(the recipes' L-BFGS solver) at C=0.01, trained and the same encoder untrained, Fashion-MNIST test split.

    python bench/probe_flatten.py RUN_DIR      # about 25 min on 2 cores: two fits on 60,000 x 8,320 features
"""
import sys, time, json
sys.path.insert(0, "bench")
import torch
import convae
from convae.data import load_dataset
from convae.features import extract_features
from convae.models import build_from_config
from recipes import logreg_accuracy

run = convae.load_run(sys.argv[1])
train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
torch.manual_seed(run.config.train.seed)
untrained = build_from_config(run.config, run.in_shape).eval()
out = {}
for name, model in (("trained", run.model), ("untrained", untrained)):
    t0 = time.perf_counter()
    X = extract_features(model, train, layers=["stage2", "stage3"], pool="flatten", precision="bf16")
    Xt = extract_features(model, test, layers=["stage2", "stage3"], pool="flatten", precision="bf16")
    t1 = time.perf_counter()
    acc = logreg_accuracy(X, train.labels, Xt, test.labels, C=0.01)
    out[name] = {"accuracy": acc, "dim": X.shape[1], "extract_s": round(t1 - t0, 1), "fit_s": round(time.perf_counter() - t1, 1)}
    print(name, out[name], flush=True)
hist = run.metrics[-1]
print(json.dumps({"run": sys.argv[1], "steps": hist["step"], "train_tflop": hist.get("train_tflop"),
                  "train_seconds": round(sum(r["seconds"] for r in run.metrics), 1), **out}))
