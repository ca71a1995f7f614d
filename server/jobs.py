"""Background optimization, away from the API servers and the inference workers.

A runner process takes queued jobs from the store one at a time and runs each in a fresh child
process with capped torch threads and a lower CPU priority, so serving keeps going. A child that
crashes (even a segfault inside a quantization kernel) fails its job with the reason; a stop of the
server puts the running job back in the queue; a kill -9 leaves it `optimizing`, which
`Store.recover` re-queues (or fails, after `job_attempts` runs) at the next start.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import tempfile
import time
import traceback
from pathlib import Path

import torch

from optimizer_pipeline import OptimizationResult, OptimizerError, optimize

from . import confinement
from .metrics import OPTIMIZATION_SECONDS
from .processes import die_with_parent, interrupt_on_sigterm
from .schemas import VariantInfo
from .settings import Settings
from .store import Store

logger = logging.getLogger("optiserve.jobs")
POLL_SECONDS = 0.25
PROGRESS_INTERVAL_SECONDS = 0.5
_spawn = multiprocessing.get_context("spawn")
# Job children are forked from the runner, which has torch imported but never runs an op (so no
# OpenMP pool exists to break in the child): a job starts in milliseconds instead of seconds.
_fork = multiprocessing.get_context("fork")


def start_runner(settings: Settings) -> multiprocessing.Process:
    runner = _spawn.Process(target=run_forever, args=(settings,), name="optiserve-jobs")
    runner.start()
    return runner


def stop(process: multiprocessing.Process, grace_seconds: float = 10.0) -> None:
    if process.is_alive():
        process.terminate()
        process.join(grace_seconds)
    if process.is_alive():
        process.kill()
        process.join()


def run_forever(settings: Settings) -> None:
    die_with_parent()
    interrupt_on_sigterm()
    store = Store(settings.store)
    try:
        while True:
            try:
                model_id = store.claim_next_job()
                if model_id is not None:
                    _supervise(settings, store, model_id)
                    continue
            except Exception:  # e.g. SQLite busy beyond its timeout: the queue must outlive it
                logger.exception("job runner error; retrying")
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        # The parent's stop and PR_SET_PDEATHSIG can both arrive; the hand-back must not be cut short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Only this runner optimizes in this store (the server holds the store's lock), so every job
        # still optimizing is ours, including one claimed a moment before the stop, whose child
        # had not started yet.
        store.hand_back_jobs("interrupted by a server shutdown; re-queued")


def _supervise(settings: Settings, store: Store, model_id: str) -> None:
    child = _fork.Process(target=run_job, args=(settings, model_id), name=f"optiserve-job-{model_id}")
    child.start()
    deadline = time.monotonic() + settings.job_timeout
    try:
        while child.is_alive():
            child.join(min(1.0, max(deadline - time.monotonic(), 0.0)))
            if child.is_alive() and not store.exists(model_id):  # deleted or replaced: stop wasting CPU
                stop(child)
                return
            if child.is_alive() and time.monotonic() >= deadline:
                stop(child)
                # Failed, not handed back: a job that hangs would hang again on every retry.
                store.fail_job(
                    model_id,
                    f"the optimization ran past its time limit of {settings.job_timeout:g} s (OPTISERVE_JOB_TIMEOUT) and was "
                    "stopped; the original model keeps serving",
                )
                return
    except KeyboardInterrupt:
        stop(child)
        raise
    if child.exitcode != 0:
        cause = f"signal {signal.Signals(-child.exitcode).name}" if child.exitcode < 0 else f"exit code {child.exitcode}"
        store.fail_job(model_id, f"the optimization process died ({cause}); the original model keeps serving")


def run_job(settings: Settings, model_id: str) -> None:
    """The job child: optimize one stored upload and record the outcome."""
    die_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked: drop the runner's handler; a stop is a stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the runner decides
    os.nice(settings.job_nice)
    torch.set_num_threads(settings.job_threads)
    store = Store(settings.store)
    info = store.get(model_id)
    if info is None:
        return
    directory = store.model_dir(model_id)
    writable = (directory, settings.metrics_dir.resolve(), Path(tempfile.gettempdir()), *store.index_files())
    confinement.apply(confinement.Confinement(writable=writable, memory_bytes=settings.job_memory_bytes))
    config = dict(info.config or {})
    config["threads"] = min(config.get("threads") or settings.job_threads, settings.job_threads)
    started = time.perf_counter()
    try:
        result = optimize(
            directory / "original.pt",
            directory / "calibration.bin",
            config=config,
            labels=directory / "labels.bin" if info.has_labels else None,
            name=info.name,
            progress=_ThrottledProgress(store, model_id),
        )
    except Exception as exc:
        seconds = time.perf_counter() - started
        if not isinstance(exc, OptimizerError):
            logger.error("optimization of %s crashed:\n%s", model_id, traceback.format_exc())
        reason = str(exc) if isinstance(exc, OptimizerError) else f"optimization crashed: {type(exc).__name__}: {exc}"
        store.fail_job(model_id, reason, seconds)
        OPTIMIZATION_SECONDS.labels("failed").observe(seconds)
        return
    seconds = time.perf_counter() - started
    _record(store, model_id, result, seconds)
    OPTIMIZATION_SECONDS.labels("ready").observe(seconds)


def _record(store: Store, model_id: str, result: OptimizationResult, seconds: float) -> None:
    files = {"report.json": result.report.model_dump_json(indent=2).encode()}
    optimized = None
    # When nothing qualified the pipeline hands back the original as "optimized"; serving that
    # under the optimized label would mislabel metrics and A/B views, so no variant is stored.
    if result.report.chosen.candidate != "original":
        variant = result.optimized
        files[variant.filename] = variant.data
        optimized = VariantInfo(
            name="optimized", runtime=variant.runtime, filename=variant.filename, size_bytes=len(variant.data), version=0
        )
    store.finish_job(model_id, result.report.chosen, round(seconds, 3), optimized, files)


class _ThrottledProgress:
    """The pipeline's progress callback, written to the store at most every half second (or on a new stage)."""

    def __init__(self, store: Store, model_id: str) -> None:
        self.store = store
        self.model_id = model_id
        self._last_stage: str | None = None
        self._last_write = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        moment = time.monotonic()
        if stage != self._last_stage or moment - self._last_write >= PROGRESS_INTERVAL_SECONDS:
            self.store.set_progress(self.model_id, stage, round(float(fraction), 4))
            self._last_stage, self._last_write = stage, moment
