"""A hard time limit on every forward call, for the inference workers.

A TorchScript forward cannot be interrupted, and running it on a helper thread to wait on it with a
timeout costs about 0.2 ms per call in thread hand-offs. So the forward runs where it always did,
and a watchdog thread looks at it: a call still running past the limit is abandoned. The watchdog
then does what the stuck thread cannot, through `on_overrun`: it records the timeout, answers the
hung model's requests, puts the worker's other requests back on the queue, and ends the process
(the only way to stop that thread); the main process starts a fresh worker in its place.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# How often the watchdog looks; a stuck call is noticed within this of its limit.
CHECK_SECONDS = 0.1
EXIT_CODE = 75

# (what was running, the limit, what was given with it) -> None; must not raise
Overrun = Callable[[str, float, object], None]


class ForwardWatchdog:
    def __init__(self, seconds: float, on_overrun: Overrun) -> None:
        self.seconds = seconds
        self.on_overrun = on_overrun
        self._running: tuple[float, str, object] | None = None  # (deadline, what, context) of the call in progress
        threading.Thread(target=self._watch, name="forward-watchdog", daemon=True).start()

    @contextmanager
    def watching(self, what: str, context: object = None) -> Iterator[None]:
        """Run the body under the limit; `what` names it (a model id) and `context` goes with it to `on_overrun`."""
        self._running = (time.monotonic() + self.seconds, what, context)
        try:
            yield
        finally:
            self._running = None

    def _watch(self) -> None:
        while True:
            time.sleep(CHECK_SECONDS)
            running = self._running
            if running is not None and time.monotonic() > running[0]:
                try:
                    self.on_overrun(running[1], self.seconds, running[2])
                finally:
                    os._exit(EXIT_CODE)
