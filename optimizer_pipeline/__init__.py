"""optimizer_pipeline: turn a TorchScript model + calibration batch into a measured-faster variant.

Pure torch, no HTTP. Entry points: `optimize()` (the whole pipeline) and `inspect_upload()` (the
fast checks an upload must pass).
"""

from .config import PipelineConfig, Tolerance
from .errors import (
    InvalidCalibrationError,
    InvalidConfigError,
    InvalidLabelsError,
    InvalidModelError,
    NonFiniteOutputError,
    OptimizerError,
)
from .model_loading import load_model
from .pipeline import inspect_upload, optimize, parse_config
from .report import Report
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
    "Variant",
    "inspect_upload",
    "load_model",
    "optimize",
    "parse_config",
]
