"""Benchmark: the search's choice against each single pass and plain static PTQ, on real data.

For every model, one `optimize()` run with the default search (`auto`, 3-fold cross-validation):
its first trials are the single passes (freeze, dynamic int8, static int8, ORT fp32 / int8), all
timed in the same run, so the search's choice and the single passes are compared like for like.
Fidelity is then checked on real held-out data the pipeline never saw (test-set labels for the
classifiers; cosine to the original on unseen sentences for the MiniLM encoder).

    python bench/search.py                       # all models, writes bench/results/search.json
    python bench/search.py --models minilm resnet_fashion
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import MODELS, RESULTS_DIR, labelled_task, saved, test_accuracy, write_results

from optimizer_pipeline import optimize
from optimizer_pipeline.calibration import Batch
from optimizer_pipeline.config import DEFAULT_CANDIDATES, CandidateSpec
from optimizer_pipeline.fidelity import compare_outputs
from optimizer_pipeline.model_loading import run_model
from optimizer_pipeline.runtimes import load_variant

SINGLE_PASSES = [CandidateSpec(plan=plan).display_name() for plan in DEFAULT_CANDIDATES]
PLAIN_PTQ = "quantize_static"
SEARCH = {"search": {"first": DEFAULT_CANDIDATES, "folds": 3}, "batch_size": 32}


def bench_classifier(name: str, calibration_size: int, test_size: int) -> dict:
    task = labelled_task(name, calibration_size, test_size)
    started = time.perf_counter()
    result = optimize(task.archive, task.calibration, SEARCH, labels=task.labels)
    seconds = time.perf_counter() - started
    original_accuracy = test_accuracy(load_variant("torchscript", task.archive), task.test)

    def on_test(variant) -> dict:
        accuracy = test_accuracy(load_variant(variant.runtime, variant.data), task.test)
        return {"test_accuracy": accuracy, "test_accuracy_drop": original_accuracy - accuracy}

    return _summarize(name, result, seconds, on_test, {"original_test_accuracy": original_accuracy})


def bench_minilm(calibration_size: int, test_size: int) -> dict:
    import minilm

    texts = minilm.sentences(calibration_size + test_size)
    archive, tokenize = minilm.traced_minilm()
    calibration = tokenize(texts[:calibration_size])
    test = Batch(tokenize(texts[calibration_size:]))
    reference = run_model(load_variant("torchscript", archive), test)
    started = time.perf_counter()
    result = optimize(archive, saved(calibration), SEARCH)
    seconds = time.perf_counter() - started

    def on_test(variant) -> dict:
        fidelity = compare_outputs(reference, run_model(load_variant(variant.runtime, variant.data), test))
        return {"test_cosine": fidelity.cosine, "test_cosine_min": fidelity.cosine_min}

    return _summarize("minilm", result, seconds, on_test, {"test_sentences": len(test)})


def _summarize(name: str, result, seconds: float, on_test, extra: dict) -> dict:
    report = result.report
    rows = []
    for trial in report.candidates:
        if trial.status != "ok":
            continue
        row = {
            "trial": trial.name,
            "runtime": trial.runtime,
            "origin": trial.origin,
            "speedup_b32": trial.speedup,
            "cv_mean": trial.fidelity_mean,
            "cv_std": trial.fidelity_std,
            "meets_tolerance": trial.meets_tolerance,
            "chosen": trial.name == report.chosen.candidate,
        }
        if trial.name in SINGLE_PASSES or row["chosen"]:
            row.update(on_test(result.candidates[trial.name]))
        rows.append(row)
    singles = [r for r in rows if r["trial"] in SINGLE_PASSES and r["meets_tolerance"]]
    chosen = next((r for r in rows if r["chosen"]), None)
    return {
        "model": name,
        **extra,
        "tolerance": report.tolerance,
        "search_seconds": round(seconds, 1),
        "search": report.search.model_dump(),
        "chosen": report.chosen.candidate,
        "chosen_speedup": report.chosen.speedup,
        "reason": report.chosen.reason,
        "best_single_pass": max(singles, key=lambda r: r["speedup_b32"] or 0)["trial"] if singles else None,
        "best_single_speedup": max((r["speedup_b32"] or 0 for r in singles), default=None),
        "plain_ptq": next((r for r in rows if r["trial"] == PLAIN_PTQ), None),
        "chosen_row": chosen,
        "trials": rows,
    }


def _print_table(results: list[dict]) -> None:
    print(f"{'model':<18} {'variant':<48} {'x@32':>6} {'CV mean±std':>15} {'held-out test':>14} {'search s':>9}")
    for result in results:
        budget = result["search"]["time_budget_s"]
        print(f"{result['model']:<18} budget {budget:.0f} s, {result['search']['trials_run']} trials, stopped: {result['search']['stopped_because']}")
        for row in result["trials"]:
            if not (row["chosen"] or row["trial"] in SINGLE_PASSES):
                continue
            test = row.get("test_accuracy", row.get("test_cosine"))
            label = ("* " if row["chosen"] else "  ") + row["trial"][:46]
            cv = f"{row['cv_mean']:.4f}±{row['cv_std']:.4f}" if row["cv_mean"] is not None else "-"
            print(f"{'':<18} {label:<48} {row['speedup_b32']:>6.2f} {cv:>15} {test:>14.4f} {result['search_seconds'] if row['chosen'] else '':>9}")
        if result["chosen"] == "original":
            print(f"{'':<18} * original kept: {result['reason'][:160]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=[*MODELS, "minilm"], choices=[*MODELS, "minilm"])
    parser.add_argument("--calibration-size", type=int, default=512)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "search.json")
    args = parser.parse_args()
    results = []
    for name in args.models:
        print(f"... {name}", file=sys.stderr, flush=True)
        if name == "minilm":
            results.append(bench_minilm(min(args.calibration_size, 256), 200))
        else:
            results.append(bench_classifier(name, args.calibration_size, args.test_size))
    _print_table(results)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
