"""Benchmark: optiserve's pick against its peers, each variant timed alone in a fresh process, taking turns.

For each bench model (trained here in seconds on real data, see support/common.py), `optimize()` runs with
its defaults (the `auto` search, target batch 32) and labels; then the peers are built the plain
way, outside the pipeline:

- torch static PTQ: `quantize_jit` with the x86 qconfig over the calibration batch;
- ONNX Runtime fp32, static int8 (`quant_pre_process` + `quantize_static`, QDQ, per-channel, int8),
  dynamic int8 (`quantize_dynamic` with its defaults);
- OpenVINO fp32 (`convert_model` of the ONNX file, compiled in f32) and NNCF int8 (`nncf.quantize`
  with its defaults).

Every variant, the original and the pick included, is timed at batch 32 in a process of its own,
started fresh with `python bench/peers.py --time-one ...` (not the pipeline's forkserver timer, so
the check is independent), glibc malloc pinned, in turns (A B C ..., then ... C B A). The same
variants are also timed in this one process, taking turns, to show the ranking the pipeline used
to trust. Fidelity is accuracy on the real test set: a variant is within budget when it loses at
most 1 point of accuracy.

    python bench/peers.py                      # all models, writes bench/results/peers.json
    python bench/peers.py --models depthwise_fashion mlp_digits --turns 3
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from support.common import MODELS, RESULTS_DIR, labelled_task, test_accuracy, write_results

from optimizer_pipeline import jit, optimize
from optimizer_pipeline.measure.allocator import pin_malloc_thresholds
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.passes import parse_pass_spec, run_pass
from optimizer_pipeline.runtimes import load_variant

RESULTS = RESULTS_DIR / "peers.json"
BATCH = 32
ACCURACY_BUDGET = 0.01  # at most one point of test accuracy lost
CLAIM_TOLERANCE = 0.15  # the report's speed-up must be within 15% of the independent measurement
PICK_TARGET = 0.95  # the pick must reach this fraction of the best peer within budget


@dataclass
class Entry:
    name: str
    runtime: str
    data: bytes | None
    error: str | None = None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--turns", type=int, default=3, help="fresh processes per variant")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per process")
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--time-one", nargs=4, metavar=("RUNTIME", "VARIANT", "INPUTS", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_one:
        _time_one(*args.time_one)
        return
    results = [bench_model(name, args) for name in args.models]
    write_results(RESULTS, results)
    _print_summary(results)


def bench_model(name: str, args: argparse.Namespace) -> dict:
    task = labelled_task(name, args.calibration, args.test)
    started = time.perf_counter()
    result = optimize(task.archive, task.calibration, {"batch_size": BATCH}, labels=task.labels, name=name)
    optimize_seconds = time.perf_counter() - started
    report = result.report
    calibration = Batch((torch.load(io.BytesIO(task.calibration), weights_only=True),))
    entries = [Entry("original", "torchscript", task.archive)]
    if report.chosen.candidate != "original":
        entries.append(Entry(f"optiserve pick: {report.chosen.candidate}", result.optimized.runtime, result.optimized.data))
    entries += _peers(task.archive, calibration)
    inputs = task.test.head(BATCH).inputs
    original_accuracy = test_accuracy(load_variant("torchscript", task.archive), task.test)
    rows = []
    for entry in entries:
        accuracy = None
        if entry.data is not None:
            try:
                accuracy = test_accuracy(load_variant(entry.runtime, entry.data), task.test)
            except Exception as exc:  # a peer that builds but cannot run is reported, not fatal
                entry.error, entry.data = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}", None
        rows.append({
            "variant": entry.name, "runtime": entry.runtime, "error": entry.error, "test_accuracy": accuracy,
            "within_budget": accuracy is not None and original_accuracy - accuracy <= ACCURACY_BUDGET,
        })
    timed = [(row, entry) for row, entry in zip(rows, entries) if entry.data is not None]
    in_process = _time_in_process([entry for _, entry in timed], inputs, args.calls, args.turns)
    alone = _time_alone([entry for _, entry in timed], inputs, args.calls, args.turns)
    for (row, _), together_ms, alone_ms in zip(timed, in_process, alone):
        row["in_process_ms"], row["alone_ms"] = together_ms, alone_ms
        row["in_process_speedup"] = in_process[0] / together_ms
        row["alone_speedup"] = statistics.median(alone[0]) / statistics.median(alone_ms)
    return _summarize(name, report, rows, original_accuracy, optimize_seconds)


def _peers(archive: bytes, calibration: Batch) -> list[Entry]:
    builders: list[tuple[str, str, Callable[[], bytes]]] = []
    exported: dict[str, bytes] = {}

    def onnx_fp32() -> bytes:
        exported["onnx"] = run_pass(jit.load_archive(archive), calibration, parse_pass_spec("onnx_export")).model.data
        return exported["onnx"]

    builders = [
        ("torch static int8 (quantize_jit x86)", "torchscript", lambda: _torch_static(archive, calibration)),
        ("ORT fp32", "onnxruntime", onnx_fp32),
        ("ORT static int8 (QDQ per-channel)", "onnxruntime", lambda: _ort_static(exported["onnx"], calibration)),
        ("ORT dynamic int8", "onnxruntime", lambda: _ort_dynamic(exported["onnx"])),
        ("OpenVINO fp32", "openvino", lambda: _openvino(exported["onnx"], None)),
        ("OpenVINO NNCF int8", "openvino", lambda: _openvino(exported["onnx"], calibration)),
    ]
    entries = []
    for name, runtime, build in builders:
        try:
            entries.append(Entry(name, runtime, build()))
        except Exception as exc:
            entries.append(Entry(name, runtime, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"))
    return entries


def _torch_static(archive: bytes, calibration: Batch) -> bytes:
    from torch.ao.quantization import get_default_qconfig, quantize_jit

    with jit.quiet_torch():
        model = jit.load_archive(archive)
        chunks = [chunk.inputs for chunk in calibration.chunks(BATCH)]
        quantized = quantize_jit(model, {"": get_default_qconfig("x86")}, lambda m, data: [m(*x) for x in data], [chunks])
    return jit.archive_bytes(quantized)


def _ort_static(onnx_bytes: bytes, calibration: Batch) -> bytes:
    from onnxruntime import quantization as ortq

    class Reader(ortq.CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.feeds = iter([{name: chunk.inputs[0].numpy()} for chunk in calibration.chunks(BATCH) if len(chunk) == BATCH])

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as directory:
        source, prepared, output = (Path(directory) / n for n in ("model.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(onnx_bytes)
        ortq.quant_pre_process(source, prepared)
        import onnx

        input_name = onnx.load(prepared).graph.input[0].name
        ortq.quantize_static(
            prepared, output, Reader(input_name), quant_format=ortq.QuantFormat.QDQ, per_channel=True,
            activation_type=ortq.QuantType.QInt8, weight_type=ortq.QuantType.QInt8,
        )
        return output.read_bytes()


def _ort_dynamic(onnx_bytes: bytes) -> bytes:
    from onnxruntime import quantization as ortq

    with tempfile.TemporaryDirectory() as directory:
        source, output = Path(directory) / "model.onnx", Path(directory) / "dynamic.onnx"
        source.write_bytes(onnx_bytes)
        ortq.quantize_dynamic(source, output, weight_type=ortq.QuantType.QInt8)
        return output.read_bytes()


def _openvino(onnx_bytes: bytes, calibration: Batch | None) -> bytes:
    import openvino as ov

    from optimizer_pipeline.runtimes.openvino import OpenVinoModel

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.onnx"
        path.write_bytes(onnx_bytes)
        model = ov.convert_model(path)
    if calibration is not None:
        import nncf

        samples = [tensor.numpy() for tensor in calibration.inputs[0].split(1)]
        model = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    return OpenVinoModel.of(model).data


def _time_in_process(entries: list[Entry], inputs: tuple[torch.Tensor, ...], calls: int, turns: int) -> list[float]:
    """Median ms per variant, all loaded in this process, taking turns call by call (the old way)."""
    loaded = [load_variant(entry.runtime, entry.data, torch.get_num_threads()) for entry in entries]
    times: list[list[float]] = [[] for _ in loaded]
    with torch.inference_mode():
        for model in loaded:
            for _ in range(3):
                model(*inputs)
        for round_index in range(calls * turns):
            order = list(enumerate(loaded))
            for index, model in order if round_index % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                model(*inputs)
                times[index].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


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
    model = load_variant(runtime, Path(variant).read_bytes(), torch.get_num_threads())
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


def _summarize(name: str, report, rows: list[dict], original_accuracy: float, optimize_seconds: float) -> dict:
    pick = next((row for row in rows if row["variant"].startswith("optiserve pick")), None)
    peers = [row for row in rows[1:] if row is not pick and row.get("alone_speedup") and row["within_budget"]]
    best_peer = max(peers, key=lambda row: row["alone_speedup"], default=None)
    pick_speedup = pick["alone_speedup"] if pick else 1.0
    claimed = report.chosen.speedup or 1.0
    summary = {
        "model": name,
        "optimize_seconds": round(optimize_seconds, 1),
        "original_test_accuracy": original_accuracy,
        "pick": report.chosen.candidate,
        "pick_runtime": report.chosen.runtime,
        "claimed_speedup": claimed,
        "measured_pick_speedup": pick_speedup,
        "claim_error": claimed / pick_speedup - 1,
        "claim_within_15pct": abs(claimed / pick_speedup - 1) <= CLAIM_TOLERANCE,
        "best_peer": best_peer["variant"] if best_peer else None,
        "best_peer_speedup": best_peer["alone_speedup"] if best_peer else None,
        "pick_over_best_peer": pick_speedup / best_peer["alone_speedup"] if best_peer else None,
        "rows": rows,
    }
    summary["pick_target_met"] = summary["pick_over_best_peer"] is None or summary["pick_over_best_peer"] >= PICK_TARGET
    _print_model(summary)
    return summary


def _print_model(summary: dict) -> None:
    rows = summary["rows"]
    by_in_process = sorted((r for r in rows if r.get("in_process_speedup")), key=lambda r: -r["in_process_speedup"])
    by_alone = sorted((r for r in rows if r.get("alone_speedup")), key=lambda r: -r["alone_speedup"])
    print(f"\n{summary['model']}: optimize {summary['optimize_seconds']} s, original accuracy {summary['original_test_accuracy']:.4f}")
    print(f"{'variant':<58} {'runtime':<12} {'acc':>7} {'budget':>6} {'x in-proc':>9} {'rank':>4} {'x alone':>8} {'rank':>4}")
    for row in rows:
        if row["error"]:
            print(f"{row['variant'][:58]:<58} {row['runtime']:<12} failed: {row['error']}")
            continue
        rank_in = by_in_process.index(row) + 1 if row in by_in_process else "-"
        rank_alone = by_alone.index(row) + 1 if row in by_alone else "-"
        print(f"{row['variant'][:58]:<58} {row['runtime']:<12} {row['test_accuracy']:>7.4f} {'yes' if row['within_budget'] else 'NO':>6} "
              f"{row['in_process_speedup']:>9.2f} {rank_in:>4} {row['alone_speedup']:>8.2f} {rank_alone:>4}")
    print(f"claimed {summary['claimed_speedup']:.2f}x, measured alone {summary['measured_pick_speedup']:.2f}x "
          f"({summary['claim_error']:+.0%}); best peer within budget: {summary['best_peer']} {summary['best_peer_speedup'] or 0:.2f}x; "
          f"pick/best peer {summary['pick_over_best_peer'] or 0:.2f}", flush=True)


def _print_summary(results: list[dict]) -> None:
    print(f"\n{'model':<20} {'pick':<46} {'runtime':<12} {'claimed':>7} {'alone':>6} {'claim ok':>8} {'best peer':<38} {'x':>5} {'pick/peer':>9}")
    for s in results:
        print(f"{s['model']:<20} {s['pick'][:46]:<46} {s['pick_runtime']:<12} {s['claimed_speedup']:>7.2f} {s['measured_pick_speedup']:>6.2f} "
              f"{'yes' if s['claim_within_15pct'] else 'NO':>8} {(s['best_peer'] or '-')[:38]:<38} {s['best_peer_speedup'] or 0:>5.2f} "
              f"{s['pick_over_best_peer'] or 0:>9.2f}")


if __name__ == "__main__":
    main()
