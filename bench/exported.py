"""Benchmark: the pick from a torch.export program (.pt2) against the pick from the same model's
TorchScript, at the same budget, each timed alone in a fresh process, taking turns.

For each bench model (trained here on real data, see support/common.py) the trained module is saved both
ways, `torch.jit.trace` and `torch.export` with a dynamic batch, and `optimize()` runs on each with
its defaults (target batch 32, labels given), each in a fresh process. The original TorchScript, both picks and the .pt2
program as served are then timed alone (bench/peers.py's fresh-process timer). The target: the
.pt2 pick reaches at least 0.9x the speed-up of the TorchScript pick.

    python bench/exported.py                            # writes bench/results/exported.json
    python bench/exported.py --models mlp_digits cnn_bn_digits --turns 3
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402  (its fresh-process timer)
from support.common import MODELS, RESULTS_DIR, labelled_task, write_results  # noqa: E402

from optimizer_pipeline import optimize  # noqa: E402

BATCH = 32
TARGET_RATIO = 0.9
RESULTS = RESULTS_DIR / "exported.json"


def program_bytes(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class Pick:
    candidate: str
    runtime: str
    data: bytes
    seconds: float


def _optimize(archive: bytes, calibration: bytes, labels: bytes, name: str) -> Pick:
    started = time.perf_counter()
    result = optimize(archive, calibration, {"batch_size": BATCH}, labels=labels, name=name)
    return Pick(result.report.chosen.candidate, result.served.runtime, result.served.data, time.perf_counter() - started)


def bench_model(name: str, args: argparse.Namespace) -> dict:
    task = labelled_task(name, args.calibration, args.test)
    program = program_bytes(task.model, task.test.inputs[0][:2])
    picks = {}
    for label, archive in (("torchscript", task.archive), ("pt2", program)):
        # Each optimization in a fresh process, as a server job runs it: one process that ran both
        # (and trained the model) aborted twice on heap corruption here, at the second one's load.
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            picks[label] = pool.submit(_optimize, archive, task.calibration, task.labels, f"{name} ({label})").result()
    entries = [
        peers.Entry("original (TorchScript)", "torchscript", task.archive),
        peers.Entry("original (.pt2, as served)", "exported", program),
        peers.Entry("pick from TorchScript", picks["torchscript"].runtime, picks["torchscript"].data),
        peers.Entry("pick from .pt2", picks["pt2"].runtime, picks["pt2"].data),
    ]
    alone = peers._time_alone(entries, task.test.head(BATCH).inputs, args.calls, args.turns)
    baseline = statistics.median(alone[0])
    speedups = [baseline / statistics.median(times) for times in alone]
    row = {
        "model": name,
        "torchscript_pick": picks["torchscript"].candidate,
        "pt2_pick": picks["pt2"].candidate,
        "torchscript_pick_speedup": round(speedups[2], 2),
        "pt2_pick_speedup": round(speedups[3], 2),
        "pt2_as_served_speedup": round(speedups[1], 2),
        "ratio": round(speedups[3] / speedups[2], 2),
        "optimize_seconds": {label: round(pick.seconds, 1) for label, pick in picks.items()},
        "alone_ms": {entry.name: [round(t, 3) for t in times] for entry, times in zip(entries, alone)},
    }
    row["target_met"] = row["ratio"] >= TARGET_RATIO
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    results = [bench_model(name, args) for name in args.models]
    write_results(RESULTS, results)
    print("| model | pick from TorchScript | speed-up | pick from .pt2 | speed-up | .pt2 / TorchScript | .pt2 as served |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        print(
            f"| {row['model']} | {row['torchscript_pick']} | {row['torchscript_pick_speedup']}x | {row['pt2_pick']} | "
            f"{row['pt2_pick_speedup']}x | {row['ratio']} {'(met)' if row['target_met'] else '(missed)'} | {row['pt2_as_served_speedup']}x |"
        )


if __name__ == "__main__":
    main()
