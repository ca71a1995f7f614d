"""`optiserve status` for a person: state and progress, variants, the chosen candidate and its fidelity, errors, notes."""

from __future__ import annotations

from wire.contract.models import ModelInfo, ModelStatus
from wire.contract.report import Fidelity
from wire.contract.routing import describe_policy


def status_summary(model: ModelStatus) -> str:
    lines = [f"{model.name} (id {model.id}): {_state(model)}; serves {model.default_variant} by default"]
    if model.routing is not None:
        lines.append(f"  routing: {describe_policy(model.routing)}")
    lines.append("  variants: " + ", ".join(f"{v.name} ({v.runtime}, {_size(v.size_bytes)})" for v in model.variants))
    if model.chosen is not None:
        speedup = f", {model.chosen.speedup:.2f}x speed-up" if model.chosen.speedup else ""
        lines.append(f"  chosen: {model.chosen.candidate}{speedup}: {model.chosen.reason}")
        if model.chosen.fidelity is not None:
            lines.append("  fidelity: " + _fidelity(model.chosen.fidelity))
    if model.finished and model.optimization_seconds is not None:
        lines.append(f"  optimization took {model.optimization_seconds:.1f} s")
    if model.stage_seconds:
        lines.append("  stages: " + ", ".join(f"{stage} {spent:.1f} s" for stage, spent in model.stage_seconds.items()))
    if model.error:
        lines.append(f"  optimization failed: {model.error}")
    lines += [f"  note: {note}" for note in model.notes]
    return "\n".join(lines)


def _state(model: ModelInfo) -> str:
    return f"optimizing ({model.stage or 'starting'}, {model.progress:.0%})" if model.state == "optimizing" else model.state


def _fidelity(fidelity: Fidelity) -> str:
    parts = [] if fidelity.agreement is None else [f"top-1 agreement {fidelity.agreement:.3f}"]
    parts += [
        f"cosine {fidelity.cosine:.4f} (worst sample {fidelity.cosine_min:.4f})",
        f"SQNR {fidelity.sqnr_db:.1f} dB",
        f"max abs error {fidelity.max_abs_error:.3g}",
    ]
    if fidelity.accuracy is not None and fidelity.accuracy_original is not None:
        parts.append(f"accuracy {fidelity.accuracy:.3f} (original {fidelity.accuracy_original:.3f})")
    return ", ".join(parts) + (f"; on {fidelity.samples} held-out samples" if fidelity.samples else "")


def _size(size_bytes: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{size_bytes} B"
