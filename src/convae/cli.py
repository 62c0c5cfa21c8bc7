"""The ``convae`` command line: each verb parses its arguments and calls one library function.

Only this module prints. Errors that convae raises on purpose are shown as one line
(``convae: error: ...``) with exit status 2; Ctrl-C during training exits with 130 after the
checkpoint is saved.

Each verb imports its library module when it runs, not at the top: ``convae --help`` then loads
neither torch nor scikit-learn. Choices come from :data:`convae.config.CHOICES`; layer specs are
parsed here, once, by :func:`convae.features.layers.parse_layer_spec`, with one meaning in every verb.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ._version import __version__
from .config import CHOICES, DEFAULT_EPOCHS, DEFAULT_STEPS, DEMO_EPOCHS

logger = logging.getLogger("convae")


# --- shared argument groups ---------------------------------------------------------------------------
def _add_data_args(p: argparse.ArgumentParser, *, required: bool = False, default: str | None = None) -> None:
    p.add_argument("--data", required=required, default=default,
                   help="dataset spec: fashion-mnist, mnist, cifar10, digits, sample-photos, folder:PATH, npz:PATH, npy:PATH")
    p.add_argument("--image-size", help="resize to HxW (e.g. 64x64); needed for folders of mixed sizes")
    p.add_argument("--channels", type=int, choices=(1, 3), help="convert images to 1 or 3 channels")
    p.add_argument("--on-bad-image", choices=CHOICES["data", "on_bad_image"], help="stop at a bad image file (default) or skip and report it")


def _config_from_args(args, base=None) -> "RunConfig":  # noqa: F821
    from .config import RunConfig, apply_overrides, load_config

    cfg = load_config(args.config) if getattr(args, "config", None) else (base or RunConfig())
    sets = []
    mapping = {"data": "data.spec", "model": "model.kind", "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr",
               "seed": "train.seed", "precision": "train.precision", "device": "train.device", "threads": "train.threads",
               "time_budget": "train.time_budget", "image_size": "data.image_size", "channels": "data.channels", "on_bad_image": "data.on_bad_image", "limit": "data.limit"}
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            sets.append(f"{key}={value}")
    # Flags first so that explicit --set entries win over them.
    return apply_overrides(cfg, sets + list(getattr(args, "set", None) or []))


# --- verbs -----------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from . import distributed
    from .training import train

    if args.nproc not in (None, 1) and distributed.env_world_size() == 1:  # not yet under torchrun: start it
        return distributed.launch(args.nproc, args.argv)
    base = None
    if args.resume:  # flags given with --resume apply on top of the run's own config
        from .runs import read_config

        base = read_config(args.run_dir)[0]
    cfg = _config_from_args(args, base)
    result = train(cfg, args.run_dir, resume=args.resume, progress=not args.quiet)
    if not distributed.is_main_process():
        return 0
    last = result.history[-1] if result.history else {}
    print(f"trained {result.config.model.kind} model for {len(result.history)} epoch(s) in {result.seconds:.1f} s "
          f"({result.precision}); run directory: {args.run_dir}")
    if "val_mse" in last:
        print(f"validation: MSE {last['val_mse']:.5f}  PSNR {last['val_psnr']:.2f} dB  SSIM {last['val_ssim']:.4f}")
    return 0


def cmd_inspect(args) -> int:
    from .inspect import describe_run, format_description

    report = describe_run(args.run)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_description(report))
    return 0


def cmd_demo(args) -> int:
    from .demo import format_demo, run_demo

    result = run_demo(data=args.data, out=args.out, epochs=args.epochs, limit=args.limit, progress=not args.quiet)
    print(format_demo(result))
    return 0


def cmd_scan(args) -> int:
    from .data import parse_image_size, scan

    report = scan(args.spec, image_size=parse_image_size(args.image_size))
    print(report.format())
    return 1 if report.bad else 0


def cmd_export(args) -> int:
    from .export import export
    from .features.layers import single_set

    summary = export(args.run, args.out, format=args.format, layers=single_set(args.layers, verb="export"), pool=args.pool,
                     opset=args.opset)
    if summary["format"] == "onnx":
        print(f"wrote {summary['path']}: images (batch, {', '.join(map(str, summary['input'][1:]))}) float32 in [0, 1] -> "
              f"features (batch, {summary['output'][1]}); layers {', '.join(summary['layers'])}, pool {summary['pool']}")
    else:
        print(f"wrote {summary['path']}: {summary['tensors']} encoder tensors ({summary['parameters']:,} parameters) "
              "with the config that rebuilds them (convae.export.load_encoder)")
    return 0


def _split_list(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def _pool_list(text: str | None) -> list[str] | None:
    """Pooling specs from ``avg2,max,spp:1,2,4``: numbers after an ``spp:`` spec are its levels."""
    items = _split_list(text)
    if items is None:
        return None
    specs: list[str] = []
    for item in items:
        if item.isdigit() and specs and specs[-1].lower().startswith("spp:"):
            specs[-1] += f",{item}"
        else:
            specs.append(item)
    return specs


def cmd_extract(args) -> int:
    from .distributed import env_world_size, is_main_process
    from .features import extract_to_npy, extract_to_npy_sharded
    from .features.layers import single_set

    data = args.data
    if data is not None and (args.image_size or args.channels):
        from .data import load_dataset, parse_image_size

        data = load_dataset(args.data, args.split, image_size=parse_image_size(args.image_size), channels=args.channels)
    extract = extract_to_npy_sharded if env_world_size() > 1 else extract_to_npy
    sidecar = extract(args.run, data, args.out, layers=single_set(args.layers, verb="extract") or "bottleneck", pool=args.pool,
                      batch_size=args.batch_size, precision=args.precision, split=args.split, device=args.device,
                      progress=not args.quiet)
    if is_main_process():
        print(f"wrote {args.out}: {sidecar.get('shape')} float32 features ({', '.join(sidecar.get('layers', []))}; pool {sidecar.get('pool')})")
    return 0


def _int_list(text: str, flag: str, what: str, *, allow_all: bool = False) -> list[int | None]:
    """Integers from ``10,100,all`` (``all`` -> None where allowed); anything else is a one-line ConfigError."""
    from .errors import ConfigError

    values: list[int | None] = []
    for item in _split_list(text) or []:
        if allow_all and item.lower() == "all":
            values.append(None)
            continue
        try:
            values.append(int(item))
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: {item!r} is not a whole number; give comma-separated {what}"
                              + (", or 'all' (e.g. 10,100,all)" if allow_all else " (e.g. 1,2,3)")) from None
    return values


def cmd_probe(args) -> int:
    from .analysis.probe import probe
    from .analysis.tables import format_table
    from .features.layers import parse_layer_spec

    kwargs = {}
    if args.labels_per_class:
        kwargs["labels_per_class"] = _int_list(args.labels_per_class, "--labels-per-class", "label counts per class", allow_all=True)
    if args.seeds:
        kwargs["seeds"] = _int_list(args.seeds, "--seeds", "seeds")
    if args.baselines is not None:
        kwargs["baselines"] = [] if args.baselines.strip().lower() == "none" else _split_list(args.baselines)
    for name in ("hog", "scattering"):
        if getattr(args, name):
            kwargs[name] = _key_values(getattr(args, name), f"--{name}")
    result = probe(args.run, args.data, layers=parse_layer_spec(args.layers), pool=_pool_list(args.pool) or "avg2",
                   classifiers=_split_list(args.classifiers), fcae=args.fcae, quick=args.quick, train_limit=args.train_limit,
                   image_size=args.image_size, precision=args.precision, device=args.device, out_dir=args.out,
                   progress=not args.quiet, **kwargs)
    print(format_table(result))
    out = args.out or args.run
    print(f"\nresults: {out}/probe.json, probe.csv, probe.md")
    return 0


def _key_values(text: str, flag: str) -> dict[str, int]:
    """``cell=4,block=2`` -> {"cell": 4, "block": 2}; anything else is a one-line error naming the flag."""
    from .errors import ConfigError

    out = {}
    for item in _split_list(text) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip().lstrip("-").isdigit():
            raise ConfigError(f"{flag} {text!r}: expected key=integer pairs separated by ',', e.g. {flag} "
                              + ("cell=4,block=2,orientations=9" if flag == "--hog" else "J=2,L=8"))
        out[key.strip()] = int(value)
    return out


def cmd_viz(args) -> int:
    from .errors import ConfigError
    from .features.layers import parse_layer_spec
    from .viz import render

    def ints(text, flag, count=None):
        try:
            values = [int(v) for v in _split_list(text) or []]
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: expected comma-separated integers") from None
        if not values or (count is not None and len(values) != count):
            raise ConfigError(f"{flag} {text!r}: expected {count or 'one or more'} comma-separated integers")
        return values

    traverse = {"direction": args.direction, "where": args.where, "span": args.span, "steps": args.steps}
    if args.units is not None:
        traverse["units"] = ints(args.units, "--units")
    if args.position is not None:
        traverse["position"] = ints(args.position, "--position", 2)
    for path in render(args.run, args.kind, layers=parse_layer_spec(args.layers), out_dir=args.out, data=args.data, others=args.with_run or (),
                       n=args.n, seed=args.seed, traverse=traverse, method=args.method):
        print(path)
    return 0


def cmd_compare(args) -> int:
    from .errors import ConfigError

    if args.runs:
        if args.data:
            raise ConfigError("compare --runs reads finished runs (their metrics.jsonl and probe.json) and trains nothing: leave out --data")
        from .analysis.compare import RECON_VS_PROBE, format_recon_vs_probe, recon_vs_probe

        path = Path(args.out) / RECON_VS_PROBE
        print(format_recon_vs_probe(recon_vs_probe(args.runs, out=path)))
        print(f"\nresults: {path}")
        return 0
    if not args.data:
        raise ConfigError("compare needs --data SPEC (train a ConvAE and an FCAE and compare them) or --runs RUN ... "
                          "(reconstruction against probe accuracy across finished runs)")
    from .analysis.compare import compare
    from .analysis.tables import format_compare

    sizes = _int_list(args.hunger_sizes, "--hunger-sizes", "training-set sizes", allow_all=True) if args.hunger_sizes else (1000, 10000, None)
    shifts = _int_list(args.shifts, "--shifts", "shifts in pixels") if args.shifts else (1, 2, 3, 4)
    sections = [v.strip() for v in args.sections.split(",")] if args.sections else None
    kwargs = {"sections": sections} if sections else {}
    result = compare(args.data, args.out, conv_run=args.conv_run, dense_run=args.dense_run, epochs=args.epochs, limit=args.limit,
                     overrides=args.set or (), conv_overrides=args.conv_set or (), dense_overrides=args.dense_set or (), shifts=shifts,
                     hunger_sizes=sizes, pool=args.pool, probe_train_limit=args.probe_train_limit, test_limit=args.test_limit,
                     analysis_limit=args.analysis_limit, seed=args.seed, quick=args.quick, progress=not args.quiet, **kwargs)
    print(format_compare(result))
    print(f"\nresults: {Path(args.out) / 'compare.json'} (plots and compare.md beside it)")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    path = write_report(args.run, compare=args.compare, fcae=args.fcae, out=args.out, data=args.data)
    print(path)
    return 0


# --- parser ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convae", description="Hierarchical image features without labels: convolutional autoencoders, "
                                     "their dense baseline, and probes with classical models.")
    parser.add_argument("--version", action="version", version=f"convae {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("train", help="train a ConvAE or FCAE into a run directory")
    _add_data_args(p)
    p.add_argument("--model", choices=CHOICES["model", "kind"], help="conv (ConvAE, default) or dense (FCAE)")
    p.add_argument("--epochs", type=int, help=f"passes over the training images (train.epochs; default: {DEFAULT_STEPS} steps or "
                   f"{DEFAULT_EPOCHS} epochs, whichever ends first, 50 TFLOP on 28x28 images)")
    p.add_argument("--batch-size", type=int, help="images per optimizer step (train.batch_size; default 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (train.lr; default 1e-3)")
    p.add_argument("--seed", type=int, help="seed of the weights, the split and the data order (train.seed; default 0)")
    p.add_argument("--precision", choices=CHOICES["train", "precision"], help="auto (default): bf16 on a CPU only where a conv step measured at start ran it at least 1.25x faster than fp32, else fp32")
    p.add_argument("--device", choices=CHOICES["train", "device"])
    p.add_argument("--threads", type=int, help="torch CPU threads (fixed thread count makes resume bitwise exact)")
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--time-budget", help="train within this wall time (e.g. 5m, 90s, 1h30m; train.time_budget): the step time is "
                   "measured first and the schedule planned to end in time; with --epochs, whichever ends first")
    p.add_argument("--run-dir", required=True, help="where the run's files go")
    p.add_argument("--config", help="a TOML or JSON config file (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. --set model.channels=32,64")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly where it stopped")
    p.add_argument("--nproc", type=int, help="train with N processes on this machine (runs torchrun --standalone --nproc-per-node N)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("inspect", help="architecture, shapes, receptive fields, parameters and metrics of a run")
    p.add_argument("run")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("demo", help="train a ConvAE and an FCAE side by side and compare them")
    p.add_argument("--data", default="fashion-mnist", help="dataset spec (default fashion-mnist; digits runs in seconds offline)")
    p.add_argument("--out", default="runs/demo", help="directory for the two runs (default runs/demo)")
    p.add_argument("--epochs", type=int, help="epochs per model (default: " + ", ".join(f"{v} for {k}" for k, v in DEMO_EPOCHS.items()) + ")")
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("scan", help="check every image of a dataset; list bad files; exit 1 if any")
    p.add_argument("spec")
    p.add_argument("--image-size")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("export", help="write a run's encoder as ONNX (layers and pooling included) or encoder-only safetensors")
    p.add_argument("run")
    p.add_argument("--format", choices=("onnx", "safetensors"), default="onnx")
    p.add_argument("--layers", default="bottleneck", help="layers of the one feature vector, joined with + (e.g. stage2+stage3; ONNX; default bottleneck)")
    p.add_argument("--pool", default="avg", help="avg, max, avgN, maxN, spp:1,2,4 or flatten (ONNX; default avg)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--out", required=True, help="output file (encoder.onnx or encoder.safetensors)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("extract", help="stream a run's features for a dataset into a .npy file (labels and a JSON sidecar beside it)")
    p.add_argument("run")
    p.add_argument("--data", help="dataset spec (default: the run's own)")
    p.add_argument("--split", default="all", choices=("train", "test", "all"), help="which split (default all)")
    p.add_argument("--image-size", help="resize to HxW before converting to the run's input shape")
    p.add_argument("--channels", type=int, choices=(1, 3))
    p.add_argument("--layers", default="bottleneck", help="layers of the one feature vector, joined with + in order (e.g. stage2+stage3; default bottleneck)")
    p.add_argument("--pool", default="avg", help="avg, max, avgN, maxN, spp:1,2,4 or flatten (default avg)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default 128: faster than 256 here, docs/BENCHMARKS.md)")
    p.add_argument("--precision", choices=CHOICES["train", "precision"], help="default: the precision the run was trained with")
    p.add_argument("--device", default="auto", choices=CHOICES["train", "device"])
    p.add_argument("--out", required=True, help="output .npy path")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("probe", help="per-layer accuracy of classical classifiers on a run's features, beside baselines")
    p.add_argument("run")
    p.add_argument("--data", help="dataset spec with labels (default: the run's own; another dataset tests transfer)")
    p.add_argument("--image-size", help="resize the dataset's images to HxW on load, before converting them to the run's input "
                   "(a dataset of another size is converted anyway, with a warning)")
    p.add_argument("--layers", help="feature sets separated by ',', layers joined into one set by '+' (e.g. stage2,stage2+stage3; default: every layer)")
    p.add_argument("--pool", help="comma-separated pooling specs to try, e.g. avg2,max,spp:1,2,4 (default avg2)")
    p.add_argument("--classifiers", help="comma-separated: logreg,linear_svc,rbf_svc,random_forest,mlp (default all five)")
    p.add_argument("--fcae", help="an FCAE run whose layers join the table as a baseline")
    p.add_argument("--baselines", help="comma-separated from untrained,fcae,raw,pca,hog,scattering, or none (default all; "
                   "--quick: all but scattering)")
    p.add_argument("--hog", metavar="KEY=N,...", help="HOG settings, e.g. cell=4,block=2,orientations=9 (default: sized for the images)")
    p.add_argument("--scattering", metavar="KEY=N,...", help="scattering settings, e.g. J=2,L=8 (default: sized for the images)")
    p.add_argument("--labels-per-class", help="comma-separated label budgets, 'all' for all (default 10,100,1000)")
    p.add_argument("--seeds", help="comma-separated seeds for the label draws (default 0,1,2)")
    p.add_argument("--train-limit", type=int, help="use a stratified sample of this many training images")
    p.add_argument("--precision", choices=CHOICES["train", "precision"])
    p.add_argument("--device", default="auto", choices=CHOICES["train", "device"])
    p.add_argument("--quick", action="store_true", help="a middle layer and the bottleneck, logistic regression, 10,000 training "
                   "images, 100 labels per class, no scattering (the demo's probe)")
    p.add_argument("--out", help="directory for probe.json/csv/md (default: the run directory)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("viz", help="visualize what each depth responds to: filters, maps, patches, maximize, recon, traverse, embedding")
    p.add_argument("run")
    p.add_argument("kind", choices=("filters", "maps", "patches", "maximize", "recon", "traverse", "embedding", "all"))
    p.add_argument("--layers", "--layer", dest="layers", help="comma-separated layer names or indices (default: every layer; embedding: bottleneck)")
    p.add_argument("--data", help="dataset spec to draw images from (default: the run's own, its test split where it has one)")
    p.add_argument("--with", dest="with_run", action="append", metavar="RUN", help="another run whose reconstructions join recon (e.g. the FCAE)")
    p.add_argument("--n", type=int, default=8, help="images (recon, maps) or patches per channel (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output directory for the PNGs (default RUN/viz)")
    g = p.add_argument_group("traverse", "decode one image while bottleneck directions are moved, one row each; a conv bottleneck is a "
                             "C x h x w map, a dense one a vector of units")
    g.add_argument("--direction", choices=("unit", "pca"), default="unit",
                   help="unit: single units (conv: channels); pca: the directions of largest variance over the data (default unit)")
    g.add_argument("--where", choices=("position", "map"), default="position",
                   help="conv bottleneck: move a channel at one position (default: each channel's position of largest variance "
                        "over the data, or --position) or at every position of its map together (with pca: principal directions "
                        "of the channel means); default position")
    g.add_argument("--position", metavar="Y,X", help="with --where position: the map position to move every channel at (from 0)")
    g.add_argument("--units", metavar="LIST", help="comma-separated units (conv: channels) to vary, from 0; with --direction pca, "
                                                   "which principal directions, from 1 (default: the 6 of largest variance)")
    g.add_argument("--span", type=float, default=3.0, help="offsets from -SPAN to +SPAN data standard deviations along each direction, "
                                                           "measured on up to 1,000 images (default 3)")
    g.add_argument("--steps", type=int, default=7, help="images per row, the image's own reconstruction in the middle when odd (default 7)")
    g = p.add_argument_group("embedding")
    g.add_argument("--method", choices=("pca", "tsne", "umap"), default="pca",
                   help="projection of the pooled features to 2-D (default pca); umap needs the optional umap-learn package: "
                        "pip install 'convae[umap]'")
    p.set_defaults(func=cmd_viz)

    p = sub.add_parser("compare", help="train a ConvAE and an FCAE on the same data and measure parameters, permutation, translation, data hunger, hierarchy")
    p.add_argument("--data", help="dataset spec with labels (required unless --runs)")
    p.add_argument("--runs", nargs="+", metavar="RUN", help="instead: run directories, each with metrics.jsonl and probe.json (convae probe): "
                   "their validation MSE against their best probe accuracy, and the Pearson and Spearman correlations across them")
    p.add_argument("--out", default="runs/compare", help="directory for compare.json, plots and the trained runs, or recon_vs_probe.json "
                   "with --runs (default runs/compare)")
    p.add_argument("--conv-run", help="take this trained ConvAE run instead of training one")
    p.add_argument("--dense-run", help="take this trained FCAE run instead of training one")
    p.add_argument("--epochs", type=int, help="epochs of the full-data runs (default: the demo's)")
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for both models")
    p.add_argument("--conv-set", action="append", metavar="KEY=VALUE", help="config override for the ConvAE")
    p.add_argument("--dense-set", action="append", metavar="KEY=VALUE", help="config override for the FCAE")
    p.add_argument("--shifts", help="comma-separated shifts in px (default 1,2,3,4)")
    p.add_argument("--hunger-sizes", help="comma-separated training-set sizes, 'all' for all (default 1000,10000,all)")
    p.add_argument("--sections", help="comma-separated subset of parameters,hierarchy,permutation,translation,hunger")
    p.add_argument("--pool", default="avg2", help="pooling of conv maps for the probes (default avg2)")
    p.add_argument("--probe-train-limit", type=int, default=10000, help="labelled training images for the probes (default 10000)")
    p.add_argument("--test-limit", type=int, help="use a stratified sample of this many test images")
    p.add_argument("--analysis-limit", type=int, default=2000, help="test images for the equivariance and invariance measurements (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small settings for a smoke run (digits: 36 s on an idle 2-core AMD EPYC with AVX-512-BF16, bf16, 2 threads)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="write one self-contained HTML page about a run (and a compare directory)")
    p.add_argument("run")
    p.add_argument("--compare", help="a `convae compare` output directory to include")
    p.add_argument("--fcae", help="an FCAE run to show beside the ConvAE (reconstructions)")
    p.add_argument("--data", help="dataset spec for the images shown (default: the run's own)")
    p.add_argument("--out", help="output HTML file (default RUN/report.html)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import ConvaeError, TrainingInterrupted  # no torch: errors.py imports nothing heavy

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for relaunching under torchrun (train --nproc)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("convae").setLevel(min(level, logging.INFO) if args.verbose else logging.WARNING)
    # Progress where stderr is no terminal: plain lines logged at INFO by convae.progress, shown without -v (not with -q,
    # which turns progress off); a terminal gets tqdm bars instead.
    logging.getLogger("convae.progress").setLevel(logging.INFO)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the job
        logging.getLogger("convae").setLevel(logging.ERROR)
        logging.getLogger("convae.progress").setLevel(logging.ERROR)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            code = args.func(args)
        sys.stdout.flush()  # where the reader of a pipe left early, fail here, not in the flush at exit
        return code
    except BrokenPipeError:
        # `convae inspect RUN --json | head`: the reader is gone. Exit quietly with 141 (128 + SIGPIPE, what a tool
        # killed by SIGPIPE reports), stdout pointed at /dev/null so that Python's own flush at exit has nowhere to fail.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing to redirect
            pass
        return 141
    except TrainingInterrupted as e:
        if os.environ.get("RANK", "0") == "0":  # rank 0 wrote the checkpoint; the others only stopped
            print(f"convae: {e}", file=sys.stderr)
        return 130
    except ConvaeError as e:
        print(f"convae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
