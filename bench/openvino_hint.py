"""Which OpenVINO PERFORMANCE_HINT to compile with: LATENCY against THROUGHPUT, by batch size.

One process, the two compiled models taking turns call by call (the same runtime, so no foreign
thread pool distorts either), synchronous calls as a worker and the pipeline's timing make them.
Writes bench/results/openvino_hint.json. Run: `python bench/openvino_hint.py`.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import openvino as ov
import torch

from support.common import RESULTS_DIR, write_results
from support.models import DenseBlockNet, ResNetSmall

HINTS = ("LATENCY", "THROUGHPUT")
ROUNDS = 30


def main() -> None:
    torch.manual_seed(0)
    core = ov.Core()
    results = []
    for name, model, shape in [("resnet_32px", ResNetSmall(1, 10), (1, 32, 32)), ("densenet_28px", DenseBlockNet(1, 10), (1, 28, 28))]:
        converted = ov.convert_model(model.eval(), example_input=torch.randn(2, *shape))
        compiled = {hint: core.compile_model(converted, "CPU", {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": hint}) for hint in HINTS}
        for batch in (1, 8, 32, 128):
            x = np.random.randn(batch, *shape).astype(np.float32)
            times: dict[str, list[float]] = {hint: [] for hint in HINTS}
            for hint in HINTS:
                for _ in range(3):
                    compiled[hint](x)
            for round_index in range(ROUNDS):
                for hint in HINTS if round_index % 2 == 0 else reversed(HINTS):
                    start = time.perf_counter()
                    compiled[hint](x)
                    times[hint].append((time.perf_counter() - start) * 1000)
            medians = {hint: statistics.median(values) for hint, values in times.items()}
            row = {"model": name, "batch": batch, **{f"{h.lower()}_ms": round(m, 3) for h, m in medians.items()}}
            row["throughput_over_latency"] = round(medians["THROUGHPUT"] / medians["LATENCY"], 2)
            row["streams"] = {hint: int(compiled[hint].get_property("NUM_STREAMS")) for hint in HINTS}
            results.append(row)
            print(f"{name:14} batch {batch:4}  LATENCY {medians['LATENCY']:8.3f} ms  THROUGHPUT {medians['THROUGHPUT']:8.3f} ms  "
                  f"({row['throughput_over_latency']}x)", flush=True)
    write_results(RESULTS_DIR / "openvino_hint.json", results)


if __name__ == "__main__":
    main()
