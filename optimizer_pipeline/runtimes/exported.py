"""A torch.export program (.pt2) as an execution runtime: how a .pt2 upload's original serves."""

from __future__ import annotations

import io
from typing import Any

import torch

from .base import LoadedVariant, RuntimeSupport


class ExportedRuntime(RuntimeSupport):
    name = "exported"
    serves_format = "exported"

    def owns(self, model: Any) -> bool:
        return isinstance(model, torch.export.ExportedProgram)

    def serialize(self, model: Any) -> bytes:
        buffer = io.BytesIO()
        torch.export.save(model, buffer)
        return buffer.getvalue()

    def load(self, data: bytes, threads: int | None) -> LoadedVariant:
        # Loading is vetting first: a stored .pt2 is still the uploader's archive.
        from ..exported.loading import load_exported_program, runnable

        module = runnable(load_exported_program(data))

        def run(*inputs: torch.Tensor) -> Any:
            with torch.no_grad():
                return module(*inputs)

        return run
