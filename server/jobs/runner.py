"""Background optimization, away from the API servers and the inference workers.

A runner takes queued jobs from the store, up to `job_concurrency` at once, and runs each in a fresh
child process with capped torch threads and a lower CPU priority, so serving keeps going. Every step
of a job that runs a model has a deadline that the runner enforces from outside (a scripted forward
cannot be interrupted from inside): a candidate past it fails alone and the job goes on without it
(`_Running`, optimizer_pipeline/measure/watch.py). A child that crashes (even a
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

import functools
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch

from optimizer_pipeline import (
    OptimizationResult,
    OptimizerError,
    PipelineConfig,
    Step,
    StepWatch,
    deadline_text,
    die_with_parent,
    harden_torch,
    optimize,
    preload_pipeline,
    read_stored_config,
    start_forkserver,
    watching,
)
from wire.contract.models import VariantInfo

from . import confinement, seccomp_filter
from ..metrics import OPTIMIZATION_SECONDS
from ..processes import adopt_orphans, interrupt_on_sigterm, stop_orphans
from .seccomp_filter import SyscallPolicy
from ..settings import Settings
from ..store import Claim, Store, open_store

logger = logging.getLogger("optiserve.jobs")
POLL_SECONDS = 0.25
PROGRESS_INTERVAL_SECONDS = 0.5
EXISTS_INTERVAL_SECONDS = 1.0
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
    """Run jobs until SIGTERM or Ctrl-C; `optiserve worker` runs this in the foreground.

    Up to `job_concurrency` jobs run at once, each in a process of its own that this loop supervises."""
    interrupt_on_sigterm()
    adopt_orphans()
    preload_pipeline()  # before the jobs fork: each starts with every pass imported, outside its memory cap
    store = open_store(settings)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    next_expiry_check = 0.0
    running: list[_Running] = []
    try:
        while True:
            try:
                if settings.shared and time.monotonic() >= next_expiry_check:
                    # Any worker may re-queue a dead worker's job; a cheap query, so no leader is needed.
                    for action in store.requeue_expired(settings.job_attempts):
                        logger.warning("recovered job %s", action)
                    next_expiry_check = time.monotonic() + settings.job_lease / 2
                while len(running) < settings.job_concurrency:
                    claim = store.claim_next_job(worker)
                    if claim is None:
                        break
                    running.append(_Running(settings, store, claim))
            except Exception:  # e.g. SQLite busy beyond its timeout, or the database restarting: the queue must outlive it
                logger.exception("job runner error; retrying")
            if running:
                # Wakes at once when a job ends or announces a step; at least every POLL_SECONDS to claim more.
                wait([handle for job in running for handle in job.handles()], POLL_SECONDS if len(running) < settings.job_concurrency else 1.0)
                running = [job for job in running if job.check()]
                # What an ended or restarted job left behind (its timing forkserver): adopted by this runner, ended here.
                stop_orphans(keep=tuple(job.child.pid for job in running))
            else:
                time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        # The parent's stop and PR_SET_PDEATHSIG can both arrive; the hand-back must not be cut short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for job in running:
            stop(job.child)
        # Every job this runner claimed, including one claimed a moment before the stop, whose
        # child had not started yet.
        store.hand_back_jobs(f"interrupted by a {role} shutdown; re-queued", worker=worker)
    return 0


class _Running:
    """One claimed job: its process, its lease, its time limit, and the deadline of the step it runs.

    The job process announces every step that runs a model (optimizer_pipeline/measure/watch.py). A step past
    its deadline is a call that will not return: the process is killed, and if the step belonged to a
    candidate the job starts again with that candidate recorded as failed, so the search goes on
    without it; a step on the original fails the job."""

    def __init__(self, settings: Settings, store: Store, claim: Claim) -> None:
        self.settings, self.store, self.claim = settings, store, claim
        self.hung: dict[str, str] = {}
        self.seen: set[str] = set()  # candidates that ran a step in an earlier run without hanging
        self.deadline = time.monotonic() + settings.job_timeout  # over all restarts
        self.renew_every = settings.job_lease / 3
        self.next_renewal = time.monotonic() + self.renew_every
        self.next_exists_check = 0.0
        self._start()

    def _start(self) -> None:
        self.steps, sender = _fork.Pipe(duplex=False)
        self.child = _fork.Process(
            target=run_job, args=(self.settings, self.claim, sender, dict(self.hung), frozenset(self.seen)), name=f"optiserve-job-{self.claim.model_id}"
        )
        self.child.start()
        sender.close()
        self.step: Step | None = None
        self.step_deadline = float("inf")
        self.tried: set[str] = set()

    def handles(self) -> list[Any]:
        return [self.child.sentinel, self.steps]

    def check(self) -> bool:
        """Act on whatever happened; False once the job is over (finished, failed or given up)."""
        try:
            return self._check()
        except Exception:
            logger.exception("supervising job %s failed; retrying", self.claim.model_id)
            return True

    def _check(self) -> bool:
        self._read_steps()
        if not self.child.is_alive():
            self.child.join()
            self.steps.close()
            if self.child.exitcode != 0:
                code = self.child.exitcode
                cause = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                self.store.fail_job(self.claim, f"the optimization process died ({cause}); the original model keeps serving")
            return False
        now = time.monotonic()
        if now >= self.next_renewal:
            if not _renewed(self.store, self.claim):  # another worker runs it now, or the model is gone
                return self._stop()
            self.next_renewal = now + self.renew_every
        if now >= self.next_exists_check:
            if not _exists(self.store, self.claim.model_id):  # deleted or replaced: stop wasting CPU
                return self._stop()
            self.next_exists_check = now + EXISTS_INTERVAL_SECONDS
        if now >= self.deadline:
            # Failed, not handed back: a job that hangs would hang again on every retry.
            self._stop()
            self.store.fail_job(
                self.claim,
                f"the optimization ran past its time limit of {self.settings.job_timeout:g} s (OPTISERVE_JOB_TIMEOUT) and was "
                "stopped; the original model keeps serving",
            )
            return False
        if now >= self.step_deadline and self.step is not None:
            return self._overran(self.step)
        return True

    def _read_steps(self) -> None:
        try:
            while self.steps.poll():
                step = self.steps.recv()
                self.step = step
                self.step_deadline = time.monotonic() + step.seconds if step is not None else float("inf")
                if step is not None and step.candidate is not None:
                    self.tried.add(step.candidate)
        except (EOFError, OSError):  # the job process ended: its exit says the rest
            pass

    def _overran(self, step: Step) -> bool:
        self._stop()
        limit = deadline_text(step.seconds)
        if step.candidate is None:
            self.store.fail_job(
                self.claim,
                f"the original model exceeded its deadline of {limit} while {step.what} (a forward that does not return?) "
                "and the optimization was stopped; the original model keeps serving",
            )
            return False
        logger.warning("job %s: candidate %r exceeded its deadline of %s while %s; restarting the job without it",
                       self.claim.model_id, step.candidate, limit, step.what)
        self.hung[step.candidate] = f"exceeded its deadline of {limit} while {step.what}; stopped, and the search went on without it"
        # Past MAX_HUNG hung candidates only these run again, so the restarts end (and job_timeout bounds them all).
        self.seen |= self.tried - set(self.hung)
        self._start()
        return True

    def _stop(self) -> bool:
        stop(self.child)
        self.steps.close()
        return False


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


def run_job(settings: Settings, claim: Claim, steps: Connection | None = None, hung: dict[str, str] | None = None, seen: frozenset[str] = frozenset()) -> None:
    """The job child: optimize one stored upload and record the outcome.

    Every model-running step is announced on `steps` for the runner to time; `hung` names the
    candidates an earlier run of this job was stopped in (watch.py)."""
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
    unlabeled = store.file(info.id, "unlabeled.bin") if info.has_unlabeled else None
    if model is None or calibration is None or (info.has_labels and labels is None) or (info.has_unlabeled and unlabeled is None):
        return  # deleted since the claim
    writable = (*store.writable(info.id), settings.metrics_dir.resolve(), Path(tempfile.gettempdir()))
    filter_syscalls = seccomp_filter.available()  # asked before Landlock (see there)
    confinement.apply(confinement.Confinement(writable=writable, memory_bytes=settings.job_memory_bytes))
    # The finalists' timing forkserver is a new program: it starts (under Landlock and the rlimits)
    # before the seccomp filter forbids execve, and each timing process installs the filter itself.
    policy = SyscallPolicy(network=settings.shared)
    if filter_syscalls:
        start_forkserver(functools.partial(seccomp_filter.install, policy))
        seccomp_filter.install(policy)
    uploaded = read_stored_config(info.config) or PipelineConfig()
    config = uploaded.model_copy(update={"threads": min(uploaded.threads or settings.job_threads, settings.job_threads)})
    started = time.perf_counter()
    try:
        with watching(_AnnouncedSteps(hung=dict(hung or {}), seen=seen, sender=steps, cap=settings.job_step_timeout)):
            result = optimize(
                model, calibration, config=config, labels=labels, name=info.name, progress=_ThrottledProgress(store, claim), unlabeled=unlabeled
            )
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
    if (variant := result.optimized) is not None:
        files[variant.filename] = variant.data
        optimized = VariantInfo(
            name="optimized", runtime=variant.runtime, filename=variant.filename, size_bytes=len(variant.data), version=0
        )
    store.finish_job(claim, result.report.chosen, round(seconds, 3), optimized, files)


@dataclass
class _AnnouncedSteps(StepWatch):
    """Tells the runner of every step that runs a model, its deadline cut to the server's cap."""

    sender: Connection | None = None
    cap: float = float("inf")

    def started(self, step: Step) -> None:
        if self.sender is not None:
            self.sender.send(replace(step, seconds=min(step.seconds, self.cap)))

    def ended(self) -> None:
        if self.sender is not None:
            self.sender.send(None)


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
