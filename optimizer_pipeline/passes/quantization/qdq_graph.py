"""Reading and patching a QDQ-quantized ONNX graph (QuantizeLinear → DequantizeLinear → op)."""

from __future__ import annotations

from collections.abc import Callable

import onnx

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def int8_nodes(data: bytes) -> list[str]:
    """Names of the nodes that read only dequantized int8 tensors, in graph order."""
    graph = onnx.load_from_string(data).graph
    reads_only_int8 = _reads_only_int8(graph)
    return [node.name for node in graph.node if reads_only_int8(node)]


def feed_float_inputs(data: bytes, nodes: set[str]) -> bytes:
    """Give the named nodes, where they still read only int8 tensors, the float tensors instead.

    ORT's tool leaves an excluded weightless node (Softmax, Add...) between the Q→DQ pairs of its
    quantized neighbours, and ORT then fuses DQ→node→Q into an int8 kernel anyway (seen here: an
    excluded Softmax ran as QLinearSoftmax). Reading the tensor from before its QuantizeLinear breaks
    that pattern. A node with a float weight is left alone: the weight already keeps it float, and
    its producer keeps its own int8 kernel."""
    if not nodes:
        return data
    model = onnx.load_from_string(data)
    reads_only_int8 = _reads_only_int8(model.graph)
    producers = {output: node for node in model.graph.node for output in node.output}
    for node in model.graph.node:
        if node.name not in nodes or not reads_only_int8(node):
            continue
        for position, tensor in enumerate(node.input):
            dequantize = producers.get(tensor)  # the only producers reads_only_int8 lets through
            quantize = producers.get(dequantize.input[0]) if dequantize else None
            # A DQ of an int8 initializer (a weight shared with a quantized node) has no float source.
            if quantize is not None and quantize.op_type == "QuantizeLinear":
                node.input[position] = quantize.input[0]
    return model.SerializeToString()


def graph_input_names(model: onnx.ModelProto) -> list[str]:
    """The inputs a caller feeds (older exporters also list initializers as inputs)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name not in initializers]


def _reads_only_int8(graph: onnx.GraphProto) -> Callable[[onnx.NodeProto], bool]:
    """Predicate: does a node read nothing but dequantized int8 tensors (and non-float constants)?

    That is the DQ→node pattern ORT may run as an int8 kernel."""
    dequantized = {output for node in graph.node if node.op_type == "DequantizeLinear" for output in node.output}
    other_constants = {tensor.name for tensor in graph.initializer if tensor.data_type not in FLOAT_TYPES}

    def reads_only_int8(node: onnx.NodeProto) -> bool:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            return False
        inputs = [name for name in node.input if name]  # "" marks an omitted optional input
        return any(name in dequantized for name in inputs) and all(
            name in dequantized or name in other_constants for name in inputs
        )

    return reads_only_int8
