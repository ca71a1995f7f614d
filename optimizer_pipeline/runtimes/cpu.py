"""What the CPU can do that changes which candidates are worth building: bf16 for now.

bf16 is offered only where the CPU computes it natively (AVX-512 BF16 or AMX); elsewhere OpenVINO
would emulate or silently fall back to f32, so a bf16 candidate would cost a build and a timing
for nothing, or worse, be served as "bf16" without being it.
"""

from __future__ import annotations

import functools
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpuinfo_flags(text: str) -> set[str]:
    """The CPU feature flags in /proc/cpuinfo text (the first processor's; they are alike)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def bf16_from_cpuinfo(text: str) -> bool:
    return any(flag in cpuinfo_flags(text) for flag in BF16_FLAGS)


def bf16_from_openvino() -> bool | None:
    """OpenVINO's own view (its CPU plugin lists "BF16" among OPTIMIZATION_CAPABILITIES), None without it."""
    try:
        from .openvino import core

        return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no OpenVINO, or no CPU plugin: that view is simply missing
        return None


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively. Both views must agree where both exist: the kernel's
    flags (what the CPU has) and OpenVINO's capabilities (what the runtime will use)."""
    try:
        flags = bf16_from_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        flags = None
    views = [view for view in (flags, bf16_from_openvino()) if view is not None]
    return bool(views) and all(views)
