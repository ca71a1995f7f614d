"""Requests larger than a model's calibration batch: their failures are not the model's, and sizes that failed are refused.

A model's health counts the failures of its code (memory cap, forward deadline) so that one poisoned
input cannot crash workers again and again. But a sound model also fails on a batch far larger than
it was calibrated for: measured, one anonymous 500 MB /v2 request to a small MLP hit the worker's
4 GiB cap and counted, and `unhealthy_after` (3) such requests take the model out of service for
everyone until a key holder resets it. So a failure on a request whose inputs are larger than the calibration batch (what the
uploader vouched for) does not count. Instead the worker that failed writes a refusal: from then on
that model's requests above half the failing size (never below the calibration batch) get 413 at
once, so each size class can cost at most one worker restart, about log2(max body / calibration)
in all, until `POST /models/{id}/reset` or a new version of the model.

The refusals live in the warm-up marks' directory (the one place every worker may write), one
file per model, and are reset with it at server start.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

import torch
from pydantic import BaseModel, ValidationError

from optimizer_pipeline import atomic_write_text
from wire.contract.models import ModelInfo

from ..errors import ApiError

logger = logging.getLogger("optiserve")

class Refusal(BaseModel):
    """Requests to this model (at these variant versions) with more input bytes than `above` are refused."""

    versions: dict[str, int]
    above: int
    reason: str


def refusals_dir(marks: Path) -> Path:
    return marks / "oversized"


def calibration_bytes(info: ModelInfo) -> int | None:
    """Input bytes of the model's calibration batch; None for models uploaded before it was recorded."""
    summary = info.summary
    if summary.calibration_samples is None:
        return None
    per_sample = sum(math.prod(shape) * _itemsize(dtype) for shape, dtype in zip(summary.input_shapes, summary.input_dtypes))
    return summary.calibration_samples * per_sample


@functools.cache
def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


def input_bytes(inputs: tuple[torch.Tensor, ...]) -> int:
    return sum(t.numel() * t.element_size() for t in inputs)


def excuse(info: ModelInfo, inputs: tuple[torch.Tensor, ...]) -> str | None:
    """Why a failure on these inputs is not the model's to answer for, or None when it is."""
    reference = calibration_bytes(info)
    given = input_bytes(inputs)
    if reference is None or given <= reference:
        return None
    return (f"this request's inputs ({_size(given)}) are larger than the calibration batch the model was uploaded with "
            f"({_size(reference)}, {info.summary.calibration_samples} samples), so this does not count against the model's health")


class Refusals:
    """A worker's view of the refusals: read when a model's file changes, written when a request fails."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seen: dict[str, tuple[int, Refusal | None]] = {}  # model id -> (file mtime, what it says)

    def check(self, info: ModelInfo, inputs: tuple[torch.Tensor, ...]) -> None:
        """Raise the 413 when these inputs are above the model's refusal."""
        refusal = self._current(info)
        if refusal is not None and input_bytes(inputs) > refusal.above:
            raise ApiError(
                413, "request_too_large",
                f"model {info.name!r} refuses requests of more than {_size(refusal.above)} of inputs ({_size(input_bytes(inputs))} given): "
                f"{refusal.reason}. Send fewer samples per request; POST /models/{info.id}/reset lifts this",
            )

    def record(self, info: ModelInfo, failed_bytes: int, what: str) -> None:
        """After a failure excused by its size: refuse half that size and above from now on (never the calibration batch)."""
        above = max(failed_bytes // 2, calibration_bytes(info) or 0)
        current = self._current(info)
        if current is not None and current.above <= above:
            return
        reason = f"a request of {_size(failed_bytes)} {what} on this server"
        refusal = Refusal(versions={v.name: v.version for v in info.variants}, above=above, reason=reason)
        try:
            atomic_write_text(self._path(info.id), refusal.model_dump_json())
        except OSError:  # the failing request is answered all the same; the size is just not refused
            logger.exception("could not record the refusal of large requests to model %r", info.name)

    def _current(self, info: ModelInfo) -> Refusal | None:
        path = self._path(info.id)
        try:
            changed = os.stat(path).st_mtime_ns
        except OSError:
            self._seen.pop(info.id, None)
            return None
        seen = self._seen.get(info.id)
        if seen is None or seen[0] != changed:
            try:
                seen = (changed, Refusal.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError):
                seen = (changed, None)
            self._seen[info.id] = seen
        refusal = seen[1]
        # A new version of the model starts without refusals.
        return refusal if refusal is not None and refusal.versions == {v.name: v.version for v in info.variants} else None

    def _path(self, model_id: str) -> Path:
        return self.directory / f"{model_id}.json"


def lift(marks: Path, model_id: str) -> None:
    """POST /models/{id}/reset (in an API server): the model's refusal goes with its health."""
    try:
        (refusals_dir(marks) / f"{model_id}.json").unlink()
    except FileNotFoundError:
        pass


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count} bytes"
