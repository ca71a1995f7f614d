"""Benchmark: upload to serving the optimized variant, for a ResNet-18-size model, with the default config.

Issue 21's target: a ResNet-18-size CNN (3x96x96 inputs, a calibration batch of 32, random weights)
goes from upload to its optimized variant answering within 5 minutes on this 2-core machine. The
server runs as a user starts it (`python -m server --store DIR --port P`, its defaults: local store,
SQLite), the upload carries no config, and the clock runs from the upload's first byte until a
request for the optimized variant has been answered after the model's state said ready (ready means
every /predict worker has warmed it). The status's per-stage times are printed beside it.

    python bench/upload_to_serving.py                     # writes bench/results/upload_to_serving.json
    python bench/upload_to_serving.py --unlabeled 1024    # and an unlabeled set: upload_to_serving_unlabeled1024.json
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests")]

from clients import OptiserveClient  # noqa: E402
from pruning import ResNet18Shape  # noqa: E402
from server_harness import API_KEY, free_port  # noqa: E402
from support.common import RESULTS_DIR, write_results  # noqa: E402

RESULTS = RESULTS_DIR / "upload_to_serving.json"
TARGET_SECONDS = 300.0


def saved(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


def resnet18_archive(seed: int, unlabeled: int) -> tuple[bytes, bytes, bytes | None]:
    torch.manual_seed(seed)
    model = ResNet18Shape().eval()
    calibration = torch.randn(32, 3, 96, 96)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(model, calibration[:2]), buffer)
    return buffer.getvalue(), saved(calibration), saved(torch.randn(unlabeled, 3, 96, 96)) if unlabeled else None


def start_server(store: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OPTISERVE_API_KEY": API_KEY}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "server", "--store", str(store), "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(url + "/ready", timeout=2).status_code == 200:
                return process, url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server not ready after 120 s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unlabeled", type=int, default=0, help="also upload this many unlabeled inputs (compound plans become possible)")
    args = parser.parse_args()
    archive, calibration, unlabeled = resnet18_archive(args.seed, args.unlabeled)
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_server(Path(tmp) / "store", Path(tmp) / "server.log")
        try:
            client = OptiserveClient(url, timeout=600, api_key=API_KEY)
            started = time.perf_counter()
            accepted = client.upload(archive, calibration, name="resnet18", unlabeled=unlabeled)
            status = client.wait(accepted.id, timeout=1800, progress=False)
            ready_seconds = time.perf_counter() - started
            served = status.chosen is not None and status.chosen.candidate != "original"
            client.predict(accepted.id, torch.randn(32, 3, 96, 96), variant="optimized" if served else "original")
            total_seconds = time.perf_counter() - started
            report = client.report(accepted.id)
        finally:
            process.terminate()
            process.wait(60)
    load = os.getloadavg()[0]
    result = {
        "model": "ResNet-18 shape (BasicBlocks 2-2-2-2, 11.2M params), 3x96x96, batch 32, random weights",
        "unlabeled": args.unlabeled,
        "state": status.state,
        "chosen": status.chosen.model_dump() if status.chosen else None,
        "upload_to_ready_seconds": round(ready_seconds, 1),
        "upload_to_served_seconds": round(total_seconds, 1),
        "optimization_seconds": status.optimization_seconds,
        "stage_seconds": status.stage_seconds,
        "search_note": report.search.first_note if report.search else None,
        "compound_note": report.search.compound_note if report.search else None,
        "job_attempts": status.attempts,
        "notes": status.notes,
        "trials": [
            {"name": c.name, "origin": c.origin, "status": c.status, "speedup": c.speedup, "verdict": c.fidelity.verdict if c.fidelity else None, "error": (c.error or "")[:300] or None}
            for c in report.candidates
        ],
        "target_seconds": TARGET_SECONDS,
        "met": total_seconds <= TARGET_SECONDS,
        "load_average_1min_after": round(load, 2),
    }
    write_results(RESULTS.with_stem(RESULTS.stem + (f"_unlabeled{args.unlabeled}" if args.unlabeled else "")), [result])
    chosen = status.chosen
    print("| model | pick | speed-up | upload → served | target |\n|---|---|---|---|---|")
    print(f"| ResNet-18 size, 3x96x96 | {chosen.candidate if chosen else '-'} | {chosen.speedup if chosen else '-'} | {total_seconds:.0f} s | {TARGET_SECONDS:.0f} s: {'met' if result['met'] else 'MISSED'} |")
    print("per stage (s):", status.stage_seconds)
    print("load average after:", load)


if __name__ == "__main__":
    main()
