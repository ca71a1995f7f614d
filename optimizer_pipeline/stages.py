"""Wall time per stage of an optimization, from the progress callback the pipeline already calls.

Progress names are fine-grained ("trial 7: freeze"); a stage is their coarse kind ("trials"), so
the report and the status say where the minutes went in a few lines.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

ProgressCallback = Callable[[str, float], None]

# Progress names that vary per step, and the stage they belong to.
_GROUPS = ((re.compile(r"^trial \d+: "), "trials"), (re.compile(r"^candidate \d+/\d+: "), "candidates"))


def stage_of(progress_name: str) -> str:
    for pattern, stage in _GROUPS:
        if pattern.match(progress_name):
            return stage
    return progress_name


class StageClock:
    """Passes progress on, and adds the time between stage changes to the stage that was running."""

    def __init__(self, forward: ProgressCallback, clock: Callable[[], float] = time.perf_counter) -> None:
        self._forward = forward
        self._clock = clock
        self._totals: dict[str, float] = {}
        self._current: str | None = None
        self._since = clock()

    def notify(self, name: str, fraction: float) -> None:
        self._switch(stage_of(name))
        self._forward(name, fraction)

    def stop(self) -> None:
        self._switch(None)

    def seconds(self) -> dict[str, float]:
        """Seconds per stage, in the order the stages first ran."""
        return {stage: round(total, 3) for stage, total in self._totals.items()}

    def _switch(self, stage: str | None) -> None:
        now = self._clock()
        if self._current is not None:
            self._totals[self._current] = self._totals.get(self._current, 0.0) + now - self._since
        self._current, self._since = stage, now
