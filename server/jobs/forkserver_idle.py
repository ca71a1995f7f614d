"""Ends the upload-validation forkserver when no upload has used it for a while.

The forkserver has torch and the pipeline imported (about 300 MB resident) so that each
validation child starts in milliseconds. Between bursts of uploads that memory would sit idle in
every API server for good; ending the forkserver gives it back, and the next upload starts a new
one (a few seconds, once).
"""

from __future__ import annotations

import multiprocessing.forkserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class IdleForkserver:
    """Counts validations in flight; `idle_seconds` after the last one ends, stops the forkserver."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._timer: threading.Timer | None = None

    @contextmanager
    def in_use(self, idle_seconds: float) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._timer = threading.Timer(idle_seconds, self._stop_if_idle)
                    self._timer.daemon = True
                    self._timer.start()

    def _stop_if_idle(self) -> None:
        with self._lock:
            if self._in_flight or self._timer is None or self._timer is not threading.current_thread():
                return  # a validation started (or a newer timer took over) since this one was set
            self._timer = None
            # The standard library's only way to end its forkserver (its own tests use it); a new
            # one starts on the next Process.start().
            multiprocessing.forkserver._forkserver._stop()
