"""No secrets where model code runs, and a seccomp filter there (issue 20, item 2).

A memory-safety bug in a model (an out-of-range sparse index) lets it read anything in its own
process. So the processes that run model code (inference workers, the job runner and its job
processes, the forkservers their children come from) must hold no API key, in memory or in their
environment, and must not be able to read the key file; only the main process and the HTTP front
end hold it. The memory is checked for real: every readable mapping, through /proc/<pid>/mem.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
from pathlib import Path

import pytest
import requests

import hostile_models
import tiny_models
from server_harness import ServerProcess, predict, wait_for, wait_until

KEY = "leak-" + secrets.token_hex(24)
HEADERS = {"Authorization": f"Bearer {KEY}"}
# Thousands of timing rounds: the job is still running while the test looks at it.
SLOW = {"latency": {"rounds": 5000, "warmup": 1}}
CHUNK = 64 * 2**20


def upload(url: str, archive: bytes, inputs: tuple, name: str, config: dict | None = None) -> requests.Response:
    files = {"model": ("model.pt", archive), "calibration": ("calibration.pt", tiny_models.calibration_bytes(inputs))}
    data = {"name": name, **({"config": json.dumps(config)} if config else {})}
    return requests.post(url + "/models", files=files, data=data, headers=HEADERS, timeout=60)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _seccomp_mode(pid: int) -> str | None:
    try:
        return _status(pid).get("Seccomp")
    except OSError:  # it ended: its filter can no longer be seen
        return None


def _descendants(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_status(int(entry.name))["PPid"])
            except (OSError, KeyError):
                continue
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _holds(pid: int, needle: bytes) -> list[str]:
    """Where `needle` appears in the process: its environment, or which of its readable mappings."""
    places = []
    if needle in Path(f"/proc/{pid}/environ").read_bytes():
        places.append("environ")
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            if not fields[1].startswith("r") or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(part, 16) for part in fields[0].split("-"))
            tail = b""
            for offset in range(start, end, CHUNK):
                try:
                    mem.seek(offset)
                    data = mem.read(min(CHUNK, end - offset))
                except OSError:  # e.g. a guard page
                    break
                if needle in tail + data:
                    places.append(line.strip())
                    break
                tail = data[-len(needle) :]
    return places


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it ended while the tree was read (a job's short-lived timing child, say)
        return b""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("secrets") / "store"
    env = {"OPTISERVE_API_KEY": KEY, "OPTISERVE_VALIDATION_TIMEOUT": "20", "OPTISERVE_AUTH_INFERENCE": "true",
           "OPTISERVE_VALIDATION_IDLE_SECONDS": "3600"}  # the forkserver is among the processes checked
    server = ServerProcess(store, env).start()
    yield server
    if server.process.poll() is None:
        leftovers = server.stop()
        assert not leftovers, f"processes left after SIGTERM: {leftovers}"


def test_no_process_that_runs_model_code_holds_the_api_key(server):
    main = server.process.pid
    mlp, mlp_inputs = tiny_models.mlp()
    cnn, cnn_inputs = tiny_models.cnn_bn()
    assert predict(server.url, "none", mlp_inputs[0][:1]).status_code == 401  # the key guards inference here
    model = upload(server.url, mlp, mlp_inputs, name="served", config={"latency": {"rounds": 3, "warmup": 1}}).json()["id"]
    wait_for(server.url, model)
    # Both inference endpoints' workers have served a request (with the key, as --auth-inference asks).
    body = {"model": "served", "inputs": [{"shape": [1, 16], "datatype": "FP32", "data": mlp_inputs[0][0].tolist()}]}
    for endpoint in ("/predict", "/compare"):
        answer = requests.post(server.url + endpoint, json=body, headers=HEADERS, timeout=60)
        assert answer.status_code in (200, 409), answer.text
    slow = upload(server.url, cnn, cnn_inputs, name="slow", config=SLOW).json()["id"]
    wait_for(server.url, slow, states=("optimizing",))
    job = server.job_process()

    front_end = [pid for pid in _descendants(main) if _cmdline(pid) == _cmdline(main)]
    model_code = [pid for pid in _descendants(main) if pid not in front_end]
    spawned = [pid for pid in model_code if b"multiprocessing.spawn" in _cmdline(pid) and int(_status(pid)["PPid"]) == main]
    forkservers = [pid for pid in model_code if b"forkserver" in _cmdline(pid)]
    # Two inference workers (/predict, /compare) and the job runner; the job; the validation forkserver.
    assert len(spawned) >= 3 and job in model_code and forkservers, (spawned, job, forkservers)

    leaks = {}
    for pid in model_code:
        try:
            places = _holds(pid, KEY.encode())
        except (FileNotFoundError, ProcessLookupError):
            continue  # a timing process that finished meanwhile
        if places:
            leaks[f"{pid} {_cmdline(pid)[:80]!r}"] = places[:3]
    assert not leaks, f"the API key is in processes that run model code: {leaks}"
    # The scan finds the key where it is meant to be: the HTTP front end checks it.
    assert any(_holds(pid, KEY.encode()) for pid in front_end)
    requests.delete(f"{server.url}/models/slow", headers=HEADERS, timeout=30)


def test_processes_that_run_model_code_run_under_seccomp(server):
    main = server.process.pid
    mlp, mlp_inputs = tiny_models.mlp()
    cnn, cnn_inputs = tiny_models.cnn_bn()
    model = upload(server.url, mlp, mlp_inputs, name="filtered", config={"latency": {"rounds": 3, "warmup": 1}}).json()["id"]
    wait_for(server.url, model)
    body = {"model": "filtered", "inputs": [{"shape": [1, 16], "datatype": "FP32", "data": mlp_inputs[0][0].tolist()}]}
    assert requests.post(server.url + "/predict", json=body, headers=HEADERS, timeout=60).status_code == 200
    front_end = [pid for pid in _descendants(main) if _cmdline(pid) == _cmdline(main)]
    # multiprocessing's resource tracker runs no model code (and nothing of ours).
    runner_and_workers = [
        pid
        for pid in _descendants(main)
        if int(_status(pid)["PPid"]) == main and pid not in front_end and b"resource_tracker" not in _cmdline(pid)
    ]

    upload(server.url, cnn, cnn_inputs, name="slow-2", config=SLOW)
    job = server.job_process()
    try:
        # The job process fetches its files first, then confines itself.
        wait_until(lambda: _status(job).get("Seccomp") == "2", "the job's seccomp filter", timeout=30)
        filtered = {pid: _status(pid).get("Seccomp") for pid in (*runner_and_workers, job)}
    finally:
        requests.delete(f"{server.url}/models/slow-2", headers=HEADERS, timeout=30)
    runner = int(_status(job)["PPid"])
    # The runner runs no model code (it only supervises); every other one has the filter on.
    assert {pid: mode for pid, mode in filtered.items() if pid != runner} == {pid: "2" for pid in filtered if pid != runner}, filtered
    assert len(filtered) >= 4, filtered  # two inference workers, the runner, the job

    # A validation child (of a model that never returns) lives until its timeout: catch it.
    hanging = threading.Thread(
        target=lambda: upload(server.url, hostile_models.archive(hostile_models.Loops()), hostile_models.inputs(), name="hangs")
    )
    hanging.start()
    try:
        validating = wait_until(
            lambda: [child for pid in _descendants(main) if b"forkserver" in _cmdline(pid) for child in _children(pid)],
            "a validation child",
            timeout=30,
        )
        # Caught as it starts, it may not have reached its filter yet: it must within a few seconds.
        wait_until(lambda: _seccomp_mode(validating[0]) == "2", "the validation child's seccomp filter", timeout=10)
    finally:
        hanging.join()
    assert all(_status(pid).get("Seccomp") == "0" for pid in front_end)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_status(int(entry.name))["PPid"]) == pid:
                    found.append(int(entry.name))
            except (OSError, KeyError):
                continue
    return found


def _in_child(check) -> None:
    """Run `check` in a forked child; fail the test with what it raised."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        try:
            check()
            message = b""
        except BaseException as exc:  # reported to the parent
            message = f"{type(exc).__name__}: {exc}".encode() or b"?"
        os.write(writer, message)
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    assert not message, message.decode()


def test_the_filter_refuses_exec_and_network_sockets_with_eperm():
    from server.jobs import seccomp_filter

    def confined() -> None:
        seccomp_filter.install(seccomp_filter.SyscallPolicy())
        assert seccomp_filter.installed()
        with pytest.raises(PermissionError):
            os.execv("/bin/true", ["true"])
        for family in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET):
            with pytest.raises(PermissionError):
                socket.socket(family, socket.SOCK_DGRAM if family == socket.AF_NETLINK else socket.SOCK_STREAM)
        socket.socket(socket.AF_UNIX).close()  # LitServe's queues and the forkservers
        left, right = socket.socketpair()
        left.close(), right.close()
        threading.Thread(target=lambda: None).start()  # clone stays allowed
        child = os.fork()
        if child == 0:
            os._exit(7)
        assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 7

    def confined_with_network() -> None:
        seccomp_filter.install(seccomp_filter.SyscallPolicy(network=True))
        socket.socket(socket.AF_INET).close()  # a shared store's PostgreSQL and S3
        with pytest.raises(PermissionError):
            os.execv("/bin/true", ["true"])

    _in_child(confined)
    _in_child(confined_with_network)


def test_an_inference_worker_cannot_read_the_key_file_nor_write_the_index(tmp_path, monkeypatch):
    from server.jobs import confinement
    from server.http.auth import key_path, resolve_key
    from server.settings import Settings
    from server.inference.shared_tensors import SHM_DIR
    from server.store import open_store

    if not confinement.landlock_abi():
        pytest.skip("this kernel has no Landlock")
    monkeypatch.delenv("OPTISERVE_API_KEY")
    settings = Settings(store=str(tmp_path / "store"))
    settings.metrics_dir.mkdir(parents=True)
    key, _ = resolve_key(None, settings.local_dir)
    store = open_store(settings)
    assert store.get("m1") is None  # the main process holds the index open (its WAL files exist)
    model_file = store.artifacts.models_dir / "m1" / "original.pt"
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(b"weights")

    def as_a_worker() -> None:
        import sqlite3

        worker_store = open_store(settings, read_only=True)  # as InferenceAPI.setup opens it
        confinement.apply(confinement.for_inference_worker(settings, worker_store, SHM_DIR))
        with pytest.raises(PermissionError):
            key_path(settings.local_dir).read_text()
        assert model_file.read_bytes() == b"weights"  # what it serves stays readable
        assert worker_store.get("nothing") is None  # and so does the index
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            worker_store.reset_health("m1")
        index = worker_store.db.path
        with pytest.raises(PermissionError):  # nor around SQLite: Landlock refuses the file itself
            open(index, "r+b")
        with pytest.raises(PermissionError):
            open(f"{index}-wal", "r+b")
        with pytest.raises(sqlite3.OperationalError):
            sqlite3.connect(index, isolation_level=None).execute("DELETE FROM models")

    assert key_path(settings.local_dir).read_text().strip() == key
    _in_child(as_a_worker)


class _Planted:
    """Unpickling this creates a file: proof that a record was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_the_main_process_writes_what_workers_send_and_refuses_anything_else(tmp_path):
    import pickle

    from wire.contract.live import LiveSample
    from wire.contract.report import ModelSummary
    from server.live.record_channel import RecordWriter
    from wire.contract.models import ModelMeta
    from server.settings import Settings
    from server.store import new_model_id, now, open_store

    store = open_store(Settings(store=str(tmp_path / "store")))
    model_id = new_model_id()
    store.stage_files(model_id, {"original.pt": b"m", "calibration.bin": b"c"})
    summary = ModelSummary(
        inputs=["x"], input_shapes=[[4]], input_dtypes=["float32"], outputs=["y"], output_shapes=[[2]], parameters=1, size_bytes=1, exported_methods=[]
    )
    store.add_model(ModelMeta(id=model_id, name="m", created_at=now(), summary=summary))
    writer = RecordWriter(store, unhealthy_after=1)
    writer.start()
    endpoint = writer.sender._endpoint  # what a compromised worker holds
    planted = tmp_path / "unpickled"
    for forged in (pickle.dumps(_Planted(planted)), b"{not json", b'{"kind": "routing", "model_id": "x", "policy": "optimized"}'):
        endpoint.send(forged)
    writer.sender.live([(model_id, LiveSample(revision=0, served="original", served_ms=1.5))], set())
    writer.sender.timeout(model_id, "the forward call did not finish")
    wait_until(lambda: not store.get(model_id).health.healthy, "the timeout written by the main process", timeout=10)
    assert [sample.served_ms for sample in store.live_samples(model_id, 10)] == [1.5]
    assert not planted.exists()
