"""Latency of variants each timed alone, in a fresh process, taking turns: how finalists are ranked.

In one process runtimes distort each other: thread pools keep spinning after a call and steal the
cores the next runtime needs, and one variant's allocations shape the next one's (shared NOTES).
The same ONNX Runtime variant measured 2.3x or 7.9x "faster" depending on what ran before it, and
on a depthwise CNN the in-process ranking put TorchScript int8 (4.12x) ahead of ORT int8 (2.75x)
where, each timed alone, they gave 2.9x and 5.2x. So the finalists, and the original they are
compared with, are each loaded from their stored file and timed in a process of their own, with
glibc malloc pinned as the serving workers pin it, in turns (A B C, then C B A, ...) so that drift
on this shared machine hits every variant alike.

The processes come from a forkserver that has imported torch and the runtimes but never run an op:
each child starts with no thread pool and no allocator history, for the cost of a fork, which keeps
this cheap enough to run on every optimization.

A process can be disturbed as a whole: on these 2-vCPU machines under load, a TorchScript model ran
24-72 ms a call, every call of one fresh process, against 0.4 ms in the next one (in multiples of
about 12 ms, a scheduler slice: its OpenMP worker waited for a CPU at every parallel region; ONNX
Runtime's caller thread runs the shards itself and was never seen stalling). A median over three
processes is that stall as soon as two of them are hit, and such a stall of the original's
processes, or of a variant's, moved a claimed speed-up 2x and more off the same variant timed alone
elsewhere. So a process more than STALL_FACTOR slower than the same variant's fastest one is not
counted (`undisturbed`), and while any variant has fewer undisturbed processes than asked for,
every variant gets another turn, up to twice the turns in all.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from .. import jit
from .allocator import pin_malloc_thresholds
from .processes import die_with_parent
from ..runtimes import load_variant

_context = multiprocessing.get_context("forkserver")
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
# Run first in every timing process (a picklable callable: it crosses the forkserver), e.g. the
# server's seccomp filter, which the forkserver itself cannot have (it is started by execve).
_confine_child: Callable[[], object] | None = None


@dataclass(frozen=True)
class Subject:
    """A variant to time: its name, its runtime and its stored file's bytes."""

    name: str
    runtime: str
    data: bytes


# A process this much slower than the same variant's fastest was disturbed: real differences between
# fresh processes of one variant stayed within 1.2x here, stalls were 10x and more.
STALL_FACTOR = 1.5


def undisturbed(process_medians_ms: list[float]) -> list[float]:
    """The per-process medians a stall did not hit: those within STALL_FACTOR of the fastest."""
    fastest = min(process_medians_ms)
    return [median for median in process_medians_ms if median <= STALL_FACTOR * fastest]


def _short_of_turns(measured: list[list[AloneMeasurement] | str], turns: int) -> bool:
    return any(isinstance(m, list) and m and len(undisturbed([t.median_ms for t in m])) < turns for m in measured)


@dataclass(frozen=True)
class AloneMeasurement:
    median_ms: float
    pid: int


def time_alone(
    subjects: list[Subject],
    inputs: tuple[torch.Tensor, ...],
    threads: int,
    warmup: int,
    calls: int,
    turns: int,
    timeout_s: float,
) -> list[list[AloneMeasurement] | str]:
    """Per subject, one measurement per turn (each the median of `calls` calls in a fresh process),
    or why it could not be timed; a subject that fails once is not timed again. Up to `turns` more
    turns while a subject has fewer than `turns` undisturbed processes."""
    _context.set_forkserver_preload([__name__])
    measured: list[list[AloneMeasurement] | str] = [[] for _ in subjects]
    for turn in range(2 * turns):
        if turn >= turns and not _short_of_turns(measured, turns):
            break
        order = list(enumerate(subjects))
        for index, subject in order if turn % 2 == 0 else order[::-1]:
            if isinstance(measured[index], list):
                try:
                    measured[index].append(_time_in_child(subject, inputs, threads, warmup, calls, timeout_s))
                except (RuntimeError, TimeoutError) as exc:
                    measured[index] = str(exc)
    return measured


def start_forkserver(confine_child: Callable[[], object] | None = None) -> None:
    """Start the timing processes' forkserver now, and have each timing process call `confine_child` first.

    A caller about to forbid execve (a seccomp filter) starts it before: later it could not."""
    global _confine_child
    _confine_child = confine_child
    _context.set_forkserver_preload([__name__])
    with _starting_a_child():
        forkserver.ensure_running()


def _time_in_child(
    subject: Subject, inputs: tuple[torch.Tensor, ...], threads: int, warmup: int, calls: int, timeout_s: float
) -> AloneMeasurement:
    receiver, sender = _context.Pipe(duplex=False)
    child = _context.Process(
        target=_measure,
        args=(sender, subject.runtime, subject.data, inputs, threads, warmup, calls, _confine_child),
        name="optiserve-timing",
    )
    with _starting_a_child():
        child.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            raise TimeoutError(f"timing {subject.name} alone took more than {timeout_s:.0f} s")
        outcome = receiver.recv()
    except EOFError:
        child.join(5)
        raise RuntimeError(f"the process timing {subject.name} died (exit code {child.exitcode})") from None
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join()
    if isinstance(outcome, str):
        raise RuntimeError(f"timing {subject.name} alone failed: {outcome}")
    return outcome


@contextlib.contextmanager
def _starting_a_child() -> Iterator[None]:
    """Start a child that runs this very code and nothing of the parent's main module.

    - multiprocessing makes every child import the parent's __main__ first (a bench script, pytest,
      the server), which would cost each timing process that import, or fail where there is no file
      (python -c, stdin); the child needs nothing from it.
    - Python 3.11's forkserver ignores the parent's sys.path: it imports from the interpreter's
      default path, where `optimizer_pipeline` may be another checkout, or missing. The package
      root this module came from goes first on PYTHONPATH for the forkserver this may start."""
    main, python_path = sys.modules["__main__"], os.environ.get("PYTHONPATH")
    sys.modules["__main__"] = types.ModuleType("__main__")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, python_path]))
    try:
        yield
    finally:
        sys.modules["__main__"] = main
        if python_path is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = python_path


def _measure(
    sender: Connection,
    runtime: str,
    data: bytes,
    inputs: tuple[torch.Tensor, ...],
    threads: int,
    warmup: int,
    calls: int,
    confine: Callable[[], object] | None = None,
) -> None:
    """The child: load the stored variant as a worker would, warm it up, time `calls` calls."""
    # Its parent is the forkserver, which exits when the process that timed through it dies (a job
    # killed mid-search): this child must not keep a core busy after that.
    die_with_parent(signal.SIGKILL)
    if confine is not None:
        confine()  # before the variant (the uploader's code) is even loaded
    try:
        pin_malloc_thresholds()
        torch.set_num_threads(threads)
        jit.quiet_torch_for_good()
        model = load_variant(runtime, data, threads)
        times = []
        with torch.inference_mode():
            for _ in range(warmup):
                model(*inputs)
            for _ in range(calls):
                start = time.perf_counter()
                model(*inputs)
                times.append((time.perf_counter() - start) * 1000)
        sender.send(AloneMeasurement(statistics.median(times), os.getpid()))
    except Exception as exc:  # reported to the parent, which fails that candidate with it
        sender.send(f"{type(exc).__name__}: {str(exc).strip()[:500]}")
    finally:
        sender.close()
