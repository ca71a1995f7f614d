"""Benchmark: structured pruning speed-up against prune amount, fidelity before/after distillation
fine-tuning, and structured prune -> finetune -> static int8 against static int8 alone.

Models: a ResNet-18-shaped CNN and a small transformer encoder (random weights, synthetic inputs:
fidelity is agreement/cosine with the original on held-out samples), and a CNN trained here on
scikit-learn's digits (real held-out labels, so accuracy is real). Latency: original and variant
take turns in one process (optimizer_pipeline.latency), fixed thread count; speed-ups are ratios of
medians against the float original.

    python bench/pruning.py                  # writes bench/results/pruning.json
    python bench/pruning.py --amounts 0.5 --rounds 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402
import models  # noqa: E402

from optimizer_pipeline import jit  # noqa: E402
from optimizer_pipeline.calibration import Batch  # noqa: E402
from optimizer_pipeline.fidelity import compare_outputs  # noqa: E402
from optimizer_pipeline.latency import compare_latency  # noqa: E402
from optimizer_pipeline.model_loading import run_model  # noqa: E402
from optimizer_pipeline.passes.finetune import FinetuneConfig, finetune  # noqa: E402
from optimizer_pipeline.passes.prune_structured import PruneStructuredConfig, prune_structured  # noqa: E402
from optimizer_pipeline.passes.quantize_static import QuantizeStaticConfig, quantize_static  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pruning.json"


class ResNet18Shape(nn.Module):
    """ResNet-18 layout (BasicBlocks 2-2-2-2, widths 64..512, 7x7 stem) for small images."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        widths, stages, cin = (64, 128, 256, 512), [], 64
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            stages += [models.BasicBlock(cin, width, stride), models.BasicBlock(width, width, 1)]
            cin = width
        self.layers = nn.Sequential(*stages)
        self.head = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


class EncoderLayer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / (width // self.heads) ** 0.5, -1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(n, length, width))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class SmallEncoder(nn.Module):
    """Token classifier: embedding, 2 pre-norm encoder layers, mean pooling, linear head."""

    def __init__(self, vocab: int = 1000, width: int = 128, heads: int = 4, hidden: int = 512, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.Sequential(EncoderLayer(width, heads, hidden), EncoderLayer(width, heads, hidden))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.layers(self.embed(tokens))).mean(1))


def traced(model: nn.Module, example: torch.Tensor) -> jit.ScriptModule:
    with jit.quiet_torch():
        return jit.reload(torch.jit.trace(model.eval(), (example,)))


def with_teacher(original: jit.ScriptModule, batch: Batch) -> Batch:
    return dataclasses.replace(batch, teacher_outputs=run_model(original, batch))


def fidelity(candidate: jit.ScriptModule, held_out: Batch) -> dict:
    measured = compare_outputs(held_out.teacher_outputs, run_model(candidate, held_out), held_out.labels)
    found = {"agreement": measured.agreement, "cosine": round(measured.cosine, 4)}
    if measured.accuracy is not None:
        found |= {"accuracy": round(measured.accuracy, 4), "accuracy_original": round(measured.accuracy_original, 4)}
    return found


def speedup(original: jit.ScriptModule, candidate: jit.ScriptModule, inputs: torch.Tensor, rounds: int) -> float:
    comparison = compare_latency(lambda: original(inputs), lambda: candidate(inputs), len(inputs), warmup=3, rounds=rounds)
    return round(comparison.speedup, 2)


def sweep(name: str, original, calibration: Batch, held_out: Batch, timing: torch.Tensor, args) -> list[dict]:
    """Speed-up and fidelity per prune amount, before and after fine-tuning."""
    rows = []
    for amount in args.amounts:
        pruned = prune_structured(jit.reload(original), calibration, PruneStructuredConfig(amount=amount))
        tuned = finetune(jit.reload(pruned.model), calibration, FinetuneConfig(epochs=args.epochs, lr=args.lr))
        rows.append({
            "model": name, "plan": f"prune_structured({amount}) -> finetune",
            "parameters": f"{pruned.details['parameters_before']} -> {pruned.details['parameters_after']}",
            "speedup": speedup(original, tuned.model, timing, args.rounds),
            "fidelity_pruned": fidelity(pruned.model, held_out),
            "fidelity_finetuned": fidelity(tuned.model, held_out),
            "finetune_epochs": len(tuned.details["loss_curve"]),
            "skipped_groups": len(pruned.details["skipped_groups"]),
        })
        print(row_line(rows[-1]), flush=True)
    return rows


def int8_plans(name: str, original, calibration: Batch, held_out: Batch, timing: torch.Tensor, args) -> list[dict]:
    """Static int8 alone against structured prune (0.5) -> finetune -> static int8."""
    alone = quantize_static(jit.reload(original), calibration, QuantizeStaticConfig()).model
    pruned = prune_structured(jit.reload(original), calibration, PruneStructuredConfig(amount=0.5)).model
    tuned = finetune(pruned, calibration, FinetuneConfig(epochs=args.epochs, lr=args.lr)).model
    combined = quantize_static(tuned, calibration, QuantizeStaticConfig()).model
    rows = []
    for plan, candidate in (("static int8", alone), ("prune_structured(0.5) -> finetune -> static int8", combined)):
        rows.append({"model": name, "plan": plan, "speedup": speedup(original, candidate, timing, args.rounds),
                     "fidelity": fidelity(candidate, held_out)})
        print(row_line(rows[-1]), flush=True)
    return rows


def row_line(row: dict) -> str:
    fidelity_text = " ".join(
        f"{key}={json.dumps(value)}" for key in ("fidelity_pruned", "fidelity_finetuned", "fidelity") if key in row
        for value in [row[key]]
    )
    return f"| {row['model']} | {row['plan']} | {row['speedup']}x | {fidelity_text} |"


def resnet(args) -> tuple[str, jit.ScriptModule, Batch, Batch, torch.Tensor]:
    torch.manual_seed(0)
    images = torch.randn(args.samples + 64, 3, 64, 64)
    original = traced(ResNet18Shape(), images[:2])
    return "resnet18-shape 64x64 (synthetic)", original, *split(original, Batch((images,))), images[:16]


def encoder(args) -> tuple[str, jit.ScriptModule, Batch, Batch, torch.Tensor]:
    torch.manual_seed(0)
    tokens = torch.randint(0, 1000, (args.samples + 64, 32))
    original = traced(SmallEncoder(), tokens[:2])
    return "encoder d128 x2, seq 32 (synthetic)", original, *split(original, Batch((tokens,))), tokens[:32]


def digits_cnn(args) -> tuple[str, jit.ScriptModule, Batch, Batch, torch.Tensor]:
    train_x, train_y, test_x, test_y = data.digits()
    torch.manual_seed(0)
    original = traced(models.train(models.CnnBN(channels=1, width=32), train_x, train_y, epochs=15), train_x[:2])
    calibration = with_teacher(original, Batch((train_x[: args.samples],)))
    held_out = with_teacher(original, Batch((test_x,), labels=test_y))
    return "digits CNN (real labels)", original, calibration, held_out, test_x[:256]


def split(original: jit.ScriptModule, batch: Batch) -> tuple[Batch, Batch]:
    held = 64 / len(batch)
    calibration, held_out = batch.split(held, seed=0)
    return with_teacher(original, calibration), with_teacher(original, held_out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--samples", type=int, default=256, help="calibration samples given to the passes")
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs (early stopping may end sooner)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=20, help="timed calls per variant")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    started = time.time()
    rows: list[dict] = []
    print("| model | plan | speed-up vs original | fidelity (held-out) |\n|---|---|---|---|", flush=True)
    for build, with_int8 in ((resnet, True), (encoder, False), (digits_cnn, True)):
        name, original, calibration, held_out, timing = build(args)
        rows += sweep(name, original, calibration, held_out, timing, args)
        if with_int8:  # static int8 breaks transformers (shared NOTES): only CNNs get the int8 plans
            rows += int8_plans(name, original, calibration, held_out, timing, args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"threads": args.threads, "arguments": vars(args), "rows": rows}, indent=2))
    print(f"wrote {RESULTS} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
