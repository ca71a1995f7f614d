"""Optimization passes. Importing a pass module registers it by name (see base.py)."""

# Importing a pass module registers it: one folder per algorithm, one module per backend.
from .conversion import freeze, onnx_export, ov_convert  # noqa: F401
from .pruning import structured, unstructured  # noqa: F401
from .quantization import dynamic, ort_quantize, ov_quantize, qat, static  # noqa: F401
from .recovery import finetune  # noqa: F401
from .base import REGISTRY, PassConfig, PassOutput, parse_pass_spec, run_pass
from .plan import Plan

__all__ = ["REGISTRY", "PassConfig", "PassOutput", "Plan", "parse_pass_spec", "run_pass"]
