"""optimizer_pipeline: turn a TorchScript model + calibration batch into a measured-faster variant.

Pure torch, no HTTP. Entry points: `optimize()` (the whole pipeline) and `inspect_upload()` (the
fast checks an upload must pass).
"""

from wire.contract.report import Report

from .config import PipelineConfig, Tolerance
from .errors import (
    InvalidCalibrationError,
    InvalidConfigError,
    InvalidLabelsError,
    InvalidModelError,
    NonFiniteOutputError,
    OptimizerError,
    UnsafeModelError,
)
from .model_loading import load_model
from .model_ops import check_model_ops
from .pipeline import inspect_upload, optimize, parse_config
from .variants import OptimizationResult, Variant

__all__ = [
    "InvalidCalibrationError",
    "InvalidConfigError",
    "InvalidLabelsError",
    "InvalidModelError",
    "NonFiniteOutputError",
    "OptimizationResult",
    "OptimizerError",
    "PipelineConfig",
    "Report",
    "Tolerance",
    "UnsafeModelError",
    "Variant",
    "check_model_ops",
    "inspect_upload",
    "load_model",
    "optimize",
    "parse_config",
]
