"""Background optimization, away from the API servers and the inference workers.

A runner takes queued jobs from the store one at a time and runs each in a fresh child process with
capped torch threads and a lower CPU priority, so serving keeps going. A child that crashes (even a
segfault inside a quantization kernel) fails its job with the reason; a stop puts the running job
back in the queue. The runner is a child of the server (`run_forever`), or on a shared store any
number of `optiserve worker` processes (`work`), each holding a lease on its job that it renews
while the job runs.

A kill -9 leaves the job `optimizing`. On an embedded store `Store.recover` re-queues it (or fails
it, after `job_attempts` runs) at the next start; on a shared store its lease runs out and any
worker re-queues it the same way. The lease is also a fencing token: a worker whose lease ran out
cannot finish, fail or report progress on a job that another worker now runs.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
import traceback
from pathlib import Path

import torch

from optimizer_pipeline import OptimizationResult, OptimizerError, optimize
from optimizer_pipeline.model_ops import harden_torch
from optimizer_pipeline.processes import die_with_parent

from . import confinement
from .metrics import OPTIMIZATION_SECONDS
from .processes import interrupt_on_sigterm
from .schemas import VariantInfo
from .settings import Settings
from .store import Claim, Store, open_store

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
    """The server's own runner (a child process)."""
    die_with_parent()
    work(settings, "server")


def work(settings: Settings, role: str = "worker") -> int:
    """Run jobs until SIGTERM or Ctrl-C; `optiserve worker` runs this in the foreground."""
    interrupt_on_sigterm()
    store = open_store(settings)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    next_expiry_check = 0.0
    try:
        while True:
            try:
                if settings.shared and time.monotonic() >= next_expiry_check:
                    # Any worker may re-queue a dead worker's job; a cheap query, so no leader is needed.
                    for action in store.requeue_expired(settings.job_attempts):
                        logger.warning("recovered job %s", action)
                    next_expiry_check = time.monotonic() + settings.job_lease / 2
                claim = store.claim_next_job(worker)
                if claim is not None:
                    _supervise(settings, store, claim)
                    continue
            except Exception:  # e.g. SQLite busy beyond its timeout, or the database restarting: the queue must outlive it
                logger.exception("job runner error; retrying")
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        # The parent's stop and PR_SET_PDEATHSIG can both arrive; the hand-back must not be cut short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Every job this runner claimed, including one claimed a moment before the stop, whose
        # child had not started yet.
        store.hand_back_jobs(f"interrupted by a {role} shutdown; re-queued", worker=worker)
    return 0


def _supervise(settings: Settings, store: Store, claim: Claim) -> None:
    child = _fork.Process(target=run_job, args=(settings, claim), name=f"optiserve-job-{claim.model_id}")
    child.start()
    deadline = time.monotonic() + settings.job_timeout
    renew_every = settings.job_lease / 3
    next_renewal = time.monotonic() + renew_every
    try:
        while child.is_alive():
            child.join(max(min(1.0, deadline - time.monotonic(), next_renewal - time.monotonic()), 0.0))
            if child.is_alive() and time.monotonic() >= next_renewal:
                if not _renewed(store, claim):  # another worker runs it now, or the model is gone
                    stop(child)
                    return
                next_renewal = time.monotonic() + renew_every
            if child.is_alive() and not _exists(store, claim.model_id):  # deleted or replaced: stop wasting CPU
                stop(child)
                return
            if child.is_alive() and time.monotonic() >= deadline:
                stop(child)
                # Failed, not handed back: a job that hangs would hang again on every retry.
                store.fail_job(
                    claim,
                    f"the optimization ran past its time limit of {settings.job_timeout:g} s (OPTISERVE_JOB_TIMEOUT) and was "
                    "stopped; the original model keeps serving",
                )
                return
    except KeyboardInterrupt:
        stop(child)
        raise
    if child.exitcode != 0:
        cause = f"signal {signal.Signals(-child.exitcode).name}" if child.exitcode < 0 else f"exit code {child.exitcode}"
        store.fail_job(claim, f"the optimization process died ({cause}); the original model keeps serving")


def _renewed(store: Store, claim: Claim) -> bool:
    try:
        return store.renew_lease(claim)
    except Exception:
        # The database is unreachable: keep going. If the lease runs out meanwhile, another worker
        # takes the job, and the fencing token voids whatever this one writes afterwards.
        logger.exception("could not renew the lease on job %s; retrying", claim.model_id)
        return True


def _exists(store: Store, model_id: str) -> bool:
    try:
        return store.exists(model_id)
    except Exception:
        logger.exception("could not check that model %s still exists", model_id)
        return True


def run_job(settings: Settings, claim: Claim) -> None:
    """The job child: optimize one stored upload and record the outcome."""
    die_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked: drop the runner's handler; a stop is a stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the runner decides
    os.nice(settings.job_nice)
    torch.set_num_threads(settings.job_threads)
    harden_torch()
    store = open_store(settings)
    info = store.get(claim.model_id)
    if info is None:
        return
    # Fetched before the confinement (from a remote store they land in its cache).
    model, calibration = store.file(info.id, "original.pt"), store.file(info.id, "calibration.bin")
    labels = store.file(info.id, "labels.bin") if info.has_labels else None
    if model is None or calibration is None or (info.has_labels and labels is None):
        return  # deleted since the claim
    writable = (*store.writable(info.id), settings.metrics_dir.resolve(), Path(tempfile.gettempdir()))
    confinement.apply(confinement.Confinement(writable=writable, memory_bytes=settings.job_memory_bytes))
    config = dict(info.config or {})
    config["threads"] = min(config.get("threads") or settings.job_threads, settings.job_threads)
    started = time.perf_counter()
    try:
        result = optimize(model, calibration, config=config, labels=labels, name=info.name, progress=_ThrottledProgress(store, claim))
    except Exception as exc:
        seconds = time.perf_counter() - started
        if not isinstance(exc, OptimizerError):
            logger.error("optimization of %s crashed:\n%s", claim.model_id, traceback.format_exc())
        reason = str(exc) if isinstance(exc, OptimizerError) else f"optimization crashed: {type(exc).__name__}: {exc}"
        store.fail_job(claim, reason, seconds)
        OPTIMIZATION_SECONDS.labels("failed").observe(seconds)
        return
    seconds = time.perf_counter() - started
    _record(store, claim, result, seconds)
    OPTIMIZATION_SECONDS.labels("ready").observe(seconds)


def _record(store: Store, claim: Claim, result: OptimizationResult, seconds: float) -> None:
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
    store.finish_job(claim, result.report.chosen, round(seconds, 3), optimized, files)


class _ThrottledProgress:
    """The pipeline's progress callback, written to the store at most every half second (or on a new stage)."""

    def __init__(self, store: Store, claim: Claim) -> None:
        self.store = store
        self.claim = claim
        self._last_stage: str | None = None
        self._last_write = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        moment = time.monotonic()
        if stage != self._last_stage or moment - self._last_write >= PROGRESS_INTERVAL_SECONDS:
            self.store.set_progress(self.claim, stage, round(float(fraction), 4))
            self._last_stage, self._last_write = stage, moment
