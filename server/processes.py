"""Process hygiene of the server's own processes (dying with the parent: optimizer_pipeline.processes)."""

from __future__ import annotations

import os
import signal


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
