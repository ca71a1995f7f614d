"""bench/serving.py --only mid: the batching row and the small-model latency rows, without the baselines.

The quick loop for work on the serving path's CPU: the mid ResNet at concurrency 8 (one sample a
request) against an in-process batch-8 call, and the small MLP's p50 at concurrency 1, on the
paths the issue names (/predict JSON, /v2 binary, gRPC). Cells take turns over rounds; medians.

--only mid-defaults runs the same rows as the issue's hidden check does: the server on its own
defaults (two /predict workers, a torch thread per core, batches up to 16), against an in-process
batch-8 call on every core. Each mid cell also records the CPU each process spent per request
(from /proc; the client is this process).

--busy N keeps N other processes spinning on the CPU for the whole run (the issue's check runs "on a
busy 2-core machine"), the in-process calls included. The in-process baseline is measured in every
round, after the cells, as samples over wall time like the cells: under load, a 2-thread call's time
is bimodal (a stalled OpenMP thread waits a scheduler slice), and a median call would hide the stalls.

With more than one torch thread in process, each round also times the batch-8 call on one thread:
the most a server can reach whose model runs in one worker on one torch thread (the default on 2
cores) even with no cost of its own, and with its groups always 8 samples.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from optimizer_pipeline.files import atomic_write_text

SMALL_PATHS = ("optiserve /predict JSON", "optiserve /v2 binary", "optiserve gRPC (tritonclient.grpc)")
MID_PATHS = SMALL_PATHS


def batching_rows(
    url: str, archives: dict, input_names: dict, callers: Callable[..., dict], measure: Callable[..., dict], seconds: float, rounds: int,
    pids: dict[int, str],
) -> dict:
    """{"small_p50_ms": {path: ms}, "mid_c8": {path: samples/s}, "mid_share": {path: share of in-process batch 8}, load averages}."""
    load_start = os.getloadavg()[0]
    plan = [("small", path, 1, "p50_ms") for path in SMALL_PATHS] + [("mid", path, 8, "rps") for path in MID_PATHS]
    calls = {name: callers(name, archives[name][1][:1], {}, url, input_names[name]) for name in ("small", "mid")}
    cells: dict[tuple, list[float]] = {}
    cpu: dict[str, list[dict[str, float]]] = {}
    archive, calibration = archives["mid"]
    direct, batch8_rounds, one_thread_rounds = torch.jit.load(io.BytesIO(archive)), [], []
    for _ in range(rounds):
        for name, path, concurrency, key in plan:
            before = _cpu_seconds(pids)
            cell = measure(calls[name][path], concurrency, seconds)
            cells.setdefault((name, path), []).append(cell[key])
            if name == "mid":
                cpu.setdefault(path, []).append(_per_request(before, _cpu_seconds(pids), cell["rps"] * seconds))
        batch8_rounds.append(_samples_per_second(direct, calibration[:8], seconds))
        if torch.get_num_threads() > 1:
            one_thread_rounds.append(_on_one_thread(lambda: _samples_per_second(direct, calibration[:8], seconds)[0]))
    batch8 = statistics.median(wall for wall, _ in batch8_rounds)
    at_median_call = statistics.median(median for _, median in batch8_rounds)
    mid = {path: round(statistics.median(cells[("mid", path)]), 1) for path in MID_PATHS}
    result = {
        "small_p50_ms": {path: round(statistics.median(cells[("small", path)]), 3) for path in SMALL_PATHS},
        "mid_in_process_batch8_samples_per_s": round(batch8, 1),
        "mid_in_process_batch8_rounds": [round(wall, 1) for wall, _ in batch8_rounds],
        # The same calls' rate at their median time: under load the two part (stalls are in the tail).
        "mid_in_process_batch8_at_median_call": round(at_median_call, 1),
        # A one-thread worker's ceiling (see the module's docstring), as a share of the call on every core.
        "mid_in_process_batch8_one_thread": _ceiling(one_thread_rounds, batch8),
        "mid_c8_samples_per_s": mid,
        "mid_share_of_batch8": {path: round(rps / batch8, 3) for path, rps in mid.items()},
        "rounds": {f"{name} {path}": [round(v, 3) for v in values] for (name, path), values in cells.items()},
        "mid_cpu_ms_per_request": cpu,
        "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
    }
    print("| model | path | cell |\n|---|---|---|")
    for path, ms in result["small_p50_ms"].items():
        print(f"| small | {path} | p50 {ms:.2f} ms at c=1 |")
    for path, rps in mid.items():
        spent = ", ".join(f"{role} {ms:.2f}" for role, ms in cpu[path][-1].items())
        print(f"| mid | {path} | {rps:.0f} samples/s at c=8 = {rps / batch8:.0%} of in-process batch 8 ({batch8:.0f}); CPU ms a request: {spent} |")
    print(f"in-process batch 8: {batch8:.0f} samples/s over wall time, {at_median_call:.0f} at the median call's time")
    if one_thread_rounds:
        ceiling = result["mid_in_process_batch8_one_thread"]
        print(f"in-process batch 8 on one thread: {ceiling['samples_per_s']:.0f} samples/s = {ceiling['share']:.0%}: a one-thread worker's ceiling")
    print(f"load average (1 min): {result['load_average_1min']}", flush=True)
    return result


def only_mid(
    args: argparse.Namespace, archives: dict, server: object, upload_all: Callable[..., dict], callers: Callable[..., dict],
    measure: Callable[..., dict],
) -> int:
    """Start `server` (a ServerProcess), upload the small and mid models, measure, write args.out.
    mid-defaults: the server's own defaults for workers, threads and batch size, in process on every core."""
    defaults = args.only == "mid-defaults"
    if defaults:
        for setting in ("OPTISERVE_WORKERS", "OPTISERVE_WORKER_THREADS", "OPTISERVE_MAX_BATCH_SIZE"):
            if setting not in os.environ:  # the tests' values, not the caller's
                server.env.pop(setting, None)
        torch.set_num_threads(os.cpu_count() or 1)
    server.start()
    try:
        names = upload_all(server, {name: archives[name] for name in ("small", "mid")})
        pids = _roles(server)
        with spinning(args.busy):
            result = batching_rows(server.url, archives, names, callers, measure, args.seconds, args.rounds, pids)
    finally:
        server.stop()
    result["server"] = "defaults (2 workers, a torch thread per core)" if defaults else "1 worker, 1 torch thread"
    result["busy_processes"] = args.busy
    result["in_process_threads"] = torch.get_num_threads()
    busy = f"_busy{args.busy}" if args.busy else ""
    out = args.out or Path(__file__).resolve().parents[1] / "results" / f"serving_{args.only.replace('-', '_')}{busy}.json"
    atomic_write_text(out, json.dumps({"seconds_per_cell": args.seconds, **result}, indent=2))
    print(f"wrote {out}")
    return 0


def _on_one_thread(measure: Callable[[], float]) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measure()
    finally:
        torch.set_num_threads(threads)


def _ceiling(one_thread_rounds: list[float], batch8: float) -> dict | None:
    if not one_thread_rounds:
        return None
    rate = statistics.median(one_thread_rounds)
    return {"samples_per_s": round(rate, 1), "rounds": [round(r, 1) for r in one_thread_rounds], "share": round(rate / batch8, 3)}


def _samples_per_second(module: torch.jit.ScriptModule, batch: torch.Tensor, seconds: float) -> tuple[float, float]:
    """(samples over `seconds` of wall time, samples/s at the median call's time), after a warm-up."""
    times = []
    with torch.inference_mode():
        for _ in range(30):
            module(batch)
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            call = time.perf_counter()
            module(batch)
            times.append(time.perf_counter() - call)
    return len(times) * len(batch) / (time.perf_counter() - started), len(batch) / statistics.median(times)


@contextlib.contextmanager
def spinning(count: int) -> Iterator[None]:
    """`count` processes that keep a core busy each (a pure-Python loop) until the block ends."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def _roles(server: object) -> dict[int, str]:
    """pid -> role of the server's processes that serve requests: the API server, and each inference
    worker (the spawned processes with a torch thread pool; LitServe's Manager has one thread)."""
    roles, workers = {}, 0
    for line in server.group_processes():
        pid = int(line.split()[0])
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        threads = len(os.listdir(f"/proc/{pid}/task"))
        if "multiprocessing.spawn" in command and threads > 2:
            roles[pid], workers = f"worker {workers}", workers + 1
        elif "-m server" in command and pid != server.process.pid and threads > 2:
            roles[pid] = "API server"
    return roles


def _cpu_seconds(pids: dict[int, str]) -> dict[str, float]:
    ticks = os.sysconf("SC_CLK_TCK")
    spent = {"client": sum(os.times()[:2])}
    for pid, role in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        # Summed: two processes run `-m server` (the API server, and the jobs' parent, idle here).
        spent[role] = spent.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return spent


def _per_request(before: dict[str, float], after: dict[str, float], requests: float) -> dict[str, float]:
    return {role: round(1000 * (after[role] - before[role]) / requests, 3) for role in after}
