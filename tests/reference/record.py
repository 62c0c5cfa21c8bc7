"""Record (or check) the redesign's reference outputs: what the code computed before the move.

    python tests/reference/record.py          # write tests/reference/outputs.safetensors + meta.json
    (tests/test_reference.py recomputes everything with the current code and compares)

What is recorded, all on CPU, fp32, one thread, from fixed seeds:
- weights after a short seeded training run on digits, for the default ConvAE and the FCAE;
- features of a fixed batch at every layer and every pooling of both runs;
- a probe table on digits (every record's accuracy);
- an ONNX export's outputs (when onnxruntime is installed).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
POOLS = ("avg", "max", "avg2", "max2", "spp:1,2", "flatten")


def cpu_fingerprint() -> str:
    """CPU model, ISA flags that change kernels, and library versions: bitwise equality is promised only within one."""
    model = flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = ",".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in have)
    except OSError:
        pass
    return f"{model or platform.processor()}|{flags}|torch {torch.__version__}|{platform.machine()}"


def compute(work: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Every reference output, computed with the code installed now."""
    import convae
    from convae.config import RunConfig, apply_overrides

    try:  # the layout after the redesign, then the one before it
        from convae.training import train
    except ImportError:  # pragma: no cover
        raise
    torch.set_num_threads(1)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {"fingerprint": cpu_fingerprint(), "probe": {}}
    common = ["data.spec=digits", "train.epochs=2", "train.seed=3", "train.precision=fp32", "train.threads=1",
              "train.batch_size=64"]
    runs = {}
    # The ConvAE is the default architecture of the time of recording (issue 15 then made the scattering stem and two
    # stages of 128 channels the default): pinned, so the reference keeps meaning the same model.
    for kind, extra in (("conv", ["model.stem=none", "model.channels=64,128,128"]), ("dense", ["model.kind=dense"])):
        cfg = apply_overrides(RunConfig(), common + extra)
        train(cfg, work / kind, progress=False)
        run = convae.load_run(work / kind)
        runs[kind] = run
        for name, value in run.model.state_dict().items():
            tensors[f"{kind}/weights/{name}"] = value.detach().clone().contiguous()
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images[:32].astype(np.float32) / 16.0)[:, None]  # (32, 1, 8, 8)
    from convae import extract_features

    for kind, run in runs.items():
        for layer in run.model.layer_names:
            for pool in POOLS:
                try:
                    feats = extract_features(run.model, images, layers=[layer], pool=pool, precision="fp32")
                except convae.ConfigError:
                    continue  # a grid finer than the map
                tensors[f"{kind}/features/{layer}/{pool}"] = torch.from_numpy(feats)
    result = convae.probe(runs["conv"], "digits", layers=["stage1", "stage2", "bottleneck"], pool="avg",
                          classifiers=["logreg"], labels_per_class=[10], seeds=[0], fcae=runs["dense"], threads=1,
                          baselines=("untrained", "fcae", "raw", "pca"),
                          precision="fp32", write=False)
    meta["probe"] = {f"{r['feature_set']}|{r['classifier']}|{r['labels_per_class']}": r["accuracy"] for r in result.records}
    try:
        import onnxruntime as ort

        from convae.export import export_onnx

        path = work / "encoder.onnx"
        export_onnx(runs["conv"], path, layers=["stage2"], pool="avg2")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
        tensors["onnx/stage2/avg2"] = torch.from_numpy(out)
    except ImportError:
        pass
    return tensors, meta


def main() -> int:
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        tensors, meta = compute(Path(tmp))
    save_file(tensors, str(HERE / "outputs.safetensors"))
    (HERE / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"recorded {len(tensors)} tensors and {len(meta['probe'])} probe records on {meta['fingerprint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
