"""Benchmark: structured pruning with and without layer-wise reconstruction, side by side.

Plan per CNN: prune_structured(amount) -> finetune -> static int8, each pass with its defaults
except `reconstruct`. The passes see only the calibration batch (training samples the model never
saw, no labels); accuracy is measured on the real test labels. Latency at batch 32: every variant
(and the float original) is timed in its own fresh process, the variants taking turns, glibc malloc
thresholds pinned; the speed-up is the ratio of the medians of the per-process medians.

    flock /tmp/optiserve-heavy.lock python bench/reconstruction.py     # writes bench/results/reconstruction.json
    python bench/reconstruction.py --models cnn_bn_digits --processes 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from support import common
from support.common import RESULTS_DIR, labelled_task, median_call_ms, test_accuracy, write_results

import torch

from support import models

from optimizer_pipeline import jit
from optimizer_pipeline.measure.allocator import pin_malloc_thresholds
from optimizer_pipeline.intake.calibration import Batch, load_calibration
from optimizer_pipeline.intake.model_loading import run_model
from optimizer_pipeline.passes.recovery.finetune import FinetuneConfig, finetune
from optimizer_pipeline.passes.pruning.structured import PruneStructuredConfig, prune_structured
from optimizer_pipeline.passes.quantization.static import QuantizeStaticConfig, quantize_static

BATCH = 32
CALLS = 200
# name -> (dataset, architecture, training epochs, calibration samples as in issue 16's measurements)
SUBJECTS = {
    "digits_cnn": ("digits", lambda: models.CnnBN(width=32), 15, 256),
    "fashion_cnn": ("fashion", lambda: models.CnnBN(width=32), 5, 256),
    "fashion_depthwise": ("fashion", lambda: models.DepthwiseSeparable(), 3, 128),
    "fashion_resnet": ("fashion", lambda: models.ResNetSmall(width=32), 3, 128),
}
TEST_SAMPLES = 2000


def time_one_process(archive: Path, inputs: Path) -> float:
    """Median ms of one forward at batch 32, in this fresh process."""
    torch.set_num_threads(2)
    pin_malloc_thresholds()
    model = jit.load_archive(archive.read_bytes())
    batch = torch.load(inputs, weights_only=True)
    with jit.quiet_torch():
        return median_call_ms(lambda: model(batch), CALLS)


def plans(args: argparse.Namespace) -> dict[str, PruneStructuredConfig]:
    """Each amount of channels without and with reconstruction, then shares of the MACs removed with
    per-group ratios by sensitivity (and reconstruction)."""
    found = {}
    for amount in args.amounts:
        found[f"prune {amount}"] = PruneStructuredConfig(amount=amount, reconstruct=False)
        found[f"prune {amount} + reconstruction"] = PruneStructuredConfig(amount=amount)
    for amount in args.sensitivity:
        found[f"prune {amount} of MACs by sensitivity + reconstruction"] = PruneStructuredConfig(
            amount=amount, scope="sensitivity", amount_of="macs"
        )
    return found


def build_variants(name: str, args: argparse.Namespace) -> tuple[dict[str, jit.ScriptModule], Batch, dict]:
    """The original and each plan's result; the test batch; what each pass reported."""
    dataset, factory, epochs, samples = SUBJECTS[name]
    common.MODELS[name] = (dataset, factory, epochs)
    started = time.perf_counter()
    task = labelled_task(name, samples, TEST_SAMPLES)
    print(f"({name}: trained in {time.perf_counter() - started:.0f} s)", flush=True)
    original = jit.load_archive(task.archive)
    calibration = load_calibration(task.calibration, jit.forward_argument_names(original))
    calibration = dataclasses.replace(calibration, teacher_outputs=run_model(original, calibration), teacher=original)
    variants, notes = {"original": original}, {}
    for prefix, config in plans(args).items():
        label = f"{prefix} -> finetune -> int8"
        started = time.perf_counter()
        pruned = prune_structured(jit.reload(original), calibration, config)
        tuned = finetune(jit.reload(pruned.model), calibration, FinetuneConfig(epochs=args.epochs))
        variants[label] = quantize_static(jit.reload(tuned.model), calibration, QuantizeStaticConfig()).model
        variants[f"{prefix} (float, before finetune)"] = pruned.model
        notes[label] = {
            "seconds": round(time.perf_counter() - started, 1),
            "finetune_epochs": len(tuned.details["loss_curve"]),
            "best_epoch": tuned.details["best_epoch"],
            "parameters": f"{pruned.details['parameters_before']} -> {pruned.details['parameters_after']}",
            "kept": {"+".join(g["modules"]): f"{g['kept']}/{g['channels']}" for g in pruned.details["pruned_groups"]},
        }
    return variants, task.test, notes


def time_in_fresh_processes(archives: dict[str, Path], inputs: Path, processes: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {label: [] for label in archives}
    for _ in range(processes):
        for label, path in archives.items():
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(path), str(inputs)], capture_output=True, text=True, check=True
            )
            runs[label].append(round(float(out.stdout), 3))
    return runs


def bench_model(name: str, args: argparse.Namespace, workdir: Path) -> list[dict]:
    started = time.perf_counter()
    variants, test, notes = build_variants(name, args)
    accuracy = {label: test_accuracy(model, test) for label, model in variants.items()}
    timed = {label: model for label, model in variants.items() if "before finetune" not in label}
    archives = {}
    for index, (label, model) in enumerate(timed.items()):
        archives[label] = workdir / f"{name}-{index}.pt"
        archives[label].write_bytes(jit.archive_bytes(model))
    inputs = workdir / f"{name}-inputs.pt"
    torch.save(test.inputs[0][:BATCH].clone(), inputs)
    runs = time_in_fresh_processes(archives, inputs, args.processes)
    original_ms = statistics.median(runs["original"])
    rows = []
    for label, acc in accuracy.items():
        row = {"model": name, "calibration_samples": SUBJECTS[name][3], "variant": label,
               "accuracy": round(acc, 4), "accuracy_drop_points": round(100 * (accuracy["original"] - acc), 2)}
        if label in runs:
            row |= {"ms_b32_per_process": runs[label], "speedup_b32": round(original_ms / statistics.median(runs[label]), 2)}
        rows.append(row | notes.get(label, {}))
        print(table_line(rows[-1]), flush=True)
    print(f"({name}: {time.perf_counter() - started:.0f} s)", flush=True)
    return rows


def table_line(row: dict) -> str:
    speed = f"{row['speedup_b32']:.2f}x" if "speedup_b32" in row else "–"
    return f"| {row['model']} | {row['variant']} | {speed} | {100 * row['accuracy']:.2f}% | {row['accuracy_drop_points']:+.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(SUBJECTS), default=list(SUBJECTS))
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument(
        "--sensitivity", type=float, nargs="*", default=[0.5, 0.75], help="shares of the MACs removed with per-group ratios"
    )
    parser.add_argument("--processes", type=int, default=3, help="fresh timing processes per variant")
    # Keeps the whole run near 10 minutes; early stopping ends most runs sooner.
    parser.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs at most")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(time_one_process(Path(args.child[0]), Path(args.child[1])))
        return
    torch.set_num_threads(2)
    pin_malloc_thresholds()
    started = time.time()
    print("| model | variant | speed-up b32 | test accuracy | drop (points) |\n|---|---|---|---|---|", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            rows += bench_model(name, args, Path(workdir))
    write_results(RESULTS_DIR / "reconstruction.json", rows)
    print(f"total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
