"""A value made once in each process that uses it: connection pools and clients must not cross a fork."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# Values a forked child inherited from its parent. A pool's sockets belong to the parent: closing
# them (or letting them be collected, which closes them) would end the parent's sessions.
_inherited: list[object] = []


class PerProcess(Generic[T]):
    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: T | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def get(self) -> T:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    if self._value is not None:
                        _inherited.append(self._value)
                    self._value = self._make()
                    self._pid = os.getpid()
        return self._value

    def pop(self) -> T | None:
        """This process's value, if it made one, forgotten (to be closed by the caller)."""
        with self._lock:
            value = self._value if self._pid == os.getpid() else None
            if value is not None:
                self._value, self._pid = None, 0
        return value
