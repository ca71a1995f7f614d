"""Warm before ready: each worker loads and runs new variants before the model is called ready, and
says so in a marks file the API servers read.

A model's ready (/v2 ready, gRPC ModelReady) and its state (GET /models) wait for the /predict workers'
marks, so the first request after ready pays no load.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError

from optimizer_pipeline import atomic_write_text
from wire.contract.models import ModelInfo, VariantInfo

from .oversized import refusals_dir

logger = logging.getLogger("optiserve")
# How often a worker's warmer looks for variants it has not loaded yet.
WARM_POLL_SECONDS = 0.5
# The stage a finished optimization shows while the workers load its variants.
WARMING_STAGE = "warming up the inference workers"
Info = TypeVar("Info", bound=ModelInfo)


class WarmMarks(BaseModel):
    """What one worker has loaded and run: `<model id>/<variant>` -> the version it warmed."""

    pid: int
    variants: dict[str, int] = {}
    failed: dict[str, int] = Field(default_factory=dict, description="variants it could not load or run, by version: their requests say why")


def marks_dir(local_dir: Path) -> Path:
    """Where the /predict workers keep their marks (one file per worker)."""
    return local_dir / "warm"


def reset_marks(local_dir: Path) -> None:
    """At server start (main process): marks of the last run's workers mean nothing now."""
    shutil.rmtree(marks_dir(local_dir), ignore_errors=True)
    refusals_dir(marks_dir(local_dir)).mkdir(parents=True, exist_ok=True)


def write_marks(directory: Path, marks: WarmMarks) -> None:
    """The worker's one write about warmth: its own file, replaced whole, in the server's local state dir."""
    atomic_write_text(directory / f"{marks.pid}.json", marks.model_dump_json())


def _live_marks(directory: Path) -> list[WarmMarks]:
    workers = []
    for path in directory.glob("*.json"):
        try:
            marks = WarmMarks.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            continue  # being replaced right now, or not ours: the next poll reads it
        if Path(f"/proc/{marks.pid}").exists():  # a restarted worker's successor has its own file
            workers.append(marks)
    return workers


def warm_everywhere(directory: Path, info: ModelInfo, variants: list[VariantInfo], settled: bool = False) -> bool:
    """Whether every live worker has loaded and run these variants (at their current version).

    settled: a variant a worker failed to load also counts (its requests will say why): nothing more
    is coming, so a state need not wait for it."""
    workers = _live_marks(directory)

    def done(marks: WarmMarks, key: str, version: int) -> bool:
        return marks.variants.get(key) == version or (settled and marks.failed.get(key) == version)

    return bool(workers) and all(done(m, f"{info.id}/{v.name}", v.version) for m in workers for v in variants)


def serving_state(status: Info, directory: Path) -> Info:
    """A finished optimization reads `ready` only once the /predict workers have warmed its variants;
    until then it is still `optimizing`, at the warm-up stage. (Workers do not warm an unhealthy model.)"""
    if status.state != "ready" or not status.health.healthy or warm_everywhere(directory, status, status.variants, settled=True):
        return status
    return status.model_copy(update={"state": "optimizing", "stage": WARMING_STAGE, "progress": 1.0})


class Warmer:
    """A worker's background thread: loads and runs each variant (new, or replaced) once, then marks it.

    Loading goes through the worker's cache, so it respects the residency bounds; a variant is warmed
    once per version, so later evictions do not make the warmer fight the traffic for the cache.
    """

    def __init__(self, directory: Path, models: Callable[[], list[ModelInfo]], warm: Callable[[ModelInfo, str], None]) -> None:
        self.directory = directory
        self.models = models
        self.warm = warm
        self.marks = WarmMarks(pid=os.getpid())

    def start(self) -> None:
        write_marks(self.directory, self.marks)  # this worker exists, and has warmed nothing yet
        threading.Thread(target=self._loop, name="variant-warmer", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                self.pass_once()
            except Exception:
                logger.exception("the variant warmer failed; it retries")
            time.sleep(WARM_POLL_SECONDS)

    def pass_once(self) -> None:
        models = [info for info in self.models() if info.health.healthy]
        current = {f"{info.id}/{variant.name}" for info in models for variant in info.variants}
        gone = (set(self.marks.variants) | set(self.marks.failed)) - current  # deleted models and variants
        for key in gone:
            self.marks.variants.pop(key, None)
            self.marks.failed.pop(key, None)
        for info in models:
            for variant in sorted(info.variants, key=lambda v: v.name != info.default_variant):  # the default first
                key = f"{info.id}/{variant.name}"
                if variant.version in (self.marks.variants.get(key), self.marks.failed.get(key)):
                    continue
                try:
                    self.warm(info, variant.name)
                except Exception as exc:  # the request that needs it will say why; ready stays false
                    logger.warning("could not warm %s: %s", key, exc)
                    self.marks.failed[key] = variant.version
                else:
                    self.marks.variants[key] = variant.version
                write_marks(self.directory, self.marks)
        if gone:
            write_marks(self.directory, self.marks)
