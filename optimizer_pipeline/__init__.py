"""optimizer_pipeline: turn a TorchScript model + calibration batch into a measured-faster variant.

Pure torch, no HTTP. This module is the pipeline's face to the rest of the project (the server
imports the pipeline only through it): `optimize()` (the whole pipeline), `inspect_upload()` (the
fast checks an upload must pass), `load_variant()` (run a stored variant), `compare_outputs()`
(fidelity), the report's and the config's types, the public errors, and the few process and file
utilities the server shares with the pipeline (atomic writes, no orphans, steady malloc).

Every name is imported on first use (PEP 562), so `import optimizer_pipeline` or reading a config
does not import torch's runtimes, onnx, onnxruntime, openvino or nncf.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

# OpenVINO's converter and NNCF report usage to Google Analytics unless a consent file in the user's
# home says no: from a thread, each report forks a process that posts it (the "unexpected pid" the
# timing forkserver reaped and printed into `optiserve optimize`'s progress). A model server has no
# business sending that. With the module blocked, both fall back to their own no-op stubs.
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]

# Name -> the module that defines it: under optimizer_pipeline, or in wire.contract (the wire's types,
# which the client shares; re-exported so the server has one place to ask).
_EXPORTS: dict[str, str] = {
    # the pipeline
    "optimize": "pipeline",
    "inspect_upload": "pipeline",
    "parse_config": "pipeline",
    "OptimizationResult": "variants",
    "Variant": "variants",
    "load_model": "intake.model_loading",
    "check_model_ops": "intake.model_ops",
    # the config
    "PipelineConfig": "config",
    "Tolerance": "wire.contract.tolerance",
    "CONFIG_VERSION": "config",
    "read_stored_config": "config",
    "stored_config": "config",
    # the report
    "Report": "wire.contract.report",
    "Chosen": "wire.contract.report",
    "Fidelity": "wire.contract.report",
    "ModelSummary": "wire.contract.report",
    "Runtime": "wire.contract.report",
    "render_report_html": "report.html",
    # the public errors
    "OptimizerError": "errors",
    "InvalidCalibrationError": "errors",
    "InvalidConfigError": "errors",
    "InvalidLabelsError": "errors",
    "InvalidModelError": "errors",
    "NonFiniteOutputError": "errors",
    "UnsafeModelError": "errors",
    # serving a variant and judging its outputs
    "load_variant": "runtimes",
    "load_variant_file": "runtimes",
    "load_calibration": "intake.calibration",
    "NamedOutputs": "fidelity.outputs",
    "flatten_outputs": "fidelity.outputs",
    "compare_outputs": "fidelity.measures",
    "Z_95": "wire.contract.confidence",
    "wilson_interval": "wire.contract.confidence",
    # hardening a process that runs uploaded models
    "harden_torch": "intake.model_ops",
    "quiet_torch_for_good": "jit",
    # the job's step deadlines and the timing forkserver (a server job runs the pipeline under them)
    "Step": "measure.watch",
    "StepWatch": "measure.watch",
    "watching": "measure.watch",
    "deadline_text": "measure.watch",
    "start_forkserver": "measure.latency_alone",
    # process and file utilities the server shares
    "atomic_write_bytes": "files",
    "atomic_write_stream": "files",
    "atomic_write_text": "files",
    "die_with_parent": "measure.processes",
    "pin_malloc_thresholds": "measure.allocator",
    "release_freed_memory": "measure.allocator",
    "preload_pipeline": "preloaded",
}
# For a forkserver's preload: importing it imports the whole pipeline (preloaded.py).
PRELOAD_MODULE = f"{__name__}.preloaded"
# Modules whose names differ from the facade's.
_RENAMED: dict[str, str] = {"render_report_html": "render_html"}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    path = module if module.startswith("wire.") else f"{__name__}.{module}"
    value = getattr(importlib.import_module(path), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted([*_EXPORTS, "PRELOAD_MODULE"])

