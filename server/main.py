"""Starting the server: flags -> Settings, per-run process environment, then the LitServer.

Kept free of torch, litserve and prometheus imports: prometheus_client must only be imported after
PROMETHEUS_MULTIPROC_DIR is set, and `optiserve --help` should stay fast.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
from pathlib import Path
from typing import IO

from pydantic import SecretStr, ValidationError

from .http.auth import resolve_key
from .settings import SECRET_VARIABLES, Settings

FLAG_TYPES = {int: int, float: float, str: str, Path: Path}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (--store, --workers, --auth/--no-auth, ...); unset flags fall back to OPTISERVE_* or defaults."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description or name} (env OPTISERVE_{name.upper()})"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=FLAG_TYPES.get(field.annotation, str), default=None, help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    return Settings(**given)


def serve(settings: Settings) -> int:
    lock = _take_local_dir(settings)
    if lock is None:
        return 1
    from .app import run_server  # only now: it creates the Prometheus metrics

    print(f"optiserve starting on {settings.url}  (store: {settings.store_description})", flush=True)
    if not settings.jobs:
        print("jobs are OFF here (--no-jobs): uploads stay queued until an `optiserve worker` takes them", flush=True)
    if settings.auth:
        key, origin = resolve_key(settings.api_key.get_secret_value() if settings.api_key else None, settings.local_dir)
        settings = settings.model_copy(update={"api_key": SecretStr(key)})
        scope = "management and inference routes" if settings.auth_inference else "management routes"
        print(f"API key {origin}; {scope} need 'Authorization: Bearer <key>'", flush=True)
    else:
        print("auth is OFF: anyone who reaches the port can upload, replace and delete models", flush=True)
    return run_server(settings)


def run_worker(settings: Settings) -> int:
    """Run optimization jobs only, from a shared store, until SIGTERM."""
    if not settings.shared:
        print(
            "error: a worker needs a shared store (--store postgresql://... --artifacts s3://...); "
            "an embedded store's server runs its own jobs",
            file=sys.stderr,
        )
        return 1
    lock = _take_local_dir(settings)
    if lock is None:
        return 1
    from .jobs.runner import work  # only now: it creates the Prometheus metrics (and imports torch)

    print(f"optiserve worker running jobs from {settings.store_description}", flush=True)
    return work(settings.without_secrets())  # it checks no key; its job processes run model code


COMMANDS = {"serve": serve, "worker": run_worker}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description="Run the optiserve server, or (`worker`) a job worker.")
    parser.add_argument("command", nargs="?", choices=tuple(COMMANDS), default="serve", help="serve (default) or worker")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"error: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    _forget_secret_sources()
    return COMMANDS[args.command](settings)


def _forget_secret_sources() -> None:
    """The key lives in the Settings object from now on, not in the environment or sys.argv.

    Every child inherits the environment, and spawned ones (LitServe's inference workers, the job
    runner) get a copy of sys.argv: processes that run model code must find no key in either."""
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)
    argv, hidden = list(sys.argv), False
    for position, argument in enumerate(argv):
        if hidden:
            argv[position], hidden = "***", False
        elif argument == "--api-key":
            hidden = True
        elif argument.startswith("--api-key="):
            argv[position] = "--api-key=***"
    sys.argv[:] = argv


def _take_local_dir(settings: Settings) -> IO[bytes] | None:
    """Lock this process's local directory and start its metrics afresh; None (and why, printed) if another process has it.

    Embedded, that directory is the store: the lock keeps a second server off it. Shared, it holds
    only this process's state (its metrics are wiped at start); the store itself takes any number."""
    local = settings.local_dir
    local.mkdir(parents=True, exist_ok=True)
    lock = _lock_store(local)
    if lock is None:
        hint = " (give each process its own --state-dir)" if settings.shared else ""
        print(f"error: another optiserve server is using the store {local.resolve()}{hint}", file=sys.stderr)
        return None
    _reset_metrics_dir(settings.metrics_dir)
    return lock


def _lock_store(store: Path) -> IO[bytes] | None:
    # Two servers on one store would run each other's jobs and re-queue each other's work on start.
    # A POSIX record lock belongs to this process alone (forked children do not inherit it), and the
    # OS releases it when the process dies, even by kill -9: a restart never waits for stragglers.
    handle = open(store / "server.lock", "ab")
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _reset_metrics_dir(directory: Path) -> None:
    # Wiped by the main process only, before any other process exists (shared NOTES).
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory.resolve())
