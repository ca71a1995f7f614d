"""A deadline that the open-ended passes (fine-tuning, QAT) honour.

A search estimates a trial's cost from the trials before it. A first fine-tuning trial can cost ten
times that estimate (3 s, against 0.5 s for the trials before it, on an LSTM here), so the
estimate alone cannot keep a run within its budget. Inside `deadline(at)`, training stops after
the epoch in which the deadline passed, keeping its best weights so far.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("optiserve_deadline", default=None)


@contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Run the block with a deadline (a `time.perf_counter()` value; None for none)."""
    token = _deadline.set(at)
    try:
        yield
    finally:
        _deadline.reset(token)


def passed() -> bool:
    at = _deadline.get()
    return at is not None and time.perf_counter() >= at
