"""OS-level confinement for every process that runs uploaded model code.

The first line of defence is the vetted op set (optimizer_pipeline.intake.model_ops): a model that can
touch files or print is refused at upload. This module is the second line, for whatever that walk
might miss: a process that runs model code gets no core dumps, a CPU-time and address-space cap,
where the kernel offers Landlock a filesystem it may write (and, for workers and validation, read)
only where its job needs to, and a seccomp filter (seccomp_filter.py): no exec, no ptrace, no
sockets beyond what it needs. Such processes also get no API key (Settings.without_secrets).

Landlock comes from the maintained `landlock` package (ctypes over the three syscalls); a kernel
without it leaves the rlimits in force, and `describe()` says so in the start-up log.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import seccomp_filter
from .seccomp_filter import SyscallPolicy

if TYPE_CHECKING:
    from ..settings import Settings
    from ..store import Store

# Read-only paths a confined process still needs: the interpreter, libraries, CPU topology.
# Not /etc (passwd, secrets) and not /proc/<pid> (environ): only what libraries look up.
_SYSTEM_READ_PATHS = ("/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/localtime", "/proc/cpuinfo", "/proc/meminfo", "/sys/devices/system/cpu", "/dev/urandom")
# What name resolution and TLS read, for a process that talks to a shared store over the network.
_NETWORK_READ_PATHS = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf", "/etc/ssl", "/etc/ca-certificates")


@dataclass(frozen=True)
class Confinement:
    """What one kind of process may do. Paths must exist when it is applied."""

    writable: tuple[Path, ...] = ()
    # None: reads are not restricted (workers and jobs read the store and any library torch loads).
    readable: tuple[Path, ...] | None = None
    memory_bytes: int | None = None  # added on top of what the process has mapped already
    cpu_seconds: int | None = None
    # None: no seccomp filter (a process that must still start a program, see seccomp_filter.py).
    syscalls: SyscallPolicy | None = None
    # Talks to a shared store over TCP: name resolution's files become readable (with `readable`).
    network: bool = False


def for_inference_worker(settings: Settings, store: Store, shm_dir: Path, extra_writable: tuple[Path, ...] = ()) -> Confinement:
    """An inference worker writes only metrics, the index and shared-memory tensors. It reads only the
    store's index and files besides the libraries: not the rest of the store's directory, which holds
    the generated API key (`<store>/api-key`). It opens TCP sockets only to a shared store."""
    metrics_dir = settings.metrics_dir.resolve()
    return Confinement(
        writable=(metrics_dir, shm_dir, *store.writable(), *extra_writable),
        readable=(*store.readable(), metrics_dir),
        syscalls=SyscallPolicy(network=settings.shared),
        network=settings.shared,
        memory_bytes=settings.worker_memory_bytes,
    )


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where there is none."""
    try:
        import landlock

        return int(landlock.landlock_abi_version())
    except Exception:
        return 0


def describe() -> str:
    """One line for the start-up log: which confinement layers this machine gives model code."""
    abi = landlock_abi()
    landlock_text = f"Landlock ABI {abi} (filesystem confined)" if abi else "Landlock unavailable (rlimits only)"
    seccomp_text = "seccomp (no exec, ptrace or new network sockets)" if seccomp_filter.available() else "seccomp unavailable"
    return (
        f"model code runs confined: vetted TorchScript ops, rlimits (no core dumps, CPU time, address space), {landlock_text}, "
        f"{seccomp_text}, no secrets (no API key in its settings, environment or readable files)"
    )


def apply(confinement: Confinement) -> list[str]:
    """Confine the calling process for the rest of its life; returns the layers that took effect."""
    layers = []
    seccomp = confinement.syscalls is not None and seccomp_filter.available()  # before Landlock: it reads files
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    layers.append("no core dumps")
    if confinement.cpu_seconds is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (confinement.cpu_seconds, confinement.cpu_seconds + 1))
        layers.append(f"CPU time {confinement.cpu_seconds} s")
    if confinement.memory_bytes is not None:
        limit = _mapped_bytes() + confinement.memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        layers.append(f"address space +{confinement.memory_bytes >> 20} MiB")
    if _apply_landlock(confinement):
        layers.append("Landlock")
    if seccomp:
        seccomp_filter.install(confinement.syscalls)
        layers.append("seccomp")
    return layers


def _mapped_bytes() -> int:
    # A forked child starts with its parent's mappings (torch alone maps ~700 MB); the cap is what
    # model code may add on top.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _apply_landlock(confinement: Confinement) -> bool:
    if not landlock_abi():
        return False
    from landlock import FSAccess, Ruleset

    write_access = FSAccess.all() & ~(FSAccess.READ_FILE | FSAccess.READ_DIR | FSAccess.EXECUTE)
    read_access = FSAccess.READ_FILE | FSAccess.READ_DIR | FSAccess.EXECUTE
    handled = write_access if confinement.readable is None else FSAccess.all()
    ruleset = Ruleset(restrict_rules=handled)
    if confinement.readable is not None:
        network = _NETWORK_READ_PATHS if confinement.network else ()
        paths = {*map(Path, _SYSTEM_READ_PATHS), *map(Path, network), *map(Path, _python_paths()), *confinement.readable}
        for path in sorted(paths):
            if path.exists():
                ruleset.allow(str(path), rules=read_access if path.is_dir() else FSAccess.READ_FILE)
    for path in confinement.writable:
        rules = handled if path.is_dir() else handled & FSAccess.all_file()
        ruleset.allow(str(path), rules=rules)
    # /dev/null stays writable: libraries write to it, and it leads nowhere.
    ruleset.allow("/dev/null", rules=FSAccess.WRITE_FILE | (FSAccess.READ_FILE if confinement.readable is not None else 0))
    ruleset.apply()
    return True


def _python_paths() -> list[str]:
    # Not every sys.path entry: a source checkout on sys.path may hold the store itself.
    import optimizer_pipeline
    import wire

    packages = [str(Path(p.__file__).parent) for p in (optimizer_pipeline, wire)] + [str(Path(__file__).parent)]
    return [sys.prefix, sys.base_prefix, sys.exec_prefix, *packages]
