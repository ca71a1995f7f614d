"""Benchmark: the search's choice against each single pass and plain static PTQ, on real data.

For every model, one `optimize()` run with the default search (`auto`, 3-fold cross-validation):
its first trials are the single passes (freeze, dynamic int8, static int8, ORT fp32 / int8), all
timed in the same run, so the search's choice and the single passes are compared like for like.
Fidelity is then checked on real held-out data the pipeline never saw: the tolerance metric
(agreement with the original's predictions for the classifiers, cosine to the original's embedding
for the MiniLM encoder) plus test-set accuracy where there are labels.

Each model gets four checks (issue 5's done-when): the whole run within its time budget + 20%; the
choice not slower than the best single pass that met the tolerance (within the choice's 3% tie
margin); the chosen variant meets the tolerance on the held-out data, and that value lies within two
fold standard deviations of its cross-validated mean (plus one sample's worth, for agreement).

    python bench/search.py                       # all models, writes bench/results/search.json
    python bench/search.py --models minilm resnet_fashion
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from support.common import MODELS, RESULTS_DIR, labelled_task, saved, write_results

from optimizer_pipeline import optimize
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.choice import TIE_MARGIN
from optimizer_pipeline.config import DEFAULT_CANDIDATES, CandidateSpec, Tolerance
from optimizer_pipeline.fidelity.measures import accuracy, compare_outputs
from optimizer_pipeline.intake.model_loading import run_model
from optimizer_pipeline.runtimes import load_variant

SINGLE_PASSES = [CandidateSpec(plan=plan).display_name() for plan in DEFAULT_CANDIDATES]
PLAIN_PTQ = "quantize_static"
SEARCH = {"search": {"first": DEFAULT_CANDIDATES, "folds": 3}, "batch_size": 32}
# An embedding has no classes: the encoder is judged on cosine similarity to the original's embedding.
MINILM_TOLERANCE = {"metric": "cosine", "threshold": 0.99}
BUDGET_SLACK = 1.2  # issue 5: the search ends within its time budget + 20%
CV_SPREAD = 2.0  # a held-out value "within the spread" lies within this many fold standard deviations of the mean
COUNTED_METRICS = ("agreement", "accuracy_drop")  # moved by one sample of a fold at a time


def bench_classifier(name: str, calibration_size: int, test_size: int) -> dict:
    task = labelled_task(name, calibration_size, test_size)
    started = time.perf_counter()
    result = optimize(task.archive, task.calibration, SEARCH, labels=task.labels)
    seconds = time.perf_counter() - started
    return _summarize(name, result, seconds, task.archive, task.test, {})


def bench_minilm(calibration_size: int, test_size: int) -> dict:
    from support import minilm

    texts = minilm.sentences(calibration_size + test_size)
    archive, tokenize = minilm.traced_minilm()
    calibration = tokenize(texts[:calibration_size])
    test = Batch(tokenize(texts[calibration_size:]))
    started = time.perf_counter()
    result = optimize(archive, saved(calibration), {**SEARCH, "tolerance": MINILM_TOLERANCE})
    seconds = time.perf_counter() - started
    return _summarize("minilm", result, seconds, archive, test, {"test_sentences": len(test)})


def _summarize(name: str, result, seconds: float, archive: bytes, test: Batch, extra: dict) -> dict:
    report = result.report
    tolerance = Tolerance(**report.tolerance)
    reference = run_model(load_variant("torchscript", archive), test)
    if test.labels is not None:
        extra = {"original_test_accuracy": accuracy(reference[0][1], test.labels), **extra}

    def on_test(variant) -> dict:
        fidelity = compare_outputs(reference, run_model(load_variant(variant.runtime, variant.data), test), test.labels)
        found = {"test_fidelity": tolerance.value(fidelity), "test_cosine_min": fidelity.cosine_min}
        if fidelity.accuracy is not None:
            found.update(test_accuracy=fidelity.accuracy, test_accuracy_drop=fidelity.accuracy_drop)
        return found

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
            "folds_run": len(trial.fidelity_folds),
            "meets_tolerance": trial.meets_tolerance,
            "chosen": trial.name == report.chosen.candidate,
        }
        if trial.name in SINGLE_PASSES or row["chosen"]:
            row.update(on_test(result.candidates[trial.name]))
        rows.append(row)
    singles = [r for r in rows if r["trial"] in SINGLE_PASSES and r["meets_tolerance"]]
    chosen = next((r for r in rows if r["chosen"]), None)
    best_single = max(singles, key=lambda r: r["speedup_b32"] or 0) if singles else None
    checks = {
        "within_budget": seconds <= BUDGET_SLACK * report.search.time_budget_s,
        "not_slower_than_best_single": (report.chosen.speedup or 1.0) >= (best_single["speedup_b32"] if best_single else 1.0) / TIE_MARGIN,
    }
    # Folds that agree exactly have no spread, but a counted metric is only resolved to one sample.
    resolution = 1.0 / report.calibration.held_out_samples if tolerance.metric in COUNTED_METRICS else 0.0
    if chosen is not None:
        checks["test_meets_tolerance"] = tolerance.accepts(chosen["test_fidelity"])
        checks["test_within_cv_spread"] = within_cv_spread(chosen, resolution)
    return {
        "model": name,
        **extra,
        "cv_resolution": resolution,
        "tolerance": report.tolerance,
        "search_seconds": round(seconds, 1),
        "search": report.search.model_dump(),
        "chosen": report.chosen.candidate,
        "chosen_speedup": report.chosen.speedup,
        "reason": report.chosen.reason,
        "best_single_pass": best_single["trial"] if best_single else None,
        "best_single_speedup": best_single["speedup_b32"] if best_single else None,
        "plain_ptq": next((r for r in rows if r["trial"] == PLAIN_PTQ), None),
        "chosen_row": chosen,
        "checks": checks,
        "trials": rows,
    }


def within_cv_spread(row: dict, resolution: float) -> bool:
    """The held-out value lies within CV_SPREAD fold standard deviations (plus one sample's worth) of the CV mean."""
    return abs(row["test_fidelity"] - row["cv_mean"]) <= CV_SPREAD * row["cv_std"] + resolution + 1e-9


def _print_table(results: list[dict]) -> None:
    print(f"{'model':<18} {'variant':<48} {'x@32':>6} {'CV mean±std':>15} {'held-out':>9} {'search s':>9}")
    for result in results:
        budget = result["search"]["time_budget_s"]
        print(f"{result['model']:<18} {result['tolerance']['metric']} ≥ {result['tolerance']['threshold']}, budget {budget:.0f} s, {result['search']['trials_run']} trials, stopped: {result['search']['stopped_because']}")
        for row in result["trials"]:
            if not (row["chosen"] or row["trial"] in SINGLE_PASSES):
                continue
            test = row["test_fidelity"]
            label = ("* " if row["chosen"] else "  ") + row["trial"][:46]
            cv = f"{row['cv_mean']:.4f}±{row['cv_std']:.4f}" if row["cv_mean"] is not None else "-"
            print(f"{'':<18} {label:<48} {row['speedup_b32']:>6.2f} {cv:>15} {test:>9.4f} {result['search_seconds'] if row['chosen'] else '':>9}")
        if result["chosen"] == "original":
            print(f"{'':<18} * original kept: {result['reason'][:160]}")
        failed = [check for check, passed in result["checks"].items() if not passed]
        print(f"{'':<18} checks: {'all passed' if not failed else 'FAILED ' + ', '.join(failed)}")


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
            results.append(bench_minilm(min(args.calibration_size, 256), 500))
        else:
            results.append(bench_classifier(name, args.calibration_size, args.test_size))
    _print_table(results)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
