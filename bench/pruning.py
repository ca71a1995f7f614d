"""Benchmark: structured pruning speed-up against prune amount, fidelity before/after distillation
fine-tuning, and structured prune -> finetune -> static int8 against static int8 alone.

Models: a ResNet-18-shaped CNN and a small transformer encoder (random weights, synthetic inputs:
they measure speed; their agreement/cosine with the original says little, as random nets have
near-uniform class scores), and CNNs trained here on real data (scikit-learn digits, Debian's
Fashion-MNIST), scored on the real test labels. The calibration protocol is the pipeline's: the
passes see only `--samples` training samples the model was NOT trained on (with the original's
outputs); the test set never reaches them. Every pass runs with its default options.
Latency: original and variant take turns in one process (optimizer_pipeline.measure.latency), fixed
thread count, glibc malloc thresholds pinned as the pipeline and the server pin them
(optimizer_pipeline/measure/allocator.py); speed-ups are ratios of medians against the float original.

    python bench/pruning.py                  # writes bench/results/pruning.json
    python bench/pruning.py --models digits_cnn --amounts 0.5 --rounds 10
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
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

from support import data, models  # noqa: E402

from optimizer_pipeline import jit  # noqa: E402
from optimizer_pipeline.measure.allocator import pin_malloc_thresholds  # noqa: E402
from optimizer_pipeline.intake.calibration import Batch  # noqa: E402
from optimizer_pipeline.fidelity.measures import compare_outputs  # noqa: E402
from optimizer_pipeline.measure.latency import compare_latency  # noqa: E402
from optimizer_pipeline.intake.model_loading import run_model  # noqa: E402
from optimizer_pipeline.passes.recovery.finetune import FinetuneConfig, finetune  # noqa: E402
from optimizer_pipeline.passes.pruning.structured import PruneStructuredConfig, prune_structured  # noqa: E402
from optimizer_pipeline.passes.quantization.static import QuantizeStaticConfig, quantize_static  # noqa: E402

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
    found = {"agreement": round(measured.agreement, 4), "cosine": round(measured.cosine, 4)}
    if measured.accuracy is not None:
        found |= {"accuracy": round(measured.accuracy, 4), "accuracy_original": round(measured.accuracy_original, 4)}
    return found


def speedup(original: jit.ScriptModule, candidate: jit.ScriptModule, inputs: torch.Tensor, rounds: int) -> float:
    comparison = compare_latency(lambda: original(inputs), lambda: candidate(inputs), len(inputs), warmup=3, rounds=rounds)
    return round(comparison.speedup, 2)


@dataclasses.dataclass
class Subject:
    """A model to prune, the calibration batch the passes get, and what it is judged on."""

    name: str
    original: jit.ScriptModule
    calibration: Batch
    held_out: Batch
    timing: torch.Tensor
    int8: bool  # static int8 breaks transformers (shared NOTES): only CNNs get the int8 plans


def finetune_config(args) -> FinetuneConfig:
    return FinetuneConfig() if args.epochs is None else FinetuneConfig(epochs=args.epochs)


def sweep(subject: Subject, args) -> tuple[list[dict], dict[float, jit.ScriptModule]]:
    """Speed-up and fidelity per prune amount, before and after fine-tuning; the tuned models by amount."""
    rows, tuned_models = [], {}
    for amount in args.amounts:
        pruned = prune_structured(jit.reload(subject.original), subject.calibration, PruneStructuredConfig(amount=amount))
        started = time.perf_counter()
        tuned = finetune(jit.reload(pruned.model), subject.calibration, finetune_config(args))
        tuned_models[amount] = tuned.model
        rows.append({
            "model": subject.name, "plan": f"prune_structured({amount}) -> finetune",
            "parameters": f"{pruned.details['parameters_before']} -> {pruned.details['parameters_after']}",
            "speedup": speedup(subject.original, tuned.model, subject.timing, args.rounds),
            "fidelity_pruned": fidelity(pruned.model, subject.held_out),
            "fidelity_finetuned": fidelity(tuned.model, subject.held_out),
            "finetune": {"epochs": len(tuned.details["loss_curve"]), "best_epoch": tuned.details["best_epoch"],
                         "seconds": round(time.perf_counter() - started, 1)},
            "skipped_groups": len(pruned.details["skipped_groups"]),
        })
        print(row_line(rows[-1]), flush=True)
    return rows, tuned_models


def int8_plans(subject: Subject, tuned: dict[float, jit.ScriptModule], args) -> list[dict]:
    """Static int8 alone against structured prune -> finetune (each tuned model of the sweep) -> static int8."""
    plans = {"static int8": subject.original}
    plans |= {f"prune_structured({amount}) -> finetune -> static int8": model for amount, model in tuned.items()}
    rows = []
    for plan, model in plans.items():
        candidate = quantize_static(jit.reload(model), subject.calibration, QuantizeStaticConfig()).model
        rows.append({"model": subject.name, "plan": plan,
                     "speedup": speedup(subject.original, candidate, subject.timing, args.rounds),
                     "fidelity": fidelity(candidate, subject.held_out)})
        print(row_line(rows[-1]), flush=True)
    return rows


def row_line(row: dict) -> str:
    fidelity_text = " ".join(
        f"{key}={json.dumps(row[key])}" for key in ("fidelity_pruned", "fidelity_finetuned", "fidelity") if key in row
    )
    return f"| {row['model']} | {row['plan']} | {row['speedup']}x | {fidelity_text} |"


def synthetic(name: str, model: nn.Module, inputs: torch.Tensor, int8: bool) -> Subject:
    """Random weights and inputs: 64 samples held out, the rest is the calibration batch; timed at batch 32."""
    original = traced(model, inputs[:2])
    calibration, held_out = Batch((inputs,)).split(64 / len(inputs), seed=0)
    return Subject(name, original, with_teacher(original, calibration), with_teacher(original, held_out), inputs[:32], int8)


def resnet(args) -> Subject:
    torch.manual_seed(0)
    model = ResNet18Shape()
    return synthetic("resnet18-shape 64x64 (synthetic)", model, torch.randn(args.samples + 64, 3, 64, 64), int8=True)


def encoder(args) -> Subject:
    torch.manual_seed(0)
    model = SmallEncoder()
    return synthetic("encoder d128 x2, seq 32 (synthetic)", model, torch.randint(0, 1000, (args.samples + 64, 32)), int8=False)


def trained_on(name: str, dataset, factory: Callable[[], nn.Module], epochs: int, args) -> Subject:
    """Trained on the training split minus its last `samples`, which become the calibration batch."""
    train_x, train_y, test_x, test_y = dataset()
    fit_x, fit_y = train_x[: -args.samples], train_y[: -args.samples]
    torch.manual_seed(0)
    original = traced(models.train(factory(), fit_x, fit_y, epochs=epochs), fit_x[:2])
    calibration = with_teacher(original, Batch((train_x[-args.samples:],), train_y[-args.samples:]))
    held_out = with_teacher(original, Batch((test_x,), labels=test_y))
    return Subject(name, original, calibration, held_out, test_x[:256], int8=True)


SUBJECTS: dict[str, Callable[..., Subject]] = {
    "resnet18": resnet,
    "encoder": encoder,
    "digits_cnn": lambda args: trained_on("digits CNN (real labels)", data.digits, lambda: models.CnnBN(width=32), 15, args),
    "digits_resnet": lambda args: trained_on(
        "digits ResNet (real labels)", data.digits, lambda: models.ResNetSmall(width=32), 15, args
    ),
    "fashion_cnn": lambda args: trained_on(
        "Fashion-MNIST CNN (real labels)", data.fashion_mnist, lambda: models.CnnBN(width=32), 5, args
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(SUBJECTS), default=list(SUBJECTS))
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--samples", type=int, default=512, help="calibration samples given to the passes")
    parser.add_argument(
        "--epochs", type=int, default=None, help="fine-tuning epochs (default: the pass's; early stopping may end sooner)"
    )
    # Digits models run in about a millisecond: 20-30 rounds gave speed-ups that swung 2x between runs.
    parser.add_argument("--rounds", type=int, default=200, help="timed calls per variant")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pin_malloc_thresholds()
    warnings.filterwarnings("ignore")
    started = time.time()
    rows: list[dict] = []
    print("| model | plan | speed-up vs original | fidelity (held-out) |\n|---|---|---|---|", flush=True)
    for key in args.models:
        subject = SUBJECTS[key](args)
        sweep_rows, tuned = sweep(subject, args)
        rows += sweep_rows
        if subject.int8:
            rows += int8_plans(subject, tuned, args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"threads": args.threads, "arguments": vars(args), "rows": rows}, indent=2))
    print(f"wrote {RESULTS} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
