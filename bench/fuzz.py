"""Fuzz every untrusted input (issue #17): seeded mutations of each file type through its public entry point.

    python bench/fuzz.py [--count 1000] [--types image pt ...] [--timeout 20] [--first 0]
    python bench/fuzz.py --types pt --replay 17      # case 17 of "pt" again, in this process, with a traceback

Each case runs in a worker process with a time limit and a capped address space (tests/fuzzing/runner.py); a
case passes when the entry point gives a result that passes the type's checks or facerec's own clear error.
Prints a table (type, cases, ok, clear errors, failures, seconds) and every failure with its case number; exits
with status 1 when there is one. docs/robustness.md ("Fuzzing") holds the measured counts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the engine lives beside the tests

from _common import cpu_model  # noqa: E402

from fuzzing.base import MARKER  # noqa: E402
from fuzzing.runner import Worker, campaign, make_case, run_case, write_case  # noqa: E402
from fuzzing.targets import TARGETS  # noqa: E402


def replay(name: str, index: int, workdir: Path) -> int:
    """Build case `index` of `name` and run it here, printing what was done and the outcome."""
    target = TARGETS[name]
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    case = make_case(target, target.corpus(corpus), index)
    folder = write_case(case, workdir / "case")
    print(case.label)
    context = target.prepare(corpus) if target.prepare else None
    os.chdir(corpus)  # where a payload that ran would write its marker, as in the runner's worker
    outcome, detail = run_case(target, folder, context)
    if (corpus / MARKER).exists():
        outcome, detail = "fail", f"CODE RAN: the payload wrote {corpus / MARKER} ({outcome}: {detail})"
    print(f"{outcome}: {detail}\nfiles kept in {folder}")
    return 1 if outcome == "fail" else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="mutated cases per type (default 1000)")
    parser.add_argument("--types", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--first", type=int, default=0, help="first case number (another 1,000 with --first 1000)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per case before it counts as a hang")
    parser.add_argument("--memory-gib", type=float, default=6.0, help="address-space cap of the worker")
    parser.add_argument("--replay", type=int, help="run this one case of the (single) --types in this process")
    parser.add_argument("--workdir", help="keep the corpus and cases here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="facerec-fuzz-") as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        if args.replay is not None:
            return replay(args.types[0], args.replay, workdir)
        print(f"{cpu_model()}; {args.count} mutated cases per type from case {args.first}", flush=True)
        worker, summaries = Worker(workdir, args.timeout, args.memory_gib), []
        try:
            for name in args.types:
                summaries.append(campaign(TARGETS[name], args.count, worker, log=print, first=args.first))
                for failure in summaries[-1].failures:
                    print(f"FAIL {failure}", flush=True)
        finally:
            worker.stop()
    print(f"\n| type | what | cases | ok | clear errors | failures | seconds | slowest case (s) |\n|{'---|' * 8}")
    for s in summaries:
        counts = f"{s.cases:,} | {s.ok:,} | {s.clear:,} | {len(s.failures)} | {s.seconds:.0f}"
        print(f"| {s.target} | {TARGETS[s.target].about} | {counts} | {s.slowest[0]:.2f} (case {s.slowest[1]}) |")
    print(f"worker restarts (hangs or crashes): {worker.restarts}; {time.strftime('%Y-%m-%d')}")
    return 1 if any(s.failures for s in summaries) else 0


if __name__ == "__main__":
    raise SystemExit(main())
