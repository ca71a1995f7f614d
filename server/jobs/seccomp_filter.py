"""A seccomp filter for every process that runs model code: it cannot start programs, read or write
other processes' memory, or open sockets it has no use for.

The op walk and Landlock keep model code away from files; this is the layer behind a memory-safety
bug in a kernel (a corrupted buffer turned into arbitrary code): such code still cannot spawn a
shell, attach to the API server, or send what it read anywhere. Denied calls fail with EPERM
rather than killing the process, so a violation is a clean error in the log, not a mystery crash.

Fork and clone stay allowed (threads, and the forkservers' children). Processes that must start a
program after confinement (a job's timing forkserver) start it before the filter goes on
(`optimizer_pipeline.measure.latency_alone.start_forkserver`).

The filter comes from `pyseccomp` (ctypes over the system's libseccomp 2.5+); without the library
or the kernel support `available()` is False and `describe()` in confinement.py says so.
"""

from __future__ import annotations

import errno
import functools
import socket
from dataclasses import dataclass

# No new program, no other process's memory, and no way around the socket rule below: io_uring
# can open sockets and files without the syscalls this filter sees. The rest need privileges a
# root container still has (mounts, modules, namespaces), which model code never needs.
DENIED_SYSCALLS = (
    "execve",
    "execveat",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "setns",
    "unshare",
    "reboot",
    "swapon",
    "swapoff",
)
# Address families are small integers (AF_MAX is 46 on Linux 6); anything from here up is refused too.
_FAMILY_CEILING = 64


@dataclass(frozen=True)
class SyscallPolicy:
    """Which sockets a confined process may still open.

    AF_UNIX always: LitServe's queues and the forkservers talk over Unix sockets. TCP (AF_INET,
    AF_INET6) only with `network`: a shared store's PostgreSQL and object store."""

    network: bool = False

    def socket_families(self) -> frozenset[int]:
        families = {socket.AF_UNIX}
        if self.network:
            families |= {socket.AF_INET, socket.AF_INET6}
        return frozenset(families)


@functools.cache
def available() -> bool:
    """Whether this machine can install the filter (libseccomp found, kernel with seccomp filters).

    Ask before Landlock goes on: finding libseccomp runs `ldconfig -p`, and reads /proc."""
    try:
        import pyseccomp  # noqa: F401  (raises RuntimeError without libseccomp)
    except (ImportError, RuntimeError, OSError):
        return False
    try:
        with open("/proc/self/status") as status:
            return any(line.startswith("Seccomp:") for line in status)
    except OSError:
        return False


def install(policy: SyscallPolicy) -> None:
    """Install the filter on every thread of the calling process, for the rest of its life (and its children's)."""
    import pyseccomp

    rules = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    # Threads started before this call (torch's, LitServe's) get the filter too.
    rules.set_attr(pyseccomp.Attr.CTL_TSYNC, 1)
    denied = pyseccomp.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        try:
            rules.add_rule(denied, name)
        except (RuntimeError, OSError, ValueError):
            pass  # a syscall this kernel or libseccomp does not know cannot be called either
    allowed = policy.socket_families()
    for family in range(_FAMILY_CEILING):
        if family not in allowed:
            rules.add_rule(denied, "socket", pyseccomp.Arg(0, pyseccomp.EQ, family))
    # The comparison is on all 64 bits: a family with high bits set (or a negative one) lands here.
    rules.add_rule(denied, "socket", pyseccomp.Arg(0, pyseccomp.GE, _FAMILY_CEILING))
    rules.load()


def installed() -> bool:
    """Whether the calling process runs under a seccomp filter (`Seccomp: 2`)."""
    with open("/proc/self/status") as status:
        return any(line.split() == ["Seccomp:", "2"] for line in status)
