"""convae's benchmarks: one command, JSON plus markdown tables.

    .venv/bin/python bench/run.py                       # everything (make bench)
    .venv/bin/python bench/run.py --only training       # a subset: training,extraction,probe,scaling,hotpath
    .venv/bin/python bench/run.py --quick --out /tmp/b.json   # a smoke run of every suite (minutes)

Suites:
  training    convae's trainer vs a tutorial-style PyTorch loop, alternating, at PyTorch's default
              thread count and at one thread; the roofline against large-matmul peaks measured
              in the same run (bench_training.py)
  extraction  convae.extract_to_npy images/s per layer and precision; peak memory vs images
  probe       bf16's cost in probe accuracy (fp32 vs bf16 runs) and `convae probe --quick` time
  scaling     s/epoch vs dataset size (1k, 10k, 60k) and image size (28, 64, 128 px)
  hotpath     torch.profiler breakdown of the training step; hot-path candidates side by side

``--threads N`` sets the thread count of the probe, scaling and hotpath suites (default: one
thread for hotpath, PyTorch's default for the others); training and extraction always measure
both the default and one thread. Results: ``--out`` (JSON) and the same path with ``.md``.
Benchmarks are never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, load_average, machine_info  # noqa: E402

SUITES = ("training", "extraction", "probe", "scaling", "hotpath")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--only", default=",".join(SUITES), help=f"comma-separated suites (default all): {','.join(SUITES)}")
    parser.add_argument("--quick", action="store_true", help="small sizes and one repeat: checks that every suite runs")
    parser.add_argument("--threads", type=int, default=None, help="thread count of the probe, scaling and hotpath suites")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/bench.json; quick: bench/results/quick.json)")
    parser.add_argument("--no-precision", action="store_true", help="probe suite: skip the fp32-vs-bf16 accuracy study (it trains 4 runs)")
    args = parser.parse_args(argv)
    suites = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
    out = args.out or ROOT / "bench" / "results" / ("quick.json" if args.quick else "bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)

    results: dict = {"machine": machine_info(), "suites": suites, "quick": args.quick, "seconds": {}}
    md: list[str] = [f"# convae benchmarks ({'quick' if args.quick else 'full'})", "", "```", json.dumps(results["machine"], indent=1), "```", ""]

    def save() -> None:
        results["machine"]["load_average_end"] = load_average()
        out.write_text(json.dumps(results, indent=1) + "\n")
        out.with_suffix(".md").write_text("\n".join(md) + "\n")

    with tempfile.TemporaryDirectory(prefix="convae-bench-") as tmp:
        work = Path(tmp)
        for suite in suites:
            t0 = time.perf_counter()
            print(f"[bench] {suite} ... (load average {load_average()})", flush=True)
            md += [f"## {suite}", ""]
            if suite == "training":
                import bench_training as b

                r = results["training"] = b.run(args.quick)
                md += b.table(r) + [""] + b.peaks_table(r) + [""]
            elif suite == "extraction":
                import bench_extraction as b

                r = results["extraction"] = b.run(work, args.quick)
                md += b.table(r) + [""] + b.memory_table(r) + [""]
            elif suite == "probe":
                import bench_probe as b

                r = results["probe"] = b.run(work, quick=args.quick, threads=args.threads, with_precision=not args.no_precision)
                md += b.table(r) + [""]
            elif suite == "scaling":
                import bench_scaling as b

                r = results["scaling"] = b.run(args.quick, args.threads)
                md += b.table(r) + [""]
            elif suite == "hotpath":
                import bench_hotpath as b

                thread_count = args.threads or 1
                r = results["hotpath"] = {"profile": b.profile(steps=4 if args.quick else 10, thread_count=thread_count),
                                          "candidates": b.candidates(rounds=1 if args.quick else 5, budget_s=0.5 if args.quick else 2.0,
                                                                     thread_count=thread_count)}
                md += b.table_profile(r["profile"]) + [""] + b.table_candidates(r["candidates"]) + [""]
            results["seconds"][suite] = round(time.perf_counter() - t0, 1)
            print(f"[bench] {suite} done in {results['seconds'][suite]} s", flush=True)
            save()
    save()
    print("\n".join(md))
    print(f"[bench] wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
