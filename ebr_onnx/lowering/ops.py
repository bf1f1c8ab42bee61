"""Lowerings: each op's rule written as ONNX nodes (see :mod:`ebr_onnx.lowering`), one function per op type.

Each function receives the node, the :class:`~ebr_onnx.lowering.builder.GraphBuilder` and the signals at the node's
outputs,
and returns the signals of its inputs, exactly as its rule in this package does (the equation is the rule's).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import onnx
from onnx import helper

from ..core.context import RuleContext
from ..core.errors import EbrError
from ..core.geometry import ConvGeometry, weight_part
from ..core.graph import Node
from ..core.kernels import transpose_as_node
from ..core.numeric import safe_divide
from ..core.ops import SIGN_KEEPING_OPS
from ..rules.elementwise import is_gate, warn_pass_through
from ..rules.linear import warn_negative
from ..rules.pooling import reduced_axes, window_counts
from ..rules.routing import slices
from .builder import GraphBuilder, Lowered, lowering


def nonnegative(ctx: RuleContext, name: str) -> bool:
    """Whether ``name`` is ≥ 0 by construction (a ReLU output, or one routed or pooled from it)."""
    node = ctx.graph.producer.get(name)
    if node is None:
        return False
    if node.op_type == "Relu":
        return True
    return node.op_type in SIGN_KEEPING_OPS and nonnegative(ctx, node.inputs[0])


#: The bias of a lowered ``Z = f(x, W⁺)`` with ``x ≥ 0`` (:func:`conv`), its ``⊘₀`` guard at no cost: three
#: elementwise passes fewer per layer than ``p / (Z + [Z = 0])`` (R(2+1)D-18's walk: ~11 % of its time). In float32
#: ``Z + GUARD`` is ``Z`` for every ``Z ≥ 2⁻⁷⁵``, and where ``Z = 0`` the quotient ``p / GUARD`` is multiplied by 0:
#: every term ``x_i w⁺_ij`` of that ``Z_j`` is 0, so each position it reaches through ``W⁺`` has ``x_i = 0``. Exact
#: therefore, while ``p · 2¹⁰⁰ · Σ W⁺`` stays finite (``|p| ΣW⁺ < 2²⁸``, where EB's ``|p| ≤ 1``); a non-finite
#: result makes :meth:`ebr_onnx.lowering.Lowering.run` run the walk again with the exact guard. Only ``0 < Z < 2⁻⁷⁵``
#: (activations ~1e-23, where ``p ⊘₀ Z`` itself is ~1e23 · p) differs.
GUARD = 2.0 ** -100

#: The output positions per example from which a lowered 3-D convolution's transpose flips its weight (see
#: :func:`conv`; measured on R(2+1)D-18's layers, where the break-even lies between 784 and 6272).
FLIP_POSITIONS = 2048


# -- Conv ---------------------------------------------------------------------------------------------------------
def _plain_conv(node: Node, ctx: RuleContext) -> bool:
    shape = ctx.shape(node.inputs[0])
    return len(shape) in (4, 5) and ctx.graph.is_constant(node.inputs[1])


@lowering("Conv", applies=_plain_conv)
def conv(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """Eq. 8 (the rule :func:`ebr_onnx.rules.linear.conv`): ``x ⊙ fᵀ(p ⊘₀ f(x, W⁺), W⁺)``; where ``x`` has negative
    entries (read as the graph is built, as the rule does), the positive-contribution rule
    ``x⁺ ⊙ fᵀ(q, W⁺) + x⁻ ⊙ fᵀ(q, W⁻)`` with ``Z = f(x⁺, W⁺) + f(x⁻, W⁻)``, and the rule's warning. Gradient:
    ``fᵀ(p, W)``.

    A 2-D convolution's weight parts are constants of the graph, which onnxruntime reorders into its NCHWc layout (a
    computed weight cannot be: VGG-16's convolutions ran ~20 % slower). onnxruntime has no NCHWc 3-D convolution,
    so a 3-D one's parts are computed in the graph from the model's weight, fed in place
    (:meth:`GraphBuilder.model_weight`): the session holds no copy of them (R(2+1)D-18: 0.24 GB less). Its transpose
    is a Conv by the flipped part where the convolution has at least :data:`FLIP_POSITIONS` output positions per
    example, else a ConvTranspose by the part itself: flipping costs per weight, ConvTranspose's slower kernel per
    position (R(2+1)D-18's layer3 and layer4, most of its weights, take ConvTranspose).

    Where ``x ≥ 0`` the guard of ``⊘₀`` is a bias of :data:`GUARD` on ``Z``'s convolution, unless the builder is
    :attr:`~ebr_onnx.lowering.builder.GraphBuilder.exact`."""
    ctx = b.ctx
    x_name, w_name = node.inputs[0], node.inputs[1]
    geo = ConvGeometry(node, ctx.shape(x_name), tuple(ctx.shape(w_name)))
    attrs = {"strides": geo.strides, "pads": geo.pads, "dilations": geo.dilations, "group": geo.group}
    op_type, transposed, t_attrs = transpose_as_node(geo, flip=geo.dims == 2 or math.prod(geo.out) >= FLIP_POSITIONS)
    computed: dict[str, str] = {}

    def part(which: str) -> str:
        """W, W⁺ or W⁻ in the graph (a 3-D convolution's: computed once per node)."""
        if geo.dims == 2:
            return b.weight(f"{w_name}:{which}", lambda: weight_part(np, _weight(ctx, w_name), which))
        if which not in computed:
            computed[which] = weight_part(b, b.model_weight(w_name), which)
        return computed[which]

    def transpose_weight(which: str) -> str:
        if geo.dims == 2:
            return b.weight(f"{w_name}:{which}:T",
                            lambda: transposed(weight_part(np, _weight(ctx, w_name), which)))
        return part(which) if op_type == "ConvTranspose" else _flipped(b, part(which), ctx.shape(w_name), geo.group)

    def forward(x: str, which: str, *bias: str) -> str:
        return b.op("Conv", [x, part(which), *bias], **attrs)

    def transpose(q: str, which: str) -> str:
        return b.op(op_type, [q, transpose_weight(which)], **t_attrs)

    p = signals[0].name
    if ctx.mode == "grad":
        return [Lowered(transpose(p, "all")), None, None]
    x = b.value(x_name)
    if nonnegative(ctx, x_name) or not b.has_negative(x_name):
        if b.exact:
            q = safe_divide(b, p, forward(x, "pos"), vanishing=True)
        else:
            q = b.divide(p, forward(x, "pos", b.constant(np.full(ctx.shape(w_name)[0], GUARD, np.float32), "guard")))
        return [Lowered(b.op("Mul", [x, transpose(q, "pos")]), scaled=True), None, None]
    ctx.node_index = node.index
    warn_negative(ctx, node)
    x_pos, x_neg = b.maximum(x, 0.0), b.minimum(x, 0.0)
    q = safe_divide(b, p, b.op("Add", [forward(x_pos, "pos"), forward(x_neg, "neg")]), vanishing=True)
    pos = b.op("Mul", [x_pos, transpose(q, "pos")])
    neg = b.op("Mul", [x_neg, transpose(q, "neg")])
    return [Lowered(b.op("Add", [pos, neg]), scaled=True), None, None]


def _weight(ctx: RuleContext, name: str) -> np.ndarray:
    return np.asarray(ctx.graph.constant(name), dtype=np.float32)


def _flipped(b: GraphBuilder, w: str, shape: tuple[int, ...], group: int) -> str:
    """The nodes of :func:`ebr_onnx.core.kernels.transpose_as_node`'s flipped weight (channels swapped per group,
    the kernel reversed along every spatial axis). The kernel's positions are reversed by a product with the
    reversal matrix (exact for finite weights: each entry is one weight times 1 plus zeros; in onnxruntime ~3× faster
    than a Slice with negative steps)."""
    m, cg = shape[:2]
    kernel = list(shape[2:])
    k = math.prod(kernel)
    blocks = b.op("Reshape", [w, b.constant(np.asarray([group, m // group, cg, k], np.int64), "shape")])
    swapped = b.op("Transpose", [blocks], perm=[0, 2, 1, 3])
    rows = b.op("Reshape", [swapped, b.constant(np.asarray([cg * m, k], np.int64), "shape")])
    reversed_ = b.op("MatMul", [rows, b.constant(np.eye(k, dtype=np.float32)[::-1].copy(), "reversal")])
    return b.op("Reshape", [reversed_, b.constant(np.asarray([cg * group, m // group, *kernel], np.int64), "shape")])


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
    return len(ctx.shape(node.inputs[0])) in (3, 4, 5) and int(node.attr("storage_order", 0)) == 0


def _disjoint(node: Node) -> bool:
    kernel = list(node.attr("kernel_shape"))
    strides, dilations = node.attr("strides", [1] * len(kernel)), node.attr("dilations", [1] * len(kernel))
    return len(kernel) in (2, 3) and all(d == 1 for d in dilations) and all(s >= k for s, k in zip(strides, kernel))


@lowering("MaxPool", applies=_row_major_max_pool)
def max_pool(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """``p'_i = Σ_w p_w [i = first argmax of w]`` (the rule :func:`ebr_onnx.rules.pooling.max_pool`): the indices of
    onnxruntime's MaxPool (the node's own attributes; the first maximum wins), then MaxUnpool where 2-D or 3-D
    windows do not overlap, else a scatter that adds (an input position may be the maximum of several windows)."""
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
    return len(ctx.shape(node.inputs[0])) >= 3


@lowering("GlobalAveragePool", applies=_global_pool)
def global_average_pool(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """EB: ``p'_i = x_i p_c ⊘ S_c`` with ``S_c = Σ_i x_i`` over the spatial (and time) axes and ``S_c ≤ 0 → 0`` (the
    rule :func:`ebr_onnx.rules.pooling.global_average_pool_eb`); gradient: ``p'_i = p_c / count``."""
    ctx, p = b.ctx, signals[0]
    x_name = node.inputs[0]
    spatial = list(ctx.shape(x_name)[2:])
    if ctx.mode == "grad":
        mean = b.op("Div", [p.name, b.constant(np.asarray(math.prod(spatial), np.float32), "count")])
        frame = b.constant(np.asarray([1, 1, *spatial], np.int64), "shape")  # Expand broadcasts N and C
        return [Lowered(b.op("Expand", [mean, frame]))]
    x = b.value(x_name)
    zero = b.constant(np.zeros((), np.float32), "zero")
    axes = b.constant(np.arange(2, 2 + len(spatial), dtype=np.int64), "axes")
    q = safe_divide(b, p.name, b.op("Max", [b.op("ReduceSum", [x, axes], keepdims=1), zero]))
    return [Lowered(b.op("Mul", [x, q]), scaled=True)]


@lowering("GlobalMaxPool", applies=_global_pool)
def global_max_pool(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """The whole signal of each channel to its first spatial maximum in row-major order (the rule
    :func:`ebr_onnx.rules.pooling.global_max_pool`; both modes): ArgMax over the flattened positions."""
    p = signals[0]
    x_name = node.inputs[0]
    positions = math.prod(b.ctx.shape(x_name)[2:])
    flat = b.op("Reshape", [b.value(x_name), b.constant(np.asarray([0, 0, -1], np.int64), "shape")])
    first = b.op("ArgMax", [flat], axis=2, keepdims=1, select_last_index=0)
    hit = b.op("Equal", [b.constant(np.arange(positions, dtype=np.int64), "positions"), first])
    column = b.op("Reshape", [p.name, b.constant(np.asarray([0, 0, 1], np.int64), "shape")])
    routed = b.op("Mul", [b.op("Cast", [hit], to=onnx.TensorProto.FLOAT), column])
    return [Lowered(b.op("Reshape", [routed, b.shape_of(x_name)]), p.scaled)]


def _average_pool(node: Node, ctx: RuleContext) -> bool:
    return len(ctx.shape(node.inputs[0])) in (4, 5)


@lowering("AveragePool", applies=_average_pool)
def average_pool(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """EB: ``p'_i = x_i Σ_w p_w ⊘ S_w``, ``S_w = Σ_{i'∈w} x_{i'}``, ``S_w ≤ 0 → 0`` (the rule
    :func:`ebr_onnx.rules.pooling.average_pool_eb`); gradient: ``p'_i = Σ_w p_w / count_w``. The window sums are a
    depthwise convolution by ones (its end pads grown over the ``ceil_mode`` overhang), the spreading its
    transpose."""
    ctx, p = b.ctx, signals[0]
    x_name = node.inputs[0]
    x_shape = tuple(ctx.shape(x_name))
    out = list(ctx.shape(node.outputs[0])[2:])
    geo = _window_geometry(node, x_shape, out)
    ones = np.ones((x_shape[1], 1, *geo.kernel), np.float32)
    op_type, weight, t_attrs = transpose_as_node(geo)
    spread_weight = b.constant(np.ascontiguousarray(weight(ones)), "ones")

    def spread(q: str) -> str:
        return b.op(op_type, [q, spread_weight], **t_attrs)

    if ctx.mode == "grad":
        windows = ConvGeometry(node, x_shape, (1, 1, *node.attr("kernel_shape")))
        windows.out = out
        count = window_counts(np, windows, bool(node.attr("count_include_pad", 0)), np.float32)
        return [Lowered(spread(b.op("Div", [p.name, b.constant(count, "count")])))]
    x = b.value(x_name)
    zero = b.constant(np.zeros((), np.float32), "zero")
    total = b.op("Conv", [x, b.constant(ones, "ones")], strides=geo.strides, pads=geo.pads, dilations=geo.dilations,
                 group=geo.group)
    q = safe_divide(b, p.name, b.op("Max", [total, zero]))
    return [Lowered(b.op("Mul", [x, spread(q)]), scaled=True)]


def _window_geometry(node: Node, x_shape: tuple[int, ...], out: tuple[int, ...]) -> ConvGeometry:
    """A pooling node's windows as a depthwise convolution's geometry: one group per channel, the end pads grown so
    that the windows of ``ceil_mode`` fit (the overhang holds zeros, as the rule's frame)."""
    geo = ConvGeometry(node, x_shape, (1, 1, *node.attr("kernel_shape")))
    geo.group = x_shape[1]
    geo.out = list(out)
    for a, (reach, padded) in enumerate(zip(geo.reach(), (b + s + e for b, s, e in zip(geo.begins, geo.size,
                                                                                          geo.ends)))):
        geo.pads[geo.dims + a] += max(0, reach - padded)
    return geo


def _reduction(node: Node, ctx: RuleContext) -> bool:
    try:
        axes, _ = reduced_axes(node, ctx)
    except EbrError:
        return False
    return 0 not in axes and len(ctx.shape(node.inputs[0])) >= 2


@lowering(["ReduceMean", "ReduceSum"], applies=_reduction)
def reduce_mean(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """EB: ``p'_i = x_i p ⊘₀ Σ_{reduced} x`` with ``Σ ≤ 0 → 0`` (the rule
    :func:`ebr_onnx.rules.pooling.reduce_mean_eb`); gradient: ``p / n`` (ReduceMean over ``n`` elements) or ``p``
    (ReduceSum), broadcast back. Never over the batch axis (the graph runs on slices of the examples)."""
    ctx, p = b.ctx, signals[0]
    x_name = node.inputs[0]
    shape = ctx.shape(x_name)
    axes, keepdims = reduced_axes(node, ctx)
    rest = [None] * (len(node.inputs) - 1)
    if not axes:
        return [p, *rest]
    kept = p.name if keepdims else b.op("Unsqueeze", [p.name, b.constant(np.asarray(axes, np.int64), "axes")])
    if ctx.mode == "grad":
        if node.op_type == "ReduceMean":
            kept = b.op("Div", [kept, b.constant(np.asarray(math.prod(shape[a] for a in axes), np.float32), "count")])
        frame = [shape[a] if a in axes else 1 for a in range(len(shape))]
        return [Lowered(b.op("Expand", [kept, b.constant(np.asarray(frame, np.int64), "shape")])), *rest]
    x = b.value(x_name)
    zero = b.constant(np.zeros((), np.float32), "zero")
    total = b.op("ReduceSum", [x, b.constant(np.asarray(axes, np.int64), "axes")], keepdims=1)
    q = safe_divide(b, kept, b.op("Max", [total, zero]))
    return [Lowered(b.op("Mul", [x, q]), scaled=True), *rest]


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


def _broadcast_axes(shape: tuple[int, ...], out: tuple[int, ...]) -> list[int] | None:
    """The axes over which an operand of ``shape`` was stretched to ``out``; None where the ranks differ or the batch
    axis was stretched (the graph runs on slices of the examples)."""
    if len(shape) != len(out):
        return None
    axes = [a for a, (s, o) in enumerate(zip(shape, out)) if s == 1 and o != 1]
    return None if 0 in axes else axes


def _to_operand(b: GraphBuilder, p: Lowered, axes: list[int], scaled: bool) -> Lowered:
    """An output-shaped signal summed back over its operand's broadcast ``axes``."""
    if not axes:
        return Lowered(p.name, scaled)
    return Lowered(b.op("ReduceSum", [p.name, b.constant(np.asarray(axes, np.int64), "axes")], keepdims=1))


def _gated_or_grad_mul(node: Node, ctx: RuleContext) -> bool:
    out = ctx.shape(node.outputs[0])
    signal = [t for t in node.inputs if ctx.is_signal(t)]
    if any(_broadcast_axes(ctx.shape(t), out) is None for t in signal):
        return False
    return ctx.mode == "grad" or (len(signal) == 2 and sum(is_gate(ctx, t) for t in node.inputs) == 1)


@lowering("Mul", applies=_gated_or_grad_mul)
def mul(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """EB of ``y = g ⊙ x`` with ``g`` a gate (squeeze-excitation, Swish/SiLU): ``p_x = p``, ``p_g = 0`` (the rule
    :func:`ebr_onnx.rules.elementwise.mul_eb`); gradient: the product rule ``p_a = p ⊙ b``, ``p_b = p ⊙ a``; each
    summed over its broadcast axes."""
    ctx, p = b.ctx, signals[0]
    out = ctx.shape(node.outputs[0])
    names = list(node.inputs)
    result: list[Lowered | None] = []
    for k, name in enumerate(names):
        axes = _broadcast_axes(ctx.shape(name), out) if ctx.is_signal(name) else None
        if axes is None:
            result.append(None)
        elif ctx.mode == "grad":
            other = b.value(names[1 - k])
            result.append(_to_operand(b, Lowered(b.op("Mul", [p.name, other])), axes, False))
        else:
            result.append(None if is_gate(ctx, name) else _to_operand(b, p, axes, p.scaled))
    return result


@lowering("Sigmoid")
def sigmoid(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """EB: ``p' = p`` with the rule's warning (:func:`ebr_onnx.rules.elementwise.smooth_eb`; a gate's Sigmoid
    receives no signal under EB); gradient: ``p ⊙ σ(x)(1 − σ(x))``."""
    ctx, p = b.ctx, signals[0]
    if ctx.mode == "eb":
        ctx.node_index = node.index
        warn_pass_through(ctx, node)
        return [Lowered(p.name)]
    s = b.op("Sigmoid", [b.value(node.inputs[0])])
    slope = b.op("Mul", [s, b.op("Sub", [b.constant(np.ones((), np.float32), "one"), s])])
    return [Lowered(b.op("Mul", [p.name, slope]))]


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


def _forward_slice(node: Node, ctx: RuleContext) -> bool:
    try:
        index = slices(ctx, node, ctx.shape(node.inputs[0]))
    except (EbrError, KeyError):
        return False
    return index[0] == slice(None) and all(s.step in (None, 1) or s.step > 0 for s in index)


@lowering("Slice", applies=_forward_slice)
def slice_(node: Node, b: GraphBuilder, signals: Sequence[Lowered | None]) -> list[Lowered | None]:
    """``p'`` is ``p`` put back at the sliced positions, zeros elsewhere (the rule
    :func:`ebr_onnx.rules.routing.slice_`): per sliced axis, a step ``s`` spreads the signal with ``s − 1`` zeros
    after each position (Unsqueeze, Pad, Reshape), then Pad places it at its start (positive steps, never along the
    batch axis)."""
    ctx, p = b.ctx, signals[0]
    shape = list(ctx.shape(node.inputs[0]))
    current = list(ctx.shape(node.outputs[0]))
    name = p.name
    for axis, index in enumerate(slices(ctx, node, tuple(shape))):
        if index == slice(None) or axis == 0:
            continue
        start, _, step = index.indices(shape[axis])
        count = current[axis]
        if step > 1 and count:
            spread = [0] * (2 * (len(shape) + 1))
            spread[axis + 1 + len(shape) + 1] = step - 1
            name = b.op("Pad", [b.op("Unsqueeze", [name, b.constant(np.asarray([axis + 1], np.int64), "axes")]),
                                b.constant(np.asarray(spread, np.int64), "pads")])
            current[axis] = count * step
            target = [0] + current[1:]
            name = b.op("Reshape", [name, b.constant(np.asarray(target, np.int64), "shape")])
        end = shape[axis] - start - current[axis]
        pads = [0] * (2 * len(shape))
        pads[axis], pads[axis + len(shape)] = start, max(end, 0)
        name = b.op("Pad", [name, b.constant(np.asarray(pads, np.int64), "pads")])
        if end < 0:  # the zeros spread after the last position reach beyond the input
            bounds = [b.constant(np.asarray([v], np.int64), "index") for v in (0, shape[axis], axis)]
            name = b.op("Slice", [name, *bounds])
        current[axis] = shape[axis]
    return [Lowered(name, p.scaled)] + [None] * (len(node.inputs) - 1)


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
