"""A deadline that the open-ended passes (fine-tuning, QAT) honour.

A search estimates a trial's cost from the trials before it. A first fine-tuning trial can cost ten
times that estimate (3 s, against 0.5 s for the trials before it, on an LSTM here), so the
estimate alone cannot keep a run within its budget. Inside `deadline(at)`, training stops after
the epoch in which the deadline passed, keeping its best weights so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Clock = Callable[[], float]

_deadline: ContextVar[tuple[float, Clock] | None] = ContextVar("optiserve_deadline", default=None)


@contextmanager
def deadline(at: float | None, clock: Clock = time.perf_counter) -> Iterator[None]:
    """Run the block with a deadline (a value of `clock`; None for none). Tests pass a clock of their own."""
    token = _deadline.set(None if at is None else (at, clock))
    try:
        yield
    finally:
        _deadline.reset(token)


def passed() -> bool:
    current = _deadline.get()
    return current is not None and current[1]() >= current[0]
