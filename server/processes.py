"""Process hygiene of the server's own processes (dying with the parent: optimizer_pipeline.measure.processes)."""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt in this process, so `finally` blocks run and children are stopped.

    Forked children inherit the handler; there it exits quietly instead (uvicorn re-raises the
    signal once its own graceful shutdown is done, which would otherwise print a traceback).
    """
    owner = os.getpid()

    def handle(signum: int, frame: object) -> None:
        if os.getpid() == owner:
            raise KeyboardInterrupt
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handle)


def adopt_orphans() -> None:
    """Make this process the parent of its descendants' orphans (PR_SET_CHILD_SUBREAPER), so
    `stop_orphans` can end them: a job killed mid-start leaves its timing forkserver behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):
        pass


def stop_orphans(keep: tuple[int, ...] = ()) -> None:
    """SIGKILL every child of this process but `keep`, and reap them."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in keep:
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        if any(line.split() == ["PPid:", me] for line in status.splitlines()):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                os.waitpid(int(entry.name), 0)
            except (ProcessLookupError, ChildProcessError):
                pass
