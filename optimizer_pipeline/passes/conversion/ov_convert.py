"""TorchScript, a torch.export program or ONNX → OpenVINO IR (openvino.convert_model), checked against
its source before use.

From an exported ONNX model (after onnx_export) the IR keeps the ONNX names. A .pt2 upload's program
(as a plan's first step) is converted as it is, its ATen graph and dynamic batch included. From
TorchScript the model is traced with its outputs flattened (as onnx_export does) and converted with
an example input. Either way the IR's inputs and outputs get the original's names, and the variant is
a drop-in replacement with a dynamic batch axis.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import openvino as ov
import torch
from pydantic import Field

from ... import jit
from ...exported.loading import io_names
from ...intake.calibration import Batch
from ...fidelity.outputs import flatten_outputs
from ...runtimes.onnxruntime import OnnxModel, load_session, quiet_onnx
from ...runtimes.openvino import OpenVinoModel, compile_model, set_precision
from ..base import PassConfig, PassOutput, register
from .onnx_export import FlatOutputs
from ..parity import check_parity


class OvConvertConfig(PassConfig):
    name: Literal["ov_convert"] = "ov_convert"

    consumes = ("torchscript", "onnx")
    produces = "openvino"
    takes_program = True
    precision: Literal["f32", "bf16"] = Field(
        "f32", description="float precision OpenVINO computes in; bf16 is faster where the CPU has it, and less exact"
    )
    parity_tolerance: float = Field(
        1e-4, gt=0, le=1, description="largest allowed |OpenVINO (f32) − source|, relative to the output's largest magnitude"
    )


@register(OvConvertConfig)
def ov_convert(model: jit.ScriptModule | torch.export.ExportedProgram | OnnxModel, calibration: Batch, config: OvConvertConfig) -> PassOutput:
    if isinstance(model, OnnxModel):
        converted, reference, source = _from_onnx(model), load_session(model.data, torch.get_num_threads()), "onnx"
    elif isinstance(model, torch.export.ExportedProgram):
        reference = model.module()
        converted, source = _from_program(model, reference, calibration), "torch.export program"
    else:
        model = jit.reload(model)  # see onnx_export: an in-memory frozen module cannot be wrapped and traced
        converted, reference, source = _from_torchscript(model, calibration), model, "torchscript"
    # The conversion itself must be exact, so parity is checked in f32 whatever the plan's precision;
    # bf16, if asked for, is then judged by the fidelity check like any int8 plan.
    loaded = compile_model(converted, torch.get_num_threads())
    errors = check_parity(reference, loaded, calibration, config.parity_tolerance, "the OpenVINO conversion")
    set_precision(converted, config.precision)
    return PassOutput(
        OpenVinoModel.of(converted),
        {"source": source, "precision": config.precision, "inputs": loaded.input_names, "outputs": loaded.output_names,
         "relative_error_by_batch": errors},
    )


def _from_onnx(model: OnnxModel) -> ov.Model:
    with tempfile.TemporaryDirectory(prefix="optiserve-ov-") as directory, quiet_onnx():
        path = Path(directory) / "model.onnx"
        path.write_bytes(model.data)
        return ov.convert_model(path)


def _from_program(program: torch.export.ExportedProgram, module: torch.nn.Module, calibration: Batch) -> ov.Model:
    input_names, output_names = io_names(program, module, calibration.head(2).inputs)
    converted = ov.convert_model(program)
    _name_ports(converted, input_names, output_names)
    return converted


def _name_ports(converted: ov.Model, input_names: list[str], output_names: list[str]) -> None:
    for port, name in zip(converted.inputs, input_names):
        port.get_tensor().set_names({name})
    for port, name in zip(converted.outputs, output_names):
        port.get_tensor().set_names({name})


def _from_torchscript(model: jit.ScriptModule, calibration: Batch) -> ov.Model:
    sample = calibration.head(2).inputs  # two samples: never specialize on a batch of one
    with torch.no_grad(), jit.quiet_torch():
        output_names = [name for name, _ in flatten_outputs(model(*sample))]
        flat = torch.jit.trace(FlatOutputs(model), sample, check_trace=False)
        # A dict-returning model leaves DictConstruct + __getitem__ in the traced graph, which
        # OpenVINO's TorchScript frontend cannot convert; torch's peephole pass folds the pair away.
        torch._C._jit_pass_inline(flat.graph)
        torch._C._jit_pass_peephole(flat.graph, True)
        torch._C._jit_pass_dce(flat.graph)
        converted = ov.convert_model(flat, example_input=sample)
    _name_ports(converted, jit.forward_argument_names(model), output_names)
    return converted
