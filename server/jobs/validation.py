"""Upload validation in a short-lived, confined process: never in the API server.

Validating an upload means loading its TorchScript and running two calibration samples, i.e.
running the uploader's code. Each validation is a child of a forkserver (torch already imported,
so a child starts in milliseconds), confined by `confinement.apply`: no writes anywhere, reads
limited to the libraries and the upload's own directory, a memory cap and a CPU-time limit. The
parent waits at most `seconds`, then kills it: a model that hangs or balloons gets a 422 that says
which limit it hit, and the API server never notices.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from optimizer_pipeline import PRELOAD_MODULE, ModelSummary, PipelineConfig, die_with_parent

from . import confinement
from ..errors import ApiError, optimizer_error_code
from .forkserver_idle import IdleForkserver
from .seccomp_filter import SyscallPolicy

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload([PRELOAD_MODULE, "server.jobs.validation"])
_forkserver = IdleForkserver()


@dataclass(frozen=True)
class ValidationLimits:
    seconds: float
    memory_bytes: int
    idle_seconds: float  # after the last validation, the forkserver ends (forkserver_idle)


def validate_upload(directory: Path, has_labels: bool, config: PipelineConfig | None, limits: ValidationLimits, has_unlabeled: bool = False) -> ModelSummary:
    """Run `inspect_upload` on the files staged in `directory`; raise ApiError (4xx) if they do not pass."""
    with _forkserver.in_use(limits.idle_seconds):
        return _validate(directory, has_labels, config, limits, has_unlabeled)


def _validate(directory: Path, has_labels: bool, config: PipelineConfig | None, limits: ValidationLimits, has_unlabeled: bool) -> ModelSummary:
    with _forkserver_without_secrets():
        receiver, sender = _context.Pipe(duplex=False)
        child = _context.Process(
            target=_validate_in_child, args=(sender, directory, has_labels, config, limits, has_unlabeled), name="optiserve-validate"
        )
        child.start()
    sender.close()
    try:
        if not receiver.poll(limits.seconds):
            raise ApiError(
                422,
                "validation_timeout",
                f"validating the model took longer than {limits.seconds:g} s (two calibration samples through its "
                f"forward); check it for loops that never end, or raise OPTISERVE_VALIDATION_TIMEOUT",
            )
        kind, payload = receiver.recv()
    except EOFError:
        child.join(5)
        raise ApiError(422, "validation_crashed", _crash_message(child.exitcode, limits)) from None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receiver.close()
    if kind == "ok":
        return ModelSummary.model_validate_json(payload)
    status, code, message = payload
    raise ApiError(status, code, message)


@contextmanager
def _forkserver_without_secrets():
    # The forkserver starts once, with this process's environment, and every validation child
    # inherits it; the API key has no business there.
    key = os.environ.pop("OPTISERVE_API_KEY", None)
    try:
        yield
    finally:
        if key is not None:
            os.environ["OPTISERVE_API_KEY"] = key


def _crash_message(exitcode: int | None, limits: ValidationLimits) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        if name == "SIGXCPU":
            return f"validating the model used more than {limits.seconds:g} s of CPU time; check it for loops that never end"
        return (
            f"the model crashed the validation process ({name}); a model that allocates more than "
            f"{limits.memory_bytes >> 20} MiB (OPTISERVE_VALIDATION_MEMORY_BYTES) ends this way too"
        )
    return f"the validation process exited unexpectedly (exit code {exitcode})"


def _validate_in_child(
    sender: Connection, directory: Path, has_labels: bool, config: PipelineConfig | None, limits: ValidationLimits, has_unlabeled: bool = False
) -> None:
    die_with_parent(signal.SIGKILL)
    _silence_output()  # TorchScript can print; what it prints must not reach the server log
    import torch

    from optimizer_pipeline import harden_torch, inspect_upload

    torch.set_num_threads(1)
    harden_torch()
    confinement.apply(
        confinement.Confinement(
            readable=(directory,), memory_bytes=limits.memory_bytes, cpu_seconds=int(limits.seconds) + 1, syscalls=SyscallPolicy()
        )
    )
    try:
        summary = inspect_upload(
            directory / "original.pt",
            directory / "calibration.bin",
            directory / "labels.bin" if has_labels else None,
            config,
            directory / "unlabeled.bin" if has_unlabeled else None,
        )
        sender.send(("ok", summary.model_dump_json()))
    except Exception as exc:
        sender.send(("error", _describe_failure(exc, limits)))


def _describe_failure(exc: Exception, limits: ValidationLimits) -> tuple[int, str, str]:
    """(status, code, message) of a failed validation."""
    from optimizer_pipeline import OptimizerError

    if _out_of_memory(exc):
        cap = limits.memory_bytes >> 20
        return 422, "validation_memory", f"the model needs more than {cap} MiB to run two calibration samples (OPTISERVE_VALIDATION_MEMORY_BYTES)"
    if isinstance(exc, OptimizerError):
        return exc.http_status, optimizer_error_code(exc), str(exc)
    return 422, "invalid_model", f"the model could not be validated ({type(exc).__name__}: {str(exc).strip()[-500:]})"


def _out_of_memory(exc: BaseException | None) -> bool:
    # The pipeline wraps a forward's failure in its own error; the allocator's is in the chain.
    while exc is not None:
        if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _silence_output() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
