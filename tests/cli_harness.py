"""The `optiserve` command line run as a shell runs it: in a process of its own, with this checkout's code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from server_harness import REPO

CLI = [sys.executable, "-m", "clients.cli"]


def cli_env(**variables: str) -> dict[str, str]:
    # PYTHONPATH: this checkout's CLI, whatever the working directory.
    return {**os.environ, "PYTHONPATH": str(REPO), **variables}


def run_cli(*argv: str, cwd: Path = REPO, stdout: int = subprocess.PIPE, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`optiserve ...` in a process of its own, as a shell runs it."""
    return subprocess.run([*CLI, *argv], cwd=cwd, env=cli_env(**(env or {})), stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=180)
