"""Optimization passes. Importing a pass module registers it by name (see base.py)."""

from . import freeze, prune_unstructured, quantize_dynamic, quantize_static  # noqa: F401
from .base import REGISTRY, PassConfig, PassOutput, parse_pass_spec, run_pass

__all__ = ["REGISTRY", "PassConfig", "PassOutput", "parse_pass_spec", "run_pass"]
