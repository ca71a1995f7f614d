"""bench/serving.py --only mid: the batching row and the small-model latency rows, without the baselines.

The quick loop for work on the serving path's CPU: the mid ResNet at concurrency 8 (one sample a
request) against an in-process batch-8 call, and the small MLP's p50 at concurrency 1, on the
paths the issue names (/predict JSON, /v2 binary, gRPC). Cells take turns over rounds; medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

from optimizer_pipeline.files import atomic_write_text

SMALL_PATHS = ("optiserve /predict JSON", "optiserve /v2 binary", "optiserve gRPC (tritonclient.grpc)")
MID_PATHS = SMALL_PATHS


def batching_rows(
    url: str, archives: dict, input_names: dict, callers: Callable[..., dict], measure: Callable[..., dict], in_process: Callable[..., float],
    seconds: float, rounds: int,
) -> dict:
    """{"small_p50_ms": {path: ms}, "mid_c8": {path: samples/s}, "mid_share": {path: share of in-process batch 8}, load averages}."""
    load_start = os.getloadavg()[0]
    plan = [("small", path, 1, "p50_ms") for path in SMALL_PATHS] + [("mid", path, 8, "rps") for path in MID_PATHS]
    calls = {name: callers(name, archives[name][1][:1], {}, url, input_names[name]) for name in ("small", "mid")}
    cells: dict[tuple, list[float]] = {}
    for _ in range(rounds):
        for name, path, concurrency, key in plan:
            cells.setdefault((name, path), []).append(measure(calls[name][path], concurrency, seconds)[key])
    archive, calibration = archives["mid"]
    batch8 = 8000 / in_process(archive, calibration[:8])
    mid = {path: round(statistics.median(cells[("mid", path)]), 1) for path in MID_PATHS}
    result = {
        "small_p50_ms": {path: round(statistics.median(cells[("small", path)]), 3) for path in SMALL_PATHS},
        "mid_in_process_batch8_samples_per_s": round(batch8, 1),
        "mid_c8_samples_per_s": mid,
        "mid_share_of_batch8": {path: round(rps / batch8, 3) for path, rps in mid.items()},
        "rounds": {f"{name} {path}": [round(v, 3) for v in values] for (name, path), values in cells.items()},
        "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
    }
    print("| model | path | cell |\n|---|---|---|")
    for path, ms in result["small_p50_ms"].items():
        print(f"| small | {path} | p50 {ms:.2f} ms at c=1 |")
    for path, rps in mid.items():
        print(f"| mid | {path} | {rps:.0f} samples/s at c=8 = {rps / batch8:.0%} of in-process batch 8 ({batch8:.0f}) |")
    print(f"load average (1 min): {result['load_average_1min']}", flush=True)
    return result


def only_mid(
    args: argparse.Namespace, archives: dict, server: object, upload_all: Callable[..., dict], callers: Callable[..., dict],
    measure: Callable[..., dict], in_process: Callable[..., float],
) -> int:
    """Start `server` (a ServerProcess), upload the small and mid models, measure, write args.out."""
    server.start()
    try:
        names = upload_all(server, {name: archives[name] for name in ("small", "mid")})
        result = batching_rows(server.url, archives, names, callers, measure, in_process, args.seconds, args.rounds)
    finally:
        server.stop()
    out = args.out or Path(__file__).resolve().parents[1] / "results" / "serving_mid.json"
    atomic_write_text(out, json.dumps({"seconds_per_cell": args.seconds, **result}, indent=2))
    print(f"wrote {out}")
    return 0
