"""`bench/peers.py --flips`: where int8 changes a classifier's answer, and what that costs on real labels.

For each classifier case (trained here on real data), every peer variant is run
on the real test set. For the samples whose top-1 answer the variant changes (a flip), it prints:
- agreement with the original, and the accuracy lost on real labels;
- on the flipped samples, how often the original and the variant were right;
- the tie ratio of each flip: the original's own probability for the variant's answer over its
  probability for its own answer (1.0: the original could not tell the two apart);
- agreement if flips at a tie ratio of at least 0.8 did not count.

It answers whether a label-free rule could admit the int8 peers that keep a one-point accuracy
budget while refusing those that do not (docs/benchmarks.md, "Where int8 flips land").

    python bench/peers.py --flips                       # the Fashion-MNIST and digits CNNs, writes bench/results/flips.json
    python bench/peers.py --flips --models densenet_fashion
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from .peer_builders import build_peers, load_any
from .peer_cases import make_case

from optimizer_pipeline.files import atomic_write_text
from optimizer_pipeline.intake.model_loading import run_model

CLASSIFIER_CASES = ("cnn_bn_fashion", "densenet_fashion", "depthwise_fashion", "resnet_fashion", "cnn_bn_digits")
TIE_RATIO = 0.8


def flips_of(original: torch.Tensor, variant: torch.Tensor, labels: torch.Tensor) -> dict:
    probabilities = original.softmax(-1)
    own, answer = original.argmax(-1), variant.argmax(-1)
    flipped = answer != own
    ratio = probabilities.gather(1, answer[:, None])[:, 0] / probabilities.gather(1, own[:, None])[:, 0]
    return {
        "agreement": 1.0 - flipped.float().mean().item(),
        "accuracy_drop": ((own == labels).float().mean() - (answer == labels).float().mean()).item(),
        "flips": int(flipped.sum()),
        "original_right_on_flips": int((own[flipped] == labels[flipped]).sum()),
        "variant_right_on_flips": int((answer[flipped] == labels[flipped]).sum()),
        "tie_ratios": sorted(round(value, 3) for value in ratio[flipped].tolist()),
        "agreement_without_ties": 1.0 - (flipped & (ratio < TIE_RATIO)).float().mean().item(),
    }


def run_case(name: str, calibration: int, test: int) -> list[dict]:
    case = make_case(name, calibration, test, 0)
    original = run_model(torch.jit.load(io.BytesIO(case.archive)), case.test)[0][1]
    rows = []
    for entry in build_peers(case.archive, case.calibration_batch):
        if entry.data is None:
            rows.append({"peer": entry.name, "error": entry.error})
            continue
        variant = run_model(load_any(entry.runtime, entry.data), case.test)[0][1]
        rows.append({"peer": entry.name, **flips_of(original, variant, case.test.labels)})
    return rows


def print_rows(name: str, rows: list[dict]) -> None:
    print(f"\n{name}")
    print(f"{'peer':40s} {'agree':>6s} {'drop pt':>7s} {'flips':>5s} {'orig right':>10s} {'var right':>9s} {'min tie':>7s} {'w/o ties':>8s}")
    for row in rows:
        if "error" in row:
            print(f"{row['peer']:40s} {row['error']}")
            continue
        lowest = f"{row['tie_ratios'][0]:.2f}" if row["tie_ratios"] else "-"
        print(f"{row['peer']:40s} {row['agreement']:6.3f} {row['accuracy_drop'] * 100:7.1f} {row['flips']:5d} "
              f"{row['original_right_on_flips']:10d} {row['variant_right_on_flips']:9d} {lowest:>7s} {row['agreement_without_ties']:8.3f}")


def report_flips(cases: list[str], calibration: int, test: int, out: Path) -> None:
    results = {}
    for name in cases:
        results[name] = run_case(name, calibration, test)
        print_rows(name, results[name])
    atomic_write_text(out, json.dumps({"tie_ratio": TIE_RATIO, "test_samples": test, "results": results}, indent=1))
    print(f"\nwrote {out}")
