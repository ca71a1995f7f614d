"""Benchmark: every default candidate of the pipeline, on real data, against real held-out labels.

For each model (trained here in seconds on scikit-learn digits or Debian's Fashion-MNIST), runs
`optimize()` on the built-in candidate set with a labelled calibration batch drawn from the training
data, then scores every candidate variant on the real test set. Speed-ups are the pipeline's own ABAB measurements
(original and candidate taking turns in one process).

    python bench/pipeline.py                 # all models, writes bench/results/pipeline.json
    python bench/pipeline.py --models cnn_bn_fashion mlp_digits
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from support.common import MODELS, RESULTS_DIR, labelled_task, test_accuracy, write_results

from optimizer_pipeline import optimize
from optimizer_pipeline.config import DEFAULT_CANDIDATES
from optimizer_pipeline.runtimes import load_variant

RESULTS = RESULTS_DIR / "pipeline.json"


def bench_model(name: str, calibration_size: int, test_size: int, rounds: int) -> dict:
    task = labelled_task(name, calibration_size, test_size)
    config = {"candidates": [{"plan": plan} for plan in DEFAULT_CANDIDATES], "batch_size": 32, "latency": {"rounds": rounds}}
    started = time.perf_counter()
    result = optimize(task.archive, task.calibration, config, labels=task.labels)
    optimize_seconds = time.perf_counter() - started
    original_accuracy = test_accuracy(load_variant("torchscript", task.archive), task.test)
    rows = []
    for candidate in result.report.candidates:
        variant = result.candidates.get(candidate.name)
        accuracy = test_accuracy(load_variant(variant.runtime, variant.data), task.test) if variant else None
        latency = {c.batch_size: c for c in candidate.latency}
        rows.append(
            {
                "candidate": candidate.name,
                "runtime": candidate.runtime,
                "status": candidate.status,
                "error": (candidate.error or "").splitlines()[0][:160] if candidate.error else None,
                "speedup_b32": candidate.speedup,
                "speedup_b1": latency[1].speedup if 1 in latency else None,
                "original_ms_b32": latency[32].original.median_ms if 32 in latency else None,
                "candidate_ms_b32": latency[32].candidate.median_ms if 32 in latency else None,
                "heldout_agreement": candidate.fidelity.agreement if candidate.fidelity else None,
                "test_accuracy": accuracy,
                "test_accuracy_drop": None if accuracy is None else original_accuracy - accuracy,
                "meets_tolerance": candidate.meets_tolerance,
                "chosen": candidate.name == result.report.chosen.candidate,
            }
        )
    return {
        "model": name,
        "parameters": result.report.model.parameters,
        "train_seconds": round(task.train_seconds, 1),
        "optimize_seconds": round(optimize_seconds, 1),
        "original_test_accuracy": original_accuracy,
        "test_samples": len(task.test),
        "chosen": result.report.chosen.candidate,
        "reason": result.report.chosen.reason,
        "candidates": rows,
    }


def _print_table(results: list[dict]) -> None:
    header = f"{'model':<18} {'candidate':<44} {'runtime':<11} {'x@32':>6} {'x@1':>6} {'agree':>6} {'test acc':>8} {'drop':>7} {'ok':>3} chosen"
    print(header)
    print("-" * len(header))
    for result in results:
        print(f"{result['model']:<18} {'original':<44} {'torchscript':<11} {'1.00':>6} {'1.00':>6} {'':>6} {result['original_test_accuracy']:>8.4f}")
        for row in result["candidates"]:
            if row["status"] == "failed":
                print(f"{'':<18} {row['candidate'][:44]:<44} {row['runtime']:<11} failed: {row['error']}")
                continue
            agreement = f"{row['heldout_agreement']:.3f}" if row["heldout_agreement"] is not None else "-"
            print(
                f"{'':<18} {row['candidate'][:44]:<44} {row['runtime']:<11} {row['speedup_b32']:>6.2f} {row['speedup_b1']:>6.2f} "
                f"{agreement:>6} {row['test_accuracy']:>8.4f} {row['test_accuracy_drop']:>+7.4f} {'yes' if row['meets_tolerance'] else 'no':>3} "
                f"{'*' if row['chosen'] else ''}"
            )
        if result["chosen"] == "original":
            print(f"{'':<18} -> original kept: {result['reason'][:150]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--calibration-size", type=int, default=256)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30, help="timed calls per model per candidate")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = []
    for name in args.models:
        print(f"... {name}", file=sys.stderr, flush=True)
        results.append(bench_model(name, args.calibration_size, args.test_size, args.rounds))
    _print_table(results)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
