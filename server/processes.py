"""Process hygiene shared by everything the server starts: no orphans, even after a kill -9 of the parent."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        pass


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
