"""Rules of the linear ops: Conv, ConvTranspose, Gemm, MatMul and Einsum with a constant operand.

Every linear op ``y = f(x, W) + b`` uses one identity (paper Eq. 8, ``shared/spec/caffe-reference.md`` §2.1)::

    Z  = f(x, W⁺)            W⁺ = max(W, 0), bias excluded
    p' = x ⊙ fᵀ(p ⊘₀ Z, W⁺)  Z == 0 → 0

and the gradient rule is ``p' = fᵀ(p, W)``. Each op supplies only its ``f`` (forward without bias) and its ``fᵀ``
(transpose). Both rules are linear in ``p``, so signed (contrastive) signals propagate linearly.

EB assumes non-negative activations (assumption A1). Where ``x`` has negative entries (mean-subtracted images, tanh
outputs), the *positive-contribution* rule is used: ``Z = f(x⁺, W⁺) + f(x⁻, W⁻)`` and
``p' = x⁺ ⊙ fᵀ(q, W⁺) + x⁻ ⊙ fᵀ(q, W⁻)`` — every child receives its share of the parent's positive pre-activation
(LRP's z⁺ rule), which equals EB exactly when ``x ≥ 0``; a warning names the first such node.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..core.context import RuleContext
from ..core.errors import EbrError
from ..core.geometry import SPATIAL_AXES, ConvGeometry, weight_part
from ..core.graph import Node
from ..core.kernels import OrtConv
from ..core.numeric import safe_divide, unbroadcast
from ..core.ops import GATE_OPS, LAYOUT_OPS
from ..core.registry import needs_inputs, rule

Linear = Callable[[Any, Any], Any]
#: Block size of the output axis (in weight elements) over which a matrix weight's parts are formed: W⁺ of a large
#: classifier (VGG-16's fc6: 411 MB) is never built whole.
BLOCK_ELEMENTS = 1 << 22


class ArrayLinear:
    """``f`` and ``fᵀ`` of a linear op by a weight array and its parts: ``"all"`` (W), ``"pos"`` (W⁺), ``"neg"``
    (W⁻). ``axis`` is the axis of the weight that indexes outputs (the signal's ``out_axis``), over which the op splits
    into blocks; ``None`` keeps it whole."""

    def __init__(self, xp, w: Any, forward: Linear, transpose: Linear, axis: int | None = None,
                 out_axis: int = -1) -> None:
        self.xp, self.w, self._forward, self._transpose = xp, w, forward, transpose
        self.axis, self.out_axis = axis, out_axis
        self._parts: dict[str, Any] = {}

    def part(self, which: str) -> Any:
        if which not in self._parts:
            self._parts[which] = weight_part(self.xp, self.w, which)
        return self._parts[which]

    def forward(self, x: Any, which: str) -> Any:
        return self._forward(x, self.part(which))

    def transpose(self, q: Any, which: str) -> Any:
        return self._transpose(q, self.part(which))

    def blocks(self, p: Any) -> Iterator[tuple["ArrayLinear", Any]]:
        """(op, signal) per block of outputs; a block's parts are formed only while it is in use."""
        fits = self.axis is not None and self.w.ndim >= 2 and p.ndim >= -self.out_axis
        size = self.w.shape[self.axis] if fits else 0
        step = max(1, BLOCK_ELEMENTS * size // max(1, self.w.size)) if size else 0
        if not size or step >= size:
            yield self, p
            return
        for start in range(0, size, step):
            index = [slice(None)] * self.w.ndim
            index[self.axis] = slice(start, start + step)
            signal = [slice(None)] * p.ndim
            signal[self.out_axis] = slice(start, start + step)
            yield ArrayLinear(self.xp, self.w[tuple(index)], self._forward, self._transpose), p[tuple(signal)]


def excite(ctx: RuleContext, node: Node, x: Any, p: Any, op) -> Any:
    """The EB identity above for one linear op given as ``op`` (an :class:`ArrayLinear` or a compiled kernel):
    ``x ⊙ Σ_blocks fᵀ(p ⊘₀ f(x, W⁺), W⁺)`` (Eq. 8)."""
    xp = ctx.xp
    if ctx.has_negative(x):
        warn_negative(ctx, node)
        x_pos, x_neg = xp.maximum(x, 0), xp.minimum(x, 0)
        pos = neg = None
        for block, p_b in op.blocks(p):
            q = safe_divide(xp, p_b, block.forward(x_pos, "pos") + block.forward(x_neg, "neg"))
            pos = _accumulate(pos, block.transpose(q, "pos"))
            neg = _accumulate(neg, block.transpose(q, "neg"))
        return x_pos * pos + x_neg * neg
    total = None
    for block, p_b in op.blocks(p):
        q = safe_divide(xp, p_b, block.forward(x, "pos"), overwrite=True)
        total = _accumulate(total, block.transpose(q, "pos"))
    return _scaled(xp, total, x)


def warn_negative(ctx: RuleContext, node: Node) -> None:
    """The warning of a linear node whose activations are negative (where the positive-contribution rule applies)."""
    ctx.warn_once(
        "negative-activations",
        f"node {node.name!r} ({node.op_type}) receives negative activations, which EB does not assume (A1); "
        "the positive-contribution rule x⁺W⁺ + x⁻W⁻ is used there and below",
    )


def _accumulate(total: Any, term: Any) -> Any:
    """``total + term``, in place where the shapes allow."""
    if total is None:
        return term
    if total.shape == term.shape and total.dtype == term.dtype:
        total += term
        return total
    return total + term


def _scaled(xp, t: Any, x: Any) -> Any:
    """``x ⊙ t``, in place in ``t`` (a temporary of the rule) where the shapes allow."""
    if t.shape == x.shape and t.dtype == x.dtype and getattr(t.flags, "writeable", True):
        return xp.multiply(t, x, out=t)
    return x * t


def excitation(ctx: RuleContext, node: Node, x: Any, p: Any, w: Any, forward: Linear, transpose: Linear) -> Any:
    """The EB identity above for one linear op by a weight array: ``x ⊙ fᵀ(p ⊘₀ f(x, W⁺), W⁺)`` (Eq. 8)."""
    return excite(ctx, node, x, p, ArrayLinear(ctx.xp, w, forward, transpose))


def linear_rule(ctx: RuleContext, node: Node, x: Any, p: Any, op) -> Any:
    """EB or gradient of one linear op, by the walk's mode."""
    if ctx.mode == "grad":
        return op.transpose(p, "all")
    return excite(ctx, node, x, p, op)


# -- Conv -------------------------------------------------------------------------------------------------------------
def conv_forward(xp, geo: ConvGeometry, x: Any, w: Any) -> Any:
    """``f(x, W)``: the convolution without bias, as one batched GEMM per kernel offset (shift-and-GEMM), on 2 or 3
    spatial axes."""
    n, c = x.shape[:2]
    m, g = w.shape[0], geo.group
    xp_ = xp.pad(x, ((0, 0), (0, 0)) + tuple(zip(geo.begins, geo.ends))) if any(geo.pads) else x
    cells = math.prod(geo.out)
    wk = _offset_major(xp, w, g)
    y = xp.zeros((n, g, m // g, cells), dtype=x.dtype)
    for offset in geo.offsets():
        patch = xp.ascontiguousarray(xp_[(slice(None), slice(None)) + geo.window(*offset)])
        y += xp.matmul(wk[offset], patch.reshape(n, g, c // g, cells))
    return y.reshape((n, m) + tuple(geo.out))


def _offset_major(xp, w: Any, g: int) -> Any:
    """The weight as ``[*offset, group, out, in]``, contiguous: each offset's matrices are BLAS operands (a strided
    ``w[..., i, j]`` view is not, and makes NumPy's matmul fall back to its slow loop)."""
    m, cg = w.shape[:2]
    dims = w.ndim - 2
    grouped = w.reshape((g, m // g, cg) + tuple(w.shape[2:]))
    return xp.ascontiguousarray(grouped.transpose(tuple(range(3, 3 + dims)) + (0, 1, 2)))


def conv_transpose(xp, geo: ConvGeometry, q: Any, w: Any, c: int) -> Any:
    """``fᵀ(q, W)``: the transposed convolution (col2im by kernel offsets), cropped to the unpadded input."""
    n, m = q.shape[:2]
    g = geo.group
    padded = tuple(s + b + e for s, b, e in zip(geo.size, geo.begins, geo.ends))
    out = xp.zeros((n, c) + padded, dtype=q.dtype)
    wk = xp.ascontiguousarray(xp.swapaxes(_offset_major(xp, w, g), -1, -2))
    qg = q.reshape(n, g, m // g, math.prod(geo.out))
    for offset in geo.offsets():
        contrib = xp.matmul(wk[offset], qg)
        out[(slice(None), slice(None)) + geo.window(*offset)] += contrib.reshape((n, c) + tuple(geo.out))
    return out[(slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(geo.begins, geo.size))]


def _conv_op(ctx: RuleContext, node: Node, geo: ConvGeometry, c: int) -> OrtConv | ArrayLinear:
    """The Conv's ``f``/``fᵀ``: a cached onnxruntime kernel where the walk runs on NumPy in float32 with a constant
    weight, else the array code above."""
    name = node.inputs[1]
    if (ctx.kernels is not None and ctx.xp is np and np.dtype(ctx.dtype) == np.float32
            and ctx.graph.is_constant(name)):
        negated = node.name in ctx.negated
        geometry = (tuple(geo.strides), tuple(geo.pads), tuple(geo.dilations), geo.group, tuple(geo.size))

        def weight() -> np.ndarray:
            w = np.asarray(ctx.graph.constant(name), dtype=np.float32)
            w = -w if negated else w
            return w[:, :, None, :] if w.ndim == 3 else w

        return OrtConv(ctx.kernels, (name, negated, geometry), geo, weight)
    xp = ctx.xp
    w = ctx.weight(node, 1)
    w2 = w[:, :, None, :] if geo.spatial == 1 else w
    return ArrayLinear(xp, w2, lambda a, k: conv_forward(xp, geo, a, k), lambda q, k: conv_transpose(xp, geo, q, k, c))


@rule("Conv", needs=needs_inputs)
def conv(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """Conv: Eq. 8 with ``f`` = convolution by W⁺ (1, 2 or 3 spatial axes; strides, pads, dilations, groups incl.
    depthwise; no bias)."""
    p = signals[0]
    x_shape = ctx.shape(node.inputs[0])
    geo = ConvGeometry(node, x_shape, tuple(ctx.shape(node.inputs[1])))
    one_d = geo.spatial == 1
    p2 = p[:, :, None, :] if one_d else p
    x = ctx.value(node.inputs[0]) if ctx.mode == "eb" else None
    x2 = x[:, :, None, :] if (one_d and x is not None) else x
    result = linear_rule(ctx, node, x2, p2, _conv_op(ctx, node, geo, x_shape[1]))
    return [result[:, :, 0, :] if one_d else result, None, None]


def _conv_needs(node: Node) -> list[str]:
    return [node.inputs[1]]


rule("Conv", modes=("grad",), needs=_conv_needs)(conv)


# -- Gemm / MatMul ----------------------------------------------------------------------------------------------------
def _matmul_operand_rule(ctx: RuleContext, node: Node, p: Any, a_name: str, b_name: str, scale: float
                         ) -> tuple[Any, Any]:
    """EB/gradient of ``y = scale · a @ b``.

    One signal operand: Eq. 8 with W = scale · the other (constant) operand. With ``a`` the signal:
    ``f(a, W) = a @ W``, ``fᵀ(q, W) = q @ Wᵀ``; with ``b`` the signal: ``f(b, W) = W @ b``, ``fᵀ(q, W) = Wᵀ @ q``.
    Two signal operands (attention) in EB: attention weights — an operand computed by a Softmax (or a gate), through
    layout ops — act as constant weights, so the other operand takes the whole signal by Eq. 8 with them as W and
    they take none (``softmax(QKᵀ) @ V``: all to V), as gates inside LSTM cells; otherwise (``Q @ Kᵀ``) each operand
    takes half, ``p/2`` by Eq. 8 with the other operand as W, with a warning. Gradient: the product rule.
    """
    xp = ctx.xp
    a_sig, b_sig = ctx.is_signal(a_name), ctx.is_signal(b_name)
    if a_sig and b_sig:
        a, b = ctx.value(a_name), ctx.value(b_name)
        if ctx.mode == "grad":
            return (scale * xp.matmul(p, xp.swapaxes(b, -1, -2)), scale * xp.matmul(xp.swapaxes(a, -1, -2), p))
        weights = [_is_attention_weight(ctx, t) for t in (a_name, b_name)]
        if weights == [True, False]:
            return None, _right_operand(ctx, node, p, b_name, scale * a)
        if weights == [False, True]:
            return _left_operand(ctx, node, p, a_name, scale * b), None
        ctx.warn_once(
            "signal-product",
            f"node {node.name!r} (MatMul) multiplies two signal tensors, neither of them attention weights (a "
            "Softmax's output); EB gives each operand half the signal",
        )
        return (_left_operand(ctx, node, p / 2, a_name, scale * b), _right_operand(ctx, node, p / 2, b_name, scale * a))
    if a_sig:
        return _left_operand(ctx, node, p, a_name, _scaled_weight(ctx, node, b_name, scale)), None
    return None, _right_operand(ctx, node, p, b_name, _scaled_weight(ctx, node, a_name, scale))


def _left_operand(ctx: RuleContext, node: Node, p: Any, a_name: str, w: Any) -> Any:
    """The signal of ``a`` in ``y = a @ w`` (Eq. 8 in EB, ``p @ wᵀ`` for the gradient)."""
    xp = ctx.xp
    x = ctx.value(a_name) if ctx.mode == "eb" else None
    op = ArrayLinear(xp, w, lambda v, k: xp.matmul(v, k), lambda q, k: xp.matmul(q, xp.swapaxes(k, -1, -2)),
                     axis=w.ndim - 1, out_axis=-1)
    return unbroadcast(xp, linear_rule(ctx, node, x, p, op), ctx.shape(a_name))


def _right_operand(ctx: RuleContext, node: Node, p: Any, b_name: str, w: Any) -> Any:
    """The signal of ``b`` in ``y = w @ b`` (Eq. 8 in EB, ``wᵀ @ p`` for the gradient)."""
    xp = ctx.xp
    x = ctx.value(b_name) if ctx.mode == "eb" else None
    op = ArrayLinear(xp, w, lambda v, k: xp.matmul(k, v), lambda q, k: xp.matmul(xp.swapaxes(k, -1, -2), q),
                     axis=max(w.ndim - 2, 0), out_axis=-2)
    return unbroadcast(xp, linear_rule(ctx, node, x, p, op), ctx.shape(b_name))


def _is_attention_weight(ctx: RuleContext, name: str) -> bool:
    """Whether ``name`` is computed by a Softmax or a gate (Sigmoid, HardSigmoid), through layout ops."""
    node = ctx.graph.producer.get(ctx.graph.trace_down(name, LAYOUT_OPS))
    return node is not None and (node.op_type == "Softmax" or node.op_type in GATE_OPS)


def _scaled_weight(ctx: RuleContext, node: Node, name: str, scale: float) -> Any:
    """``scale`` times the constant operand (no copy when ``scale`` is 1)."""
    w = ctx.weight(node, list(node.inputs).index(name))
    return w if scale == 1.0 else scale * w


@rule("MatMul", needs=needs_inputs)
def matmul(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """MatMul ``y = a @ b`` with one constant (or non-signal) operand: Eq. 8 with W⁺ of that operand."""
    a, b = node.inputs[:2]
    return list(_matmul_operand_rule(ctx, node, signals[0], a, b, 1.0))


@rule("Gemm", needs=needs_inputs)
def gemm(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """Gemm ``y = alpha · A' B' + beta · C``: Eq. 8 on ``alpha · A' B'`` (C is a bias: excluded from Z)."""
    xp = ctx.xp
    p = signals[0]
    a, b = node.inputs[:2]
    trans_a, trans_b = int(node.attr("transA", 0)), int(node.attr("transB", 0))
    alpha = float(node.attr("alpha", 1.0))
    view = _TransposedGemm(ctx, node, trans_a, trans_b)
    da, db = _matmul_operand_rule(view, node, p, a, b, alpha)
    c_signal = None
    if len(node.inputs) > 2 and ctx.is_signal(node.inputs[2]):
        c_signal = unbroadcast(xp, float(node.attr("beta", 1.0)) * p, ctx.shape(node.inputs[2])) \
            if ctx.mode == "grad" else None
        if ctx.mode == "eb":
            ctx.warn_once("gemm-signal-bias", f"Gemm {node.name!r} adds a signal tensor as C; EB treats C as a bias")
    return [None if da is None else (da.T if trans_a else da), None if db is None else (db.T if trans_b else db),
            c_signal]


class _TransposedGemm:
    """A view of the rule context in which Gemm's transposed operands read as plain matrices."""

    def __init__(self, ctx: RuleContext, node: Node, trans_a: int, trans_b: int) -> None:
        self._ctx = ctx
        self._flip = {node.inputs[0]: trans_a, node.inputs[1]: trans_b}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def value(self, name: str) -> Any:
        v = self._ctx.value(name)
        return v.T if self._flip.get(name) else v

    def weight(self, node: Node, index: int) -> Any:
        w = self._ctx.weight(node, index)
        return w.T if self._flip.get(node.inputs[index]) else w

    def shape(self, name: str) -> tuple[int, ...]:
        s = self._ctx.shape(name)
        return tuple(reversed(s)) if self._flip.get(name) else s


# -- ConvTranspose ----------------------------------------------------------------------------------------------------
def conv_transpose_geometry(node: Node, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                            y_shape: tuple[int, ...]) -> ConvGeometry:
    """The geometry of the Conv whose transpose the ConvTranspose is: the same strides, dilations and group, on an
    input shaped as ``y``; the pads are the node's, or, where ``auto_pad`` or ``output_shape`` decide them, the total
    ``s(in − 1) + output_padding + (k − 1)d + 1 − out`` split as onnxruntime does (SAME_UPPER: the smaller half
    first; otherwise the larger half first)."""
    spatial = len(x_shape) - 2
    if spatial not in SPATIAL_AXES:
        raise EbrError(f"ConvTranspose node {node.name!r} is {spatial}-D; ebr_onnx supports 1-D, 2-D and 3-D "
                       "transposed convolutions")
    strides = list(node.attr("strides", [1] * spatial))
    dilations = list(node.attr("dilations", [1] * spatial))
    extra = list(node.attr("output_padding", [0] * spatial))
    auto_pad = node.attr("auto_pad", "NOTSET")
    pads = list(node.attr("pads", [0] * (2 * spatial)))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") or (auto_pad == "NOTSET" and node.attr("output_shape") is not None):
        for a in range(spatial):
            total = (strides[a] * (x_shape[a + 2] - 1) + extra[a] + (w_shape[a + 2] - 1) * dilations[a] + 1
                     - y_shape[a + 2])
            small = total // 2
            pads[a], pads[a + spatial] = (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * spatial)
    attrs = {"strides": strides, "dilations": dilations, "pads": pads, "group": int(node.attr("group", 1))}
    return ConvGeometry(replace(node, attrs=attrs), y_shape, w_shape)


@rule("ConvTranspose", needs=needs_inputs)
def conv_transpose_op(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """ConvTranspose, the transpose of a Conv ``g`` by the same weight: Eq. 8 with ``f = gᵀ`` by W⁺ and
    ``fᵀ = g`` (strides, pads, output_padding, dilations, groups; no bias); gradient ``p' = g(p, W)``."""
    xp = ctx.xp
    p = signals[0]
    x_shape = ctx.shape(node.inputs[0])
    one_d = len(x_shape) == 3
    w = ctx.weight(node, 1)
    geo = conv_transpose_geometry(node, tuple(x_shape), tuple(w.shape), tuple(p.shape))
    if list(geo.out) != ([1] if one_d else []) + list(x_shape[2:]):
        raise EbrError(f"ConvTranspose node {node.name!r}: its output {tuple(p.shape)} does not match its input "
                       f"{tuple(x_shape)} under its strides, pads and output_padding")
    op = ArrayLinear(xp, w[:, :, None, :] if one_d else w, lambda a, k: conv_transpose(xp, geo, a, k, p.shape[1]),
                     lambda q, k: conv_forward(xp, geo, q, k))
    p2 = p[:, :, None, :] if one_d else p
    x = ctx.value(node.inputs[0]) if ctx.mode == "eb" else None
    x2 = x[:, :, None, :] if (one_d and x is not None) else x
    result = linear_rule(ctx, node, x2, p2, op)
    return [result[:, :, 0, :] if one_d else result] + [None] * (len(node.inputs) - 1)


rule("ConvTranspose", modes=("grad",), needs=_conv_needs)(conv_transpose_op)


# -- Einsum -----------------------------------------------------------------------------------------------------------
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def einsum_subscripts(equation: str, ranks: Sequence[int]) -> tuple[list[str], str]:
    """An Einsum equation made explicit: the subscripts of each operand and of the output, ``...`` replaced by letters
    the equation does not use (broadcast axes aligned from the right), and an implicit output written out (the
    broadcast axes, then the letters used once, in alphabetical order)."""
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    operands = lhs.split(",")
    free = [c for c in _LETTERS if c not in lhs + rhs]
    spans = [r - len(s.replace("...", "")) if "..." in s else 0 for s, r in zip(operands, ranks)]
    dots = "".join(free[:max(spans, default=0)])
    subs = [s.replace("...", dots[len(dots) - e:] if e else "") for s, e in zip(operands, spans)]
    if arrow:
        return subs, rhs.replace("...", dots)
    named = lhs.replace("...", "").replace(",", "")
    return subs, dots + "".join(sorted(c for c in set(named) if named.count(c) == 1))


def _einsum_operand(ctx: RuleContext, node: Node, k: int, subs: list[str], out: str, values: list[Any]
                    ) -> ArrayLinear:
    """``y`` as a linear function of operand ``k``: ``f(a, W) = einsum(a, W → y)`` with ``W`` the other operands
    contracted over the letters that neither ``a`` nor the output has; ``fᵀ(q, W) = einsum(q, W → a)``, broadcast
    over the letters only ``a`` has and summed over its broadcast (size-1) axes."""
    xp = ctx.xp
    a = subs[k]
    if len(set(a)) != len(a):
        raise EbrError(f"Einsum node {node.name!r} ({node.attr('equation')!r}) repeats a subscript in its signal "
                       "operand (a diagonal); ebr_onnx supports signal operands with distinct subscripts")
    others = [j for j in range(len(subs)) if j != k]
    w_subs = "".join(dict.fromkeys(c for j in others for c in subs[j] if c in a or c in out))
    w = xp.einsum(",".join(subs[j] for j in others) + "->" + w_subs, *(values[j] for j in others), optimize=True) \
        if others else xp.asarray(1.0, dtype=values[k].dtype)
    w = -w if node.name in ctx.negated else w
    kept = "".join(c for c in a if c in out or c in w_subs)
    shape = tuple(ctx.shape(node.inputs[k]))

    def contract(source: str, target: str, v: Any, m: Any) -> Any:
        """``einsum(v, m → target)``; a scalar weight (no subscripts) multiplies."""
        if w_subs:
            return xp.einsum(f"{source},{w_subs}->{target}", v, m, optimize=True)
        return xp.einsum(f"{source}->{target}", v) * m

    def transpose(q: Any, m: Any) -> Any:
        g = contract(out, kept, q, m)
        g = unbroadcast(xp, g.reshape(tuple(g.shape[kept.index(c)] if c in kept else 1 for c in a)), shape)
        return g if g.shape == shape else xp.broadcast_to(g, shape).copy()

    return ArrayLinear(xp, w, lambda v, m: contract(a, out, v, m), transpose)


@rule("Einsum", needs=needs_inputs)
def einsum(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """Einsum is linear in each operand: with one signal operand ``a`` and ``W`` the others contracted, Eq. 8 with
    ``f(a, W⁺) = einsum(a, W⁺ → y)`` and ``fᵀ(q, W⁺) = einsum(q, W⁺ → a)`` (EB: exactly one signal operand, the others
    constant); gradient ``fᵀ(p, W)`` for every signal operand."""
    signal = [k for k, t in enumerate(node.inputs) if ctx.is_signal(t)]
    if ctx.mode == "eb" and len(signal) != 1:
        raise EbrError(f"Einsum node {node.name!r} ({node.attr('equation')!r}) multiplies {len(signal)} signal "
                       "operands; EB supports Einsum with exactly one signal operand and constant others (use "
                       "method='grad' for this model)")
    subs, out = einsum_subscripts(node.attr("equation"), [len(ctx.shape(t)) for t in node.inputs])
    values = [ctx.value(t) for t in node.inputs]
    result: list[Any] = [None] * len(node.inputs)
    for k in signal:
        x = values[k] if ctx.mode == "eb" else None
        result[k] = linear_rule(ctx, node, x, signals[0], _einsum_operand(ctx, node, k, subs, out, values))
    return result
