"""Benchmark: float CNN latency in fresh processes, with glibc's default malloc thresholds and pinned.

Each run is a new process (the default thresholds adapt as a process ages, so only a fresh one
shows what a just-started worker sees); runs alternate between the two settings. Quotes the median
of the per-process medians.

    python bench/allocator.py                 # writes bench/results/allocator.json
    python bench/allocator.py --processes 9
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from support.common import RESULTS_DIR, median_call_ms, write_results

import torch

from support import models
from optimizer_pipeline.measure.allocator import pin_malloc_thresholds

BATCH = 32
CALLS = 300


def time_one_process(pinned: bool) -> float:
    """Median ms of one forward at batch 32, in this process."""
    torch.set_num_threads(2)
    if pinned:
        pin_malloc_thresholds()
    model = torch.jit.freeze(torch.jit.trace(models.CnnBN().eval(), torch.randn(2, 1, 28, 28)))
    inputs = torch.randn(BATCH, 1, 28, 28)
    return median_call_ms(lambda: model(inputs), CALLS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=5, help="fresh processes per setting")
    parser.add_argument("--child", choices=["default", "pinned"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(time_one_process(args.child == "pinned"))
        return
    runs: dict[str, list[float]] = {"default": [], "pinned": []}
    for _ in range(args.processes):
        for setting in runs:
            out = subprocess.run([sys.executable, __file__, "--child", setting], capture_output=True, text=True, check=True)
            runs[setting].append(round(float(out.stdout), 2))
    print("| malloc thresholds | per-process median ms (batch 32) | median |\n|---|---|---|")
    for setting, values in runs.items():
        print(f"| {setting} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.median(values):.2f} |")
    ratio = statistics.median(runs["default"]) / statistics.median(runs["pinned"])
    print(f"default / pinned: {ratio:.2f}x")
    write_results(RESULTS_DIR / "allocator.json", [{"model": "CnnBN float, frozen", "batch": BATCH, **runs, "ratio": round(ratio, 2)}])


if __name__ == "__main__":
    main()
