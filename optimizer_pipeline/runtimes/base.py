"""The one interface every execution runtime offers the pipeline and the server.

A loaded variant is any callable `(*tensors) -> Tensor | tuple | dict of Tensors` (a ScriptModule
is one). The pipeline measures candidates through these loaders and the server's inference
workers load variants through them, so both always run a variant the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from wire.contract.report import Runtime

LoadedVariant = Callable[..., Any]


class RuntimeSupport(ABC):
    """One runtime: recognise its in-memory models, turn them into one stored file, load that file."""

    name: ClassVar[Runtime]
    # The model format (a pass's `produces`) that this runtime serves.
    serves_format: ClassVar[str]

    @abstractmethod
    def owns(self, model: Any) -> bool:
        """Is this in-memory model (what a pass hands on) one of ours?"""

    @abstractmethod
    def serialize(self, model: Any) -> bytes:
        """The bytes of the one file the store keeps for this variant."""

    @abstractmethod
    def load(self, data: bytes, threads: int | None) -> LoadedVariant:
        """Load stored bytes for CPU inference with `threads` threads (None: the runtime's default)."""

    def load_file(self, path: Path, threads: int | None) -> LoadedVariant:
        """Load a stored file; runtimes that can read it in place (no copy of it in memory) override this."""
        return self.load(path.read_bytes(), threads)
