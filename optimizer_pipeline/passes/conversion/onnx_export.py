"""TorchScript or a torch.export program → ONNX, checked against its source before use.

TorchScript goes through the TorchScript exporter (dynamo=False). A .pt2 upload's program (as a plan's
first step) goes through torch's dynamo exporter, which takes the program as it is, dynamic batch
included. Inputs are named after forward's arguments and outputs after the original's flattened
outputs (outputs.py), every one with a dynamic batch axis, so the ONNX variant is a drop-in replacement.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from ... import jit
from ...exported.loading import io_names
from ...intake.calibration import Batch
from ...runtimes.onnxruntime import TIMING_NOTE, OnnxModel, load_session, quiet_onnx
from ...fidelity.outputs import flatten_outputs
from ..base import PassConfig, PassOutput, register
from ..parity import check_parity

# torch's dynamo exporter writes opset 18 at the least.
DYNAMO_MIN_OPSET = 18


class OnnxExportConfig(PassConfig):
    name: Literal["onnx_export"] = "onnx_export"

    produces = "onnx"
    takes_program = True
    opset: int = Field(17, ge=13, le=21)
    parity_tolerance: float = Field(
        1e-4, gt=0, le=1, description="largest allowed |ONNX − TorchScript|, relative to the output's largest magnitude"
    )


class FlatOutputs(torch.nn.Module):
    """The model with its outputs as one flat tuple, in flatten_outputs order.

    The exporter cannot express dict outputs (prim::DictConstruct); names come from output_names."""

    def __init__(self, model: jit.ScriptModule) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(tensor for _, tensor in flatten_outputs(self.model(*inputs)))


@register(OnnxExportConfig)
def onnx_export(model: jit.ScriptModule | torch.export.ExportedProgram, calibration: Batch, config: OnnxExportConfig) -> PassOutput:
    if isinstance(model, torch.export.ExportedProgram):
        return _from_program(model, calibration, config)
    # Through an archive first: an in-memory frozen module cannot be wrapped and traced (its type
    # lives in another compilation unit); the reloaded copy can.
    model = jit.reload(model)
    # Two samples, so the tracer never specializes on a batch of one.
    sample = calibration.head(2).inputs
    input_names = jit.forward_argument_names(model)
    with torch.no_grad(), jit.quiet_torch():
        output_names = [name for name, _ in flatten_outputs(model(*sample))]
        # Tracing the wrapper keeps the model's own graph, scripted control flow included.
        flat = torch.jit.trace(FlatOutputs(model), sample, check_trace=False)
    buffer = io.BytesIO()
    with quiet_onnx(), jit.quiet_torch(), _stdout_discarded():
        torch.onnx.export(
            flat,
            sample,
            buffer,
            dynamo=False,
            opset_version=config.opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes={name: {0: "batch"} for name in input_names + output_names},
        )
    return _checked(buffer.getvalue(), model, calibration, config.parity_tolerance, config.opset, input_names, output_names, "torchscript")


def _from_program(program: torch.export.ExportedProgram, calibration: Batch, config: OnnxExportConfig) -> PassOutput:
    module = program.module()
    input_names, output_names = io_names(program, module, calibration.head(2).inputs)
    opset = max(config.opset, DYNAMO_MIN_OPSET)
    with tempfile.TemporaryDirectory(prefix="optiserve-onnx-") as directory, quiet_onnx(), jit.quiet_torch(), _stdout_discarded():
        path = Path(directory) / "model.onnx"
        # The program keeps its own dynamic batch (its range constraints); the names are the original's.
        torch.onnx.export(program, (), str(path), dynamo=True, opset_version=opset, input_names=input_names,
                          output_names=output_names, external_data=False, verbose=False)
        data = path.read_bytes()
    return _checked(data, module, calibration, config.parity_tolerance, opset, input_names, output_names, "torch.export program")


def _checked(
    data: bytes, reference: Any, calibration: Batch, tolerance: float, opset: int, input_names: list[str], output_names: list[str], source: str
) -> PassOutput:
    exported = OnnxModel(data)
    session = load_session(exported.data, torch.get_num_threads())
    errors = check_parity(reference, session, calibration, tolerance, "the ONNX export")
    return PassOutput(
        exported,
        {
            "source": source,
            "opset": opset,
            "inputs": input_names,
            "outputs": output_names,
            "relative_error_by_batch": errors,
            "timing": TIMING_NOTE,
        },
    )


@contextlib.contextmanager
def _stdout_discarded() -> Iterator[None]:
    """Point the process's stdout (file descriptor 1, C++ writes included) at /dev/null.

    torch.onnx (2.13) writes the whole IR graph to stdout whenever an export fails, thousands of
    lines for a transformer, whatever the logging settings: its "was ONNX logging on?" check tests a
    function object, which is always true. Other threads' stdout is lost for the export's duration."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        yield
    finally:
        libc.fflush(None)  # C++ writes go through C stdio: flush them into /dev/null, not after it
        os.dup2(saved, 1)
        os.close(saved)
