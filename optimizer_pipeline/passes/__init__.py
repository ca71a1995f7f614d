"""Optimization passes: one folder per algorithm, one module per backend; base.PASS_MODULES names them all.

Importing this package imports no pass module: each is imported when its name is first parsed or run.
"""

from .base import PASS_MODULES, REGISTRY, PassConfig, PassOutput, parse_pass_spec, registered, run_pass
from .plan import Plan

__all__ = ["PASS_MODULES", "REGISTRY", "PassConfig", "PassOutput", "Plan", "parse_pass_spec", "registered", "run_pass"]
