"""bench/serving.py's first-request rows: the first request after ready against the next ones.

- The row in the full run: one fresh upload of the mid model, /v2/models/{m}/ready polled until
  true, then the first request's latency against the median of the next 20 (the issue's check:
  within 3x).
- `--only first-request`: the same check repeated over fresh uploads on the server's defaults (two
  /predict workers), each followed by a control: the same model, already served, timed the same way
  after it has sat idle as long as the upload took to become ready. On this machine any process that
  slept pays for it on its next request (a 2 µs torch add takes 90-400 µs after a sleep), so a ratio
  above 1 is only the server's if the control's stays below it.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests
import torch

from optimizer_pipeline.files import atomic_write_text

FOLLOWING = 20


def _wait_ready(url: str, name: str) -> None:
    deadline = time.monotonic() + 120
    while not requests.get(f"{url}/v2/models/{name}/ready", timeout=10).json()["ready"]:
        assert time.monotonic() < deadline, f"{name} never said ready"
        time.sleep(0.05)


def _timed(url: str, name: str, calibration: torch.Tensor, following: int = FOLLOWING) -> tuple[float, float]:
    """(first request's ms, median ms of the next `following`), on an open connection."""
    body = {"model": name, "inputs": [{"shape": [1, *calibration.shape[1:]], "datatype": "FP32", "data": calibration[:1].reshape(-1).tolist()}]}
    times = []
    with requests.Session() as session:
        session.get(url + "/v2/health/live", timeout=10)  # the connection is open before the clock starts
        for _ in range(1 + following):
            started = time.perf_counter()
            assert session.post(url + "/predict", json=body, timeout=120).status_code == 200
            times.append(1000 * (time.perf_counter() - started))
    return times[0], statistics.median(times[1:])


def _upload_until_ready(server: object, upload: Callable, wait_for: Callable, config: dict, archive: bytes, calibration: torch.Tensor, name: str) -> float:
    """Seconds from the upload to /v2 saying ready."""
    started = time.monotonic()
    accepted = upload(server.url, archive, (calibration,), name=name, config=config)
    assert accepted.status_code == 202, accepted.text
    wait_for(server.url, accepted.json()["id"], timeout=600)
    _wait_ready(server.url, name)
    return time.monotonic() - started


def first_request_row(server: object, upload: Callable, wait_for: Callable, config: dict, archive: bytes, calibration: torch.Tensor) -> dict:
    """Upload `archive` afresh, wait until /v2 says ready, and time its first request against the next ones."""
    _upload_until_ready(server, upload, wait_for, config, archive, calibration, "first-request")
    first, steady = _timed(server.url, "first-request", calibration)
    print(f"\nfirst request after ready: {first:.2f} ms; median of the next {FOLLOWING}: {steady:.2f} ms ({first / steady:.2f}x)", flush=True)
    return {"first_ms": round(first, 3), "steady_p50_ms": round(steady, 3), "ratio": round(first / steady, 2)}


def first_request_rounds(
    server_class: type, env: dict, upload: Callable, wait_for: Callable, config: dict, archive: bytes, calibration: torch.Tensor,
    rounds: int, out: Path | None,
) -> int:
    """`rounds` fresh uploads, each with its idle control; prints a table, writes serving_first_request.json."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        server = server_class(Path(folder) / "store", env).start()
        try:
            for index in range(rounds):
                name = f"first-{index}"
                waited = _upload_until_ready(server, upload, wait_for, config, archive, calibration, name)
                first, steady = _timed(server.url, name, calibration)
                time.sleep(waited)
                control_first, control_steady = _timed(server.url, name, calibration)
                rows.append({
                    "upload_to_ready_s": round(waited, 2), "first_ms": round(first, 3), "steady_p50_ms": round(steady, 3),
                    "ratio": round(first / steady, 2), "control_ratio": round(control_first / control_steady, 2),
                })
        finally:
            server.stop()
    print("| upload | upload to ready (s) | first (ms) | next 20 p50 (ms) | first / p50 | control: same after idle |\n|---|---|---|---|---|---|")
    for index, row in enumerate(rows):
        print(f"| {index} | {row['upload_to_ready_s']} | {row['first_ms']:.2f} | {row['steady_p50_ms']:.2f} | {row['ratio']:.2f} | {row['control_ratio']:.2f} |")
    ratios, controls = [row["ratio"] for row in rows], [row["control_ratio"] for row in rows]
    summary = {
        "median_ratio": statistics.median(ratios), "max_ratio": max(ratios),
        "median_control_ratio": statistics.median(controls), "max_control_ratio": max(controls),
    }
    verdict = "met" if summary["max_ratio"] <= 3 else "MISSED"
    print(f"\nfirst request after ready: median {summary['median_ratio']:.2f}x, worst {summary['max_ratio']:.2f}x of the next {FOLLOWING}'s "
          f"median against 3x -> {verdict}; the same model after as long idle: median {summary['median_control_ratio']:.2f}x, "
          f"worst {summary['max_control_ratio']:.2f}x")
    result = {"torch": torch.__version__, "server_env": {k: v for k, v in env.items() if k != "OPTISERVE_API_KEY"}, "rows": rows, **summary, "target": verdict}
    atomic_write_text(out := out or Path(__file__).resolve().parents[1] / "results" / "serving_first_request.json", json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0
