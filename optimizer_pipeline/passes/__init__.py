"""Optimization passes. Importing a pass module registers it by name (see base.py)."""

from . import (  # noqa: F401
    finetune,
    freeze,
    onnx_export,
    ort_quantize,
    ov_convert,
    ov_quantize,
    prune_structured,
    prune_unstructured,
    quantize_dynamic,
    quantize_qat,
    quantize_static,
)
from .base import REGISTRY, PassConfig, PassOutput, parse_pass_spec, run_pass
from .plan import Plan

__all__ = ["REGISTRY", "PassConfig", "PassOutput", "Plan", "parse_pass_spec", "run_pass"]
