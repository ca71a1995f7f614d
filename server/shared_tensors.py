"""Large tensors between the API servers and the workers through shared memory, not LitServe's queue.

LitServe's queues live in a manager process: a payload is pickled into it and out again, so a 64 MB
tensor was copied about ten times across three processes each way. Above `MIN_BYTES` the sender
writes the bytes once into a POSIX shared-memory segment and the queue carries only its name; the
receiver copies them out and the API server, which waits for the answer, unlinks both segments.

Segment names carry the store's prefix, so a server start sweeps what a crash, or an answer that
came after its request's deadline, left behind.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
from starlette.responses import Response

MIN_BYTES = 256 * 1024
SHM_DIR = Path("/dev/shm")


def prefix_for(store: Path) -> str:
    """Segment names of one store's server: `optiserve-<hash of the store path>-`."""
    return "optiserve-" + hashlib.sha1(str(store.resolve()).encode()).hexdigest()[:10] + "-"


@dataclass(frozen=True)
class SharedBytes:
    """Bytes in a named segment, as the queue carries them."""

    name: str
    size: int

    def read(self) -> bytes:
        segment = SharedMemory(self.name)
        try:
            return bytes(segment.buf[: self.size])
        finally:
            segment.close()
            resource_tracker.unregister(segment._name, "shared_memory")  # opened, not owned

    def unlink(self) -> None:
        try:
            os.unlink(SHM_DIR / self.name)
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class SharedArray:
    """A numpy array in a segment: what a request's large input becomes on the queue."""

    data: SharedBytes
    dtype: str
    shape: tuple[int, ...]

    def load(self) -> np.ndarray:
        return np.frombuffer(self.data.read(), dtype=self.dtype).reshape(self.shape)


def share(chunks: Sequence[bytes | memoryview], prefix: str) -> SharedBytes:
    """Copy the chunks, one after the other, into a new segment; the receiver's side unlinks it."""
    views = [memoryview(chunk).cast("B") for chunk in chunks]
    size = sum(view.nbytes for view in views)
    segment = SharedMemory(name=prefix + os.urandom(8).hex(), create=True, size=max(size, 1))
    try:
        offset = 0
        for view in views:
            segment.buf[offset : offset + view.nbytes] = view
            offset += view.nbytes
    finally:
        segment.close()
        # Ownership passes to whoever unlinks it; the creating process must not unlink it at exit.
        resource_tracker.unregister(segment._name, "shared_memory")
    return SharedBytes(segment.name, size)


def share_array(array: np.ndarray, prefix: str) -> SharedArray:
    return SharedArray(share([np.ascontiguousarray(array)], prefix), array.dtype.str, tuple(array.shape))


def sweep(prefix: str) -> int:
    """Unlink every segment of this store's server; returns how many (at start, none is in use)."""
    removed = 0
    for path in SHM_DIR.glob(prefix + "*"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


@dataclass(frozen=True)
class SharedResponse:
    """A worker's answer whose body waits in a segment (encode_response returns it instead of a Response)."""

    status: int
    headers: dict[str, str]
    body: SharedBytes

    def to_response(self) -> Response:
        try:
            return Response(self.body.read(), status_code=self.status, headers=self.headers)
        finally:
            self.body.unlink()
