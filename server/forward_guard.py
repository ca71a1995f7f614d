"""A hard time limit on one forward call, for the inference workers.

A TorchScript forward cannot be interrupted from Python, but it runs without the GIL, so it can run
on a helper thread while the worker's own thread waits with a timeout. A forward that overruns is
abandoned: the worker answers every request it holds, then ends its process at the next safe
point (`exit_if_retiring`, called between batches), the only way to stop the stuck thread, and
LitServe starts a fresh worker in its place.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

T = TypeVar("T")


class ForwardTimeout(Exception):
    """A forward call ran past the hard limit; the worker is retiring."""


class ForwardGuard:
    def __init__(self, seconds: float, exit_code: int = 75) -> None:
        self.seconds = seconds
        self.exit_code = exit_code
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._retiring = threading.Event()

    @property
    def retiring(self) -> bool:
        return self._retiring.is_set()

    def run(self, call: Callable[[], T]) -> T:
        if self.retiring:
            raise ForwardTimeout("this worker is restarting after a forward call that did not finish")
        future = self._executor.submit(call)
        try:
            return future.result(timeout=self.seconds)
        except FutureTimeout:
            self._retiring.set()
            raise ForwardTimeout(f"the forward call did not finish within {self.seconds:g} s") from None

    def exit_if_retiring(self) -> None:
        """End this process if a forward overran. Call it only where no request is held: its stuck thread cannot be stopped otherwise."""
        if self.retiring:
            os._exit(self.exit_code)
