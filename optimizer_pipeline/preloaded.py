"""Importing this module imports the whole pipeline, every pass included (they are otherwise imported on
first use). A forkserver names it in its preload (multiprocessing preloads by module name), so that
each child starts with it instead of importing it under its memory cap."""

from .passes.base import PASS_MODULES, registered
from .pipeline import optimize


def preload_pipeline() -> None:
    """Import every pass now: for a process whose children (forked, then confined) run the pipeline."""
    for name in PASS_MODULES:
        registered(name)


preload_pipeline()

__all__ = ["optimize", "preload_pipeline"]
