"""Run every fuzz target of tests/test_fuzz.py with many examples and print how many each ran.

    nice python bench/fuzz.py                   # 2,000 examples per target
    nice python bench/fuzz.py --examples 5000 --seed 1 --only image

The targets and their properties are the suite's (tests/test_fuzz.py); this only runs them longer,
with a fresh random seed each time unless --seed is given. Exit status 1 if any target failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
import traceback
import warnings
from pathlib import Path

from hypothesis import given, seed

TESTS = Path(__file__).resolve().parents[1] / "tests" / "test_fuzz.py"


def load_targets():
    spec = importlib.util.spec_from_file_location("test_fuzz", TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per target (default 2000)")
    parser.add_argument("--seed", type=int, help="hypothesis seed (default: a random one, printed)")
    parser.add_argument("--only", action="append", help="run only this target (repeatable)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # Pillow warns on corrupt EXIF and the like: expected here, not failures
    fuzz = load_targets()
    run_seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"seed {run_seed}, {args.examples} examples per target, hang limit {fuzz.HANG_SECONDS} s per example")
    failed = 0
    for name in args.only or sorted(fuzz.TARGETS):
        check, strategy = fuzz.TARGETS[name]
        count = {"n": 0}

        def counting(check):
            def counted(value):
                count["n"] += 1
                check(value)
            return counted

        counted = counting(check)

        settings = fuzz.fuzz_settings(args.examples)
        settings = type(settings)(settings, derandomize=False)
        test = seed(run_seed)(settings(given(strategy)(counted)))
        t0 = time.perf_counter()
        try:
            test()
            status = "ok"
        except Exception:  # a failing property: hypothesis has shrunk it; show it and go on
            status = "FAILED"
            failed += 1
            traceback.print_exc()
        print(f"{name:<18} {count['n']:>6} examples  {time.perf_counter() - t0:6.1f} s  {status}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
