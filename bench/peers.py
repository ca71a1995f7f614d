"""Benchmark: optiserve's pick against its peers, each variant timed alone in a fresh process, taking turns.

For each case (trained here in seconds on real data, or all-MiniLM-L6-v2 with its real weights;
see support/peer_cases.py), `optimize()` runs as the default `optiserve optimize model.pt calib.pt`
does: its defaults (the `auto` search, target batch 32) and **no labels**. With `--unlabeled N`
the conv cases are optimized a second time, also given N training inputs the model never saw
(optimize's `unlabeled`, the CLI's `--unlabeled FILE`). Then the peers are built the plain way,
outside the pipeline (support/peer_builders.py): torch static int8, ORT fp32 / static int8 /
dynamic int8, OpenVINO fp32, OpenVINO as converted with its own defaults, NNCF int8.

Every variant, the original and the picks included, is judged by the bench on real held-out data
(the case's budget: accuracy, embedding cosine, box error) and timed at batch 32 in processes of
its own, started fresh with `python bench/peers.py --time-one ...` (not the pipeline's timer, so
the check is independent), glibc malloc pinned, in turns (A B C ..., then ... C B A).

Targets: the pick reaches >= PICK_TARGET of the best peer within budget; with the unlabeled set, a
conv case's pick reaches >= UNLABELED_TARGET of it; the report's claimed speed-up is within
CLAIM_TOLERANCE of the one measured alone.

    python bench/peers.py                                 # every case, writes bench/results/peers.json
    python bench/peers.py --unlabeled 1024 --models cnn_bn_fashion minilm --turns 3
    python bench/peers.py --flips     # no timing: where each peer changes the CNNs' answers (support/peer_flips.py)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from support.common import RESULTS_DIR
from support.peer_builders import Entry, build_peers, describe_error, load_any, timing_inputs
from support.peer_cases import Case, all_case_names, make_case
from support.peer_flips import CLASSIFIER_CASES, report_flips
from support.peer_summary import print_case, print_markdown, print_summary, summarize

from optimizer_pipeline import jit, optimize
from optimizer_pipeline.intake.model_loading import run_model
from optimizer_pipeline.measure.allocator import pin_malloc_thresholds

RESULTS = RESULTS_DIR / "peers.json"
BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", choices=all_case_names(), metavar="CASE", help="default: every case (with --flips: the classifier CNNs)")
    parser.add_argument("--turns", type=int, default=3, help="fresh processes per variant")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per process")
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--unlabeled", type=int, default=0, metavar="N", help="also optimize the conv cases given N unseen unlabeled inputs")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default results/peers.json); cases already in it and not run now are kept")
    parser.add_argument("--reports", type=Path, default=Path(tempfile.gettempdir()) / "peers-reports", help="each run's full report.json goes here")
    parser.add_argument("--table", action="store_true", help="only print the tables of the results in --out, as markdown")
    parser.add_argument("--flips", action="store_true", help="no timing: where each peer changes a classifier CNN's answers, to --out (default results/flips.json)")
    parser.add_argument("--time-one", nargs=4, metavar=("RUNTIME", "VARIANT", "INPUTS", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flips:
        if set(args.models or ()) - set(CLASSIFIER_CASES):
            parser.error(f"--flips reads single-output classifiers: {', '.join(CLASSIFIER_CASES)}")
        report_flips(args.models or list(CLASSIFIER_CASES), args.calibration, args.test, args.out or RESULTS_DIR / "flips.json")
        return
    args.out = args.out or RESULTS
    if args.time_one:
        _time_one(*args.time_one)
        return
    if args.table:
        print_markdown(json.loads(args.out.read_text())["results"])
        return
    meta = {"load_average_before": _load_average(), "argv": sys.argv[1:]}
    results = []
    for name in args.models or all_case_names():
        results.append(bench_case(make_case(name, args.calibration, args.test, args.unlabeled), args))
        _write(args.out, results, meta)  # after every case: a long run stopped half-way still leaves its results
    print_summary(results)


def bench_case(case: Case, args: argparse.Namespace) -> dict:
    runs = [_optimize(case, None, args.reports)]
    if case.unlabeled is not None:
        runs.append(_optimize(case, case.unlabeled, args.reports))
    entries = [Entry("original", "torchscript", case.archive)]
    for run in runs:
        optimized = run["result"].optimized
        if optimized is not None:
            entries.append(Entry(run["label"], optimized.runtime, optimized.data))
    entries += build_peers(case.archive, case.calibration_batch)
    rows = []
    for entry in entries:
        row = {"variant": entry.name, "runtime": entry.runtime, "error": entry.error, "within_budget": False}
        if entry.data is not None:
            try:
                row.update(case.judge(run_model(load_any(entry.runtime, entry.data), case.test)))
            except Exception as exc:  # a peer that builds but cannot run is reported, not fatal
                entry.error = row["error"] = describe_error(exc)
                entry.data = None
        rows.append(row)
    timed = [(row, entry) for row, entry in zip(rows, entries) if entry.data is not None]
    calls = max(5, round(args.calls * case.calls_share))
    alone = _time_alone([entry for _, entry in timed], timing_inputs(case.test), calls, args.turns)
    for (row, _), alone_ms in zip(timed, alone):
        row["alone_ms"] = alone_ms
        row["alone_speedup"] = statistics.median(alone[0]) / statistics.median(alone_ms)
    summary = summarize(case, runs, rows)
    summary["load_average_after"] = _load_average()
    print_case(summary)
    return summary


def _optimize(case: Case, unlabeled: bytes | None, reports: Path) -> dict:
    started = time.perf_counter()
    result = optimize(case.archive, case.calibration, {"batch_size": BATCH}, name=case.name, unlabeled=unlabeled)
    seconds = time.perf_counter() - started
    label = "optiserve pick" if unlabeled is None else "optiserve pick (unlabeled set)"
    print(f"{case.name}: {label} {result.report.chosen.candidate} in {seconds:.0f} s", flush=True)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"{case.name}{'-unlabeled' if unlabeled else ''}.json").write_text(result.report.model_dump_json(indent=1))
    return {"label": label, "result": result, "seconds": seconds, "unlabeled": unlabeled is not None}


def _time_alone(entries: list[Entry], inputs: tuple[torch.Tensor, ...], calls: int, turns: int) -> list[list[float]]:
    """Per variant, the median ms of `calls` calls in each of `turns` fresh interpreters, taking turns."""
    measured: list[list[float]] = [[] for _ in entries]
    with tempfile.TemporaryDirectory() as directory:
        inputs_path = Path(directory) / "inputs.pt"
        torch.save(inputs, inputs_path)
        paths = []
        for index, entry in enumerate(entries):
            paths.append(Path(directory) / f"variant{index}")
            paths[-1].write_bytes(entry.data)
        for turn in range(turns):
            order = list(enumerate(entries))
            for index, entry in order if turn % 2 == 0 else order[::-1]:
                command = [sys.executable, __file__, "--time-one", entry.runtime, str(paths[index]), str(inputs_path), str(calls)]
                answer = subprocess.run(command, capture_output=True, text=True, check=True)
                measured[index].append(json.loads(answer.stdout.strip().splitlines()[-1])["median_ms"])
    return measured


def _time_one(runtime: str, variant: str, inputs_path: str, calls: str) -> None:
    """The fresh process: pin malloc as a serving worker does, load the variant, time `calls` calls."""
    pin_malloc_thresholds()
    jit.quiet_torch_for_good()
    model = load_any(runtime, Path(variant).read_bytes(), torch.get_num_threads())
    inputs = torch.load(inputs_path, weights_only=True)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model(*inputs)
        for _ in range(int(calls)):
            start = time.perf_counter()
            model(*inputs)
            times.append((time.perf_counter() - start) * 1000)
    print(json.dumps({"median_ms": statistics.median(times)}))


def _load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _write(path: Path, results: list[dict], meta: dict) -> None:
    """Results JSON with what produced them; cases of an earlier run that this one did not run are kept."""
    kept = []
    if path.exists():
        previous = json.loads(path.read_text())
        ran = {result["model"] for result in results}
        kept = [result for result in previous.get("results", []) if result.get("model") not in ran and "judged" in result]
    meta = {**meta, "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "results": kept + results}, indent=2))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
