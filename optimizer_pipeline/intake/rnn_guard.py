"""A shape check in front of torch's RNN kernels, for every process that runs model code.

`aten::lstm` trusts its arguments: a state made for a smaller batch, or a state or input whose
width does not match the weights, makes the CPU kernel read and write past those buffers (heap
corruption, measured with torch 2.13: `malloc_consolidate(): invalid chunk size`). `nn.LSTM` checks
its arguments in Python, but model code can call the op directly (`torch.lstm(...)` in a scripted
forward), and the op is on the allowlist because real models use it. GRU and the plain RNNs raise on
the cases tried here; they get the same check, as their kernels share the same layout code.

The check is registered as the ops' CPU and AutogradCPU kernels (inference mode skips the autograd
keys, training does not), and then runs the op's own composite implementation: the op's math,
equal to the fused kernel's up to a float rounding where it orders the sums differently (GRU on an
AVX-512 CPU: 3e-8). It costs one Python call per RNN op call, tens of microseconds against a kernel
that loops over the sequence.
"""

from __future__ import annotations

import torch

_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
_library: torch.library.Library | None = None  # kept alive: the registrations last as long as it does


class RnnArgumentError(RuntimeError):
    """An RNN op call whose arguments the kernel would not check (it would read or write past a buffer)."""


def guard_rnn_ops() -> None:
    """Register the checks once per process (idempotent)."""
    global _library
    if _library is not None:
        return
    library = torch.library.Library("aten", "IMPL")
    for name in _GATES:
        for overload, check in (("input", _checked_input), ("data", _checked_data)):
            kernel = check(name, getattr(getattr(torch.ops.aten, name), overload))
            for key in ("CPU", "AutogradCPU"):
                library.impl(f"{name}.{overload}", kernel, key)
    _library = library


def _checked_input(name: str, op: torch._ops.OpOverload):
    def kernel(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):  # noqa: ANN001, ANN202
        if input.dim() not in (2, 3):
            _refuse(name, f"the input has {input.dim()} dimensions; it needs 3 (or 2 without a batch)")
        unbatched = input.dim() == 2
        batch = None if unbatched else input.size(0 if batch_first else 1)
        _check(name, input, batch, _states(name, hx), params, has_biases, num_layers, bidirectional)
        return op.decompose(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)

    return kernel


def _checked_data(name: str, op: torch._ops.OpOverload):
    def kernel(data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional):  # noqa: ANN001, ANN202
        if data.dim() != 2:
            _refuse(name, f"packed data has {data.dim()} dimensions; it needs 2")
        if batch_sizes.dim() != 1 or batch_sizes.numel() == 0 or batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
            _refuse(name, "batch_sizes must be a non-empty 1-d int64 CPU tensor")
        sizes = batch_sizes.tolist()
        if min(sizes) < 1 or any(later > earlier for earlier, later in zip(sizes, sizes[1:])) or sum(sizes) != data.size(0):
            _refuse(name, "batch_sizes must be positive, non-increasing, and sum to the packed data's length")
        _check(name, data, sizes[0], _states(name, hx), params, has_biases, num_layers, bidirectional)
        return op.decompose(data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional)

    return kernel


def _states(name: str, hx) -> list[torch.Tensor]:  # noqa: ANN001
    states = list(hx) if isinstance(hx, (list, tuple)) else [hx]
    if len(states) != (2 if name == "lstm" else 1):
        _refuse(name, f"{len(states)} state tensors given; it takes {2 if name == 'lstm' else 1}")
    return states


def _check(
    name: str, input: torch.Tensor, batch: int | None, states: list[torch.Tensor], params: list[torch.Tensor],
    has_biases: bool, num_layers: int, bidirectional: bool,
) -> None:
    directions = 2 if bidirectional else 1
    if num_layers < 1:
        _refuse(name, f"num_layers is {num_layers}")
    stacks = num_layers * directions
    hidden_out, hidden = states[0].size(-1), states[-1].size(-1)  # differ only for an LSTM with projections
    leading = (stacks,) if batch is None else (stacks, batch)
    for which, state in enumerate(states):
        expected = (*leading, hidden_out if which == 0 else hidden)
        if tuple(state.shape) != expected:
            _refuse(name, f"state {which} has shape {tuple(state.shape)}; the input, layers and weights need {expected}")
    base_stride = 4 if has_biases else 2
    strides = (base_stride, base_stride + 1) if name == "lstm" else (base_stride,)
    stride = len(params) // stacks if len(params) % stacks == 0 else 0
    if stride not in strides:
        _refuse(name, f"{len(params)} weight tensors for {num_layers} layer(s) x {directions} direction(s)")
    projected = stride == base_stride + 1
    if not projected and hidden_out != hidden:
        _refuse(name, "the states' widths differ without projection weights")
    rows = _GATES[name] * hidden
    for layer in range(num_layers):
        width_in = input.size(-1) if layer == 0 else hidden_out * directions
        for direction in range(directions):
            first = (layer * directions + direction) * stride
            expected_shapes = [(rows, width_in), (rows, hidden_out)] + ([(rows,), (rows,)] if has_biases else []) + ([(hidden_out, hidden)] if projected else [])
            for offset, shape in enumerate(expected_shapes):
                weight = params[first + offset]
                if tuple(weight.shape) != shape:
                    _refuse(name, f"weight {first + offset} has shape {tuple(weight.shape)}; layer {layer} needs {shape}")
    for tensor in (*states, *params):
        if tensor.dtype != input.dtype or tensor.device != input.device:
            _refuse(name, f"a state or weight is {tensor.dtype} on {tensor.device}, the input {input.dtype} on {input.device}")


def _refuse(name: str, problem: str) -> None:
    raise RnnArgumentError(f"aten::{name}: {problem} (refused before the kernel runs: it does not check this itself)")
