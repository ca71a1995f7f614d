"""Large tensors between the API servers and the workers through shared memory, not LitServe's queue.

LitServe's queues live in a manager process: a payload is pickled into it and out again, so a 64 MB
tensor was copied about ten times across three processes each way. Above `MIN_BYTES` the sender
writes the bytes once into a file in /dev/shm (a tmpfs) and the queue carries only its path; the
receiver copies them out and the API server, which waits for the answer, unlinks both files.

Space is reserved before it is written: a write into a tmpfs page that cannot be had kills the
writer with SIGBUS (Docker's default /dev/shm is 64 MiB), while `posix_fallocate` fails with an
error. On top of that one store's segments, in flight across all its processes, stay within a
budget (half the tmpfs by default): when it is full, a tensor small enough goes through the queue
after all, and a larger one is refused with 503 `shm_full`.

Segment names carry the store's prefix, so a server start sweeps what a crash, or an answer that
came after its request's deadline, left behind, and the main process sweeps stale ones as it runs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.responses import Response

MIN_BYTES = 256 * 1024
# A tensor that finds no room in shared memory but is at most this large crosses LitServe's queue
# instead: about ten copies, which costs tens of milliseconds here, not a failed request.
QUEUE_FALLBACK_BYTES = 16 * 2**20
SHM_DIR = Path("/dev/shm")
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_CHUNK = 1 << 30  # Linux writes at most ~2 GiB per call


class ShmFull(Exception):
    """No room for a segment: the budget is used up, or the tmpfs itself is full."""


def prefix_for(store: Path) -> str:
    """Segment names of one store's server: `optiserve-<hash of the store path>-`."""
    return "optiserve-" + hashlib.sha1(str(store.resolve()).encode()).hexdigest()[:10] + "-"


def default_budget(directory: Path = SHM_DIR) -> int:
    """Half of the tmpfs: the other half stays for the rest of the machine (torch, other servers)."""
    stats = os.statvfs(directory)
    return stats.f_frsize * stats.f_blocks // 2


def space_for(local_dir: Path, budget: int | None) -> SharedSpace:
    """The space of the server whose local directory is `local_dir` (budget None: half of /dev/shm)."""
    return SharedSpace(prefix_for(local_dir), default_budget() if budget is None else budget)


@dataclass(frozen=True)
class SharedBytes:
    """Bytes in a segment, as the queue carries them."""

    path: str
    size: int

    def read(self) -> bytes:
        with open(self.path, "rb", buffering=0) as segment:
            data = segment.readall()
        if len(data) != self.size:
            raise EOFError(f"shared segment {self.path} holds {len(data)} of {self.size} bytes")
        return data

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
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


@dataclass(frozen=True)
class SharedSpace:
    """Where one store's segments go, and how many bytes of them may be in flight at once."""

    prefix: str
    budget: int
    directory: Path = SHM_DIR

    def share(self, chunks: Sequence[bytes | bytearray | memoryview]) -> SharedBytes:
        """Copy the chunks, one after the other, into a new segment (the receiver's side unlinks it); ShmFull if no room."""
        views = [memoryview(chunk).cast("B") for chunk in chunks]
        size = sum(view.nbytes for view in views)
        path = self.directory / (self.prefix + os.urandom(8).hex())
        fd = os.open(path, _CREATE, 0o600)
        try:
            # The size first: from now on other processes' budget checks count this segment too.
            os.ftruncate(fd, size)
            used = self.used()
            if used > self.budget:
                raise ShmFull(self._full(f"{used - size} bytes are in flight, {size} more would pass the budget of {self.budget}"))
            try:
                os.posix_fallocate(fd, 0, max(size, 1))
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EFBIG):
                    raise
                raise ShmFull(self._full(f"{self.directory} has no room for {size} more bytes")) from None
            for view in views:
                for start in range(0, view.nbytes, _WRITE_CHUNK):
                    part = view[start : start + _WRITE_CHUNK]
                    while part.nbytes:
                        part = part[os.write(fd, part) :]
        except BaseException:
            path.unlink(missing_ok=True)  # a failed share leaves no segment behind
            raise
        finally:
            os.close(fd)
        return SharedBytes(str(path), size)

    def share_array(self, array: np.ndarray) -> SharedArray:
        return SharedArray(self.share([np.ascontiguousarray(array)]), array.dtype.str, tuple(array.shape))

    def used(self) -> int:
        """Bytes held by this store's segments now, from any of its processes (their files are the count)."""
        total = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith(self.prefix):
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        pass
        return total

    def _full(self, why: str) -> str:
        return (
            f"the server's shared memory for large tensors is full ({why}); retry shortly, or send fewer large "
            "requests at once (the limit: OPTISERVE_SHM_BUDGET_BYTES and the size of /dev/shm)"
        )


def sweep(prefix: str, older_than: float | None = None, directory: Path = SHM_DIR) -> int:
    """Unlink this store's segments (only those unchanged for `older_than` seconds, if given); returns how many."""
    removed = 0
    cutoff = time.time() - older_than if older_than is not None else None
    for path in directory.glob(prefix + "*"):
        try:
            if cutoff is not None and path.stat().st_mtime > cutoff:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
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
