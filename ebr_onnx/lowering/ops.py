"""Lowerings: each op's rule written as ONNX nodes (see :mod:`ebr_onnx.lowering`), one function per op type.

Each function receives the node, the :class:`~ebr_onnx.lowering.builder.GraphBuilder` and the signals at the node's
outputs,
and returns the signals of its inputs, exactly as its rule in this package does (the equation is the rule's).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import helper

from ..core.context import RuleContext
from ..core.geometry import ConvGeometry, weight_part
from ..core.graph import Node
from ..core.kernels import transpose_as_node
from ..core.numeric import safe_divide
from ..core.ops import SIGN_KEEPING_OPS
from .builder import GraphBuilder, Lowered, lowering


def nonnegative(ctx: RuleContext, name: str) -> bool:
    """Whether ``name`` is ≥ 0 by construction (a ReLU output, or one routed or pooled from it)."""
    node = ctx.graph.producer.get(name)
    if node is None:
        return False
    if node.op_type == "Relu":
        return True
    return node.op_type in SIGN_KEEPING_OPS and nonnegative(ctx, node.inputs[0])


# -- Conv ---------------------------------------------------------------------------------------------------------
def _plain_conv(node: Node, ctx: RuleContext) -> bool:
    shape = ctx.shape(node.inputs[0])
    return len(shape) == 4 and ctx.graph.is_constant(node.inputs[1])


@lowering("Conv", applies=_plain_conv)
def conv(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """Eq. 8 (the rule :func:`ebr_onnx.rules.linear.conv`): ``x ⊙ fᵀ(p ⊘₀ f(x, W⁺), W⁺)``; where ``x`` may be
    negative, the positive-contribution rule ``x⁺ ⊙ fᵀ(q, W⁺) + x⁻ ⊙ fᵀ(q, W⁻)`` with ``Z = f(x⁺, W⁺) + f(x⁻, W⁻)``
    (equal to Eq. 8 where ``x ≥ 0``; the input's minimum is returned for the warning). Gradient: ``fᵀ(p, W)``."""
    ctx = b.ctx
    x_name, w_name = node.inputs[0], node.inputs[1]
    geo = ConvGeometry(node, ctx.shape(x_name), tuple(ctx.shape(w_name)))
    attrs = {"strides": geo.strides, "pads": geo.pads, "dilations": geo.dilations, "group": geo.group}

    def part(which: str) -> np.ndarray:
        return weight_part(np, np.asarray(ctx.graph.constant(w_name), dtype=np.float32), which)

    def forward(x: str, which: str) -> str:
        return b.op("Conv", [x, b.weight(f"{w_name}:{which}", lambda: part(which))], **attrs)

    def transpose(q: str, which: str) -> str:
        op_type, weight, t_attrs = transpose_as_node(geo)
        return b.op(op_type, [q, b.weight(f"{w_name}:{which}:T", lambda: weight(part(which)))], **t_attrs)

    p = signals[0].name
    if ctx.mode == "grad":
        return [Lowered(transpose(p, "all")), None, None]
    x = b.value(x_name)
    if nonnegative(ctx, x_name):
        q = safe_divide(b, p, forward(x, "pos"), vanishing=True)
        return [Lowered(b.op("Mul", [x, transpose(q, "pos")]), scaled=True), None, None]
    b.minima.append((node, b.op("ReduceMin", [x], keepdims=0)))
    zero = b.constant(np.zeros((), np.float32), "zero")
    x_pos, x_neg = b.op("Max", [x, zero]), b.op("Min", [x, zero])
    q = safe_divide(b, p, b.op("Add", [forward(x_pos, "pos"), forward(x_neg, "neg")]), vanishing=True)
    pos = b.op("Mul", [x_pos, transpose(q, "pos")])
    neg = b.op("Mul", [x_neg, transpose(q, "neg")])
    return [Lowered(b.op("Add", [pos, neg]), scaled=True), None, None]


# -- activations and routing --------------------------------------------------------------------------------------
@lowering("Relu")
def relu(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """``p' = p ⊙ [y > 0]`` (the rule :func:`ebr_onnx.rules.activation.relu`); under EB a no-op on a signal that
    already vanishes where the output is 0."""
    p = signals[0]
    if b.ctx.mode == "eb" and p.scaled:
        return [p]
    zero = b.constant(np.zeros((), np.float32), "zero")
    mask = b.op("Cast", [b.op("Greater", [b.value(node.outputs[0]), zero])], to=onnx.TensorProto.FLOAT)
    return [Lowered(b.op("Mul", [p.name, mask]), scaled=True)]


def _row_major_max_pool(node: Node, ctx: RuleContext) -> bool:
    return len(ctx.shape(node.inputs[0])) in (3, 4) and int(node.attr("storage_order", 0)) == 0


def _disjoint(node: Node) -> bool:
    kernel = list(node.attr("kernel_shape"))
    strides, dilations = node.attr("strides", [1] * len(kernel)), node.attr("dilations", [1] * len(kernel))
    return len(kernel) == 2 and all(d == 1 for d in dilations) and all(s >= k for s, k in zip(strides, kernel))


@lowering("MaxPool", applies=_row_major_max_pool)
def max_pool(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """``p'_i = Σ_w p_w [i = first argmax of w]`` (the rule :func:`ebr_onnx.rules.pooling.max_pool`): the indices of
    onnxruntime's MaxPool (the node's own attributes; the first maximum wins), then MaxUnpool where 2-D windows do not
    overlap, else a scatter that adds (an input position may be the maximum of several windows)."""
    ctx, p = b.ctx, signals[0]
    x_name = node.inputs[0]
    attrs = {k: v for k, v in node.attrs.items() if k in ("kernel_shape", "strides", "pads", "dilations", "auto_pad",
                                                          "ceil_mode")}
    x = b.value(x_name)
    _, indices = b.op("MaxPool", [x], outputs=2, **attrs)
    if _disjoint(node):
        geo = ConvGeometry(node, ctx.shape(x_name), (1, 1, *node.attr("kernel_shape")))
        unpool = {"kernel_shape": geo.kernel, "strides": geo.strides, "pads": geo.pads}
        return [Lowered(b.op("MaxUnpool", [p.name, indices, b.shape_of(x_name)], **unpool), p.scaled)]
    flat = b.constant(np.asarray([-1], np.int64), "shape")
    zeros = b.op("ConstantOfShape", [b.op("Reshape", [b.op("Size", [x]), b.constant(np.asarray([1], np.int64),
                                                                                      "shape")])],
                 value=helper.make_tensor("value", onnx.TensorProto.FLOAT, [1], [0.0]))
    routed = b.op("ScatterElements", [zeros, b.op("Reshape", [indices, flat]), b.op("Reshape", [p.name, flat])],
                  axis=0, reduction="add")
    return [Lowered(b.op("Reshape", [routed, b.shape_of(x_name)]), p.scaled)]


def _global_pool(node: Node, ctx: RuleContext) -> bool:
    return len(ctx.shape(node.inputs[0])) == 4


@lowering("GlobalAveragePool", applies=_global_pool)
def global_average_pool(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """EB: ``p'_i = x_i p_c ⊘ S_c`` with ``S_c = Σ_i x_i`` and ``S_c ≤ 0 → 0`` (the rule
    :func:`ebr_onnx.rules.pooling.global_average_pool_eb`); gradient: ``p'_i = p_c / (h·w)``."""
    ctx, p = b.ctx, signals[0]
    x_name = node.inputs[0]
    if ctx.mode == "grad":
        h, w = ctx.shape(x_name)[2:]
        mean = b.op("Div", [p.name, b.constant(np.asarray(h * w, np.float32), "count")])
        frame = b.constant(np.asarray([1, 1, h, w], np.int64), "shape")  # Expand broadcasts N and C from the mean
        return [Lowered(b.op("Expand", [mean, frame]))]
    x = b.value(x_name)
    zero = b.constant(np.zeros((), np.float32), "zero")
    total = b.op("ReduceSum", [x, b.constant(np.asarray([2, 3], np.int64), "axes")], keepdims=1)
    q = safe_divide(b, p.name, b.op("Max", [total, zero]))
    return [Lowered(b.op("Mul", [x, q]), scaled=True)]


def _same_shape_add(node: Node, ctx: RuleContext) -> bool:
    out = ctx.shape(node.outputs[0])
    return all(ctx.shape(t) == out for t in node.inputs if ctx.is_signal(t))


@lowering(["Add", "Sum"], applies=_same_shape_add)
def add(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """EB over two or more signal operands: ``p_k = p ⊙ x_k⁺ ⊘₀ Σ_j x_j⁺`` (``add_rule="caffe"``: all to input 1);
    one signal operand (a bias add) and the gradient: ``p_k = p`` (the rules :func:`ebr_onnx.rules.elementwise.add_eb`,
    ``add_grad``)."""
    ctx, p = b.ctx, signals[0]
    mask = [ctx.is_signal(t) for t in node.inputs]
    if ctx.mode == "grad" or sum(mask) < 2:
        return [Lowered(p.name) if m else None for m in mask]
    if ctx.options.add_rule == "caffe":
        return [Lowered(p.name) if k == 1 else None for k in range(len(mask))]
    parts = [b.op("Relu", [b.value(t)]) if m else None for t, m in zip(node.inputs, mask)]
    present = [c for c in parts if c is not None]
    q = safe_divide(b, p.name, present[0] if len(present) == 1 else b.op("Sum", present), vanishing=True)
    return [None if c is None else Lowered(b.op("Mul", [c, q]), scaled=True) for c in parts]


@lowering("Concat")
def concat(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """Each input receives the part of ``p`` at its position along ``axis`` (the rule
    :func:`ebr_onnx.rules.routing.concat`)."""
    ctx, p = b.ctx, signals[0]
    rank = len(ctx.shape(node.outputs[0]))
    axis = int(node.attr("axis")) % rank
    out, start = [], 0
    for name in node.inputs:
        size = int(ctx.shape(name)[axis])
        if ctx.is_signal(name):
            b.per_example &= axis != 0
            bounds = [b.constant(np.asarray([v], np.int64), "index") for v in (start, start + size, axis)]
            out.append(Lowered(b.op("Slice", [p.name, *bounds]), p.scaled))
        else:
            out.append(None)
        start += size
    return out


@lowering(["Identity", "Dropout"])
def identity(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """``p' = p``."""
    return [signals[0]] + [None] * (len(node.inputs) - 1)


@lowering(["Flatten", "Reshape", "Squeeze", "Unsqueeze"])
def reshape_like(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """``p'`` = ``p`` in the input's shape."""
    p = signals[0]
    return [Lowered(b.op("Reshape", [p.name, b.shape_of(node.inputs[0])]), p.scaled)] + [None] * (len(node.inputs) - 1)


@lowering(["BatchNormalization", "LRN"], modes=("eb",))
def normalisation(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """``p' = p`` (pass-through, as the release: spec §2.4)."""
    return [Lowered(signals[0].name)] + [None] * (len(node.inputs) - 1)


def _inference_batch_norm(node: Node, ctx: RuleContext) -> bool:
    return not int(node.attr("training_mode", 0)) and all(ctx.graph.is_constant(t) for t in node.inputs[1:5])


@lowering("BatchNormalization", modes=("grad",), applies=_inference_batch_norm)
def batch_norm_grad(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """``p' = p ⊙ γ / √(var + ε)`` per channel (the rule :func:`ebr_onnx.rules.elementwise.batch_norm_grad`)."""
    ctx = b.ctx
    rank = len(ctx.shape(node.inputs[0]))

    def scale() -> np.ndarray:
        gamma, var = (np.asarray(ctx.graph.constant(node.inputs[k]), np.float64) for k in (1, 4))
        return (gamma / np.sqrt(var + float(node.attr("epsilon", 1e-5)))).astype(np.float32).reshape(
            (1, -1) + (1,) * (rank - 2))

    factor = b.weight(f"{node.name}:bn_scale:{rank}", scale)
    return [Lowered(b.op("Mul", [signals[0].name, factor]))] + [None] * (len(node.inputs) - 1)
