"""Benchmark: is the report's claimed speed-up the one measured alone? On the two shapes of issue 21
where it was not: a scripted model with an `if` on its input, and a traced model with two inputs and
a tuple output (random weights, realistic sizes).

For each, `optimize()` runs with its defaults at batch 32; then the original, the pick and the plain
ORT peers (fp32; dynamic int8 with quantize_dynamic's defaults) are each timed alone in fresh
interpreters, taking turns, with bench/peers.py's `--time-one` (independent of the pipeline's
forkserver timer). The claim should be within 15% of the pick's alone figure.

    cd bench && flock /tmp/bench.lock python -m support.timing_claims [--models branchy two_inputs] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings

import torch
from torch import nn

import peers
from support.common import RESULTS_DIR, write_results

from optimizer_pipeline import optimize
from optimizer_pipeline.measure.latency_alone import undisturbed

RESULTS = RESULTS_DIR / "timing_claims.json"
BATCH = 32


class Branchy(nn.Module):
    """The branch taken depends on the input; a Linear reads the branch's result."""

    def __init__(self, features: int = 256, hidden: int = 512, classes: int = 10) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.b = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A conditional expression scripts to the same prim::If as an if statement.
        return self.head(self.a(x) if bool(x.sum() > 0) else self.b(x))


class TwoInputs(nn.Module):
    """An image and a metadata vector in, (logits, embedding) out."""

    def __init__(self, width: int = 32, meta: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )
        self.meta = nn.Sequential(nn.Linear(meta, 64), nn.ReLU())
        self.head = nn.Linear(2 * width + 64, classes)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = torch.cat([self.image(image).mean((2, 3)), self.meta(meta)], 1)
        return self.head(embedding), embedding


def build(name: str, seed: int, samples: int = 256) -> tuple[bytes, bytes, tuple[torch.Tensor, ...]]:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "branchy":
            inputs: tuple[torch.Tensor, ...] = (torch.randn(samples, 256),)
            module = torch.jit.script(Branchy().eval())
        else:
            inputs = (torch.randn(samples, 3, 32, 32), torch.randn(samples, 16))
            module = torch.jit.trace(TwoInputs().eval(), tuple(t[:BATCH] for t in inputs))
        archive, calibration = io.BytesIO(), io.BytesIO()
        torch.jit.save(module, archive)
    torch.save(inputs, calibration)
    return archive.getvalue(), calibration.getvalue(), inputs


def bench(name: str, seed: int, turns: int, calls: int) -> dict:
    archive, calibration, inputs = build(name, seed)
    started = time.perf_counter()
    result = optimize(archive, calibration, {"batch_size": BATCH})
    seconds = time.perf_counter() - started
    report = result.report
    entries = [peers.Entry("original", "torchscript", archive)]
    if result.optimized is not None:
        entries.append(peers.Entry("pick", result.optimized.runtime, result.optimized.data))
    fp32 = result.candidates.get("onnx_export")
    if fp32 is not None:
        entries.append(peers.Entry("ORT fp32 peer", "onnxruntime", fp32.data))
        entries.append(peers.Entry("ORT dynamic int8 peer (defaults)", "onnxruntime", peers._ort_dynamic(fp32.data)))
    alone = peers._time_alone(entries, tuple(t[:BATCH] for t in inputs), calls, turns)
    # The fresh interpreters stall too (latency_alone.py): both the plain median over processes and the
    # median over the undisturbed ones are kept, with every process's median.
    base, base_kept = statistics.median(alone[0]), statistics.median(undisturbed(alone[0]))
    measured = {entry.name: base / statistics.median(ms) for entry, ms in zip(entries, alone)}
    measured_kept = {entry.name: base_kept / statistics.median(undisturbed(ms)) for entry, ms in zip(entries, alone)}
    processes = {entry.name: [round(ms, 4) for ms in per_process] for entry, per_process in zip(entries, alone)}
    finalists = [
        {"name": c.name, "in_process": c.timed_alone.in_process_speedup, "alone": c.timed_alone.speedup,
         "original_ms": c.timed_alone.original_ms, "candidate_ms": c.timed_alone.candidate_ms}
        for c in report.candidates if c.timed_alone
    ]
    failed = {c.name: (c.error or "").splitlines()[0][:160] for c in report.candidates if c.status == "failed"}
    claimed = report.chosen.speedup or 1.0
    pick = measured.get("pick", 1.0)
    row = {
        "model": name, "seed": seed, "optimize_seconds": round(seconds, 1), "pick": report.chosen.candidate,
        "claimed": claimed, "pick_alone": pick, "claim_error": claimed / pick - 1, "alone": measured,
        "pick_alone_undisturbed": measured_kept.get("pick", 1.0), "alone_undisturbed": measured_kept, "alone_process_ms": processes,
        "finalists": finalists, "failed": failed,
    }
    print(f"\n{name} seed {seed}: pick {row['pick']} claimed {claimed:.2f}x, alone {pick:.2f}x ({row['claim_error']:+.0%}); optimize {seconds:.0f} s")
    for finalist in finalists:
        print(f"  finalist {finalist['name'][:50]:<50} in-process {finalist['in_process'] or 0:5.2f}x  timed alone by the pipeline {finalist['alone']:5.2f}x")
    for variant, speedup in measured.items():
        print(f"  alone (fresh interpreters) {variant:<34} {speedup:6.2f}x, undisturbed processes {measured_kept[variant]:6.2f}x  {processes[variant]}")
    for candidate, error in failed.items():
        print(f"  failed {candidate}: {error}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="*", default=["branchy", "two_inputs"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    write_results(RESULTS, [bench(name, seed, args.turns, args.calls) for name in args.models for seed in args.seeds])


if __name__ == "__main__":
    main()
