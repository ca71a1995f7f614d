"""A real PostgreSQL (Debian's package) and a real S3 API (moto_server) for the shared-store tests,
and the processes of a shared store: API replicas and job workers.

Each is started once per test session, on a free port, in a temporary directory; a test gets its own
database and its own bucket. Where one cannot start, the tests that need it skip and say why.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from server_harness import REPO, ServerProcess, free_port, wait_until

POSTGRES_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name))


@dataclass
class Postgres:
    port: int
    directory: Path

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://optiserve@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its DSN."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)


@dataclass
class S3:
    port: int

    @property
    def env(self) -> dict[str, str]:
        """boto3's standard environment, pointed at this server."""
        return {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        name = "t-" + uuid.uuid4().hex[:12]
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listing = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for item in listing.get("Contents", [])]


class Replica(ServerProcess):
    """An API server of the shared store, serving only."""

    def __init__(self, state: Path, shared: list[str], env: dict[str, str]) -> None:
        super().__init__(state, env)
        self.shared = shared

    def command(self) -> list[str]:
        return [sys.executable, "-m", "server", *self.shared, "--state-dir", str(self.store), "--no-jobs", "--port", str(self.port)]


class Worker:
    """`python -m server worker`: jobs only, in its own process group."""

    def __init__(self, state: Path, shared: list[str], env: dict[str, str]) -> None:
        self.log_path = state.parent / f"{state.name}-worker.log"
        with open(self.log_path, "ab") as log:
            command = [sys.executable, "-m", "server", "worker", *shared, "--state-dir", str(state)]
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: "optiserve worker running jobs" in self.log_path.read_text() or self.process.poll() is not None, "worker start", log=self.log_path)
        assert self.process.poll() is None, self.log_path.read_text()

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)  # the worker and its job's process: a crashed node
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)


class Unavailable(Exception):
    """A service could not start here; the message says why."""


def _as_postgres_user(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on a free port (trust auth, fsync off), removed afterwards."""
    if not POSTGRES_BIN:
        raise Unavailable("PostgreSQL is not installed (Debian package `postgresql`; .ci/run installs it)")
    if importlib.util.find_spec("psycopg") is None:
        raise Unavailable("psycopg is not installed (pip install -e ./clients -e '.[shared]')")
    binaries = POSTGRES_BIN[-1]
    # Not under pytest's basetemp: its directories are private to root, and the server runs as postgres.
    directory = Path(tempfile.mkdtemp(prefix="optiserve-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    data, port = directory / "data", free_port()
    initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "optiserve", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    try:
        subprocess.run(_as_postgres_user(initdb), check=True, capture_output=True)
        subprocess.run(
            _as_postgres_user([str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(directory / "log"), "-w", "start"]),
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        output = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")
        shutil.rmtree(directory, ignore_errors=True)
        raise Unavailable(f"PostgreSQL could not start: {exc} {output[-500:]}") from None
    try:
        yield Postgres(port, directory)
    finally:
        subprocess.run(_as_postgres_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def running_s3(log: Path) -> Iterator[S3]:
    """moto_server's S3 API on a free port."""
    executable = shutil.which("moto_server")
    if executable is None:
        raise Unavailable("moto_server is not installed (pip install 'moto[server]'; in the test extras)")
    port = free_port()
    with open(log, "wb") as output:
        process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)], stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise Unavailable(f"moto_server exited with {process.returncode}: {log.read_text()[-500:]}")
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or its first answer is slow
                if time.monotonic() > deadline:
                    raise Unavailable(f"moto_server did not answer within 30 s: {log.read_text()[-500:]}") from None
                time.sleep(0.1)
        yield S3(port)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def postgres():
    with ExitStack() as stack:
        try:
            found = stack.enter_context(running_postgres())
        except Unavailable as reason:
            pytest.skip(str(reason))
        yield found


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory):
    with ExitStack() as stack:
        try:
            found = stack.enter_context(running_s3(tmp_path_factory.mktemp("moto") / "moto.log"))
        except Unavailable as reason:
            pytest.skip(str(reason))
        yield found
