"""What every pass shares: a pydantic config class, a function, and a registry by name.

A pass is `run(model, calibration, config) -> PassOutput`. It may modify `model` in place (the
pipeline always hands it a private copy) and returns the resulting ScriptModule plus details for
the report (e.g. per-layer sparsity). Adding a pass = one module that defines a config class and
decorates its function with `@register(ConfigClass)`, and a line in PASS_MODULES.

A pass module is imported when its name is first parsed or run, not before: parsing a config that
names no ONNX or OpenVINO pass must not import onnx, openvino or nncf (the server parses every
upload's config in its API process).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..intake.calibration import Batch


class PassConfig(BaseModel):
    """Base of every pass config. `pass` names the pass; subclasses fix it with a Literal."""

    # Subclasses redeclare `name` as a Literal; the generator keeps its JSON key "pass" there too.
    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        populate_by_name=True,
        frozen=True,
        alias_generator=lambda field: "pass" if field == "name" else field,
    )

    name: str
    # Set on passes that cannot give speed by themselves, so the report can say so up front.
    speed_note: ClassVar[str | None] = None
    # The model formats the pass takes and the one it returns: "torchscript", "onnx" or "openvino".
    # A plan must chain them (plan.py); an impossible plan is refused when the config is parsed.
    consumes: ClassVar[tuple[str, ...]] = ("torchscript",)
    produces: ClassVar[str] = "torchscript"
    # As a plan's first step on a .pt2 upload, the pass gets the torch.export program itself rather
    # than its TorchScript stand-in (exported/loading.py).
    takes_program: ClassVar[bool] = False
    # A last word for its runtime (freeze, int8): only a runtime-neutral plan may follow, i.e. none.
    finishing: ClassVar[bool] = False
    # Only meaningful after a pass that changed the model (fine-tuning the original against itself).
    needs_prior_change: ClassVar[bool] = False
    # An int field that trades speed for fidelity (e.g. layers kept in float). The search raises it
    # when a plan misses the tolerance.
    fallback_field: ClassVar[str | None] = None

    def spec(self) -> dict[str, Any]:
        """JSON form as a user writes it: {"pass": ..., options...}."""
        return self.model_dump(mode="json", by_alias=True)

    def label(self) -> str:
        """Short human name, e.g. `prune_unstructured(amount=0.3)`."""
        options = self.model_dump(mode="json", exclude={"name"}, exclude_defaults=True)
        inner = ", ".join(f"{key}={value}" for key, value in options.items())
        return f"{self.name}({inner})" if inner else self.name


@dataclass
class PassOutput:
    model: Any  # a ScriptModule, an OnnxModel or an OpenVinoModel (see `produces`)
    details: dict[str, Any] = field(default_factory=dict)


PassFunction = Callable[[Any, Batch, Any], PassOutput]


@dataclass(frozen=True)
class RegisteredPass:
    config_class: type[PassConfig]
    run: PassFunction


# Every pass by name, with the module (under passes/) that registers it when imported.
PASS_MODULES: dict[str, str] = {
    "freeze": "conversion.freeze",
    "onnx_export": "conversion.onnx_export",
    "ov_convert": "conversion.ov_convert",
    "prune_unstructured": "pruning.unstructured",
    "prune_structured": "pruning.structured",
    "quantize_dynamic": "quantization.dynamic",
    "quantize_static": "quantization.static",
    "quantize_qat": "quantization.qat",
    "ort_quantize_static": "quantization.ort_quantize",
    "ort_quantize_dynamic": "quantization.ort_quantize",
    "ov_quantize": "quantization.ov_quantize",
    "finetune": "recovery.finetune",
}
# The passes whose module has been imported; `registered` fills it on demand.
REGISTRY: dict[str, RegisteredPass] = {}


def register(config_class: type[PassConfig]) -> Callable[[PassFunction], PassFunction]:
    """Decorator: make `fn` the implementation of the pass named by config_class's `name` default."""
    pass_name = config_class.model_fields["name"].default
    if pass_name not in PASS_MODULES:
        raise RuntimeError(f"pass {pass_name!r} is missing from PASS_MODULES")

    def decorate(fn: PassFunction) -> PassFunction:
        if pass_name in REGISTRY:
            raise RuntimeError(f"pass {pass_name!r} registered twice")
        REGISTRY[pass_name] = RegisteredPass(config_class, fn)
        return fn

    return decorate


def parse_pass_spec(value: Any) -> PassConfig:
    """Turn {"pass": name, ...} into that pass's config instance (pydantic BeforeValidator)."""
    if isinstance(value, PassConfig):
        return value
    if isinstance(value, str):
        value = {"pass": value}
    if not isinstance(value, dict) or "pass" not in value:
        raise ValueError(f'a pass spec is an object like {{"pass": "freeze"}}, got {value!r}')
    name = value["pass"]
    if not is_known_pass(name):
        raise ValueError(f"unknown pass {name!r}; known passes: {', '.join(sorted(PASS_MODULES))}")
    return registered(name).config_class.model_validate(value)


def is_known_pass(name: Any) -> bool:
    return isinstance(name, str) and name in PASS_MODULES


def registered(name: str) -> RegisteredPass:
    """The pass named `name`, its module imported on first use."""
    if name not in REGISTRY:
        importlib.import_module(f"{__package__}.{PASS_MODULES[name]}")
    return REGISTRY[name]


def run_pass(model: Any, calibration: Batch, config: PassConfig) -> PassOutput:
    return registered(config.name).run(model, calibration, config)
