"""Loaded variants for the inference workers, and the per-worker LRU cache that holds them.

Loading goes through optimizer_pipeline.runtimes (one small loader per runtime: TorchScript,
ONNX Runtime), the same code the pipeline measured the variant with.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from optimizer_pipeline.outputs import NamedOutputs, flatten_outputs
from optimizer_pipeline.runtimes import load_variant

RunVariant = Callable[[tuple[torch.Tensor, ...]], NamedOutputs]


Example = Callable[[], tuple[torch.Tensor, ...]]


def load(runtime: str, path: Path, threads: int, example: Example | None = None) -> RunVariant:
    model = load_variant(runtime, path.read_bytes(), threads)

    def run(inputs: tuple[torch.Tensor, ...]) -> NamedOutputs:
        with torch.inference_mode():  # torch's warnings are silenced once per worker (quiet_torch_for_good)
            return flatten_outputs(model(*inputs))

    if example is not None:
        _warm_up(run, example())
    return run


def _warm_up(run: RunVariant, inputs: tuple[torch.Tensor, ...]) -> None:
    # TorchScript's profiling executor optimizes a graph during its first calls (100+ ms); doing
    # that at load keeps it out of the first user request.
    for _ in range(2):
        try:
            run(inputs)
        except Exception:  # an odd model may reject zeros; it then simply warms up on real traffic
            return


class VariantCache:
    """Per-worker LRU of loaded variants, keyed by (model id, variant) and checked against a version.

    The version comes from the store on every lookup, so a variant that appears or changes is
    reloaded on its next request, with no message between processes.
    """

    def __init__(self, capacity: int, threads: int) -> None:
        self.capacity = capacity
        self.threads = threads
        self._entries: OrderedDict[tuple[str, str], tuple[int, RunVariant]] = OrderedDict()
        self._lock = threading.Lock()  # the serving thread and the live observer's shadow forwards share it

    def get(
        self, model_id: str, variant: str, version: int, runtime: str, path: Path, example: Example | None = None
    ) -> RunVariant:
        with self._lock:
            return self._get(model_id, variant, version, runtime, path, example)

    def _get(self, model_id: str, variant: str, version: int, runtime: str, path: Path, example: Example | None) -> RunVariant:
        key = (model_id, variant)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == version:
            self._entries.move_to_end(key)
            return entry[1]
        loaded = load(runtime, path, self.threads, example)
        self._entries[key] = (version, loaded)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return loaded
