"""A real optiserve server in a subprocess on a free 127.0.0.1 port, for the server tests.

The server runs in its own session (process group), so the tests can check that a SIGTERM leaves
no process of it behind, and can kill -9 all of it at once the way a crashed machine would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

import tiny_models

REPO = Path(__file__).resolve().parent.parent
# Quick optimizations: tests check behaviour; bench/ measures speed.
FAST_LATENCY = {"latency": {"rounds": 3, "warmup": 1}}
# A plan that always yields an optimized variant (freeze is exact; force serves it even if not faster).
FORCED_FREEZE = {"plan": [{"pass": "freeze"}], "force": True, **FAST_LATENCY}
API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TEST_ENV = {
    "OPTISERVE_API_KEY": API_KEY,
    "OPTISERVE_WORKER_THREADS": "1",
    "OPTISERVE_MAX_BATCH_SIZE": "8",
    "OPTISERVE_MAX_UPLOAD_BYTES": str(2_000_000),
    "OPTISERVE_LOG_LEVEL": "warning",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, store: Path, env: dict[str, str] | None = None) -> None:
        self.store = store
        self.env = {**os.environ, **TEST_ENV, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.log_path = store.parent / f"{store.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "server", "--store", str(self.store), "--port", str(self.port)]

    def start(self, timeout: float = 90.0) -> ServerProcess:
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> list[str]:
        """SIGTERM the main process; returns descriptions of processes of the server still alive after it exits."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)
        return self._wait_group_gone(10.0)

    def kill_main(self) -> list[str]:
        """kill -9 the main process only; returns the processes of the server still alive 15 s later."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        return self._wait_group_gone(15.0)

    def kill(self) -> None:
        """kill -9 every process of the server at once (a crash: no shutdown code runs)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        leftovers = self._wait_group_gone(10.0)
        assert not leftovers, leftovers

    def grandchildren(self) -> list[int]:
        """Processes whose parent is a child of the main process: the job runner's job process (the
        validation forkserver, an API server's child, is left out)."""
        return [pid for pid in self._grandchildren() if not _is_forkserver(pid)]

    def validation_forkservers(self) -> list[int]:
        """The API servers' upload-validation forkservers that are running."""
        return [pid for pid in self._grandchildren() if _is_forkserver(pid)]

    def _grandchildren(self) -> list[int]:
        assert self.process is not None
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    status = (entry / "status").read_text()
                except OSError:
                    continue
                parents[int(entry.name)] = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        return [pid for pid, parent in parents.items() if parents.get(parent) == self.process.pid]

    def job_process(self, timeout: float = 30.0) -> int:
        """The pid of the running job's process, once it exists.

        A job shows `optimizing` as soon as the runner claims it, a moment before the process starts."""
        deadline = time.monotonic() + timeout
        while not (found := self.grandchildren()):
            assert time.monotonic() < deadline, f"no job process started within {timeout} s"
            time.sleep(0.05)
        (pid,) = found
        return pid

    def forked_children(self) -> list[int]:
        """Direct children that run the main program itself (forked: the API servers, LitServe's manager)."""
        assert self.process is not None
        own = Path(f"/proc/{self.process.pid}/cmdline").read_bytes()
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and (entry / "cmdline").read_bytes() == own and _parent(entry) == self.process.pid:
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def group_processes(self) -> list[str]:
        assert self.process is not None
        alive = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            state, pgid = rest[0], int(rest[2])
            if pgid == self.process.pid and state != "Z":
                alive.append(f"{entry.name} {name} {state}")
        return alive

    def _wait_group_gone(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while (alive := self.group_processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return alive

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def running(store: Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A server for one step of a scenario; killed at the end if the step did not stop it."""
    server = ServerProcess(store, env).start()
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.kill()


def server_fixture(env: dict[str, str] | None = None):
    """A module-scoped fixture: one server per test module, stopped with SIGTERM and checked for orphans."""

    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory):
        server = ServerProcess(tmp_path_factory.mktemp("optiserve") / "store", env).start()
        yield server
        if server.process.poll() is None:
            leftovers = server.stop()
            assert not leftovers, f"processes left after SIGTERM: {leftovers}"

    return fixture


def _is_forkserver(pid: int) -> bool:
    try:
        return b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _parent(proc_entry: Path) -> int:
    status = (proc_entry / "status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


# ---- raw-HTTP helpers ----


def upload(url: str, archive: bytes, inputs: tuple, name: str | None = None, config: dict | None = None, **form: Any) -> requests.Response:
    data = {key: str(value).lower() if isinstance(value, bool) else value for key, value in form.items()}
    if name is not None:
        data["name"] = name
    if config is not None:
        data["config"] = json.dumps(config)
    files = {"model": ("model.pt", archive), "calibration": ("calibration.pt", tiny_models.calibration_bytes(inputs))}
    return requests.post(url + "/models", files=files, data=data, headers=AUTH, timeout=60)


def wait_for(url: str, model_id: str, states: tuple[str, ...] = ("ready", "failed"), timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(f"{url}/models/{model_id}", timeout=10).json()
        if status["state"] in states:
            return status
        time.sleep(0.1)
    raise TimeoutError(f"model {model_id} did not reach {states}; last: {status}")


def wait_until(check: Any, what: str, timeout: float = 60.0, log: Path | None = None) -> Any:
    """Poll `check()` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}" + (f"; log:\n{log.read_text()[-3000:]}" if log else ""))


def tensor_object(tensor) -> dict:
    return {"shape": list(tensor.shape), "datatype": "FP32", "data": tensor.reshape(-1).tolist()}


def predict(url: str, model: str, *inputs, endpoint: str = "/predict", **fields: Any) -> requests.Response:
    body = {"model": model, "inputs": [tensor_object(t) for t in inputs], **fields}
    return requests.post(url + endpoint, json=body, timeout=60)


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, _, value = line.rpartition(" ")
        if all(f'{key}="{expected}"' in sample for key, expected in labels.items()):
            total += float(value)
    return total
