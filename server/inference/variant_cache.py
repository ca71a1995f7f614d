"""Loaded variants for the inference workers: the per-worker LRU cache that holds them (bounded by
count and by bytes).

Loading goes through optimizer_pipeline.runtimes (one small loader per runtime: TorchScript,
ONNX Runtime), the same code the pipeline measured the variant with.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from optimizer_pipeline import NamedOutputs, flatten_outputs, load_variant_file, release_freed_memory

from .. import metrics

logger = logging.getLogger("optiserve")
RunVariant = Callable[[tuple[torch.Tensor, ...]], NamedOutputs]


Example = Callable[[], tuple[torch.Tensor, ...]]


def load(runtime: str, path: Path, threads: int, example: Example | None = None) -> RunVariant:
    model = load_variant_file(runtime, path, threads)

    def run(inputs: tuple[torch.Tensor, ...]) -> NamedOutputs:
        with torch.inference_mode():  # torch's warnings are silenced once per worker (quiet_torch_for_good)
            return flatten_outputs(model(*inputs))

    if example is not None:
        _warm_up(run, example())
    return run


def _warm_up(run: RunVariant, inputs: tuple[torch.Tensor, ...]) -> None:
    # TorchScript's profiling executor optimizes a graph during its first calls (100+ ms); doing
    # that at load keeps it out of the first user request (a third call runs the optimized graph once).
    for _ in range(3):
        try:
            run(inputs)
        except Exception:  # an odd model may reject zeros; it then simply warms up on real traffic
            return


class ResidentMemory:
    """This process's resident bytes, read from /proc/self/statm through a descriptor opened before
    confinement: Landlock refuses opening /proc/self afterwards, and reading an open one is fine.
    0 where it cannot be read (sizes then come from the files)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._pid = 0

    def open(self) -> None:
        try:
            self._fd, self._pid = os.open("/proc/self/statm", os.O_RDONLY), os.getpid()
        except OSError:
            self._fd = None

    def bytes(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # not opened, or opened by a parent
            return 0
        try:
            return int(os.pread(self._fd, 128, 0).split()[1]) * _PAGE_BYTES
        except (OSError, ValueError, IndexError):
            return 0


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
RESIDENT = ResidentMemory()


@dataclass
class _Entry:
    version: int
    run: RunVariant
    size: int


class VariantCache:
    """Per-worker LRU of loaded variants, keyed by (model id, variant) and checked against a version.

    The version comes from the store on every lookup, so a variant that appears or changes is
    reloaded on its next request, with no message between processes.

    Two bounds: `capacity` variants, and `max_bytes` (0: none) of what the loaded variants hold. Room
    is made before loading, from the file's size (or what the same variant held when last loaded), so
    the worker never holds the old set and the new variant at once. Once loaded, a variant counts what
    loading it added to the worker's resident memory, never less than its file: a compiled OpenVINO
    model holds about 2.3x its file, a TorchScript one about its file. A variant larger than
    `max_bytes` is still served: loaded (after the cache is emptied), used for the call that asked for
    it, and dropped.
    """

    def __init__(self, capacity: int, threads: int, max_bytes: int = 0, api: str = "") -> None:
        self.capacity = capacity
        self.threads = threads
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._bytes = 0
        self._held: dict[tuple[str, str], int] = {}  # what each variant held when last loaded
        self._release_due = False
        self._lock = threading.Lock()  # the serving thread, the live observer's shadow forwards and the warmer share it
        self._labels = (api, str(os.getpid()))  # the gauge's pid label comes with its multiprocess mode
        self._gauge = metrics.VARIANT_CACHE_BYTES.labels(api)
        self._gauge.set(0)

    def get(
        self,
        model_id: str,
        variant: str,
        version: int,
        runtime: str,
        locate: Callable[[], Path],
        example: Example | None = None,
        size: int = 0,
    ) -> RunVariant:
        """The loaded variant; `locate` gives its file, called only when it must be (re)loaded."""
        with self._lock:
            return self._get(model_id, variant, version, runtime, locate, example, size)

    def _get(
        self, model_id: str, variant: str, version: int, runtime: str, locate: Callable[[], Path], example: Example | None, size: int
    ) -> RunVariant:
        key = (model_id, variant)
        entry = self._entries.get(key)
        if entry is not None and entry.version == version:
            self._entries.move_to_end(key)
            return entry.run
        if entry is not None:  # replaced: the old version goes before the new one loads
            self._drop(key)
            self._release_due = True
        size = max(size, self._held.get(key, 0))
        if self._make_room(size) or self._release_due:
            # What was dropped (evicted, or the last oversize variant, used and gone) is freed by now;
            # without this the allocator keeps it and the worker's memory ignores the byte bound.
            release_freed_memory()
            self._release_due = False
        resident = RESIDENT.bytes()
        loaded = load(runtime, locate(), self.threads, example)
        size = self._held[key] = max(size, RESIDENT.bytes() - resident)
        metrics.VARIANT_LOADS.labels(*self._labels).inc()
        if self.max_bytes and size > self.max_bytes:
            metrics.VARIANT_EVICTIONS.labels(*self._labels).inc()  # used once by the caller, never kept
            self._release_due = True
            return loaded
        self._entries[key] = _Entry(version, loaded, size)
        self._bytes += size
        while self.max_bytes and self._bytes > self.max_bytes:  # it held more than its file said
            self._evict_oldest()
            self._release_due = True
        self._gauge.set(self._bytes)
        return loaded

    def _make_room(self, size: int) -> bool:
        """Evict least recently used variants until `size` more fits; whether any went."""
        evicted = False
        while self._entries and (len(self._entries) >= self.capacity or (self.max_bytes and self._bytes + size > self.max_bytes)):
            self._evict_oldest()
            evicted = True
        return evicted

    def _evict_oldest(self) -> None:
        self._drop(next(iter(self._entries)))
        metrics.VARIANT_EVICTIONS.labels(*self._labels).inc()

    def _drop(self, key: tuple[str, str]) -> None:
        self._bytes -= self._entries.pop(key).size
        self._gauge.set(self._bytes)

    @property
    def loaded_bytes(self) -> int:
        return self._bytes
