"""`optiserve predict`'s files: model inputs from .pt/.npy/.npz, outputs to the screen, JSON or .npz."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy

from .cli_errors import CliError
from .exit_codes import ExitCode
from .models import Prediction

INPUT_SUFFIXES = (".pt", ".npy", ".npz")
PREVIEW_VALUES = 6


def read_inputs(path: Path) -> list[Any]:
    """The model's inputs, in order: one array or tensor per input."""
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise CliError(ExitCode.INPUT, f"{path}: expected a .pt (torch.save of a tensor or tuple of tensors), .npy or .npz file")
    if suffix == ".pt":
        return _read_torch(path)
    try:
        loaded = numpy.load(path, allow_pickle=False)
        if isinstance(loaded, numpy.ndarray):
            return [loaded]
        with loaded:
            # The order the arrays were saved in (arr_0, arr_1, ... for positional numpy.savez).
            return [loaded[name] for name in loaded.files]
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CliError(ExitCode.INPUT, f"{path} is not a numpy.save (.npy) or numpy.savez (.npz) file of numeric arrays: {exc}") from exc


def _read_torch(path: Path) -> list[Any]:
    import torch  # only for .pt files: numpy inputs should not pay for importing torch

    try:
        # weights_only: a .pt file can carry arbitrary pickled code; tensors need none of it.
        loaded = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CliError(ExitCode.INPUT, f"{path} is not a torch.save file of tensors: {exc}") from exc
    inputs = [loaded] if isinstance(loaded, torch.Tensor) else loaded
    if not isinstance(inputs, (list, tuple)) or not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise CliError(ExitCode.INPUT, f"{path} holds a {type(loaded).__name__}; save a tensor or a tuple of tensors, one per model input")
    return list(inputs)


def describe_prediction(prediction: Prediction) -> str:
    """A header line, then one line per output: name, dtype, shape and the first few values."""
    lines = [f"{prediction.model} ({prediction.variant}): {prediction.inference_ms:.2f} ms"]
    for name, tensor in prediction.outputs.items():
        values = tensor.reshape(-1).tolist()
        preview = ", ".join(_number(v) for v in values[:PREVIEW_VALUES]) + (", ..." if len(values) > PREVIEW_VALUES else "")
        lines.append(f"  {name}: {_dtype(tensor)} {list(tensor.shape)} [{preview}]")
    return "\n".join(lines)


def prediction_json(prediction: Prediction) -> str:
    """Everything the server answered (extra fields included), with the outputs as nested lists."""
    outputs = {name: {"shape": list(t.shape), "dtype": _dtype(t), "data": t.tolist()} for name, t in prediction.outputs.items()}
    return json.dumps({**prediction.model_dump(exclude={"outputs"}), "outputs": outputs}, indent=2)


def save_outputs(prediction: Prediction, path: Path) -> None:
    """One array per output, named as the model names it (numpy.load(path)[name])."""
    # A file object, because numpy.savez appends .npz to a path that lacks it.
    with open(path, "wb") as file:
        numpy.savez(file, **{name: numpy.asarray(tensor) for name, tensor in prediction.outputs.items()})


def _dtype(tensor: Any) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
