"""bench/serving.py --only residency: six 150 MB variants served in turn under a 400 MB byte bound.

The issue's check, run as a user would: a server with `--variant-cache-bytes 400000000` and its
default two /predict workers; six models of 36 Linear(1024, 1024) layers (151 MB each, in 4 MB
tensors, so their weights live on the heap rather than in separate mappings); two rounds of one
request to each model in turn. The resident memory of the server's whole process tree is polled
every 0.1 s, and growth is quoted from the server at rest (ready, nothing uploaded).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import requests
import torch
from torch import nn

from optimizer_pipeline.files import atomic_write_text

MB = 1_000_000
BOUND = 400 * MB
MODELS = 6
LAYERS = 36  # x 4 MB


def tree_rss(server: object) -> int:
    """Resident bytes of the server's whole process group (`ServerProcess.group_processes`)."""
    total = 0
    for line in server.group_processes():
        try:
            status = open(f"/proc/{line.split()[0]}/status").read()
        except OSError:
            continue  # ended while read
        total += next((int(row.split()[1]) for row in status.splitlines() if row.startswith("VmRSS:")), 0) * 1024
    return total


class _Peak:
    def __init__(self, server: object) -> None:
        self.server, self.value, self._stop = server, tree_rss(server), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            self.value = max(self.value, tree_rss(self.server))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.value


def _archive(seed: int) -> bytes:
    import io

    torch.manual_seed(seed)
    model = nn.Sequential(*[layer for _ in range(LAYERS) for layer in (nn.Linear(1024, 1024), nn.ReLU())]).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    return buffer.getvalue()


def residency(server_class: type, env: dict, upload: object, wait_for: object, config: dict, out: Path | None) -> int:
    """Run the check; print a table, write bench/results/serving_residency.json."""
    inputs = (torch.randn(8, 1024),)
    with tempfile.TemporaryDirectory() as folder:
        server = server_class(Path(folder) / "store", {**env, "OPTISERVE_VARIANT_CACHE_BYTES": str(BOUND), "OPTISERVE_MAX_UPLOAD_BYTES": str(300 * MB)})
        server.start()
        try:
            at_rest = tree_rss(server)
            during_uploads = _Peak(server)
            for i in range(MODELS):
                accepted = upload(server.url, _archive(i), inputs, name=f"big{i}", config=config)
                assert accepted.status_code == 202, accepted.text
                assert wait_for(server.url, accepted.json()["id"], timeout=900)["state"] == "ready"
            upload_peak = during_uploads.stop()
            ready = tree_rss(server)
            started = time.monotonic()
            while server.validation_forkservers() and time.monotonic() - started < 120:
                time.sleep(0.5)  # the validation forkserver ends once uploads stop (validation_idle_seconds)
            idle = tree_rss(server)
            serving = _Peak(server)
            codes = []
            for _ in range(2):
                for i in range(MODELS):
                    body = {"model": f"big{i}", "variant": "original", "inputs": [inputs[0][:2].tolist()]}
                    codes.append(requests.post(server.url + "/predict", json=body, timeout=300).status_code)
            serving_peak, end = serving.stop(), tree_rss(server)
        finally:
            server.stop()
    result = {
        "bound_bytes": BOUND, "variant_bytes": len(_archive(0)), "answers": sorted(set(codes)), "requests": len(codes),
        "growth_mb": {
            "peak_while_uploading_and_optimizing": round((upload_peak - at_rest) / MB),
            "all_ready": round((ready - at_rest) / MB),
            "uploads_idle": round((idle - at_rest) / MB),
            "peak_while_serving": round((serving_peak - at_rest) / MB),
            "end": round((end - at_rest) / MB),
        },
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print("| moment | server growth over at rest |\n|---|---|")
    for moment, mb in result["growth_mb"].items():
        print(f"| {moment.replace('_', ' ')} | {mb} MB |")
    print(f"answers: {result['answers']} over {len(codes)} requests (target: all 200, growth under 700 MB while serving)")
    out = out or Path(__file__).resolve().parents[1] / "results" / "serving_residency.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0 if result["answers"] == [200] else 1
