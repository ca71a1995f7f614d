"""Longer fuzzing run: schemathesis against a real server's /openapi.json, every operation in
positive and negative mode, with many more examples than tests/security/test_fuzz.py and a fresh seed.

    python bench/fuzz.py [--examples 300] [--seed N]

Half the positive cases are aimed at a ready model (its id in paths, its name in /predict and
/compare bodies). Prints a table per operation and mode (examples, status counts, failures) and
writes bench/results/fuzz.json, with a curl command for each distinct failure. Exits 1 on a failure.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import schemathesis  # noqa: E402

from fuzzing import Fuzzer, OperationReport, ready_target  # noqa: E402
from optimizer_pipeline.files import atomic_write_text  # noqa: E402
from server_harness import AUTH, ServerProcess  # noqa: E402


def table_row(report: OperationReport) -> str:
    statuses = " ".join(f"{status}×{count}" for status, count in sorted(report.statuses.items())) or "-"
    return f"| {report.operation} | {report.mode} | {report.examples} | {statuses} | {len(report.failures)} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=300, help="examples per operation and mode")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: a random one, recorded)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fuzz.json")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(Path(folder) / "store").start()
        try:
            started = time.monotonic()
            reports = Fuzzer(server.url, AUTH, args.examples, model=ready_target(server.url), seed=seed).run()
            seconds = time.monotonic() - started
        finally:
            server.stop()
    print("| operation | mode | examples | statuses | failures |\n|---|---|---|---|---|")
    for report in reports:
        print(table_row(report))
    failures = {f"{r.operation} ({r.mode}) {summary}": curl for r in reports for summary, curl in r.failures.items()}
    for title, curl in failures.items():
        print(f"\nFAILURE: {title}\n    {curl}")
    examples = sum(r.examples for r in reports)
    print(f"\n{examples} requests in {seconds:.0f} s (seed {seed}): {len(failures)} failures")
    results = {
        "schemathesis": schemathesis.SCHEMATHESIS_VERSION,
        "examples_per_operation_and_mode": args.examples,
        "seed": seed,
        "requests": examples,
        "seconds": round(seconds, 1),
        "operations": [
            {"operation": r.operation, "mode": r.mode, "examples": r.examples, "statuses": dict(sorted(r.statuses.items()))}
            for r in reports
        ],
        "failures": failures,
    }
    atomic_write_text(args.out, json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
