"""Deadlines on the steps of an optimization that run a model, enforced from outside the process.

A TorchScript, ONNX Runtime or OpenVINO call cannot be interrupted from inside its process (a
scripted `while` loop never returns to Python), so the pipeline only *announces* each step that
runs a model — "candidate X: checking its fidelity, 60 s" — to a `StepWatch`. The server's job
runner receives these announcements and kills the job process when a step overruns; it then starts
the job again, telling it which candidate hung (`StepWatch.hung`), and that candidate is recorded as
a failed trial while the search goes on (server/jobs/runner.py).

A direct `optimize()` call has no supervisor: the default watch does nothing.

Why restart instead of running each trial in a child of its own: forking a process that has run
torch ops is not safe once an OpenMP pool exists, and a child per trial would lose the plan-prefix
cache; a restart costs the trials already done once, and only when something hung.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

STEP_FLOOR_S = 60.0  # a step's deadline is never shorter than this unless the config says so
STEP_FACTOR = 20.0  # ... and otherwise this many times the original's forward over the calibration set
# Once this many candidates exceeded their deadline, candidates that never ran are not tried: the
# model evidently hangs once transformed, and each further hang costs a deadline and a restart.
MAX_HUNG = 3


@dataclass(frozen=True)
class Step:
    what: str  # e.g. "checking its fidelity"
    seconds: float
    candidate: str | None = None  # None: a step on the original, which no restart can skip


@dataclass
class StepWatch:
    """Told about every model-running step; this base class enforces nothing."""

    hung: dict[str, str] = field(default_factory=dict)  # candidate name -> why an earlier run stopped it
    # Candidates that ran a step in an earlier run of this job without hanging: once MAX_HUNG others
    # hung, only these run again.
    seen: frozenset[str] = frozenset()
    _steps: list[Step] = field(default_factory=list)

    def started(self, step: Step) -> None:
        """A step began (or, in a training loop, made progress): its deadline starts now."""

    def ended(self) -> None:
        """No step is running."""

    def enter(self, step: Step) -> None:
        self._steps.append(step)
        self.started(step)

    def leave(self) -> None:
        self._steps.pop()
        if self._steps:
            self.started(self._steps[-1])  # the enclosing step gets a fresh deadline
        else:
            self.ended()

    def beat(self) -> None:
        if self._steps:
            self.started(self._steps[-1])


_watch: ContextVar[StepWatch] = ContextVar("optiserve_step_watch", default=StepWatch())


@contextmanager
def watching(watch: StepWatch) -> Iterator[None]:
    token = _watch.set(watch)
    try:
        yield
    finally:
        _watch.reset(token)


@contextmanager
def step(what: str, seconds: float, candidate: str | None = None) -> Iterator[None]:
    """Run the block as one step with a deadline of `seconds`."""
    watch = _watch.get()
    watch.enter(Step(what, seconds, candidate))
    try:
        yield
    finally:
        watch.leave()


def beat() -> None:
    """Progress inside a long step (a training epoch ended): restart the step's deadline."""
    _watch.get().beat()


def why_skipped(candidate: str) -> tuple[Literal["failed", "skipped"], str] | None:
    """(status, reason) when this candidate is not run in this run of the job: it hung in an earlier
    run (a failed trial), or MAX_HUNG others did and it never ran (skipped); None to run it."""
    watch = _watch.get()
    if candidate in watch.hung:
        return "failed", watch.hung[candidate]
    if len(watch.hung) >= MAX_HUNG and candidate not in watch.seen:
        return "skipped", f"not tried: {len(watch.hung)} candidates exceeded their deadline ({', '.join(sorted(watch.hung))})"
    return None


def step_seconds(configured: float | None, original_seconds: float | None) -> float:
    """A step's deadline: the config's `candidate_timeout` if set, else max(60 s, 20x `original_seconds`,
    the original's forward over the calibration set, or an estimate of it before it was measured)."""
    if configured is not None:
        return configured
    return max(STEP_FLOOR_S, STEP_FACTOR * (original_seconds or 0.0))


def deadline_text(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"
