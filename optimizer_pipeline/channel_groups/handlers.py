"""What each aten op does to channels, one handler per op family (in the style of Torch-Pruning);
the ops that move the channel dim are in layout_handlers.py.

A handler reads the channels tracked on its inputs and either tracks them onto its output, couples
them with parameter dimensions, or raises NotUnderstood, which pins the channels of its inputs (they
are then never removed). An op without a handler pins whatever tracked tensor it touches.
"""

from __future__ import annotations

from collections.abc import Callable

from . import graph as g
from .analysis import GraphWalk, NotUnderstood, ShapeRewrite, Tracked
from .registry import Handler, handles

def _int_constant(value: g.Value, what: str):
    found = g.constant(value)
    if found is None:
        raise NotUnderstood(f"its {what} is computed at run time")
    return found


def _is_none(value: g.Value) -> bool:
    return value.type().kind() == "NoneType"


def _couple_optional(walk: GraphWalk, value: g.Value, dim: int, elements: list[int]) -> None:
    if not _is_none(value):
        walk.couple_slot(value, dim, elements)


def _tracked_input(walk: GraphWalk, node: g.Node) -> Tracked | None:
    return walk.track(node.inputsAt(0))


def on_tracked_input(handler: Callable[[GraphWalk, g.Node, Tracked, int], None]) -> Handler:
    """Run `handler(walk, node, tracked, rank)` only when the first input carries channels."""

    def run(walk: GraphWalk, node: g.Node) -> None:
        tracked = _tracked_input(walk, node)
        if tracked is not None:
            handler(walk, node, tracked, len(walk.shape(node.inputsAt(0))))

    return run


# -- layers that own channels ------------------------------------------------------------------------
@handles("aten::_convolution", "aten::conv1d", "aten::conv2d", "aten::conv3d")
def convolution(walk: GraphWalk, node: g.Node) -> None:
    inputs = list(node.inputs())
    x, weight, bias = inputs[:3]
    if node.kind() == "aten::_convolution":
        transposed, groups_index = _int_constant(inputs[6], "transposed flag"), 8
    else:
        transposed, groups_index = False, 6
    groups = _int_constant(inputs[groups_index], "groups")
    path = g.attribute_path(weight)
    if path is None:
        raise NotUnderstood("its weight is computed at run time")
    tracked = walk.track(x)
    if tracked is not None and tracked.dim != 1:
        raise NotUnderstood("the channels are not on dim 1")
    if groups == 1:
        in_dim, out_dim = (0, 1) if transposed else (1, 0)
        if tracked is not None:
            walk.couple_slot(weight, in_dim, tracked.elements)
            walk.observe(x, tracked)
        produced = walk.slot(weight, out_dim)
    else:
        depthwise = (
            not transposed and tracked is not None and groups == len(tracked.elements)
            and walk.attributes[path].shape[1] == 1
        )
        if not depthwise:
            raise NotUnderstood(f"grouped convolution (groups={groups}) that is not depthwise")
        # Depthwise: output channel j reads input channel j // multiplier, and `groups` is baked into
        # the graph, so it is rewritten to the number of input channels kept.
        multiplier = walk.attributes[path].shape[0] // groups
        produced = [element for element in tracked.elements for _ in range(multiplier)]
        walk.couple_slot(weight, 0, produced)
        walk.observe(x, tracked)
        walk.rewrites.append(ShapeRewrite(node, groups_index, None, tracked.elements))
    _couple_optional(walk, bias, 0, produced)
    walk.set_tracked(node.output(), 1, produced)


@handles("aten::linear")
def linear(walk: GraphWalk, node: g.Node) -> None:
    x, weight, bias = node.inputs()
    tracked = walk.track(x)
    last = len(walk.shape(x)) - 1
    if tracked is not None:
        if tracked.dim != last:
            raise NotUnderstood("the channels are not on the last dim")
        walk.couple_slot(weight, 1, tracked.elements)
        walk.observe(x, tracked)
    produced = walk.slot(weight, 0)
    if produced is None:
        raise NotUnderstood("its weight is computed at run time")
    _couple_optional(walk, bias, 0, produced)
    walk.set_tracked(node.output(), last, produced)


@handles("aten::embedding")
def embedding(walk: GraphWalk, node: g.Node) -> None:
    produced = walk.slot(node.inputsAt(0), 1)
    if produced is None:
        raise NotUnderstood("its table is computed at run time")
    output = node.output()
    walk.set_tracked(output, len(walk.shape(output)) - 1, produced)


@handles("aten::batch_norm", "aten::instance_norm")
def batch_norm(walk: GraphWalk, node: g.Node) -> None:
    tracked = _tracked_input(walk, node)
    if tracked is None:
        return
    if tracked.dim != 1:
        raise NotUnderstood("the channels are not on dim 1")
    for statistic in list(node.inputs())[1:5]:  # weight, bias, running_mean, running_var
        _couple_optional(walk, statistic, 0, tracked.elements)
    walk.set_tracked(node.output(), 1, tracked.elements)


@handles("aten::layer_norm")
def layer_norm(walk: GraphWalk, node: g.Node) -> None:
    x, normalized_shape, weight, bias = list(node.inputs())[:4]
    tracked = walk.track(x)
    if tracked is None:
        return
    normalized = _int_constant(normalized_shape, "normalized shape")
    if tracked.dim >= len(walk.shape(x)) - len(normalized):
        if len(normalized) != 1:
            raise NotUnderstood("it normalizes over the channels together with other dims")
        _couple_optional(walk, weight, 0, tracked.elements)
        _couple_optional(walk, bias, 0, tracked.elements)
        walk.rewrites.append(ShapeRewrite(node, 1, 0, tracked.elements))
    walk.set_tracked(node.output(), tracked.dim, tracked.elements)


@handles("aten::prelu")
def prelu(walk: GraphWalk, node: g.Node) -> None:
    tracked = _tracked_input(walk, node)
    if tracked is None:
        return
    weight = node.inputsAt(1)
    if walk.shape(weight) != (1,):
        if tracked.dim != 1:
            raise NotUnderstood("the channels are not on dim 1")
        walk.couple_slot(weight, 0, tracked.elements)
    walk.set_tracked(node.output(), tracked.dim, tracked.elements)


# -- ops that keep channels where they are -----------------------------------------------------------
ELEMENTWISE_UNARY = [
    "relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "hardtanh", "hardtanh_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "leaky_relu",
    "leaky_relu_", "elu", "elu_", "selu", "mish", "softplus", "dropout", "dropout_", "feature_dropout",
    "alpha_dropout", "contiguous", "clone", "detach", "to", "type_as", "neg", "abs", "exp", "log", "sqrt",
    "rsqrt", "pow", "clamp", "clamp_", "clamp_min", "clamp_max", "erf", "square", "reciprocal",
    "zeros_like", "ones_like", "empty_like", "sign", "floor", "round",
]


@handles(*(f"aten::{name}" for name in ELEMENTWISE_UNARY))
def unary(walk: GraphWalk, node: g.Node) -> None:
    tracked = _tracked_input(walk, node)
    if any(walk.track(v) is not None for v in list(node.inputs())[1:]):
        raise NotUnderstood("a second operand carries channels")
    if tracked is not None:
        walk.set_tracked(node.output(), tracked.dim, tracked.elements)


ELEMENTWISE_BINARY = [
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "maximum", "minimum", "where",
    "gt", "lt", "ge", "le", "eq", "ne",
]


@handles(*(f"aten::{name}" for name in ELEMENTWISE_BINARY))
def elementwise(walk: GraphWalk, node: g.Node) -> None:
    operands = [v for v in node.inputs() if g.is_tensor(v)]
    _same_channels(walk, operands, node.output())


def _same_channels(walk: GraphWalk, operands: list[g.Value], output: g.Value) -> None:
    """Operands broadcast against each other: channels of all of them line up on one output dim."""
    out_rank = len(walk.shape(output))
    tracked = [(v, walk.track(v)) for v in operands if walk.track(v) is not None]
    if not tracked:
        return
    out_dims = {out_rank - len(walk.shape(v)) + t.dim for v, t in tracked}
    if len(out_dims) != 1:
        raise NotUnderstood("operands carry channels on different dims")
    dim = out_dims.pop()
    elements = tracked[0][1].elements
    if walk.shape(output)[dim] != len(elements):
        raise NotUnderstood("it broadcasts the channels")
    for _, other in tracked[1:]:
        walk.elements.unify(elements, other.elements)
    for value in operands:
        if walk.track(value) is None:
            shape = walk.shape(value)
            aligned = dim - (out_rank - len(shape))
            if aligned >= 0 and shape[aligned] != 1:
                # A per-channel parameter (a learned scale, a positional embedding) is sliced with them.
                walk.couple_slot(value, aligned, elements)
    walk.set_tracked(output, dim, elements)


@handles("aten::cat", "aten::concat")
def cat(walk: GraphWalk, node: g.Node) -> None:
    parts_value, dim_value = node.inputs()
    if parts_value.node().kind() != "prim::ListConstruct":
        raise NotUnderstood("its list of tensors is built at run time")
    parts = list(parts_value.node().inputs())
    output = node.output()
    dim = _int_constant(dim_value, "dim") % len(walk.shape(output))
    tracked = [walk.track(part) for part in parts]
    if all(t is None for t in tracked):
        return
    if any(t is not None and t.dim != dim for t in tracked):
        _same_channels(walk, parts, output)
        return
    elements: list[int] = []
    for part, part_tracked in zip(parts, tracked):
        if part_tracked is None:
            # Channels of unknown origin (e.g. a model input) keep their place in the result.
            unknown = walk.elements.fresh(walk.shape(part)[dim])
            walk.elements.pin(unknown, "it comes from a tensor whose channels are not known")
            elements.extend(unknown)
        else:
            elements.extend(part_tracked.elements)
    walk.set_tracked(output, dim, elements)


SPATIAL_DIMS = {
    **{f"aten::{op}{n}d": n for op in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool")
       for n in (1, 2, 3)},
    "aten::max_pool2d_with_indices": 2,
    "aten::upsample_nearest1d": 1, "aten::upsample_nearest2d": 2, "aten::upsample_nearest3d": 3,
    "aten::upsample_linear1d": 1, "aten::upsample_bilinear2d": 2, "aten::upsample_trilinear3d": 3,
    "aten::upsample_bicubic2d": 2,
}


@handles(*SPATIAL_DIMS)
def spatial(walk: GraphWalk, node: g.Node) -> None:
    tracked = _tracked_input(walk, node)
    if tracked is None:
        return
    if tracked.dim >= len(walk.shape(node.inputsAt(0))) - SPATIAL_DIMS[node.kind()]:
        raise NotUnderstood("it pools over the channel dim")
    for output in node.outputs():
        walk.set_tracked(output, tracked.dim, tracked.elements)


@handles("aten::mean", "aten::sum", "aten::amax", "aten::amin")
def reduction(walk: GraphWalk, node: g.Node) -> None:
    tracked = _tracked_input(walk, node)
    if tracked is None:
        return
    inputs = list(node.inputs())
    dims = g.constant(inputs[1]) if len(inputs) >= 3 else None
    if not dims and dims != 0:
        raise NotUnderstood("it reduces over every dim")
    rank = len(walk.shape(inputs[0]))
    reduced = {d % rank for d in ([dims] if isinstance(dims, int) else dims)}
    if tracked.dim in reduced:
        raise NotUnderstood("it reduces over the channel dim")
    keepdim = g.constant(inputs[2])
    dim = tracked.dim if keepdim else tracked.dim - sum(d < tracked.dim for d in reduced)
    walk.set_tracked(node.output(), dim, tracked.elements)


@handles("aten::softmax", "aten::log_softmax")
def softmax(walk: GraphWalk, node: g.Node) -> None:
    tracked = _tracked_input(walk, node)
    if tracked is None:
        return
    if _int_constant(node.inputsAt(1), "dim") % len(walk.shape(node.inputsAt(0))) == tracked.dim:
        raise NotUnderstood("it normalizes over the channel dim")
    walk.set_tracked(node.output(), tracked.dim, tracked.elements)


@handles("aten::matmul")
def matmul(walk: GraphWalk, node: g.Node) -> None:
    """Batched matmul (attention): channels on a batch dim of both operands (heads) line up; a
    contracted dim must carry the same channels on both sides."""
    left, right = list(node.inputs())[:2]
    left_shape, right_shape, output = walk.shape(left), walk.shape(right), node.output()
    rank = len(walk.shape(output))
    if len(left_shape) < 3 or len(right_shape) < 3:
        raise NotUnderstood("only batched matmul is followed")
    left_tracked, right_tracked = walk.track(left), walk.track(right)
    contracted = [
        t for t, dim in ((left_tracked, len(left_shape) - 1), (right_tracked, len(right_shape) - 2)) if t and t.dim == dim
    ]
    if contracted:
        if len(contracted) != 2:
            raise NotUnderstood("it contracts channels with a tensor whose channels are not known")
        walk.elements.unify(contracted[0].elements, contracted[1].elements)
    batch = {}
    for shape, t in ((left_shape, left_tracked), (right_shape, right_tracked)):
        if t is not None and t.dim < len(shape) - 2:
            batch[rank - len(shape) + t.dim] = batch.get(rank - len(shape) + t.dim, []) + [t]
    if not batch:
        if left_tracked and left_tracked.dim == len(left_shape) - 2:
            walk.set_tracked(output, rank - 2, left_tracked.elements)
        elif right_tracked and right_tracked.dim == len(right_shape) - 1:
            walk.set_tracked(output, rank - 1, right_tracked.elements)
        return
    if len(batch) != 1 or len(next(iter(batch.values()))) != 2:
        raise NotUnderstood("the operands do not carry the same channels on one batch dim")
    (dim, (first, second)), = batch.items()
    walk.elements.unify(first.elements, second.elements)
    walk.set_tracked(output, dim, first.elements)


@handles("aten::scaled_dot_product_attention")
def attention(walk: GraphWalk, node: g.Node) -> None:
    """softmax(q k^T) v per head: q, k and v carry the same heads on the same batch dim."""
    query, key, value = list(node.inputs())[:3]
    tracked = [walk.track(v) for v in (query, key, value)]
    rank = len(walk.shape(query))
    if any(t is None for t in tracked) or {t.dim for t in tracked} != {tracked[0].dim} or tracked[0].dim >= rank - 2:
        raise NotUnderstood("q, k and v do not carry the same heads on one batch dim")
    if any(walk.track(v) is not None for v in list(node.inputs())[3:] if g.is_tensor(v)):
        raise NotUnderstood("its mask carries channels")
    for other in tracked[1:]:
        walk.elements.unify(tracked[0].elements, other.elements)
    walk.set_tracked(node.output(), tracked[0].dim, tracked[0].elements)
